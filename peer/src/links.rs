//! Which links to the parent and the backup the upstream keeps (sans-IO).
//!
//! In: the tracker's assignments, what became of each dial, switch and
//! link, and the time. Out: [`Step`]s for the async driver in
//! [`crate::upstream`], which owns the QUIC connections and reports back.
//! The policy:
//!
//! - **make before break**: a new parent is switched to (and streams)
//!   before the old one is let go; the switch uses the backup's warm
//!   connection when the new parent is the backup;
//! - **cooldown**: a parent or backup whose dial failed, or whose link
//!   ended, is not tried again for [`FAILED_COOLDOWN`]; the edge, which
//!   refuses while its root slots are full and takes the child once the
//!   tracker has put it there, only for [`EDGE_COOLDOWN`];
//! - **saying so**: a parent that cannot be switched to is reported to
//!   the tracker at once (by the driver, which knows why), and a parent
//!   the tracker goes on naming while it cools down is reported again,
//!   at most every [`REPORT_EVERY`]: left alone, the tracker counts this
//!   peer as that parent's child while it streams from another or from
//!   none (then every segment comes from the edge) until something else
//!   moves it. Not the edge, nor a parent behind a NAT (a dial through a
//!   NAT reports its own outcome);
//! - **warm backup**: one connection to the backup is kept open, dialled
//!   in the background (a dial through a NAT takes seconds), never to the
//!   parent itself, dropped when the tracker names none; when the parent's
//!   link ends, the driver switches to it at once;
//! - **no UDP out of the site**: the edge's QUIC is out of reach, so it is
//!   neither parent nor backup over QUIC (a site leader takes the stream
//!   over HTTP: [`crate::http_feed`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use treecast_proto::tracker::{Assignment, NodeInfo};

/// A parent that failed is not tried again for this long.
pub const FAILED_COOLDOWN: Duration = Duration::from_secs(10);
/// The edge that refused is tried again after this long.
pub const EDGE_COOLDOWN: Duration = Duration::from_secs(1);
/// A cooling parent the tracker still names is reported again after this
/// long (the tracker answers a report with a new assignment at once; one
/// that names the same parent again had nowhere else to put this peer).
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// A node as the plan tells nodes apart: the same id at another address
/// (a peer that joined again) is another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeKey {
    /// Peer id (0: the edge).
    pub id: u64,
    /// Its QUIC address.
    pub addr: Option<SocketAddr>,
    /// It is the edge.
    pub edge: bool,
}

