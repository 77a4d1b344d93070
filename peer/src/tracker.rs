//! The peer's side of the tracker protocol (`docs/tracker.md`): join,
//! heartbeat with the stats since the last one, report a bad parent, leave.
//!
//! - every answer is an assignment (parent, backup, depth), published on
//!   [`Shared::assignment`] for the upstream and downstream tasks;
//! - a tracker that forgot this peer (restart, eviction) answers a
//!   heartbeat with 404: the peer joins again, naming the parent it still
//!   streams from so the tree is rebuilt as it is;
//! - stats are deltas since the last heartbeat that got through, so a lost
//!   heartbeat loses nothing;
//! - a request that finds the edge gone (no connection, no answer) moves
//!   the peer to another of the event's edges ([`crate::edges`]), whoever
//!   made it (this task, the fallback): the peer joins that edge's tracker
//!   at once, naming the parent it still streams from; a peer tells its
//!   children which edge placed it (`Frame::Edge`), and a child using
//!   another edge checks that one at once (`GET /healthz`, 500 ms) rather
//!   than at its next heartbeat, and follows its parent if it is gone.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use treecast_proto::tracker::{
    Assignment, HeartbeatRequest, JoinRequest, LeaveRequest, ReportRequest, UplinkTestResult,
    UPLINK_TEST_PATH,
};

use crate::edge_client::EdgeError;
use crate::shared::{Shared, ToTracker};
use crate::viewer::ViewerFigures;

const TIMEOUT: Duration = Duration::from_secs(3);
/// How long the edge in use gets to answer when a parent says it moved.
const HINT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Counter values sent in the last heartbeat that got through.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    tree: u64,
    edge: u64,
    uploaded: u64,
    viewer: ViewerFigures,
    fallbacks: u64,
    corrupt: u64,
}

impl Sent {
    fn now(shared: &Shared) -> Self {
        let m = &shared.metrics;
        Self {
            tree: m.bytes_from_tree.get(),
            edge: m.bytes_from_edge.get(),
            uploaded: m.bytes_uploaded.get(),
            viewer: shared.viewer.figures(),
            fallbacks: m.fallbacks.get(),
            corrupt: m.corrupt.get(),
        }
    }
}

