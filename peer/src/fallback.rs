//! The deadline fallback: what the tree does not deliver in time comes
//! from the edge over HTTP, so the player never waits on the tree.
//!
//! - every 100 ms the store is asked for segments whose grace period ran
//!   out ([`crate::store::Store::poll_fallback`]); each is fetched with its
//!   `.sig`, verified like a tree segment, and also handed to this peer's
//!   children, whose own copy failed with this peer's;
//! - while no parent sends playlists (not placed yet, or between parents)
//!   the live playlist is polled from the edge, so the local playlist keeps
//!   moving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use treecast_proto::tree::TreeSegment;
use treecast_proto::{GrowingBody, SegmentFile};

use crate::edge_client::EdgeError;
use crate::shared::{Shared, Source};

/// Runs until `shutdown`.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fetches = JoinSet::new();
    let mut polling: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_poll: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = Instant::now();
                let target = shared.store().target_duration().unwrap_or(Duration::from_secs(2));
                let tree_quiet = shared
                    .last_tree_playlist()
                    .is_none_or(|t| now.duration_since(t) > target + target / 2);
                let due = last_poll.is_none_or(|t| now.duration_since(t) >= target / 2);
                if tree_quiet && due && polling.as_ref().is_none_or(|p| p.is_finished()) {
                    last_poll = Some(now);
                    polling = Some(tokio::spawn(poll_playlist(shared.clone())));
                }
                loop {
                    let next = shared.store().poll_fallback(now);
                    let Some(seq) = next else { break };
                    fetches.spawn(fetch(shared.clone(), seq));
                }
            }
            Some(_) = fetches.join_next(), if !fetches.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Some(p) = polling {
        p.abort();
    }
    fetches.abort_all();
}

fn path(shared: &Shared, file: SegmentFile) -> String {
    format!("/live/{}/{}", shared.channel, file.file_name())
}

async fn poll_playlist(shared: Arc<Shared>) {
    let p = path(&shared, SegmentFile::Playlist);
    match shared.edge.get(&p, 1 << 20, Duration::from_secs(3)).await {
        Ok(bytes) => shared.on_playlist(bytes, Source::Edge),
        // The channel has not started yet: expected, and retried.
        Err(
            e @ EdgeError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            },
        ) => {
            debug!(error = %e, "no live playlist at the edge yet")
        }
        Err(e) => warn!(error = %e, "cannot get the live playlist from the edge"),
    }
}

async fn fetch(shared: Arc<Shared>, seq: u64) {
    let limit = shared.config.max_segment_bytes;
    let timeout = Duration::from_secs(10);
    let result = async {
        let sig = shared
            .edge
            .get(&path(&shared, SegmentFile::Signature(seq)), 4096, timeout)
            .await?;
        let bytes = shared
            .edge
            .get(&path(&shared, SegmentFile::Segment(seq)), limit, timeout)
            .await?;
        Ok::<(Bytes, Bytes), EdgeError>((bytes, sig))
    }
    .await;
    match result {
        Ok((bytes, sig)) => {
            shared.metrics.fallbacks.inc();
            shared.metrics.bytes_from_edge.inc_by(bytes.len() as u64);
            if let Ok(true) = shared.on_segment(seq, bytes.clone(), &sig, Source::Edge) {
                info!(seq, "segment taken from the edge (the tree was late)");
                shared.feed.publish(Arc::new(TreeSegment {
                    seq,
                    data: GrowingBody::complete(bytes),
                    signature: GrowingBody::complete(sig),
                }));
            }
            shared.store().fallback_done(seq);
        }
        Err(e) => {
            warn!(seq, error = %e, "fallback fetch from the edge failed; will retry");
            // Not at once: the edge is struggling or the segment is gone.
            tokio::time::sleep(Duration::from_millis(300)).await;
            shared.store().fallback_done(seq);
        }
    }
}
