//! A site leader's stream over HTTP: when no UDP leaves this peer's site
//! (a firewall that lets out HTTP only) and the tracker makes it the
//! site's leader (its parent is the edge), it takes each segment from the
//! edge over HTTP while the origin cuts it, and its children on the site
//! get every chunk as it arrives, over the LAN, with the tree protocol.
//!
//! - the segment after the last one the live playlist lists is the one
//!   being cut; the edge streams it as it grows (its cache holds one
//!   origin fetch per segment). Each such segment is claimed in the store
//!   ([`crate::store::Store::claim`]), so the deadline fallback never
//!   fetches it a second time;
//! - the segment goes to the children as a growing body, its signature
//!   after it, and is verified whole before this peer keeps or serves it;
//!   the children verify it themselves, so a bad copy reaches no player;
//! - each segment counts as a fallback (bytes from the edge), so the site
//!   shows one HTTP stream, not one per viewer.
//!
//! The live playlist comes from the deadline fallback's polling, which
//! runs while no parent sends playlists (always, for a leader).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use treecast_proto::SegmentFile;

use crate::fallback::path;
use crate::shared::{Partial, Shared, Source};

/// How often the leader looks for the next segment to take.
const TICK: Duration = Duration::from_millis(100);
/// Segments taken at once: the one being cut, and the one before it
/// while its signature is still on its way.
const MAX_TAKES: usize = 2;

/// Whether this peer is its site's leader now: no UDP out, and placed
/// under the edge.
fn leading(shared: &Shared) -> bool {
    shared.traversal.no_udp()
        && shared
            .assignment
            .borrow()
            .as_ref()
            .and_then(|a| a.parent.as_ref())
            .is_some_and(|p| p.kind == "edge")
}

/// Runs until `shutdown`.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut takes: JoinSet<u64> = JoinSet::new();
    let mut was_leading = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now_leading = leading(&shared);
                if now_leading != was_leading {
                    info!(leading = now_leading, "site leader: taking the stream from the edge over HTTP");
                    was_leading = now_leading;
                }
                if !now_leading || takes.len() >= MAX_TAKES {
                    continue;
                }
                let next = {
                    let mut store = shared.store();
                    store.live_last().map(|l| l + 1).filter(|&seq| store.claim(seq))
                };
                if let Some(seq) = next {
                    takes.spawn(take(shared.clone(), seq));
                }
            }
            Some(done) = takes.join_next(), if !takes.is_empty() => {
                if let Ok(seq) = done {
                    shared.store().fallback_done(seq);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    takes.abort_all();
}

/// Takes segment `seq` from the edge while it is cut; returns `seq`.
async fn take(shared: Arc<Shared>, seq: u64) -> u64 {
    let Partial {
        data_w,
        data,
        sig_w,
        ..
    } = shared.relay(seq);
    let (i, edge) = shared.edges.current();
    // The origin holds a request for the segment it is cutting for up to
    // two target durations; the segment itself takes one more.
    let timeout = Duration::from_secs(30);
    let got = edge
        .get_streaming(
            &path(&shared, SegmentFile::Segment(seq)),
            shared.config.max_segment_bytes,
            timeout,
            data_w,
        )
        .await;
    shared.edges.record(i, &got);
    let sig = match got {
        Ok(_) => {
            edge.get(&path(&shared, SegmentFile::Signature(seq)), 4096, timeout)
                .await
        }
        Err(e) => Err(e),
    };
    let (bytes, sig) = match (data.bytes(), sig) {
        (Some(bytes), Ok(sig)) => (bytes, sig),
        (_, Err(e)) => {
            debug!(seq, error = %e, "the edge did not stream the segment being cut; the fallback will fetch it");
            sig_w.fail("not taken");
            return seq;
        }
        (None, Ok(_)) => {
            sig_w.fail("not taken");
            return seq;
        }
    };
    shared.metrics.fallbacks.inc();
    shared.metrics.bytes_from_edge.inc_by(bytes.len() as u64);
    match shared.on_segment(seq, bytes, &sig, Source::Edge) {
        Ok(_) => {
            sig_w.push(sig);
            sig_w.finish();
        }
        Err(e) => {
            warn!(seq, error = %e, "a segment the edge streamed failed verification");
            sig_w.fail("failed verification");
        }
    }
    seq
}