/// Runs until `shutdown`, then leaves.
pub async fn run(
    shared: Arc<Shared>,
    mut reports: mpsc::Receiver<ToTracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    // The edge whose tracker placed this peer, and the id it gave.
    let mut joined: Option<(usize, u64)> = None;
    let mut sent = Sent::default();
    let mut backoff = Duration::from_millis(250);
    let mut edge_moved = shared.edges.changed.subscribe();
    let mut hinted = shared.edges.hinted.subscribe();
    // The uplink test the tracker asked for, while it runs.
    let mut uplink_test: Option<UplinkTest> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (index, _) = shared.edges.current();
        edge_moved.borrow_and_update();
        if let Some((edge, id)) = joined.filter(|(edge, _)| *edge != index) {
            // That edge's tracker is gone for this peer: the new edge's
            // places it, keeping the parent it streams from if it can.
            info!(
                peer_id = id,
                from = shared.edges.client(edge).base(),
                to = shared.edges.client(index).base(),
                "joining the tree at another edge"
            );
            joined = None;
        }
        let Some((edge, id)) = joined else {
            let result = join(&shared, index).await;
            shared.edges.record(index, &result);
            match result {
                Ok(a) => {
                    info!(peer_id = a.peer_id, depth = a.depth, parent = ?a.parent.as_ref().map(|p| p.id), edge = shared.edges.client(index).base(), "joined the tree");
                    joined = Some((index, a.peer_id));
                    shared.joined_ms.store(unix_ms(), Ordering::Relaxed);
                    // Children using another edge learn where this peer is.
                    shared.feed.set_edge(shared.edges.client(index).base());
                    publish(&shared, a);
                    backoff = Duration::from_millis(250);
                }
                // The edge failed and another is in use now: try it at once.
                Err(_) if shared.edges.current().0 != index => {}
                Err(e) => {
                    warn!(error = %e, "cannot join the tree; retrying (the player is served from the edge meanwhile)");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = edge_moved.changed() => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let client = shared.edges.client(edge);
        let interval = shared
            .assignment
            .borrow()
            .as_ref()
            .map_or(1000, |a| a.heartbeat_interval_ms)
            .clamp(200, 30_000);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(interval)) => {
                // Behind a NAT: the tracker asked where the edge sees this
                // peer's QUIC socket.
                let observe = shared.assignment.borrow().as_ref().and_then(|a| a.observe.clone());
                let reflexive = match observe {
                    Some(at) => shared.traversal.observe(&at).await,
                    None => None,
                };
                let now = Sent::now(&shared);
                let result = heartbeat(&shared, edge, id, sent, now, reflexive).await;
                shared.edges.record(edge, &result);
                match result {
                    Ok(a) => {
                        sent = now;
                        if let (Some(kbps), None) = (a.test_uplink_kbps, &uplink_test) {
                            uplink_test = Some(Box::pin(test_uplink(shared.clone(), edge, id, kbps)));
                        }
                        publish(&shared, a);
                    }
                    Err(EdgeError::Status { status: StatusCode::NOT_FOUND, .. }) => {
                        warn!(peer_id = id, "the tracker no longer knows this peer; joining again");
                        joined = None;
                    }
                    Err(e) => warn!(error = %e, "heartbeat failed"),
                }
            }
            Some(ToTracker { kind, parent_id }) = reports.recv() => {
                let req = ReportRequest { channel: shared.channel.to_string(), peer_id: id, report: kind, parent_id };
                let result = client.post_json::<_, Assignment>("/tracker/v1/report", &req, TIMEOUT).await;
                shared.edges.record(edge, &result);
                match result {
                    Ok(a) => publish(&shared, a),
                    Err(e) => warn!(error = %e, ?kind, "report to the tracker failed"),
                }
            }
            result = async {
                match &mut uplink_test {
                    Some(test) => test.await,
                    None => std::future::pending().await,
                }
            } => {
                uplink_test = None;
                match result {
                    Ok(r) => {
                        shared.metrics.uplink_test_kbps.set(i64::from(r.kbps));
                        info!(kbps = r.kbps, bytes = r.bytes, "uplink tested");
                    }
                    Err(e) => warn!(error = %e, "uplink test failed; the tracker measures this peer's children instead"),
                }
            }
            _ = edge_moved.changed() => {}
            Ok(()) = hinted.changed() => {
                // The parent is placed by another edge: is this one still up?
                let prefer = *hinted.borrow_and_update();
                if prefer.is_some_and(|p| p != edge) {
                    let probe = client.get("/healthz", 1024, HINT_PROBE_TIMEOUT).await;
                    shared.edges.record_preferring(edge, &probe, prefer);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    if let Some((edge, id)) = joined {
        let req = LeaveRequest {
            channel: shared.channel.to_string(),
            peer_id: id,
        };
        match shared
            .edges
            .client(edge)
            .post_json::<_, Assignment>("/tracker/v1/leave", &req, Duration::from_secs(1))
            .await
        {
            Ok(_) => info!(peer_id = id, "left the tree"),
            Err(e) => {
                warn!(error = %e, "leave not acknowledged; the tracker will time this peer out")
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn publish(shared: &Shared, a: Assignment) {
    shared.metrics.depth.set(i64::from(a.depth));
    if !a.punch.is_empty() {
        // Children elsewhere are about to dial in through this peer's NAT.
        let n = shared.traversal.punch(&a.punch);
        shared.metrics.punched.inc_by(n as u64);
    }
    shared.assignment.send_replace(Some(a));
}

/// A running uplink test.
type UplinkTest = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<UplinkTestResult, EdgeError>> + Send>,
>;

/// How long an uplink test may take: the edge reads for
/// [`UPLINK_TEST_WINDOW`](treecast_proto::tracker::UPLINK_TEST_WINDOW)
/// from the first byte and then answers.
const UPLINK_TEST_TIMEOUT: Duration = Duration::from_secs(6);

/// The fastest test a peer sends, kb/s (12.5 MB): the rate comes from the
/// edge, and no answer may make a peer allocate and send without bound.
/// Twice a 50 Mb/s stream's rate.
const MAX_UPLINK_TEST_KBPS: u32 = 100_000;

/// Sends the uplink test the tracker asked for: one second's worth of
/// bytes at `kbps` to the edge, which measures what arrives and tells the
/// tracker (`docs/tracker.md`, "Uplink test").
async fn test_uplink(
    shared: Arc<Shared>,
    edge: usize,
    peer_id: u64,
    kbps: u32,
) -> Result<UplinkTestResult, EdgeError> {
    let bytes = kbps.min(MAX_UPLINK_TEST_KBPS) as usize * 1000 / 8;
    let body = bytes::Bytes::from(vec![0u8; bytes]);
    let path = format!(
        "{UPLINK_TEST_PATH}?channel={}&peer_id={peer_id}",
        shared.channel
    );
    shared
        .edges
        .client(edge)
        .post_bytes(&path, body, UPLINK_TEST_TIMEOUT)
        .await
}

async fn join(shared: &Shared, edge: usize) -> Result<Assignment, EdgeError> {
    let c = &shared.config;
    let req = JoinRequest {
        channel: shared.channel.to_string(),
        addr: shared.advertise,
        site: c.site.clone(),
        max_upload_kbps: c.max_upload_kbps,
        token: c.token.clone(),
        cert_fingerprint: Some(shared.fingerprint.clone()),
        resume_parent_addr: shared.parent().and_then(|p| p.node.addr),
    };
    shared
        .edges
        .client(edge)
        .post_json("/tracker/v1/join", &req, TIMEOUT)
        .await
}

async fn heartbeat(
    shared: &Shared,
    edge: usize,
    peer_id: u64,
    sent: Sent,
    now: Sent,
    reflexive: Option<std::net::SocketAddr>,
) -> Result<Assignment, EdgeError> {
    // Both observers watch one player: the larger growth of each figure.
    let viewer = now
        .viewer
        .inferred
        .since(&sent.viewer.inferred)
        .max(&now.viewer.reported.since(&sent.viewer.reported));
    let req = HeartbeatRequest {
        channel: shared.channel.to_string(),
        peer_id,
        bytes_from_parent: now.tree - sent.tree,
        bytes_from_edge: now.edge - sent.edge,
        bytes_uploaded: now.uploaded - sent.uploaded,
        stalls: viewer.stalls,
        stall_ms: viewer.stall_ms,
        watched_ms: viewer.watched_ms,
        fallbacks: now.fallbacks - sent.fallbacks,
        corrupt: now.corrupt - sent.corrupt,
        reflexive,
        no_udp: shared.traversal.no_udp(),
    };
    shared
        .edges
        .client(edge)
        .post_json("/tracker/v1/heartbeat", &req, TIMEOUT)
        .await
}
