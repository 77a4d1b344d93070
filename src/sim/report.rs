//! What the simulator counts while it runs ([`Counters`], [`Recorder`]),
//! and the report it prints ([`SimReport`]; each key is defined in
//! `docs/sim.md`).

use std::collections::BTreeMap;

use serde::Serialize;
use treecast_edge::tracker::core::Tracker;

use super::SimConfig;
use crate::swarm::{limit_of as physical_limit, Percentiles};

/// Totals over the measured window.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub events: u64,
    pub sessions: u64,
    pub peak_viewers: usize,
    pub watched_ms: u64,
    pub unplaced_ms: u64,
    pub bytes_tree: u64,
    pub bytes_root: u64,
    /// Late, missing or corrupt segments fetched from the edge.
    pub bytes_fallback: u64,
    /// The part of `bytes_fallback` a parent's uplink fell short by.
    pub fallbacks_bytes_late: u64,
    /// Played from the edge while not placed in the tree.
    pub bytes_http: u64,
    pub fallbacks: u64,
    pub repairs: u64,
    pub repair_ms: Vec<f64>,
    pub moves: u64,
    pub orphaned: u64,
    pub orphan_wait_ms: Vec<f64>,
    pub join_refused: u64,
    pub rejoins: u64,
    pub evictions_silent: u64,
    pub evictions_corrupt: u64,
    pub children_shed: u64,
    pub corrupt_detected: u64,
    pub kills: u64,
    pub leaves: u64,
    pub stalls: u64,
    pub stall_ms: f64,
}

impl Counters {
    /// Bytes the edge sent: to its children and over HTTP.
    pub fn edge_bytes(&self) -> u64 {
        self.bytes_root + self.bytes_fallback + self.bytes_http
    }
}

/// Counts of the current sample window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub repairs: u64,
    /// The totals when it opened.
    edge_bytes: u64,
    tree_bytes: u64,
}

/// One point of the timeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Seconds since the start.
    pub t_s: f64,
    /// Viewers watching.
    pub viewers: usize,
    /// Edge bytes over the window, in streams.
    pub edge_streams: f64,
    /// Tree bytes over all bytes played in the window.
    pub offload: f64,
    /// The physical limit for the audience at this moment.
    pub physical_limit: f64,
    /// Peers the tracker has waiting for a parent.
    pub orphans: usize,
    /// Deepest depth in use.
    pub max_depth: u8,
    /// 95th percentile of the placed peers' depths.
    pub depth_p95: u8,
    /// Gaps repaired per second over the window.
    pub repairs_per_s: f64,
}

/// Collects counters, the timeline and the samples of lag.
#[derive(Debug)]
pub struct Recorder {
    pub counters: Counters,
    pub window: Window,
    pub timeline: Vec<Sample>,
    last_sample_ms: u64,
    /// Σ limit × viewers × ms, Σ viewers × ms.
    limit_weighted: f64,
    viewer_ms: f64,
    lags: BTreeMap<u8, Vec<f64>>,
    depth_at_peak: Vec<u64>,
    peak_seen: usize,
    measure_from: u64,
    root_slots: f64,
    stream_kbps: u32,
}

impl Recorder {
    pub fn new(config: &SimConfig) -> Self {
        Self {
            counters: Counters::default(),
            window: Window::default(),
            timeline: Vec::new(),
            last_sample_ms: 0,
            limit_weighted: 0.0,
            viewer_ms: 0.0,
            lags: BTreeMap::new(),
            depth_at_peak: Vec::new(),
            peak_seen: 0,
            measure_from: config.measure_from_ms(),
            root_slots: f64::from(config.tracker.root_slots),
            stream_kbps: config.tracker.stream_kbps,
        }
    }

    /// The measured window opens: totals count from here (sessions and
    /// the peak from the start).
    pub fn open_window(&mut self) {
        let c = &self.counters;
        self.counters = Counters {
            events: c.events,
            sessions: c.sessions,
            peak_viewers: c.peak_viewers,
            ..Counters::default()
        };
        self.window = Window::default();
        self.limit_weighted = 0.0;
        self.viewer_ms = 0.0;
        self.lags.clear();
    }

    /// The physical limit over `ms` for `n` viewers with `usable` slots.
    pub fn add_limit(&mut self, n: f64, usable: f64, ms: u64) {
        if n > 0.0 {
            self.limit_weighted += physical_limit(n, usable, self.root_slots) * n * ms as f64;
            self.viewer_ms += n * ms as f64;
        }
    }

