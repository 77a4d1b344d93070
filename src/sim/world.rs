//! The simulated event: viewers arrive, watch and leave; the real tracker
//! core ([`Tracker`]) places them, exactly as the edge's service calls it
//! (joins, heartbeats with the bytes each received, reports, leaves,
//! ticks); their data plane is a model ([`DataPlane`]).
//!
//! What flows through it: events from the [`Calendar`] (arrivals,
//! heartbeats, departures, a child noticing its parent went silent, the
//! tracker's ticks, samples for the report) change the viewers; the
//! tracker's answers and events move them in the data plane; every byte a
//! viewer plays is counted once, as from the tree, from the edge as one of
//! its children, or from the edge over HTTP (a late or missing segment,
//! or a viewer the tree has no room for).
//!
//! The model, per viewer:
//! - a parent feeds each child `min(stream, upload × efficiency /
//!   children)`; what a child misses it fetches from the edge, and tells
//!   the tracker (`bytes_from_edge`), which is how the tracker learns a
//!   parent's real capacity; a parent over its uplink sheds its newest
//!   child, one per [`DataPlane::shed_every_ms`];
//! - a parent killed goes silent: each child notices after its liveness
//!   allows ([`DataPlane::detect_ms`]), switches to its warm backup, and
//!   reports the gap; a parent leaving politely closes its links, so its
//!   children switch at once; the gap's segments due more than the grace
//!   ago come from the edge, the rest as backfill from the new parent;
//! - a corrupting parent's segments fail verification: its child fetches
//!   them from the edge and reports it, and the tracker evicts it;
//! - the edge's uplink (the profile's) carries its children and every
//!   HTTP fetch; while demand exceeds it, the players it feeds drain
//!   their buffers and, once empty, stall.
//!
//! Time is ms since the start; the tracker gets `start + ms` as its
//! `Instant`. Nothing here reads a clock or a socket, so a seed repeats
//! its report exactly.

use std::time::{Duration, Instant};

use prefetch_index::prefetch_index;
use treecast_edge::tracker::core::{
    Assignment, EvictReason, Heartbeat, JoinRequest, Node, PeerId, Report, Tracker, TrackerEvent,
};
use treecast_proto::prefetch::prefetch_line;

use super::calendar::Calendar;
use super::model::{exponential, weibull, Sessions};
use super::report::Recorder;
use super::SimConfig;
use crate::netlab::profile::{PeerLink, LINK_SEED};
use crate::rng::Rng;

/// Index of a viewer record.
type V = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A new viewer.
    Arrive,
    Heartbeat {
        v: V,
        epoch: u32,
    },
    Depart {
        v: V,
        epoch: u32,
    },
    /// `v`'s feed has been silent as long as its liveness allows.
    Detect {
        v: V,
        epoch: u32,
    },
    /// `v`, refused a place, asks the tracker again.
    Rejoin {
        v: V,
        epoch: u32,
    },
    /// The harness's churn: a random viewer is replaced.
    Churn,
    Tick,
    Sample,
    /// The measured window opens.
    Open,
}

/// Where a viewer's stream comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// The edge over HTTP: not placed in the tree.
    Http,
    /// The edge as one of its children.
    Edge,
    /// A peer, in the session `epoch` of its record.
    Peer { v: V, epoch: u32 },
}

/// A viewer's id in the tracker, if it has one, in 8 bytes (an
/// `Option<PeerId>` takes 16, and the id shares the first cache line of
/// [`Viewer`] with what a child reads of its parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TrackerId(u64);

impl TrackerId {
    /// No id: the tracker never gives 0 (generations start at 1).
    const NONE: Self = Self(0);

    fn get(self) -> Option<PeerId> {
        (self.0 != 0).then_some(PeerId(self.0))
    }

    fn take(&mut self) -> Option<PeerId> {
        std::mem::replace(self, Self::NONE).get()
    }
}

impl From<PeerId> for TrackerId {
    fn from(id: PeerId) -> Self {
        Self(id.0)
    }
}

/// A viewer's record. What a heartbeat reads of the viewer's parent and
/// backup comes first (one cache line), then the rest a heartbeat touches
/// of the viewer itself (the second): at 100,000 viewers the records are
/// far larger than the CPU's caches, and misses on them are most of the
/// simulator's time.
#[derive(Debug)]
#[repr(C, align(64))]
struct Viewer {
    /// Bumped when its session ends, so events and feeds naming the old
    /// session are stale.
    epoch: u32,
    alive: bool,
    corrupt: bool,
    /// A [`Ev::Rejoin`] is scheduled.
    rejoin_pending: bool,
    leaf_only: bool,
    /// Upload cap, kb/s; `None`: unlimited (loopback).
    up_kbps: Option<u32>,
    children: Vec<V>,
    /// Its id in the tracker; kept after a kill until the tracker evicts
    /// it (children and backups may still name it).
    id: TrackerId,
    feed: Feed,
    // The first cache line ends in the next field.
    backup: Feed,
    /// Bytes counted up to here.
    settled: u64,
    /// No data from the feed in `[gap_from, gap_until)`; `u64::MAX` until
    /// the child notices.
    gap_from: u64,
    gap_until: u64,
    /// Bytes from the parent and from the edge not yet in a heartbeat.
    from_parent: u64,
    from_edge: u64,
    last_shed: u64,
    // The second cache line ends after this.
    rtt_ms: f32,
    /// Children its link could feed (for the physical limit).
    usable: u32,
    /// Since when the tracker has it waiting for a parent.
    orphan_since: Option<u64>,
    /// Wait before asking again after a refused join, ms; doubles with
    /// each refusal, as the real peer's does.
    join_backoff_ms: u64,
    /// Watching since (or since the measured window opened).
    watching_since: u64,
    /// The epoch of its last session that ended by leaving (not by a
    /// kill); `u32::MAX`: none.
    left_politely: u32,
}