impl NodeKey {
    /// The key of `n`.
    pub fn of(n: &NodeInfo) -> Self {
        Self {
            id: n.id,
            addr: n.addr,
            edge: n.kind == "edge",
        }
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Switch to this parent (over the backup's warm connection when it is
    /// that node, else a new dial), then let the old one go; report the
    /// outcome with [`Plan::handle_switched`].
    Switch {
        /// The parent.
        to: NodeInfo,
        /// Why, for the logs and `treecast_peer_parent_switches_total`.
        reason: &'static str,
    },
    /// Dial this backup in the background; report with
    /// [`Plan::handle_warmed`].
    Warm(NodeInfo),
    /// Close the backup's warm connection.
    DropWarm,
    /// Tell the tracker that this parent it names will not be tried now
    /// (`parent_gap` naming it): it places this peer elsewhere.
    Report(NodeInfo),
}

/// The links' state and policy; see the module docs.
#[derive(Debug, Default)]
pub struct Plan {
    /// The parent streaming now.
    current: Option<NodeKey>,
    /// The backup with a warm connection.
    warm: Option<NodeKey>,
    /// The backup being dialled.
    warming: Option<NodeKey>,
    /// The backup the tracker names now.
    backup: Option<NodeKey>,
    /// Nodes that failed, and when.
    failed: HashMap<NodeKey, Instant>,
    /// Nodes last reported to the tracker, and when.
    reported: HashMap<NodeKey, Instant>,
}

impl Plan {
    /// A plan with no link.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `k` failed too recently to be tried again.
    fn cooling(&mut self, k: NodeKey, now: Instant) -> bool {
        self.failed
            .retain(|_, at| now.saturating_duration_since(*at) < FAILED_COOLDOWN);
        self.reported
            .retain(|_, at| now.saturating_duration_since(*at) < REPORT_EVERY);
        let cooldown = if k.edge {
            EDGE_COOLDOWN
        } else {
            FAILED_COOLDOWN
        };
        self.failed
            .get(&k)
            .is_some_and(|at| now.saturating_duration_since(*at) < cooldown)
    }

    /// The tracker's latest assignment (also re-read periodically, so
    /// that cooldowns end): the steps that bring the links in line with
    /// it, the parent's first. `no_udp`: no UDP leaves this peer's site.
    pub fn handle_assignment(&mut self, a: &Assignment, no_udp: bool, now: Instant) -> Vec<Step> {
        let quic = |n: &&NodeInfo| !(no_udp && n.kind == "edge");
        let mut steps = Vec::new();
        if let Some(want) = a.parent.as_ref().filter(quic) {
            let k = NodeKey::of(want);
            if self.current != Some(k) {
                if !self.cooling(k, now) {
                    let reason = if self.current.is_some() {
                        "assigned"
                    } else {
                        "joined"
                    };
                    steps.push(Step::Switch {
                        to: want.clone(),
                        reason,
                    });
                } else if reportable(want) && !self.reported.contains_key(&k) {
                    self.reported.insert(k, now);
                    steps.push(Step::Report(want.clone()));
                }
            }
        }
        let backup = a.backup.as_ref().filter(quic);
        self.backup = backup.map(NodeKey::of);
        match backup {
            Some(b) => {
                let k = NodeKey::of(b);
                if self.warm != Some(k)
                    && self.current != Some(k)
                    && self.warming != Some(k)
                    && !self.cooling(k, now)
                {
                    self.warming = Some(k);
                    steps.push(Step::Warm(b.clone()));
                }
            }
            None if self.warm.take().is_some() => steps.push(Step::DropWarm),
            None => {}
        }
        steps
    }

    /// A [`Step::Switch`] to `to` ended: it streams now, or it failed and
    /// cools down.
    pub fn handle_switched(&mut self, to: &NodeInfo, ok: bool, now: Instant) {
        let k = NodeKey::of(to);
        if self.warm == Some(k) {
            // Its warm connection is the link now (or is spent).
            self.warm = None;
        }
        if ok {
            self.current = Some(k);
        } else {
            self.failed.insert(k, now);
            // The driver reports it, knowing why it failed.
            self.reported.insert(k, now);
        }
    }

    /// A [`Step::Warm`] dial ended. Whether the driver keeps the
    /// connection: only if it worked and the tracker still names that
    /// backup (else the driver closes it).
    pub fn handle_warmed(&mut self, node: &NodeInfo, ok: bool, now: Instant) -> bool {
        let k = NodeKey::of(node);
        if self.warming == Some(k) {
            self.warming = None;
        }
        if !ok {
            self.failed.insert(k, now);
            return false;
        }
        let keep = self.backup == Some(k);
        if keep {
            self.warm = Some(k);
        }
        keep
    }

    /// The warm connection closed by itself.
    pub fn handle_warm_closed(&mut self) {
        self.warm = None;
    }

    /// The current parent's link ended: the parent cools down, and the
    /// warm backup, if there is one, is the one to switch to now (report
    /// with [`Plan::handle_switched`]).
    pub fn handle_link_ended(&mut self, now: Instant) -> Option<NodeKey> {
        if let Some(lost) = self.current.take() {
            self.failed.insert(lost, now);
            // The driver reports why the link ended.
            self.reported.insert(lost, now);
        }
        self.warm
    }
}

/// Whether the tracker should hear of this parent failing: not the edge,
/// which refuses only while its root slots are full and takes the child
/// once the tracker has put it there, nor a parent behind a NAT, whose
/// dial reports its own outcome.
pub fn reportable(n: &NodeInfo) -> bool {
    n.kind != "edge" && !n.traversal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: &str, id: u64) -> NodeInfo {
        NodeInfo {
            kind: kind.into(),
            id,
            addr: Some(SocketAddr::from(([10, 0, 0, id as u8], 5000))),
            cert_fingerprint: None,
            ticket: String::new(),
            traversal: false,
        }
    }

    fn assignment(parent: Option<NodeInfo>, backup: Option<NodeInfo>) -> Assignment {
        Assignment {
            v: 1,
            peer_id: 9,
            depth: 2,
            parent,
            backup,
            heartbeat_interval_ms: 2000,
            ticket_key: String::new(),
            observe: None,
            punch: Vec::new(),
            test_uplink_kbps: None,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn joins_the_parent_then_warms_the_backup_and_keeps_both() {
        let now = Instant::now();
        let mut p = Plan::new();
        let a = assignment(Some(node("peer", 1)), Some(node("peer", 2)));
        let steps = p.handle_assignment(&a, false, now);
        assert_eq!(
            steps,
            vec![
                Step::Switch {
                    to: node("peer", 1),
                    reason: "joined"
                },
                Step::Warm(node("peer", 2)),
            ]
        );
        p.handle_switched(&node("peer", 1), true, now);
        // Dialling the backup already: not twice.
        assert!(p.handle_assignment(&a, false, now).is_empty());
        assert!(p.handle_warmed(&node("peer", 2), true, now));
        assert!(p.handle_assignment(&a, false, now + S).is_empty());
    }

    #[test]
    fn a_failed_parent_cools_down_and_the_edge_only_briefly() {
        let now = Instant::now();
        let mut p = Plan::new();
        let a = assignment(Some(node("peer", 1)), None);
        assert_eq!(p.handle_assignment(&a, false, now).len(), 1);
        p.handle_switched(&node("peer", 1), false, now);
        // The driver reported the failure; the tracker still names it
        // later: reported again, every 2 s at most, and not tried.
        assert!(p.handle_assignment(&a, false, now + S).is_empty());
        assert_eq!(
            p.handle_assignment(&a, false, now + 2 * S),
            vec![Step::Report(node("peer", 1))]
        );
        assert!(p.handle_assignment(&a, false, now + 3 * S).is_empty());
        assert_eq!(
            p.handle_assignment(&a, false, now + 9 * S),
            vec![Step::Report(node("peer", 1))]
        );
        assert_eq!(
            p.handle_assignment(&a, false, now + 10 * S),
            vec![Step::Switch {
                to: node("peer", 1),
                reason: "joined"
            }]
        );
        let e = assignment(Some(node("edge", 0)), None);
        p.handle_switched(&node("edge", 0), false, now);
        assert!(p.handle_assignment(&e, false, now + S / 2).is_empty());
        assert_eq!(
            p.handle_assignment(&e, false, now + S).first(),
            Some(&Step::Switch {
                to: node("edge", 0),
                reason: "joined"
            })
        );
    }

    #[test]
    fn a_new_parent_is_switched_to_before_the_old_is_let_go() {
        let now = Instant::now();
        let mut p = Plan::new();
        p.handle_assignment(&assignment(Some(node("peer", 1)), None), false, now);
        p.handle_switched(&node("peer", 1), true, now);
        // Moved by the tracker: the old link stays until the new works.
        let moved = assignment(Some(node("peer", 3)), None);
        assert_eq!(
            p.handle_assignment(&moved, false, now),
            vec![Step::Switch {
                to: node("peer", 3),
                reason: "assigned"
            }]
        );
        p.handle_switched(&node("peer", 3), false, now);
        assert_eq!(p.current, Some(NodeKey::of(&node("peer", 1))));
    }

    #[test]
    fn a_lost_parent_gives_way_to_the_warm_backup() {
        let now = Instant::now();
        let mut p = Plan::new();
        let a = assignment(Some(node("peer", 1)), Some(node("peer", 2)));
        p.handle_assignment(&a, false, now);
        p.handle_switched(&node("peer", 1), true, now);
        p.handle_warmed(&node("peer", 2), true, now);
        assert_eq!(
            p.handle_link_ended(now + S),
            Some(NodeKey::of(&node("peer", 2)))
        );
        p.handle_switched(&node("peer", 2), true, now + S);
        // The tracker still names the lost parent for a moment: it cools
        // down, and its new backup is warmed.
        let late = assignment(Some(node("peer", 1)), Some(node("peer", 4)));
        assert_eq!(
            p.handle_assignment(&late, false, now + 2 * S),
            vec![Step::Warm(node("peer", 4))]
        );
    }

    #[test]
    fn a_backup_that_changed_while_dialling_is_not_kept_and_none_is_dropped() {
        let now = Instant::now();
        let mut p = Plan::new();
        p.handle_assignment(&assignment(None, Some(node("peer", 2))), false, now);
        p.handle_assignment(&assignment(None, Some(node("peer", 5))), false, now);
        assert!(
            !p.handle_warmed(&node("peer", 2), true, now),
            "no longer the backup"
        );
        assert!(p.handle_warmed(&node("peer", 5), true, now));
        assert_eq!(
            p.handle_assignment(&assignment(None, None), false, now),
            vec![Step::DropWarm]
        );
    }

    #[test]
    fn without_udp_the_edge_is_neither_parent_nor_backup_over_quic() {
        let now = Instant::now();
        let mut p = Plan::new();
        let a = assignment(Some(node("edge", 0)), Some(node("edge", 0)));
        assert!(p.handle_assignment(&a, true, now).is_empty());
        let on_site = assignment(Some(node("peer", 7)), Some(node("edge", 0)));
        assert_eq!(
            p.handle_assignment(&on_site, true, now),
            vec![Step::Switch {
                to: node("peer", 7),
                reason: "joined"
            }]
        );
    }
}
