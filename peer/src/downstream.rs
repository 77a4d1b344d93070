//! Feeding children: accept a connection, find the channel its hello
//! names, check its ticket, push.
//!
//! One endpoint serves every channel the agent has joined: the child's
//! hello names the channel, and the connection is handed to that
//! channel's session ([`Agent::session`]); a channel the agent does not
//! relay is refused. A child is admitted only with a ticket the edge
//! signed (with the key in this peer's assignment for that channel)
//! naming the channel, that child and this peer as its parent, not
//! expired; a leaf-only peer (`max_upload_kbps = 0`) refuses everyone.
//! The push itself is [`treecast_proto::tree::push`]: the same
//! cut-through, per-segment streams the edge uses, under the agent's one
//! upload cap. Unlike the edge, a peer lets its newest child go when its
//! uplink delivers live segments late ([`treecast_proto::uplink`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use treecast_proto::ticket::{self, VerifyingKey};
use treecast_proto::tree::{self, PushOptions, TreeError};

use crate::agent::{Agent, Session};
use crate::shared::{Member, Shared};

/// Longest time one segment may take to reach one child.
const SEGMENT_DEADLINE: Duration = Duration::from_secs(9);
/// Most connections held at once: children, and peers keeping this one
/// as their warm backup. More are refused before the handshake.
const MAX_CONNECTIONS: usize = 64;

/// Accepts children on the agent's endpoint until `shutdown`.
pub async fn serve(agent: Arc<Agent>, mut shutdown: watch::Receiver<bool>) {
    let endpoint = agent.endpoint.clone();
    let mut children = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if children.len() >= MAX_CONNECTIONS {
                    agent.metrics.children_refused.inc();
                    warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                    incoming.refuse();
                    continue;
                }
                let agent = agent.clone();
                children.spawn(async move {
                    let remote = incoming.remote_address();
                    if let Err(e) = child(&agent, incoming).await {
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

/// A child counted in [`Shared::adopt`], released when its session ends
/// however it ends.
struct Adopted {
    shared: Arc<Shared>,
    child: Member,
}

impl Drop for Adopted {
    fn drop(&mut self) {
        self.shared.release(&self.child);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why this peer refuses a child of `shared`'s channel; else the child as
/// the tracker that signed its ticket numbers it.
fn admission_check(shared: &Shared, child: u64, t: &str) -> Result<Member, String> {
    if shared.config.max_upload_kbps == Some(0) {
        return Err("this peer is leaf only (max upload 0)".into());
    }
    let a = shared.assignment.borrow().clone();
    let Some(a) = a else {
        return Err("this peer has not joined the tree yet".into());
    };
    let mut raw = [0u8; 32];
    hex::decode_to_slice(&a.ticket_key, &mut raw)
        .map_err(|_| "the tracker's ticket key is malformed".to_string())?;
    let key = VerifyingKey::from_bytes(&raw).map_err(|e| format!("ticket key: {e}"))?;
    ticket::verify(t, &key, &shared.channel, child, a.peer_id, unix_now())
        .map(|_| Member {
            tracker: a.ticket_key,
            id: child,
        })
        .map_err(|e| e.to_string())
}

async fn child(agent: &Agent, incoming: quinn::Incoming) -> Result<(), TreeError> {
    let remote = incoming.remote_address();
    debug!(%remote, "incoming connection");
    let mut found: Option<Arc<Session>> = None;
    let mut adopted = None;
    // Only edges tell peers their addresses.
    let admitted = tree::admit(incoming, false, |channel, child, t| {
        let session = agent
            .session(channel)
            .ok_or_else(|| format!("this peer relays no channel {channel}"))?;
        let verdict = admission_check(&session.shared, child, t).and_then(|member| {
            session
                .shared
                .adopt(member.clone())
                .map_err(|e| e.to_string())?;
            adopted = Some(Adopted {
                shared: session.shared.clone(),
                child: member,
            });
            Ok(())
        });
        found = Some(session);
        verdict
    })
    .await;
    let (mut child, session) = match (admitted, found) {
        (Ok(tree::Arrival::Child(c)), Some(s)) => (c, s),
        (Err(TreeError::Protocol(reason)), session) => {
            match session {
                Some(s) => s.shared.metrics.children_refused.inc(),
                None => agent.metrics.children_refused.inc(),
            }
            warn!(%remote, %reason, "refused a child");
            return Err(TreeError::Protocol(reason));
        }
        (Err(e), _) => return Err(e),
        // `admit` admits only after the check found the session.
        (Ok(_), _) => return Err(TreeError::Protocol("no channel".into())),
    };
    let shared = &session.shared;
    let opts = PushOptions {
        deadline: SEGMENT_DEADLINE,
        cap: agent.upload_cap.clone(),
        tamper_every: shared.config.tamper_every,
        shedder: Some(session.shedder.clone()),
        metrics: shared.metrics.push(),
    };
    let opts = &opts;
    let path = child.conn.stats().path;
    info!(
        child = child.peer_id,
        %remote,
        rtt_ms = path.rtt.as_millis() as u64,
        lost_packets = path.lost_packets,
        "child connected"
    );
    shared.metrics.children_admitted.inc();
    shared.metrics.children.inc();
    let result = tree::push(&mut child, &shared.feed, opts).await;
    shared.metrics.children.dec();
    // What the connection went through, for tracing a slow `Welcome` or
    // a child that left its parent for silence.
    let path = child.conn.stats().path;
    let (rtt_ms, sent_packets, lost_packets, congestion_events) = (
        path.rtt.as_millis() as u64,
        path.sent_packets,
        path.lost_packets,
        path.congestion_events,
    );
    if matches!(result, Err(TreeError::Shed)) {
        shared.metrics.children_shed.inc();
        warn!(
            child = child.peer_id,
            rtt_ms,
            sent_packets,
            lost_packets,
            congestion_events,
            "uplink saturated: let the newest child go"
        );
    } else {
        info!(
            child = child.peer_id,
            rtt_ms, sent_packets, lost_packets, congestion_events, "child gone"
        );
    }
    result
}
