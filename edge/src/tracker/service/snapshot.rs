//! What the dashboard and its API show of each channel: totals, sites, and
//! the shallowest peers. Totals and sites are kept up to date by the
//! service as peers come, report and go; a snapshot walks the audience only
//! to pick the peers it lists (a selection, then a sort of those).

use super::{lock, TrackerService};
use crate::tracker::core::PeerView;

/// What a peer reported in its heartbeats, summed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PeerTotals {
    /// Bytes from its parent.
    pub bytes_tree: u64,
    /// Bytes fetched from the edge.
    pub bytes_edge: u64,
    /// Bytes sent to its children.
    pub bytes_uploaded: u64,
    /// Times its player ran dry.
    pub stalls: u64,
    /// Milliseconds its player was stalled.
    pub stall_ms: u64,
    /// Milliseconds its player played or stalled.
    pub watched_ms: u64,
    /// Segments fetched from the edge because the tree was late.
    pub fallbacks: u64,
    /// Segments that failed verification.
    pub corrupt: u64,
    /// Bytes that came into its site for it: from a parent on another
    /// site or the edge's root, and from the edge over HTTP (what crossed
    /// the site's WAN link on its account; a parent on its own site feeds
    /// it over the LAN).
    pub bytes_into_site: u64,
}

impl SiteRow {
    /// Its viewers times the share of their received bytes that came in
    /// over its WAN link; 0 before any was reported.
    pub fn copies_in(&self) -> f64 {
        let received = self.totals.bytes_tree + self.totals.bytes_edge;
        if received == 0 {
            return 0.0;
        }
        self.viewers as f64 * self.totals.bytes_into_site as f64 / received as f64
    }
}

impl PeerTotals {
    pub(super) fn sub(&mut self, o: &PeerTotals) {
        self.bytes_tree = self.bytes_tree.saturating_sub(o.bytes_tree);
        self.bytes_edge = self.bytes_edge.saturating_sub(o.bytes_edge);
        self.bytes_uploaded = self.bytes_uploaded.saturating_sub(o.bytes_uploaded);
        self.stalls = self.stalls.saturating_sub(o.stalls);
        self.stall_ms = self.stall_ms.saturating_sub(o.stall_ms);
        self.watched_ms = self.watched_ms.saturating_sub(o.watched_ms);
        self.fallbacks = self.fallbacks.saturating_sub(o.fallbacks);
        self.corrupt = self.corrupt.saturating_sub(o.corrupt);
        self.bytes_into_site = self.bytes_into_site.saturating_sub(o.bytes_into_site);
    }

    pub(super) fn add(&mut self, o: &PeerTotals) {
        self.bytes_tree += o.bytes_tree;
        self.bytes_edge += o.bytes_edge;
        self.bytes_uploaded += o.bytes_uploaded;
        self.stalls += o.stalls;
        self.stall_ms += o.stall_ms;
        self.watched_ms += o.watched_ms;
        self.fallbacks += o.fallbacks;
        self.corrupt += o.corrupt;
        self.bytes_into_site += o.bytes_into_site;
    }

    /// Time stalled over time watched.
    pub fn rebuffer_ratio(&self) -> f64 {
        if self.watched_ms == 0 {
            0.0
        } else {
            self.stall_ms as f64 / self.watched_ms as f64
        }
    }
}

/// One peer in a snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerRow {
    /// Peer id.
    pub id: u64,
    /// A name for people: its site and a short id (`10.1.2.0/24 · p12`).
    pub name: String,
    /// The parent's short id (`edge` for the edge; null while waiting).
    pub parent_name: Option<String>,
    /// Time its player stalled over time watched.
    pub rebuffer_ratio: f64,
    /// Parent id (0: the edge; null: waiting for one).
    pub parent: Option<u64>,
    /// Depth.
    pub depth: u8,
    /// Children now.
    pub children: u32,
    /// Child slots now.
    pub slots: u32,
    /// Upload measured by its children, kb/s.
    pub upload_kbps: u32,
    /// What its uplink test carried, kb/s (`None` before it ran).
    pub uplink_test_kbps: Option<u32>,
    /// Leaf only.
    pub leaf_only: bool,
    /// Site label.
    pub site: String,
    /// `ok`, `stalling` (its player waited), `fallback` (took segments
    /// from the edge) or `corrupt` (received a bad segment).
    pub health: &'static str,
    /// Its reported totals.
    pub totals: PeerTotals,
}

/// A site in a snapshot.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SiteRow {
    /// Label.
    pub site: String,
    /// Its peers are behind a NAT: only the site can dial them.
    pub behind_nat: bool,
    /// Copies of the stream its WAN link carries in
    /// ([`SiteRow::copies_in`], worked out when a snapshot is taken; the
    /// rows the tracker keeps leave it 0). One copy shared over the LAN is
    /// 1.
    pub wan_streams: f64,
    /// Peers.
    pub viewers: u64,
    /// Their reported totals.
    pub totals: PeerTotals,
}