    /// A point of the timeline at `now`.
    pub fn sample(
        &mut self,
        now: u64,
        viewers: usize,
        usable: f64,
        tracker: &Tracker,
        lags: Vec<(u8, f64)>,
    ) {
        let (root_slots, stream_kbps) = (self.root_slots, self.stream_kbps);
        let c = &self.counters;
        let edge = c.edge_bytes();
        let edge_w = edge.saturating_sub(self.window.edge_bytes);
        let tree_w = c.bytes_tree.saturating_sub(self.window.tree_bytes);
        let all_w = edge_w + tree_w;
        let ms = now.saturating_sub(self.last_sample_ms).max(1);
        let stream_bytes = f64::from(stream_kbps) * ms as f64 / 8.0;
        let depths = tracker.depth_counts();
        let placed: u64 = depths.iter().skip(1).sum();
        let mut acc = 0;
        let mut p95 = 0;
        for (d, &k) in depths.iter().enumerate().skip(1) {
            acc += k;
            if acc * 100 >= placed * 95 && placed > 0 {
                p95 = d as u8;
                break;
            }
        }
        self.timeline.push(Sample {
            t_s: now as f64 / 1000.0,
            viewers,
            edge_streams: edge_w as f64 / stream_bytes,
            offload: if all_w == 0 {
                0.0
            } else {
                tree_w as f64 / all_w as f64
            },
            physical_limit: physical_limit(viewers as f64, usable, root_slots),
            orphans: tracker.orphan_count(),
            max_depth: tracker.max_depth_in_use(),
            depth_p95: p95,
            repairs_per_s: self.window.repairs as f64 * 1000.0 / ms as f64,
        });
        self.window = Window {
            repairs: 0,
            edge_bytes: edge,
            tree_bytes: c.bytes_tree,
        };
        self.last_sample_ms = now;
        if viewers >= self.peak_seen {
            self.peak_seen = viewers;
            self.depth_at_peak = depths.to_vec();
        }
        if now >= self.measure_from {
            for (d, lag) in lags {
                self.lags.entry(d).or_default().push(lag);
            }
        }
    }
}

/// The report; its keys are a stable interface (`docs/sim.md`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimReport {
    /// The audience asked for (`--viewers`).
    pub viewers: usize,
    /// Simulated minutes measured.
    pub minutes: f64,
    /// The seed.
    pub seed: u64,
    /// Network profile, or `loopback`.
    pub profile: String,
    /// `event` or `churn`.
    pub sessions_model: String,
    /// Stream bitrate, kb/s.
    pub stream_kbps: u32,
    /// The edge's own children.
    pub root_slots: u32,
    /// Viewer sessions started (replacements and rejoins after an
    /// eviction not counted twice).
    pub sessions: u64,
    /// Most viewers at once.
    pub peak_viewers: usize,
    /// Viewer-hours watched in the window.
    pub viewer_hours: f64,
    /// Edge bytes over the window, in streams.
    pub edge_streams: f64,
    /// Worst sample window's edge streams.
    pub edge_streams_max: f64,
    /// The part as the edge's children, in streams.
    pub root_streams: f64,
    /// The part fetched over HTTP (late, missing, corrupt segments and
    /// viewers without a parent), in streams.
    pub fallback_streams: f64,
    /// The edge uplink's capacity in streams; `None` on loopback.
    pub edge_capacity_streams: Option<f64>,
    /// Bytes the viewers played that came from their parents.
    pub bytes_from_tree: u64,
    /// Bytes they played that the edge sent (to its children and over
    /// HTTP).
    pub bytes_from_edge: u64,
    /// Tree bytes over all bytes played.
    pub offload_ratio: f64,
    /// The best offload these links allow, averaged over viewer-time.
    pub physical_limit: f64,
    /// `offload_ratio / physical_limit`.
    pub offload_vs_limit: f64,
    /// Players that ran dry (the edge could not keep up).
    pub stalls: u64,
    /// Viewer-seconds stalled.
    pub stall_s: f64,
    /// Time stalled over time watched.
    pub rebuffer_ratio: f64,
    /// Segments fetched from the edge because the tree was late or wrong.
    pub fallbacks: u64,
    /// Viewer-seconds played from the edge without a place in the tree.
    pub unplaced_s: f64,
    /// Joins the tracker refused for lack of room.
    pub join_refused: u64,
    /// Gaps in a viewer's stream closed (parent killed, left, shed it).
    pub repairs: u64,
    /// Most repairs per second in one sample window.
    pub repairs_per_s_max: f64,
    /// Length of those gaps, ms.
    pub repair_ms: Percentiles,
    /// Moves the tracker told peers of.
    pub moves: u64,
    /// Times a peer was left without a parent and no slot was free.
    pub orphaned: u64,
    /// How long those waited for a place, ms.
    pub orphan_wait_ms: Percentiles,
    /// Those waits longer than one segment (the goal is none).
    pub orphan_waits_over_segment: usize,
    /// Evictions for silence (kills found by the timeout).
    pub evictions_silent: u64,
    /// Evictions for corrupt data.
    pub evictions_corrupt: u64,
    /// Children let go by a saturated parent.
    pub children_shed: u64,
    /// Corrupt deliveries children caught.
    pub corrupt_detected: u64,
    /// Sessions that ended by vanishing.
    pub kills: u64,
    /// Sessions that ended with a leave.
    pub leaves: u64,
    /// Deepest depth any sample saw.
    pub max_depth: u8,
    /// Peers at each depth (index 0: waiting) when the audience peaked.
    pub depth_at_peak: Vec<u64>,
    /// Depth → lag behind the origin, ms (sampled viewers).
    pub lag_ms_by_depth: BTreeMap<u8, Percentiles>,
    /// Events the simulation ran.
    pub events: u64,
    /// The event over time.
    pub timeline: Vec<Sample>,
}

