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
    /// The address the edge told this peer its QUIC packets come from
    /// (`Frame::Observed`), sent when the last answer asked for it
    /// ([`Assignment::observe`]). Taken only if its IP is the one the
    /// tracker sees the request come from.
    #[serde(default)]
    pub reflexive: Option<SocketAddr>,
    /// The edge never answered this peer's QUIC packets while its HTTP
    /// requests get through: UDP does not leave its site. It then takes
    /// the stream from the edge over HTTP when the tracker makes it its
    /// site's leader (its parent is the edge).
    #[serde(default)]
    pub no_udp: bool,
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
    /// A parent the tracker marked `traversal` (behind a NAT, reached
    /// through a simultaneous open) was reached.
    Reached,
    /// Such a parent could not be reached.
    Unreachable,
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
    /// The parent (or backup) it is about: required for `reached` and
    /// `unreachable`, which may concern a backup.
    #[serde(default)]
    pub parent_id: Option<u64>,
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
    /// The node is behind a NAT on another site: `addr` is the address
    /// its NAT showed the edge, and the tracker asked it to send packets
    /// towards this peer so that the dial gets through (a simultaneous
    /// open). Keep dialling for a few seconds, and report the outcome
    /// (`reached` / `unreachable`).
    #[serde(default)]
    pub traversal: bool,
}

/// An edge's QUIC address to ask `Frame::Observe` at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObserveAt {
    /// The edge's QUIC address.
    pub addr: SocketAddr,
    /// A second address of the edge to ask too: a NAT that shows the two
    /// different addresses maps per destination (symmetric), and nobody
    /// can punch through it.
    #[serde(default)]
    pub also: Option<SocketAddr>,
    /// Fingerprint of its QUIC certificate (hex).
    pub cert_fingerprint: Option<String>,
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
    /// Behind a NAT with no reflexive address known yet: ask this edge for
    /// it (`Frame::Observe` from the QUIC socket) and send it in the next
    /// heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<ObserveAt>,
    /// Send a few packets from the QUIC socket to each of these addresses
    /// now: peers about to dial this one through its NAT. Only addresses
    /// the tracker observed or verified are ever named here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub punch: Vec<SocketAddr>,
    /// Test the uplink now: POST [`UPLINK_TEST_PATH`] with this many kb/s
    /// worth of one second's bytes. Asked once per join, before the peer
    /// may take children; the edge measures what arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_uplink_kbps: Option<u32>,
}

/// Where a peer sends its uplink test: `POST
/// /tracker/v1/uplink-test?channel=C&peer_id=N` with a body of `kbps × 1 s`
/// bytes (any content). The edge reads for at most
/// [`UPLINK_TEST_WINDOW`] from the first byte and answers
/// [`UplinkTestResult`].
pub const UPLINK_TEST_PATH: &str = "/tracker/v1/uplink-test";

/// How long the edge reads an uplink test for, from its first byte: long
/// enough for a congestion window to open on a home link's round trip,
/// short enough that a small uplink is flooded only briefly.
pub const UPLINK_TEST_WINDOW: std::time::Duration = std::time::Duration::from_millis(1500);

/// The edge's answer to an uplink test.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct UplinkTestResult {
    /// Bytes that arrived within the window.
    pub bytes: u64,
    /// The uplink's rate as measured, kb/s.
    pub kbps: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_test_is_asked_only_when_named_and_its_answer_round_trips() {
        let mut a = Assignment {
            v: 1,
            peer_id: 7,
            depth: 1,
            parent: None,
            backup: None,
            heartbeat_interval_ms: 2000,
            ticket_key: String::new(),
            observe: None,
            punch: Vec::new(),
            test_uplink_kbps: None,
        };
        let json = serde_json::to_string(&a).expect("json");
        assert!(!json.contains("test_uplink_kbps"), "{json}");
        // An edge that never asks (an older one) is understood.
        assert_eq!(
            serde_json::from_str::<Assignment>(&json).ok(),
            Some(a.clone())
        );
        a.test_uplink_kbps = Some(5_400);
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(serde_json::from_str::<Assignment>(&json).ok(), Some(a));
        let r = UplinkTestResult {
            bytes: 675_000,
            kbps: 4_400,
        };
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(
            serde_json::from_str::<UplinkTestResult>(&json).ok(),
            Some(r)
        );
    }
}
