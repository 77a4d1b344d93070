//! Feeding children: accept a connection, check its ticket, push.
//!
//! A child is admitted only with a ticket the edge signed (with the key in
//! this peer's assignment) naming this channel, that child and this peer as
//! its parent, not expired; a leaf-only peer (`max_upload_kbps = 0`)
//! refuses everyone. The push itself is [`treecast_proto::tree::push`]:
//! the same cut-through, per-segment streams the edge uses, under this
//! peer's upload cap. Unlike the edge, a peer lets its newest child go
//! when its uplink delivers live segments late ([`treecast_proto::uplink`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use treecast_proto::ticket::{self, VerifyingKey};
use treecast_proto::tree::{self, PushOptions, TreeError, UploadCap};
use treecast_proto::uplink::Shedder;

use crate::shared::Shared;

/// Longest time one segment may take to reach one child.
const SEGMENT_DEADLINE: Duration = Duration::from_secs(9);
/// Most connections held at once: children, and peers keeping this one
/// as their warm backup. More are refused before the handshake.
const MAX_CONNECTIONS: usize = 64;

/// Accepts children on `endpoint` until `shutdown`.
pub async fn serve(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    mut shutdown: watch::Receiver<bool>,
) {
    let opts = PushOptions {
        deadline: SEGMENT_DEADLINE,
        cap: shared
            .config
            .max_upload_kbps
            .filter(|&k| k > 0)
            .map(|k| Arc::new(UploadCap::new(k))),
        tamper_every: shared.config.tamper_every,
        shedder: Some(Shedder::new()),
        metrics: shared.metrics.push(),
    };
    let mut children = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if children.len() >= MAX_CONNECTIONS {
                    shared.metrics.children_refused.inc();
                    warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                    incoming.refuse();
                    continue;
                }
                let (shared, opts) = (shared.clone(), opts.clone());
                children.spawn(async move {
                    let remote = incoming.remote_address();
                    if let Err(e) = child(&shared, incoming, &opts).await {
                        debug!(%remote, error = %e, "child connection ended");
                    }
                });
            }
            Some(_) = children.join_next(), if !children.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    children.abort_all();
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why this peer refuses a child, before looking at its ticket.
fn admission_check(shared: &Shared, channel: &str, child: u64, t: &str) -> Result<(), String> {
    if shared.config.max_upload_kbps == Some(0) {
        return Err("this peer is leaf only (max upload 0)".into());
    }
    let a = shared.assignment.borrow().clone();
    let Some(a) = a else {
        return Err("this peer has not joined the tree yet".into());
    };
    if channel != shared.channel.as_str() {
        return Err(format!(
            "this peer relays channel {}, not {channel}",
            shared.channel
        ));
    }
    let mut raw = [0u8; 32];
    hex::decode_to_slice(&a.ticket_key, &mut raw)
        .map_err(|_| "the tracker's ticket key is malformed".to_string())?;
    let key = VerifyingKey::from_bytes(&raw).map_err(|e| format!("ticket key: {e}"))?;
    ticket::verify(t, &key, &shared.channel, child, a.peer_id, unix_now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn child(
    shared: &Shared,
    incoming: quinn::Incoming,
    opts: &PushOptions,
) -> Result<(), TreeError> {
    let remote = incoming.remote_address();
    debug!(%remote, "incoming connection");
    let admitted = tree::admit(incoming, |channel, child, t| {
        admission_check(shared, channel, child, t)
    })
    .await;
    let mut child = match admitted {
        Ok(c) => c,
        Err(TreeError::Protocol(reason)) => {
            shared.metrics.children_refused.inc();
            warn!(%remote, %reason, "refused a child");
            return Err(TreeError::Protocol(reason));
        }
        Err(e) => return Err(e),
    };
    info!(child = child.peer_id, %remote, "child connected");
    shared.metrics.children_admitted.inc();
    shared.metrics.children.inc();
    let result = tree::push(&mut child, &shared.feed, opts).await;
    shared.metrics.children.dec();
    if matches!(result, Err(TreeError::Shed)) {
        shared.metrics.children_shed.inc();
        warn!(
            child = child.peer_id,
            "uplink saturated: let the newest child go"
        );
    } else {
        info!(child = child.peer_id, "child gone");
    }
    result
}