impl SimReport {
    /// The report of a finished run.
    pub fn new(config: &SimConfig, rec: Recorder) -> Self {
        let Recorder {
            counters: c,
            timeline,
            limit_weighted,
            viewer_ms,
            lags,
            depth_at_peak,
            ..
        } = rec;
        let window_ms = config.duration_ms.max(1) as f64;
        let streams =
            |bytes: u64| bytes as f64 * 8.0 / f64::from(config.tracker.stream_kbps) / window_ms;
        let edge = c.edge_bytes();
        let all = edge + c.bytes_tree;
        let offload = if all == 0 {
            0.0
        } else {
            c.bytes_tree as f64 / all as f64
        };
        let limit = if viewer_ms > 0.0 {
            limit_weighted / viewer_ms
        } else {
            0.0
        };
        let measured: Vec<&Sample> = timeline
            .iter()
            .filter(|s| s.t_s * 1000.0 > config.measure_from_ms() as f64)
            .collect();
        let mut repair_ms = c.repair_ms;
        let mut orphan_wait_ms = c.orphan_wait_ms;
        Self {
            viewers: config.viewers,
            minutes: config.duration_ms as f64 / 60_000.0,
            seed: config.seed,
            profile: config
                .profile
                .as_ref()
                .map_or_else(|| "loopback".into(), |p| p.name.clone()),
            sessions_model: match config.sessions {
                super::model::Sessions::Event { .. } => "event".into(),
                super::model::Sessions::Churn { .. } => "churn".into(),
            },
            stream_kbps: config.tracker.stream_kbps,
            root_slots: config.tracker.root_slots,
            sessions: c.sessions,
            peak_viewers: c.peak_viewers,
            viewer_hours: c.watched_ms as f64 / 3_600_000.0,
            edge_streams: streams(edge),
            edge_streams_max: measured.iter().map(|s| s.edge_streams).fold(0.0, f64::max),
            root_streams: streams(c.bytes_root),
            fallback_streams: streams(c.bytes_fallback + c.bytes_http),
            edge_capacity_streams: config
                .edge_kbps()
                .map(|k| k / f64::from(config.tracker.stream_kbps)),
            bytes_from_tree: c.bytes_tree,
            bytes_from_edge: edge,
            offload_ratio: offload,
            physical_limit: limit,
            offload_vs_limit: if limit > 0.0 { offload / limit } else { 0.0 },
            stalls: c.stalls,
            stall_s: c.stall_ms / 1000.0,
            rebuffer_ratio: if c.watched_ms == 0 {
                0.0
            } else {
                c.stall_ms / c.watched_ms as f64
            },
            fallbacks: c.fallbacks + c.fallbacks_bytes_late / config.segment_bytes().max(1),
            unplaced_s: c.unplaced_ms as f64 / 1000.0,
            join_refused: c.join_refused,
            repairs: c.repairs,
            repairs_per_s_max: measured.iter().map(|s| s.repairs_per_s).fold(0.0, f64::max),
            repair_ms: Percentiles::of(&mut repair_ms),
            moves: c.moves,
            orphaned: c.orphaned,
            orphan_waits_over_segment: orphan_wait_ms
                .iter()
                .filter(|&&ms| ms > config.segment_ms as f64)
                .count(),
            orphan_wait_ms: Percentiles::of(&mut orphan_wait_ms),
            evictions_silent: c.evictions_silent,
            evictions_corrupt: c.evictions_corrupt,
            children_shed: c.children_shed,
            corrupt_detected: c.corrupt_detected,
            kills: c.kills,
            leaves: c.leaves,
            max_depth: timeline.iter().map(|s| s.max_depth).max().unwrap_or(0),
            depth_at_peak,
            lag_ms_by_depth: lags
                .into_iter()
                .map(|(d, mut v)| (d, Percentiles::of(&mut v)))
                .collect(),
            events: c.events,
            timeline,
        }
    }
}
