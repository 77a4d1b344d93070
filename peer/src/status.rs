//! What the agent's `/status` and `/status/<channel>` say: read by people,
//! the player plugin, the demo and the harnesses, which deserialize these
//! very types.

use serde::{Deserialize, Serialize};
use treecast_proto::tracker::NodeInfo;

use crate::agent::Agent;
use crate::shared::Shared;
use crate::viewer::ViewerFigures;

/// `GET /status`: the agent and every channel it has joined.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Always `treecast-peer`: how the player plugin tells this agent from
    /// another server on the same port.
    pub agent: String,
    /// The agent's version.
    pub version: String,
    /// The edge in use.
    pub edge: String,
    /// Every edge of the event this agent knows, in order.
    pub edges: Vec<String>,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// Most channels joined at once.
    pub max_channels: usize,
    /// Seconds without a player request before a channel is left.
    pub idle_secs: f64,
    /// The channels joined now, by name.
    pub channels: Vec<Status>,
}

impl AgentStatus {
    /// The status of `channel`, if it is joined.
    pub fn channel(&self, channel: &str) -> Option<&Status> {
        self.channels.iter().find(|s| s.channel == channel)
    }
}

/// The agent's status now.
pub fn agent_status(agent: &Agent) -> AgentStatus {
    AgentStatus {
        agent: AGENT_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        edge: agent.edges.current().1.base().to_owned(),
        edges: agent.edges.bases(),
        uptime_s: agent.uptime().as_secs(),
        max_channels: agent.config.max_channels,
        idle_secs: agent.config.idle_secs,
        channels: agent
            .sessions()
            .iter()
            .map(|s| status(&s.shared, s.pinned()))
            .collect(),
    }
}

/// What [`AgentStatus::agent`] says.
pub const AGENT_NAME: &str = "treecast-peer";

/// A node as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `edge` or `peer`.
    pub kind: String,
    /// Peer id (0: the edge).
    pub id: u64,
    /// QUIC address.
    pub addr: Option<String>,
}

impl From<&NodeInfo> for NodeStatus {
    fn from(n: &NodeInfo) -> Self {
        Self {
            kind: n.kind.clone(),
            id: n.id,
            addr: n.addr.map(|a| a.to_string()),
        }
    }
}

/// A segment still arriving from the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receiving {
    /// Media sequence number.
    pub seq: u64,
    /// Bytes received so far.
    pub bytes: u64,
}

