//! The deadline fallback: what the tree does not deliver in time comes
//! from the edge over HTTP, so the player never waits on the tree.
//!
//! - every 100 ms the store is asked for segments whose grace period ran
//!   out ([`crate::store::Store::poll_fallback`]); each is fetched with its
//!   `.sig`, verified like a tree segment, and also handed to this peer's
//!   children, whose own copy failed with this peer's;
//! - while no parent sends playlists (not placed yet, or between parents)
//!   the live playlist is polled from the edge, so the local playlist keeps
//!   moving;
//! - an edge in trouble is not hammered: at most [`MAX_FETCHES`] fetches
//!   run at once, and after a failure the next attempt (of any segment or
//!   of the playlist) waits twice as long as the last, from 300 ms up to
//!   5 s, until one succeeds. (Found in the network lab: without it, a
//!   hundred peers retrying every 300 ms filled the edge's connection
//!   limit and kept it full.)

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

/// Fallback fetches running at once.
const MAX_FETCHES: usize = 4;
/// First wait after a failed request to the edge; it doubles per failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(300);
/// Longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// After failures, when the edge may be asked again.
#[derive(Debug, Default)]
struct Backoff {
    wait: Option<Duration>,
    until: Option<Instant>,
}

impl Backoff {
    fn ready(&self, now: Instant) -> bool {
        self.until.is_none_or(|u| now >= u)
    }

    fn failed(&mut self, now: Instant) {
        let wait = self
            .wait
            .map_or(FIRST_BACKOFF, |w| (w * 2).min(MAX_BACKOFF));
        self.wait = Some(wait);
        self.until = Some(now + wait);
    }

    fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// Runs until `shutdown`.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fetches: JoinSet<(u64, bool)> = JoinSet::new();
    let mut backoff = Backoff::default();
    let mut polling: Option<tokio::task::JoinHandle<bool>> = None;
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
                if let Some(p) = polling.take_if(|p| p.is_finished()) {
                    match p.await {
                        Ok(true) => backoff.succeeded(),
                        Ok(false) => backoff.failed(now),
                        Err(_) => {}
                    }
                }
                if !backoff.ready(now) {
                    continue;
                }
                if tree_quiet && due && polling.is_none() {
                    last_poll = Some(now);
                    polling = Some(tokio::spawn(poll_playlist(shared.clone())));
                }
                let tree_up = shared.parent().is_some();
                while fetches.len() < MAX_FETCHES {
                    let next = shared.store().poll_fallback(now, tree_up);
                    let Some(seq) = next else { break };
                    fetches.spawn(fetch(shared.clone(), seq));
                }
            }
            Some(done) = fetches.join_next(), if !fetches.is_empty() => {
                if let Ok((seq, ok)) = done {
                    if ok {
                        backoff.succeeded();
                    } else {
                        backoff.failed(Instant::now());
                    }
                    shared.store().fallback_done(seq);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Some(p) = polling {
        p.abort();
    }
    fetches.abort_all();
}

/// The edge's path of `file` of this peer's channel.
pub(crate) fn path(shared: &Shared, file: SegmentFile) -> String {
    format!("/live/{}/{}", shared.channel, file.file_name())
}

/// Fetches the live playlist; false when the edge failed.
async fn poll_playlist(shared: Arc<Shared>) -> bool {
    let p = path(&shared, SegmentFile::Playlist);
    match shared.edges.get(&p, 1 << 20, Duration::from_secs(3)).await {
        Ok(bytes) => {
            shared.on_playlist(bytes, Source::Edge);
            true
        }
        // The channel has not started yet: expected, and retried.
        Err(
            e @ EdgeError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            },
        ) => {
            debug!(error = %e, "no live playlist at the edge yet");
            true
        }
        Err(e) => {
            warn!(error = %e, "cannot get the live playlist from the edge");
            false
        }
    }
}

/// Fetches and verifies one segment; `(seq, false)` when the edge failed.
/// The caller reports the fetch's end to the store.
async fn fetch(shared: Arc<Shared>, seq: u64) -> (u64, bool) {
    let limit = shared.config.max_segment_bytes;
    let timeout = Duration::from_secs(10);
    let result = async {
        let sig = shared
            .edges
            .get(&path(&shared, SegmentFile::Signature(seq)), 4096, timeout)
            .await?;
        let bytes = shared
            .edges
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
            (seq, true)
        }
        Err(e) => {
            warn!(seq, error = %e, "fallback fetch from the edge failed; will retry");
            (seq, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_on_success() {
        let mut b = Backoff::default();
        let t = Instant::now();
        assert!(b.ready(t));
        let mut waits = Vec::new();
        for _ in 0..6 {
            b.failed(t);
            waits.push(b.wait.expect("waiting"));
        }
        assert_eq!(
            waits,
            [300, 600, 1200, 2400, 4800, 5000].map(Duration::from_millis)
        );
        assert!(!b.ready(t + Duration::from_millis(4999)));
        assert!(b.ready(t + MAX_BACKOFF));
        b.succeeded();
        assert!(b.ready(t));
    }
}