/// One channel's tree, for the dashboard and its API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelSnapshot {
    /// Channel.
    pub channel: String,
    /// Peers in the tree.
    pub viewers: u64,
    /// Peers waiting for a parent.
    pub orphans: u64,
    /// Deepest depth in use.
    pub max_depth: u8,
    /// Peers at each depth (index = depth; 0 = waiting).
    pub depth_histogram: Vec<u64>,
    /// Totals of every live peer's reports.
    pub totals: PeerTotals,
    /// Peers moved to a new parent, since the edge started.
    pub repairs: u64,
    /// Peers evicted as silent.
    pub evicted_silent: u64,
    /// Peers evicted for corruption.
    pub evicted_corrupt: u64,
    /// Peers behind a NAT.
    pub peers_behind_nat: u64,
    /// Dials through a NAT that peers reported getting in, since the edge
    /// started.
    pub traversals_reached: u64,
    /// Those that did not.
    pub traversals_unreachable: u64,
    /// Copies entering all sites together ([`SiteRow::wan_streams`]
    /// summed over every site, listed or not).
    pub wan_streams_total: f64,
    /// Per site, largest first.
    pub sites: Vec<SiteRow>,
    /// Peers, shallowest first, at most the limit asked.
    pub peers: Vec<PeerRow>,
    /// True when `peers` was cut to the limit.
    pub peers_truncated: bool,
}

impl TrackerService {
    /// Every channel's tree, with at most `limit` peers listed per channel
    /// (shallowest first: the part of the tree that matters most). With
    /// `limit` 0 (the dashboard's 2-second sample) it walks no peer.
    pub fn snapshot(&self, limit: usize) -> Vec<ChannelSnapshot> {
        let mut out = Vec::new();
        for (channel, shared) in self.all_trees() {
            let tree = lock(&shared);
            let ch = channel.as_str();
            let hist = tree.tracker.depth_counts().to_vec();
            // Totals and sites are kept as peers come and go: only the
            // peers listed need a walk, and a sample (limit 0) walks no one.
            let mut listed = Vec::new();
            if limit > 0 {
                listed.extend(tree.tracker.peers());
            }
            let key = |v: &PeerView| (!v.placed, v.depth, v.id.0);
            let truncated = tree.tracker.len() > limit;
            if listed.len() > limit && limit > 0 {
                listed.select_nth_unstable_by_key(limit - 1, key);
                listed.truncate(limit);
            }
            listed.sort_unstable_by_key(key);
            let rows = listed
                .iter()
                .map(|v| {
                    let t = tree.stats.get(&v.id).map(|p| p.totals).unwrap_or_default();
                    let label = tree.sites.get(&v.site).cloned().unwrap_or_default();
                    peer_row(v, t, label)
                })
                .collect();
            let peers_behind_nat = tree
                .site_rows
                .values()
                .filter(|r| r.behind_nat)
                .map(|r| r.viewers)
                .sum();
            let wan_streams_total = tree.site_rows.values().map(SiteRow::copies_in).sum();
            let mut sites: Vec<SiteRow> = tree.site_rows.values().cloned().collect();
            sites.sort_by(|a, b| b.viewers.cmp(&a.viewers).then(a.site.cmp(&b.site)));
            sites.truncate(50);
            for row in &mut sites {
                row.wan_streams = row.copies_in();
            }
            let totals = tree.totals;
            let m = &self.metrics;
            out.push(ChannelSnapshot {
                channel: ch.to_owned(),
                viewers: tree.tracker.len() as u64,
                orphans: hist.first().copied().unwrap_or(0),
                max_depth: tree.tracker.max_depth_in_use(),
                depth_histogram: hist,
                totals,
                repairs: m.repairs.with_label_values(&[ch]).get(),
                evicted_silent: m.evictions.with_label_values(&[ch, "silent"]).get(),
                evicted_corrupt: m.evictions.with_label_values(&[ch, "corrupt"]).get(),
                peers_behind_nat,
                traversals_reached: m.traversals.with_label_values(&[ch, "reached"]).get(),
                traversals_unreachable: m.traversals.with_label_values(&[ch, "unreachable"]).get(),
                wan_streams_total,
                sites,
                peers: rows,
                peers_truncated: truncated,
            });
        }
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
    }
}

fn peer_row(v: &PeerView, t: PeerTotals, label: String) -> PeerRow {
    let health = if t.corrupt > 0 {
        "corrupt"
    } else if t.stalls > 0 {
        "stalling"
    } else if t.fallbacks > 0 {
        "fallback"
    } else {
        "ok"
    };
    PeerRow {
        id: v.id.0,
        name: format!("{label} · {}", v.id.short()),
        parent_name: v
            .placed
            .then(|| v.parent.map_or_else(|| "edge".to_owned(), |p| p.short())),
        rebuffer_ratio: t.rebuffer_ratio(),
        parent: v.placed.then(|| v.parent.map_or(0, |p| p.0)),
        depth: v.depth,
        children: v.children,
        slots: v.slots,
        upload_kbps: v.measured_kbps,
        uplink_test_kbps: v.tested_kbps,
        leaf_only: v.leaf_only,
        site: label,
        health,
        totals: t,
    }
}