/// `GET /status/<channel>`: one joined channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Channel relayed.
    pub channel: String,
    /// Joined at start and kept (`channel` in the config), not on demand.
    pub pinned: bool,
    /// Peer id from the tracker (0 before joining).
    pub peer_id: u64,
    /// True while a parent streams to this peer.
    pub connected: bool,
    /// Depth in the tree (0: not placed).
    pub depth: u8,
    /// The edge in use (its tracker placed this peer, or will).
    pub edge: String,
    /// Every edge of the event this peer knows, in order.
    pub edges: Vec<String>,
    /// When the tracker of the edge in use last placed this peer, Unix
    /// milliseconds (0: not yet).
    pub edge_joined_ms: u64,
    /// The parent streaming now.
    pub parent: Option<NodeStatus>,
    /// The warm backup the tracker named.
    pub backup: Option<NodeStatus>,
    /// Children connected now.
    pub children: i64,
    /// Children admitted since the peer started.
    pub children_admitted: u64,
    /// Children let go since the peer started because its uplink
    /// delivered live segments late.
    pub children_shed: u64,
    /// Media time between the end of the local playlist and live, ms.
    pub buffer_ms: u64,
    /// First and last segment of the local playlist.
    pub playlist_first: Option<u64>,
    /// Last segment of the local playlist.
    pub playlist_last: Option<u64>,
    /// Last segment listed live.
    pub live_last: Option<u64>,
    /// Segment bytes from the parent.
    pub bytes_from_tree: u64,
    /// Segment bytes from the edge (fallbacks).
    pub bytes_from_edge: u64,
    /// Segment bytes sent to children.
    pub bytes_uploaded: u64,
    /// Segments verified.
    pub segments_verified: u64,
    /// Segments fetched from the edge because the tree was late.
    pub fallbacks: u64,
    /// Segments that failed verification.
    pub corrupt: u64,
    /// Segments a new parent continued from where the lost one stopped.
    #[serde(default)]
    pub segments_resumed: u64,
    /// Segment bytes a new parent did not send again for that.
    #[serde(default)]
    pub resumed_bytes: u64,
    /// Player requests that had to wait for a segment not yet in memory.
    pub proxy_waits: u64,
    /// The player's stalls, inferred from its requests and reported by the
    /// plugin ([`crate::viewer`]).
    pub viewer: ViewerFigures,
    /// Segments arriving from the parent now, oldest first.
    pub receiving: Vec<Receiving>,
    /// Seconds since the peer started.
    pub uptime_s: u64,
    /// The last segments verified (up to 32), oldest first.
    pub recent: Vec<crate::shared::Verified>,
    /// The last repair times in ms (parent's last sign of life to the new
    /// parent streaming), oldest first.
    pub repairs_ms: Vec<u64>,
    /// Repairs since the peer started (`repairs_ms` holds the last 32).
    #[serde(default)]
    pub repairs_total: u64,
    /// The last dials to a parent or backup through its NAT (up to 32),
    /// oldest first.
    #[serde(default)]
    pub traversals: Vec<crate::shared::TraversalOutcome>,
}

/// One channel's status now.
pub fn status(shared: &Shared, pinned: bool) -> Status {
    let a = shared.assignment.borrow().clone();
    let (window, buffer, live_last) = {
        let s = shared.store();
        (s.window(), s.behind_live(), s.live_last())
    };
    let m = &shared.metrics;
    let parent = shared.parent();
    Status {
        channel: shared.channel.to_string(),
        pinned,
        peer_id: a.as_ref().map_or(0, |a| a.peer_id),
        connected: parent.is_some(),
        depth: a.as_ref().map_or(0, |a| a.depth),
        edge: shared.edges.current().1.base().to_owned(),
        edges: shared.edges.bases(),
        edge_joined_ms: shared.joined_ms.load(std::sync::atomic::Ordering::Relaxed),
        parent: parent.as_ref().map(|p| (&p.node).into()),
        backup: a.as_ref().and_then(|a| a.backup.as_ref()).map(Into::into),
        children: m.children.get(),
        children_admitted: m.children_admitted.get(),
        children_shed: m.children_shed.get(),
        buffer_ms: buffer.as_millis() as u64,
        playlist_first: window.map(|w| w.first),
        playlist_last: window.map(|w| w.last),
        live_last,
        bytes_from_tree: m.bytes_from_tree.get(),
        bytes_from_edge: m.bytes_from_edge.get(),
        bytes_uploaded: m.bytes_uploaded.get(),
        segments_verified: m.verified.with_label_values(&["tree"]).get()
            + m.verified.with_label_values(&["edge"]).get(),
        fallbacks: m.fallbacks.get(),
        corrupt: m.corrupt.get(),
        segments_resumed: m.resumed.get(),
        resumed_bytes: m.resumed_bytes.get(),
        proxy_waits: m.proxy_waits.get(),
        viewer: shared.viewer.figures(),
        receiving: shared
            .feed
            .in_progress()
            .into_iter()
            .map(|(seq, bytes)| Receiving {
                seq,
                bytes: bytes as u64,
            })
            .collect(),
        uptime_s: shared.started.elapsed().as_secs(),
        recent: shared.recent(),
        repairs_ms: shared.repairs(),
        repairs_total: shared.repairs_total(),
        traversals: shared.traversals(),
    }
}