/// The simulation; see the module docs.
#[derive(Debug)]
pub struct World {
    config: SimConfig,
    tracker: Tracker,
    start: Instant,
    rng: Rng,
    links: Vec<PeerLink>,
    viewers: Vec<Viewer>,
    free: Vec<V>,
    /// Viewer by tracker slot.
    by_slot: Vec<V>,
    calendar: Calendar<Ev>,
    now: u64,
    end: u64,
    /// Live viewers, for churn's victims.
    live: Vec<V>,
    /// Position of each viewer in `live`.
    live_pos: Vec<u32>,
    /// Sum of live viewers' usable slots.
    usable_sum: u64,
    /// The edge's bytes when the last tick began, for its uplink.
    edge_at_tick: u64,
    /// How far the edge's players have drained their buffers, ms.
    edge_debt_ms: f64,
    stalled: bool,
    rec: Recorder,
}

const NO_VIEWER: V = V::MAX;
/// How many events ahead [`World::prefetch_ahead`] asks for a viewer's
/// record, then for the tracker's records and its parent's, then for the
/// tracker's records of its parent and backup: each step a few events
/// after the one before, so what it reads has arrived.
const PREFETCH_VIEWER: usize = 6;
const PREFETCH_RECORDS: usize = 3;
const PREFETCH_LINKS: usize = 1;
/// The real peer's first wait after a refused join, and its longest
/// (`treecast_peer::tracker`).
const JOIN_BACKOFF_MS: u64 = 250;
const JOIN_BACKOFF_MAX_MS: u64 = 5_000;

