//! The tracker's HTTP+JSON protocol, version 1 (`/tracker/v1/...`).
//!
//! Every request is a POST with a JSON body of at most [`MAX_BODY`] bytes;
//! unknown fields are refused, so a client speaking another version fails
//! loudly. See `docs/tracker.md` for the exchange.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// `POST /tracker/v1/join`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// Channel to watch.
    pub channel: String,
    /// The peer's QUIC address, where its children will connect.
    pub addr: SocketAddr,
    /// Site or office label; peers on the same site are preferred as
    /// parents. Default: the peer's /24 (IPv4) or /48 (IPv6) subnet.
    #[serde(default)]
    pub site: Option<String>,
    /// Upload cap in kb/s; 0 means leaf only. Default: no cap.
    #[serde(default)]
    pub max_upload_kbps: Option<u32>,
    /// Viewer token, for channels that require one.
    #[serde(default)]
    pub token: Option<String>,
    /// Fingerprint (hex BLAKE3 of the DER) of the peer's QUIC certificate,
    /// which its children will pin.
    #[serde(default)]
    pub cert_fingerprint: Option<String>,
    /// QUIC address of the parent the peer still receives from, when it
    /// joins again after a tracker restart (its old id is unknown now).
    #[serde(default)]
    pub resume_parent_addr: Option<SocketAddr>,
}

/// `POST /tracker/v1/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Channel.
    pub channel: String,
    /// The id the join returned.
    pub peer_id: u64,
    /// Bytes received from the parent since the last heartbeat.
    #[serde(default)]
    pub bytes_from_parent: u64,
    /// Bytes fetched from the edge over HTTP since the last heartbeat.
    #[serde(default)]
    pub bytes_from_edge: u64,
    /// Bytes sent to children since the last heartbeat.
    #[serde(default)]
    pub bytes_uploaded: u64,
    /// Times the viewer's player ran dry since the last heartbeat (the
    /// larger of the peer's inference from the player's requests and the
    /// player plugin's own reports).
    #[serde(default)]
    pub stalls: u64,
    /// Milliseconds the player was stalled since the last heartbeat.
    #[serde(default)]
    pub stall_ms: u64,
    /// Milliseconds the player played or stalled since the last heartbeat
    /// (the denominator of the rebuffer ratio).
    #[serde(default)]
    pub watched_ms: u64,
    /// Segments fetched from the edge because the tree did not deliver
    /// them in time, since the last heartbeat.
    #[serde(default)]
    pub fallbacks: u64,
    /// Segments from the parent that failed verification, since the last
    /// heartbeat.
    #[serde(default)]
    pub corrupt: u64,
}

/// `POST /tracker/v1/leave`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    /// Channel.
    pub channel: String,
    /// The id the join returned.
    pub peer_id: u64,
}

/// What went wrong with the parent, in `POST /tracker/v1/report`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Data stopped.
    ParentGap,
    /// Data failed verification.
    ParentCorrupt,
    /// The parent let this peer go: its uplink is saturated.
    ParentShed,
}

/// `POST /tracker/v1/report`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// Channel.
    pub channel: String,
    /// The reporting peer.
    pub peer_id: u64,
    /// What happened.
    pub report: ReportKind,
}

/// A node to connect to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    /// `edge` or `peer`.
    pub kind: String,
    /// Peer id; 0 for the edge.
    pub id: u64,
    /// QUIC address.
    pub addr: Option<SocketAddr>,
    /// Fingerprint of its QUIC certificate (hex): accept exactly this one.
    pub cert_fingerprint: Option<String>,
    /// Ticket to show this node, signed by the edge.
    pub ticket: String,
}

/// Answer to join and heartbeat: where to get the stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assignment {
    /// Protocol version.
    pub v: u32,
    /// The peer's id.
    pub peer_id: u64,
    /// Depth in the tree (edge's children: 1); 0 while waiting for a parent.
    pub depth: u8,
    /// The parent.
    pub parent: Option<NodeInfo>,
    /// The warm backup parent.
    pub backup: Option<NodeInfo>,
    /// Send a heartbeat this often.
    pub heartbeat_interval_ms: u64,
    /// The edge's public key (hex) that signs tickets.
    pub ticket_key: String,
}