impl World {
    /// A world at time 0 with its first events scheduled.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = Rng::new(config.seed);
        let n = config.viewers.max(1);
        let links = match &config.profile {
            Some(p) => p.draw(n, &mut Rng::new(config.seed ^ LINK_SEED)),
            None => Vec::new(),
        };
        let end = config.total_ms();
        let mut w = Self {
            tracker: Tracker::new(config.tracker.clone()),
            start: Instant::now(),
            rng: Rng::new(rng.next_u64()),
            links,
            viewers: Vec::new(),
            free: Vec::new(),
            by_slot: Vec::new(),
            calendar: Calendar::new(),
            now: 0,
            end,
            live: Vec::new(),
            live_pos: Vec::new(),
            usable_sum: 0,
            edge_at_tick: 0,
            edge_debt_ms: 0.0,
            stalled: false,
            rec: Recorder::new(&config),
            config,
        };
        w.schedule_arrivals();
        w.calendar.push(w.config.model.tick_ms, Ev::Tick);
        w.calendar.push(w.config.sample_ms, Ev::Sample);
        let open = w.config.measure_from_ms();
        if open > 0 {
            w.calendar.push(open, Ev::Open);
        }
        w
    }

    /// Runs to the end; what it recorded.
    pub fn run(mut self) -> Recorder {
        while let Some((at, ev)) = self.calendar.pop() {
            if at > self.end {
                break;
            }
            self.now = at;
            self.rec.counters.events += 1;
            self.prefetch_ahead();
            match ev {
                Ev::Arrive => self.arrive(),
                Ev::Heartbeat { v, epoch } if self.current(v, epoch) => self.heartbeat(v),
                Ev::Depart { v, epoch } if self.current(v, epoch) => self.depart(v),
                Ev::Detect { v, epoch } if self.current(v, epoch) => self.detect(v),
                Ev::Rejoin { v, epoch } if self.current(v, epoch) => {
                    self.viewers[v as usize].rejoin_pending = false;
                    if self.viewers[v as usize].id.get().is_none() {
                        self.rejoin(v);
                    }
                }
                Ev::Churn => self.churn(),
                Ev::Tick => self.tick(),
                Ev::Sample => self.sample(),
                Ev::Open => {
                    for v in self.live.clone() {
                        self.settle(v);
                        self.viewers[v as usize].watching_since = self.now;
                    }
                    self.rec.open_window();
                    self.edge_at_tick = 0;
                    // A stall under way counts again in the window.
                    self.stalled = false;
                }
                _ => {}
            }
        }
        self.now = self.end;
        for v in self.live.clone() {
            self.settle(v);
            self.end_unnoticed_gap(v);
            self.stop_watching(v);
        }
        self.rec
    }

    /// Asks the CPU for the records the coming heartbeats will read, in
    /// three steps as each arrives: the viewer's record (its first two
    /// lines), then its tracker record and its parent's and backup's
    /// viewer records, then its parent's and backup's tracker records. Without it, a heartbeat at 100,000
    /// viewers waits on about eight cache misses one after another; with
    /// it, the 100k × 60 min event runs in about two thirds of the time
    /// (the report is the same to the byte).
    fn prefetch_ahead(&self) {
        let heartbeat = |k| match self.calendar.peek(k) {
            Some(&Ev::Heartbeat { v, .. }) => Some(v),
            _ => None,
        };
        if let Some(v) = heartbeat(PREFETCH_VIEWER) {
            prefetch_index(&self.viewers, v as usize);
            prefetch_line(&self.viewers, v as usize, 1);
        }
        if let Some(v) = heartbeat(PREFETCH_RECORDS) {
            let r = &self.viewers[v as usize];
            if let Some(id) = r.id.get() {
                self.tracker.prefetch(id);
            }
            for f in [r.feed, r.backup] {
                if let Feed::Peer { v: p, .. } = f {
                    prefetch_index(&self.viewers, p as usize);
                }
            }
        }
        if let Some(v) = heartbeat(PREFETCH_LINKS) {
            if let Some(id) = self.viewers[v as usize].id.get() {
                self.tracker.prefetch_links(id);
            }
        }
    }

    fn current(&self, v: V, epoch: u32) -> bool {
        let r = &self.viewers[v as usize];
        r.alive && r.epoch == epoch
    }

    fn t(&self) -> Instant {
        self.start + Duration::from_millis(self.now)
    }

    fn stream_bytes(&self, ms: u64) -> u64 {
        u64::from(self.config.tracker.stream_kbps) * ms / 8
    }

    // ---- sessions -------------------------------------------------------

    fn schedule_arrivals(&mut self) {
        let n = self.config.viewers.max(1);
        match self.config.sessions.clone() {
            Sessions::Event {
                flash,
                flash_ms,
                ramp_ms,
                ..
            } => {
                let flash = flash.min(n);
                for k in 0..n {
                    let at = if k < flash {
                        k as u64 * flash_ms / flash.max(1) as u64
                    } else {
                        flash_ms + (k - flash) as u64 * ramp_ms / (n - flash).max(1) as u64
                    };
                    self.calendar.push(at, Ev::Arrive);
                }
            }
            Sessions::Churn {
                join_every_ms,
                per_minute,
            } => {
                for k in 0..n {
                    self.calendar.push(k as u64 * join_every_ms, Ev::Arrive);
                }
                if per_minute > 0.0 {
                    // Replacements start once everyone is up, as the harness's.
                    let every = (60_000.0 / (per_minute * n as f64)).max(1.0) as u64;
                    let first = n as u64 * join_every_ms + every;
                    let mut at = first;
                    while at <= self.end {
                        self.calendar.push(at, Ev::Churn);
                        at += every;
                    }
                }
            }
        }
    }

    fn arrive(&mut self) {
        let k = self.rec.counters.sessions as usize;
        self.rec.counters.sessions += 1;
        let (up, rtt) = match self.links.get(k % self.links.len().max(1)) {
            Some(l) => (Some(l.upload_kbps), l.rtt_ms as f32),
            None => (None, 0.1),
        };
        let leaf_only = self.rng.chance(self.config.leaf_only_fraction);
        let corrupt = !leaf_only && self.rng.chance(self.config.corrupt_fraction);
        let usable = if leaf_only {
            0
        } else {
            crate::swarm::usable_slots(
                up,
                f64::from(self.config.tracker.stream_kbps),
                self.config.tracker.max_children,
            )
        };
        let record = Viewer {
            epoch: 0,
            left_politely: u32::MAX,
            alive: true,
            id: TrackerId::NONE,
            up_kbps: up,
            rtt_ms: rtt,
            leaf_only,
            corrupt,
            feed: Feed::Http,
            backup: Feed::Http,
            children: Vec::new(),
            settled: self.now,
            gap_from: 0,
            gap_until: 0,
            from_parent: 0,
            from_edge: 0,
            last_shed: 0,
            orphan_since: None,
            join_backoff_ms: JOIN_BACKOFF_MS,
            rejoin_pending: false,
            usable,
            watching_since: self.now,
        };
        let v = match self.free.pop() {
            Some(v) => {
                let epoch = self.viewers[v as usize].epoch;
                self.viewers[v as usize] = Viewer { epoch, ..record };
                v
            }
            None => {
                self.viewers.push(record);
                self.live_pos.push(0);
                (self.viewers.len() - 1) as V
            }
        };
        self.live_pos[v as usize] = self.live.len() as u32;
        self.live.push(v);
        self.usable_sum += u64::from(usable);
        self.rec.counters.peak_viewers = self.rec.counters.peak_viewers.max(self.live.len());
        if let Sessions::Event {
            shape,
            mean_ms,
            departure_ms,
            ..
        } = self.config.sessions
        {
            let drawn = self.now + weibull(&mut self.rng, shape, mean_ms) as u64;
            let last = self.end.saturating_sub(departure_ms);
            let leave = if drawn < last {
                drawn
            } else {
                last + (self.rng.unit() * departure_ms as f64) as u64
            };
            let epoch = self.viewers[v as usize].epoch;
            self.calendar.push(leave, Ev::Depart { v, epoch });
        }
        self.join(v);
        let epoch = self.viewers[v as usize].epoch;
        let hb = self.config.model.heartbeat_ms;
        // Heartbeats of different viewers fall at different phases.
        let phase = self.rng.below(hb as usize) as u64;
        self.calendar
            .push(self.now + hb + phase, Ev::Heartbeat { v, epoch });
    }

    /// A departure: `v` ends its session, politely or by vanishing, and
    /// someone new comes later.
    fn depart(&mut self, v: V) {
        self.leave_or_vanish(v);
        if let Sessions::Event {
            replace_ms,
            departure_ms,
            ..
        } = self.config.sessions
        {
            let replace = self.now + exponential(&mut self.rng, replace_ms) as u64;
            if replace < self.end.saturating_sub(departure_ms) {
                self.calendar.push(replace, Ev::Arrive);
            }
        }
    }

    fn churn(&mut self) {
        if self.live.is_empty() {
            return;
        }
        let v = self.live[self.rng.below(self.live.len())];
        self.leave_or_vanish(v);
        self.arrive();
    }

    fn leave_or_vanish(&mut self, v: V) {
        self.settle(v);
        self.end_unnoticed_gap(v);
        self.stop_watching(v);
        let kill = self.rng.chance(self.config.kill_fraction);
        let epoch = self.viewers[v as usize].epoch;
        self.detach(v);
        let children = std::mem::take(&mut self.viewers[v as usize].children);
        // What its children had from it up to now, while it still counts.
        for &c in &children {
            self.settle(c);
        }
        {
            let r = &mut self.viewers[v as usize];
            r.alive = false;
            r.epoch = epoch.wrapping_add(1);
        }
        let pos = self.live_pos[v as usize] as usize;
        self.live.swap_remove(pos);
        if let Some(&moved) = self.live.get(pos) {
            self.live_pos[moved as usize] = pos as u32;
        }
        self.usable_sum -= u64::from(self.viewers[v as usize].usable);
        if kill {
            self.rec.counters.kills += 1;
            // Silent: the children notice by themselves; the tracker after
            // its timeout, which frees the record.
            for c in children {
                let rtt = self.rtt_between(c, v);
                self.start_gap(c);
                let at = self.now + self.config.model.detect_ms(rtt);
                let epoch = self.viewers[c as usize].epoch;
                self.calendar.push(at, Ev::Detect { v: c, epoch });
            }
            if self.viewers[v as usize].id.get().is_none() {
                self.free.push(v);
            }
        } else {
            self.rec.counters.leaves += 1;
            self.viewers[v as usize].left_politely = epoch;
            if let Some(id) = self.viewers[v as usize].id.take() {
                let _ = self.tracker.handle_leave(id, self.t());
                self.drain();
            }
            self.free.push(v);
            // Its links close: each child switches to its backup at once,
            // where the tracker has already placed it.
            for c in children {
                self.move_by_tracker(c);
                self.switched(c);
            }
        }
    }

    fn join(&mut self, v: V) {
        // The simulated audience is public: no sites, no NATs (the lab's
        // sites are measured with real peers, docs/netlab.md).
        let req = JoinRequest {
            site: 0,
            max_upload_kbps: self.viewers[v as usize].leaf_only.then_some(0),
            resume_parent: None,
            ..JoinRequest::default()
        };
        // A new id: whatever the tracker had it wait for is over.
        self.viewers[v as usize].orphan_since = None;
        match self.tracker.handle_join(req, self.t()) {
            Ok(a) => {
                let slot = a.id.slot() as usize;
                if self.by_slot.len() <= slot {
                    self.by_slot.resize(slot + 1, NO_VIEWER);
                }
                self.by_slot[slot] = v;
                self.viewers[v as usize].id = a.id.into();
                self.viewers[v as usize].join_backoff_ms = JOIN_BACKOFF_MS;
                self.apply(v, a);
                self.drain();
            }
            Err(_) => {
                // Plays from the edge and asks again after a backoff that
                // doubles up to 5 s, as `treecast_peer::tracker` does.
                self.rec.counters.join_refused += 1;
                self.set_feed(v, Feed::Http);
                let r = &mut self.viewers[v as usize];
                let (wait, epoch) = (r.join_backoff_ms, r.epoch);
                r.join_backoff_ms = (wait * 2).min(JOIN_BACKOFF_MAX_MS);
                r.rejoin_pending = true;
                self.calendar.push(self.now + wait, Ev::Rejoin { v, epoch });
            }
        }
    }

    // ---- the data plane -------------------------------------------------

    /// `v`, which had a place or asked for one before, asks again.
    fn rejoin(&mut self, v: V) {
        self.rec.counters.rejoins += 1;
        self.join(v);
    }

    fn viewer_of(&self, id: PeerId) -> Option<V> {
        let v = *self.by_slot.get(id.slot() as usize)?;
        (v != NO_VIEWER && self.viewers[v as usize].id == id.into()).then_some(v)
    }

    fn feed_of(&self, node: Option<Node>) -> Feed {
        match node {
            None => Feed::Http,
            Some(Node::Root) => Feed::Edge,
            Some(Node::Peer(id)) => match self.viewer_of(id) {
                Some(p) => Feed::Peer {
                    v: p,
                    epoch: self.viewers[p as usize].epoch,
                },
                None => Feed::Http,
            },
        }
    }

    fn feed_alive(&self, f: Feed) -> bool {
        match f {
            Feed::Http | Feed::Edge => true,
            Feed::Peer { v, epoch } => self.current(v, epoch),
        }
    }

    /// Whether `f` is a peer whose session ended by leaving, which closed
    /// its connections (a slot reused and left again since: not known,
    /// so not).
    fn closed_politely(&self, f: Feed) -> bool {
        matches!(f, Feed::Peer { v, epoch } if self.viewers[v as usize].left_politely == epoch)
    }

    fn rtt_between(&self, a: V, b: V) -> f64 {
        f64::from(self.viewers[a as usize].rtt_ms) + f64::from(self.viewers[b as usize].rtt_ms)
    }

    fn rtt_to_feed(&self, v: V) -> f64 {
        let own = f64::from(self.viewers[v as usize].rtt_ms);
        match self.viewers[v as usize].feed {
            Feed::Peer { v: p, .. } => own + f64::from(self.viewers[p as usize].rtt_ms),
            _ => own + self.config.edge_rtt_ms(),
        }
    }

    /// The rate a parent gives each of its children, kb/s.
    fn share_kbps(&self, p: V) -> f64 {
        let s = f64::from(self.config.tracker.stream_kbps);
        let r = &self.viewers[p as usize];
        match r.up_kbps {
            None => s,
            Some(up) => {
                let n = r.children.len().max(1) as f64;
                (f64::from(up) * self.config.model.upload_efficiency / n).min(s)
            }
        }
    }

    /// `v`'s uplink test, sent at `kbps`: what its link carries beside
    /// its children's streams, no more than the test sends when that is
    /// all of it. Reported at once (the real edge answers within
    /// [`UPLINK_TEST_WINDOW`](treecast_proto::tracker::UPLINK_TEST_WINDOW)).
    fn test_uplink(&mut self, v: V, id: PeerId, kbps: u32) {
        let r = &self.viewers[v as usize];
        let stream = f64::from(self.config.tracker.stream_kbps);
        let carried = r.up_kbps.map_or(f64::from(kbps), |up| {
            f64::from(up) * self.config.model.upload_efficiency - r.children.len() as f64 * stream
        });
        let measured = carried.clamp(0.0, f64::from(kbps)) as u32;
        let _ = self.tracker.handle_uplink_test(id, measured, self.t());
        self.drain();
    }

    fn saturated(&self, p: V) -> bool {
        let r = &self.viewers[p as usize];
        r.up_kbps.is_some_and(|up| {
            r.children.len() as f64 * f64::from(self.config.tracker.stream_kbps)
                > f64::from(up) * self.config.model.upload_efficiency
        })
    }

    /// Counts what `v` played since it was last settled.
    fn settle(&mut self, v: V) {
        let (from, to) = (self.viewers[v as usize].settled, self.now);
        if to <= from {
            return;
        }
        self.viewers[v as usize].settled = to;
        let r = &self.viewers[v as usize];
        let gap = r.gap_until.min(to).saturating_sub(r.gap_from.max(from));
        let ok_ms = (to - from) - gap.min(to - from);
        // A gap's bytes are counted when it closes (`close_gap`).
        let full = self.stream_bytes(ok_ms);
        let c = &mut self.rec.counters;
        match self.viewers[v as usize].feed {
            Feed::Http => {
                c.bytes_http += full;
                c.unplaced_ms += ok_ms;
            }
            Feed::Edge => {
                c.bytes_root += full;
                self.viewers[v as usize].from_parent += full;
            }
            Feed::Peer { v: p, epoch } => {
                if !self.current(p, epoch) {
                    // Silent and not yet noticed: the gap covers it.
                    return;
                }
                let tree = if self.viewers[p as usize].corrupt {
                    0
                } else {
                    (self.share_kbps(p) * ok_ms as f64 / 8.0) as u64
                };
                let missed = full - tree.min(full);
                let c = &mut self.rec.counters;
                c.bytes_tree += tree;
                c.bytes_fallback += missed;
                c.fallbacks_bytes_late += missed;
                let r = &mut self.viewers[v as usize];
                r.from_parent += tree;
                r.from_edge += missed;
            }
        }
    }

    /// Counts a gap in `v`'s stream from `from` to `until`, now that it is
    /// over: segments due more than the grace ago were fetched from the
    /// edge; the new parent backfilled the rest.
    fn close_gap(&mut self, v: V, from: u64, until: u64, repaired: bool) {
        let m = &self.config.model;
        let g = until.saturating_sub(from);
        let late = g.saturating_sub(m.fallback_grace_ms);
        let segments = if late > 0 {
            late.div_ceil(self.config.segment_ms)
        } else {
            0
        };
        // Counted up to now; the rest of a switch still under way plays as
        // the new feed's (its backfill), if the viewer is still there.
        let until = until.min(self.now);
        let all = self.stream_bytes(until.saturating_sub(from));
        let edge = (segments * self.config.segment_bytes()).min(all);
        let rest = all - edge;
        {
            let r = &mut self.viewers[v as usize];
            r.gap_from = from;
            r.gap_until = until;
            r.from_edge += edge;
        }
        let feed = self.viewers[v as usize].feed;
        let c = &mut self.rec.counters;
        c.fallbacks += segments;
        c.bytes_fallback += edge;
        if repaired {
            // The gap the viewer sees, to the switch's end.
            c.repairs += 1;
            c.repair_ms.push(g as f64);
            self.rec.window.repairs += 1;
        }
        match feed {
            Feed::Peer { .. } => {
                self.rec.counters.bytes_tree += rest;
                self.viewers[v as usize].from_parent += rest;
            }
            Feed::Edge => {
                self.rec.counters.bytes_root += rest;
            }
            Feed::Http => {
                self.rec.counters.bytes_http += rest;
            }
        }
        // The gap is counted: what settles later is after it.
        let r = &mut self.viewers[v as usize];
        r.settled = r.settled.max(until.min(self.now));
    }

    /// `v`'s feed falls silent now, unnoticed. A gap counted already that
    /// runs past now (a switch still under way) is not counted twice.
    fn start_gap(&mut self, v: V) {
        let r = &mut self.viewers[v as usize];
        let earlier = if r.gap_until == u64::MAX {
            0
        } else {
            r.gap_until
        };
        r.gap_from = self.now.max(earlier);
        r.gap_until = u64::MAX;
    }

    /// Ends a gap `v` has not noticed yet, at now, without a repair: its
    /// feed changes for another reason (it leaves, is evicted, the run
    /// ends), and what it missed until now is counted.
    fn end_unnoticed_gap(&mut self, v: V) {
        let r = &self.viewers[v as usize];
        if r.gap_until == u64::MAX {
            let from = r.gap_from;
            self.close_gap(v, from, self.now, false);
        }
    }

    fn detach(&mut self, v: V) {
        if let Feed::Peer { v: p, epoch } = self.viewers[v as usize].feed {
            if self.viewers[p as usize].epoch == epoch {
                let list = &mut self.viewers[p as usize].children;
                if let Some(i) = list.iter().position(|&c| c == v) {
                    list.swap_remove(i);
                }
            }
        }
        self.viewers[v as usize].feed = Feed::Http;
    }

    fn set_feed(&mut self, v: V, feed: Feed) {
        if self.viewers[v as usize].feed == feed {
            return;
        }
        self.detach(v);
        self.viewers[v as usize].feed = feed;
        match feed {
            Feed::Peer { v: p, epoch } if self.current(p, epoch) => {
                self.viewers[p as usize].children.push(v);
            }
            Feed::Peer { .. } => {
                // A parent the tracker still lists but that is gone: the
                // connection fails after its timeout.
                self.start_gap(v);
                let epoch = self.viewers[v as usize].epoch;
                self.calendar.push(
                    self.now + self.config.model.connect_timeout_ms,
                    Ev::Detect { v, epoch },
                );
            }
            _ => {}
        }
    }

    /// Follows the tracker's answer: parent and backup (make before
    /// break, so a move costs no gap).
    fn apply(&mut self, v: V, a: Assignment) {
        self.settle(v);
        let feed = self.feed_of(a.parent);
        let backup = self.feed_of(a.backup);
        self.viewers[v as usize].backup = backup;
        if self.viewers[v as usize].gap_until == u64::MAX {
            // Waiting to notice a silent parent: `detect` follows the tracker.
            return;
        }
        self.set_feed(v, feed);
    }

    fn move_by_tracker(&mut self, v: V) {
        if let Some(id) = self.viewers[v as usize].id.get() {
            if let Ok(a) = self.tracker.assignment(id) {
                self.apply(v, a);
            }
        }
    }

    fn heartbeat(&mut self, v: V) {
        self.settle(v);
        let epoch = self.viewers[v as usize].epoch;
        self.calendar.push(
            self.now + self.config.model.heartbeat_ms,
            Ev::Heartbeat { v, epoch },
        );
        let Some(id) = self.viewers[v as usize].id.get() else {
            // Evicted: it plays from the edge and joins again, unless a
            // refused join's retry is already on its way.
            if !self.viewers[v as usize].rejoin_pending {
                self.rejoin(v);
            }
            return;
        };
        let hb = {
            let r = &mut self.viewers[v as usize];
            Heartbeat {
                bytes_from_parent: std::mem::take(&mut r.from_parent),
                bytes_from_edge: std::mem::take(&mut r.from_edge),
            }
        };
        match self.tracker.handle_heartbeat(id, hb, self.t()) {
            Ok(a) => {
                if let Some(kbps) = a.test_uplink_kbps {
                    self.test_uplink(v, id, kbps);
                }
                self.apply(v, a)
            }
            Err(_) => {
                // Evicted: join again.
                self.viewers[v as usize].id = TrackerId::NONE;
                self.rejoin(v);
                return;
            }
        }
        self.drain();
        let Feed::Peer { v: p, epoch } = self.viewers[v as usize].feed else {
            return;
        };
        if !self.current(p, epoch) {
            return;
        }
        if self.viewers[p as usize].corrupt {
            // Its segments fail verification: refetched from the edge, and
            // the parent reported (the tracker evicts it).
            self.rec.counters.corrupt_detected += 1;
            self.rec.counters.fallbacks += 1;
            let _ = self
                .tracker
                .handle_report(id, Report::ParentCorrupt, self.t());
            self.drain();
            self.move_by_tracker(v);
        } else if self.saturated(p)
            && self.now >= self.viewers[p as usize].last_shed + self.config.model.shed_every_ms
        {
            // Its uplink is late: it lets its newest child go.
            self.viewers[p as usize].last_shed = self.now;
            if let Some(&c) = self.viewers[p as usize].children.last() {
                self.shed(c);
            }
        }
    }

    fn shed(&mut self, c: V) {
        self.rec.counters.children_shed += 1;
        self.settle(c);
        let Some(id) = self.viewers[c as usize].id.get() else {
            return;
        };
        let _ = self.tracker.handle_report(id, Report::ParentShed, self.t());
        self.drain();
        self.move_by_tracker(c);
        self.switched(c);
    }

    fn stop_watching(&mut self, v: V) {
        let since = self.viewers[v as usize].watching_since;
        self.rec.counters.watched_ms += self.now.saturating_sub(since);
    }

    /// `c` switched feeds now, told to (its parent closed the link or
    /// shed it): a gap of one switch, unless the new feed is gone as
    /// well (then that gap runs until `c` notices).
    fn switched(&mut self, c: V) {
        if self.viewers[c as usize].gap_until == u64::MAX {
            return;
        }
        let until = self.now + self.config.model.switch_ms(self.rtt_to_feed(c));
        self.close_gap(c, self.now, until, true);
    }

    /// `v` has heard nothing from its parent for as long as its liveness
    /// allows: it switches to its backup and reports the gap.
    fn detect(&mut self, v: V) {
        if self.viewers[v as usize].gap_until != u64::MAX {
            return;
        }
        let from = self.viewers[v as usize].gap_from;
        let backup = self.viewers[v as usize].backup;
        if !self.feed_alive(backup) && !self.closed_politely(backup) {
            // The backup vanished too: its warm connection gives `Welcome`
            // the repair's timeout first; then it has none, and asks the
            // tracker. (One that left closed its warm connection: the
            // viewer knows, and asks the tracker at once.)
            let rtt = match backup {
                Feed::Peer { v: b, .. } => self.rtt_between(v, b),
                _ => 0.0,
            };
            self.viewers[v as usize].backup = Feed::Http;
            let epoch = self.viewers[v as usize].epoch;
            self.calendar.push(
                self.now + self.config.model.welcome_timeout_ms(rtt),
                Ev::Detect { v, epoch },
            );
            return;
        }
        let mut until = self.now;
        if let Some(id) = self.viewers[v as usize].id.get() {
            // The report names the parent that went silent; the edge's
            // service ignores one about a parent the tracker has already
            // moved this viewer away from (to a live peer or the edge).
            let vanished = self.viewers[v as usize].feed;
            let now_named = self
                .tracker
                .assignment(id)
                .map_or(Feed::Http, |a| self.feed_of(a.parent));
            let stale =
                now_named != vanished && now_named != Feed::Http && self.feed_alive(now_named);
            if !stale {
                let _ = self.tracker.handle_report(id, Report::ParentGap, self.t());
                self.drain();
            }
        }
        self.viewers[v as usize].gap_until = 0;
        self.viewers[v as usize].settled = self.now;
        self.detach(v);
        self.move_by_tracker(v);
        until += self.config.model.switch_ms(self.rtt_to_feed(v));
        if !self.feed_alive(self.viewers[v as usize].feed) {
            // Named a parent that is gone as well: its own timeout runs,
            // and the gap goes on from where it began.
            self.viewers[v as usize].gap_from = from;
            return;
        }
        self.close_gap(v, from, until, true);
    }

    fn drain(&mut self) {
        while let Some(e) = self.tracker.poll_event() {
            match e {
                TrackerEvent::Moved(a) => {
                    self.rec.counters.moves += 1;
                    let Some(v) = self.viewer_of(a.id) else {
                        continue;
                    };
                    if a.parent.is_some() {
                        if let Some(since) = self.viewers[v as usize].orphan_since.take() {
                            self.rec
                                .counters
                                .orphan_wait_ms
                                .push((self.now - since) as f64);
                        }
                    }
                }
                TrackerEvent::Orphaned(id) => {
                    self.rec.counters.orphaned += 1;
                    if let Some(v) = self.viewer_of(id) {
                        self.viewers[v as usize]
                            .orphan_since
                            .get_or_insert(self.now);
                    }
                }
                TrackerEvent::Evicted { id, reason } => {
                    match reason {
                        EvictReason::Silent => self.rec.counters.evictions_silent += 1,
                        EvictReason::Corrupt => self.rec.counters.evictions_corrupt += 1,
                    }
                    let Some(v) = self.viewer_of(id) else {
                        continue;
                    };
                    let slot = id.slot() as usize;
                    self.by_slot[slot] = NO_VIEWER;
                    self.viewers[v as usize].id = TrackerId::NONE;
                    if self.viewers[v as usize].alive {
                        // It learns at its next heartbeat, and joins again;
                        // meanwhile it has no parent in the tree.
                        self.settle(v);
                        self.end_unnoticed_gap(v);
                        self.detach(v);
                    } else {
                        self.free.push(v);
                    }
                }
            }
        }
    }

    // ---- the edge's clock -----------------------------------------------

    fn tick(&mut self) {
        let tick = self.config.model.tick_ms;
        self.calendar.push(self.now + tick, Ev::Tick);
        self.tracker.handle_timeout(self.t());
        self.drain();
        // The edge's uplink over the tick.
        let edge = self.rec.counters.edge_bytes();
        let demand = edge.saturating_sub(self.edge_at_tick) as f64 * 8.0 / tick as f64; // kb/s
        self.edge_at_tick = edge;
        let n = self.live.len() as f64;
        self.rec.add_limit(n, self.usable_sum as f64, tick);
        let Some(cap) = self.config.edge_kbps() else {
            return;
        };
        if demand > cap {
            let short = 1.0 - cap / demand;
            let fed = demand / f64::from(self.config.tracker.stream_kbps);
            self.edge_debt_ms += short * tick as f64;
            if self.edge_debt_ms > self.config.model.buffer_ms as f64 {
                if !self.stalled {
                    self.stalled = true;
                    self.rec.counters.stalls += fed as u64;
                }
                self.rec.counters.stall_ms += fed * short * tick as f64;
            }
        } else {
            self.edge_debt_ms = 0.0;
            self.stalled = false;
        }
    }

    fn sample(&mut self) {
        self.calendar
            .push(self.now + self.config.sample_ms, Ev::Sample);
        let lags = self.sample_lags();
        self.rec.sample(
            self.now,
            self.live.len(),
            self.usable_sum as f64,
            &self.tracker,
            lags,
        );
    }

    /// Lag behind the origin at a few viewers' depths: the one-way delays
    /// and forwarding of each hop above them.
    fn sample_lags(&mut self) -> Vec<(u8, f64)> {
        let mut out = Vec::new();
        for _ in 0..self.config.lag_samples.min(self.live.len()) {
            let v = self.live[self.rng.below(self.live.len())];
            let mut cur = v;
            let mut lag = 0.0;
            let mut depth = 0u8;
            loop {
                let own = f64::from(self.viewers[cur as usize].rtt_ms) / 2.0;
                match self.viewers[cur as usize].feed {
                    Feed::Peer { v: p, epoch } if self.current(p, epoch) => {
                        let chunk = self.config.chunk_ms(self.viewers[p as usize].up_kbps);
                        lag += own
                            + f64::from(self.viewers[p as usize].rtt_ms) / 2.0
                            + self.config.model.hop_ms
                            + chunk;
                        depth += 1;
                        cur = p;
                    }
                    Feed::Edge => {
                        lag += own + self.config.edge_rtt_ms() / 2.0 + self.config.model.hop_ms;
                        depth += 1;
                        break;
                    }
                    _ => {
                        depth = 0;
                        break;
                    }
                }
                if depth > 64 {
                    depth = 0;
                    break;
                }
            }
            if depth > 0 {
                out.push((depth, lag));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_child_reads_of_its_parent_fills_one_cache_line() {
        assert!(std::mem::offset_of!(Viewer, feed) + std::mem::size_of::<Feed>() <= 64);
        assert!(std::mem::offset_of!(Viewer, rtt_ms) <= 128);
        assert_eq!(std::mem::align_of::<Viewer>(), 64);
    }
}
