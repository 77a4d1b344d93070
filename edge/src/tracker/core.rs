//! The tracker's placement state machine (sans-IO).
//!
//! - [`Tracker::handle_join`]: a newcomer is placed as a leaf under the
//!   shallowest parent with a free slot, preferring one on its own site, and
//!   gets a backup parent elsewhere in the tree. A peer behind a NAT
//!   takes a parent on its own site at any depth before one elsewhere, so
//!   the site pulls one copy over its WAN link and shares it over the LAN.
//!   How far it can parent depends on its [`Reach`]: until its address
//!   outside the NAT is known, or once traversals through its NAT have
//!   failed, only its own site can dial it; with a known address, peers
//!   elsewhere reach it through a simultaneous open;
//! - [`Tracker::handle_reach`] and [`Tracker::handle_dial`]: what the
//!   service learned of a peer's NAT (its reflexive address, the outcome
//!   of a traversal), so that reachability follows what was seen;
//! - [`Tracker::handle_no_udp`]: no UDP leaves the peer's site (a
//!   firewall that lets out HTTP only). It takes parents on its site
//!   only; when its site has none with room it is the site's *leader*:
//!   the edge feeds it over HTTP, outside the root's QUIC slots, and it
//!   feeds its site over the LAN;
//! - [`Tracker::handle_heartbeat`]: a peer is alive, and reports the bytes it
//!   received from its parent; that credit is its parent's *measured* upload,
//!   which sets how many children the parent may have;
//! - [`Tracker::handle_leave`], [`Tracker::handle_report`] and the heartbeat
//!   timeout in [`Tracker::handle_timeout`] remove peers; their children move
//!   to their backup where it has room, else to the best free slot, with
//!   their whole subtrees;
//! - [`Tracker::poll_event`]: moves and evictions for the driver to tell the
//!   peers.
//!
//! Policy (decision 4 of the design): newcomers start as leaves and may take
//! children once they have been around `promote_after` (earlier only when no
//! established peer has room); a parent's slots come from the upload its
//! children measured, not from what it claims; peers that ask for no upload
//! are always leaves; no peer is deeper than `max_depth`; the tree is filled
//! breadth first, so stable, proven peers sit shallow.
//!
//! Invariants (checked by [`Tracker::check_invariants`] in property tests):
//! no peer is its own ancestor, no parent has more children than slots, the
//! depth bound holds, every child can dial its parent and its backup (see
//! [`Reach`]), and every live peer has a path to the root unless
//! there is no free slot in the whole tree (then it is an orphan that is
//! placed at the next tick with room).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fixedbitset::FixedBitSet;

use prefetch_index::prefetch_index;
use treecast_proto::prefetch::prefetch_line;

/// Index value meaning "the root" (the edge).
const ROOT: u32 = u32::MAX;
/// Index value meaning "no node".
const NONE: u32 = u32::MAX - 1;

/// A peer's identity: slab index and generation, so a stale id of a peer
/// that left never names the peer that took its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl PeerId {
    fn new(index: u32, generation: u32) -> Self {
        Self(u64::from(generation) << 32 | u64::from(index))
    }
    fn index(self) -> u32 {
        self.0 as u32
    }
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Its slot in the tracker's slab: unique among live peers (a
    /// simulation indexes its own tables by it; check the whole id too,
    /// slots are reused).
    pub fn slot(self) -> u32 {
        self.index()
    }

    /// A short name for people: `p<slot>`, with `.<generation>` once the
    /// slot has been reused (`p12`, `p12.3`).
    pub fn short(self) -> String {
        match self.generation() {
            0 | 1 => format!("p{}", self.index()),
            g => format!("p{}.{g}", self.index()),
        }
    }
}

/// A node of the tree: the edge or a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// The edge, root of every tree.
    Root,
    /// A peer.
    Peer(PeerId),
}

/// Tunables of the placement policy.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Children the edge itself feeds.
    pub root_slots: u32,
    /// Deepest allowed depth (the edge's children are at depth 1).
    pub max_depth: u8,
    /// Most children any peer may have.
    pub max_children: u8,
    /// Stream bitrate in kb/s: one slot per this much measured upload.
    pub stream_kbps: u32,
    /// Slots a promoted peer gets before any upload is measured.
    pub probation_slots: u8,
    /// Age at which a newcomer may take children.
    pub promote_after: Duration,
    /// A peer silent for this long is gone.
    pub heartbeat_timeout: Duration,
    /// Window over which measured upload is averaged.
    pub upload_window: Duration,
    /// The shorter window after which a parent in slow start (until its
    /// uplink first falls short) that delivered earns more: one heartbeat,
    /// so that a flash crowd's first parents widen the tree within seconds
    /// rather than after a full `upload_window` of two children each. A
    /// shortfall is still judged over the full window.
    pub slow_start_window: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            root_slots: 4,
            max_depth: 12,
            max_children: 6,
            stream_kbps: 2_000,
            probation_slots: 2,
            promote_after: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(6),
            upload_window: Duration::from_secs(10),
            slow_start_window: Duration::from_secs(2),
        }
    }
}

/// Who can dial a peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reach {
    /// Not behind a NAT: anyone.
    #[default]
    Public,
    /// Behind a NAT whose mapping the edge observed: its own site over the
    /// LAN, and peers elsewhere that can be punched to (public ones, and
    /// other `Punch` peers) through a simultaneous open.
    Punch,
    /// Behind a NAT nobody outside can get through (not observed yet, or
    /// traversals failed: an endpoint-dependent mapping, blocked UDP): its
    /// own site only. It dials public peers, not other NATs.
    SiteOnly,
}

/// What a joining peer tells the tracker.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// Site or subnet label (peers on the same site are preferred as parents).
    pub site: u32,
    /// Behind a NAT: peers of its site are its parents of choice, and it is
    /// listed for them at any depth.
    pub nat: bool,
    /// Who can dial it (`Public` for a peer not behind a NAT).
    pub reach: Reach,
    /// Upload cap the viewer set, in kb/s; `Some(0)` means leaf only.
    pub max_upload_kbps: Option<u32>,
    /// The parent the peer is still receiving from, when it joins again
    /// after a tracker restart. Kept if it is in the tree and has room, so
    /// the tree rebuilds as it was instead of reshuffling live streams.
    pub resume_parent: Option<PeerId>,
}

/// Where a peer gets the stream from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// The peer.
    pub id: PeerId,
    /// Its parent.
    pub parent: Option<Node>,
    /// Its warm backup parent.
    pub backup: Option<Node>,
    /// Its depth (edge's children: 1); 0 while orphaned.
    pub depth: u8,
    /// Measure your uplink now, sending this many kb/s for a second
    /// ([`Tracker::handle_uplink_test`]): asked once, in a heartbeat's
    /// answer, before the peer may take children.
    pub test_uplink_kbps: Option<u32>,
}

/// A peer's periodic report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Heartbeat {
    /// Bytes received from its parent since the last heartbeat.
    pub bytes_from_parent: u64,
    /// Bytes it fetched from the edge since the last heartbeat because the
    /// tree was late: what its parent failed to deliver.
    pub bytes_from_edge: u64,
}

/// What a peer reports about its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Data from the parent stopped: move me.
    ParentGap,
    /// The parent sent data that failed verification: evict it.
    ParentCorrupt,
    /// The parent let me go because its uplink is saturated: move me, and
    /// count the parent one slot less.
    ParentShed,
}

/// Things the driver must tell peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackerEvent {
    /// A peer has a new parent or backup.
    Moved(Assignment),
    /// A peer lost its parent and no slot was free: it plays from the
    /// edge until a later tick places it (then a [`TrackerEvent::Moved`]).
    Orphaned(PeerId),
    /// A peer was removed for misbehaving or going silent.
    Evicted {
        /// The peer.
        id: PeerId,
        /// Why.
        reason: EvictReason,
    },
}

/// Why a peer was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// No heartbeat within the timeout.
    Silent,
    /// A child reported corrupt data from it.
    Corrupt,
}

/// A join that could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// No free slot within the depth bound: play from the edge over HTTP
    /// and join again later.
    #[error("no free slot in the delivery tree; play from the edge and retry")]
    NoCapacity,
}

/// The id names no live peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown peer {0:?}: it left, was evicted, or the tracker restarted; join again")]
pub struct UnknownPeer(pub PeerId);

/// A peer's record. What a heartbeat reads and writes (of the peer, its
/// parent and its backup) comes first and fills the first cache line, and
/// records start on a line: at 100,000 peers the slab is far larger than
/// the CPU's caches, and a heartbeat is then a few cache misses, one per
/// record it touches instead of two or three.
#[derive(Debug)]
#[repr(C, align(64))]
struct Peer {
    generation: u32,
    parent: u32,
    backup: u32,
    /// Generation of the backup's slot when it was chosen (a slot reused
    /// by a newcomer is not that backup any more).
    backup_generation: u32,
    live: bool,
    /// A child reported its data stopped: offered to nobody as parent or
    /// backup until it heartbeats again (a live peer does within one
    /// interval; a dead one would otherwise be handed out until its
    /// timeout, and every child sent there waits out a failed
    /// handshake).
    suspect: bool,
    depth: u8,
    /// Levels of peers below it (0: no children), kept as children come
    /// and go, so that placing a subtree needs no walk of it.
    height: u8,
    /// Its uplink has not fallen short yet: its slots double at each
    /// full window (see [`Tracker::earn`]). Read of a parent at each of
    /// its children's heartbeats.
    slow_start: bool,
    /// Its children whose bit is set in [`Tracker::bridges`]: the backup
    /// search skips a family without one unread.
    bridge_kids: u8,
    last_seen: Stamp,
    /// When its backup was last chosen or checked.
    backup_checked: Stamp,
    credit_bytes: u64,
    /// Bytes its children had to take from the edge in the window.
    credit_missed: u64,
    credit_since: Stamp,
    // The first cache line ends here. The second holds the rest of what
    // each of its own heartbeats reads (the uplink test's and the
    // reprobe's checks): at 100,000 peers every line a heartbeat touches
    // is a cache miss.
    children: Vec<u32>,
    joined: Stamp,
    cap_kbps: Option<u32>,
    measured_kbps: u32,
    /// Children it has shown it can feed; `None` until a window with
    /// children is measured (then probation slots apply). Read through
    /// [`Peer::earned`]: stored small to keep the second line.
    earned: Option<u16>,
    /// The best its uplink tests measured while it had no children, kb/s.
    tested_kbps: Option<u32>,
    /// Uplink tests asked of it ([`Tracker::handle_uplink_test`]).
    uplink_tests: u8,
    leaf_only: bool,
    /// Probes since it was cut to no slots that failed too: each doubles
    /// the wait before the next ([`Tracker::reprobe`]).
    reprobes: u8,
    /// Its children got at least [`SATURATED`] of their bytes from it in
    /// its last measured window.
    fed: bool,
    /// Behind a NAT; see [`JoinRequest::nat`]. (This and the next three
    /// are here, not further down, because every backup search reads
    /// them, of the peer and of each candidate: a third line would be a
    /// cache miss per candidate at 100,000 peers.)
    nat: bool,
    /// No UDP leaves its site; see [`Tracker::handle_no_udp`].
    no_udp: bool,
    promoted: bool,
    reach: Reach,
    // The second cache line ends here.
    /// When its uplink last fell short (it probes for more no sooner
    /// than [`PROBE_HOLD`] after).
    shed_at: Option<Stamp>,
    site: u32,
    /// Peers naming this one as their backup.
    backers: u32,
    /// Traversals through this peer's NAT that worked, and that failed
    /// with it to blame.
    punch_ok: u16,
    punch_failed: u16,
    in_open: bool,
    /// Listed in the site's lists (`site_open`).
    in_site_open: bool,
    /// Listed in [`Tracker::weak`].
    in_weak: bool,
}

/// Below this share of its children's bytes delivered by itself (the
/// rest they took from the edge) a parent that did not shed on its own
/// loses slots anyway: one that is not honest about its uplink, or runs an
/// older version. Above it, a shortfall is more likely lateness from
/// further up than this parent's uplink, which sheds by itself when full.
const SATURATED: f64 = 0.4;

/// After a parent shed a child, how long before it probes for another.
/// A probe that overfills the uplink costs the probe child a switch;
/// once a minute is cheap.
const PROBE_HOLD: Duration = Duration::from_secs(60);

/// Most doublings of [`PROBE_HOLD`] between a zero-slot peer's probes:
/// one probe in 16 minutes at worst.
const MAX_REPROBE_SHIFT: u8 = 4;

/// Children a peer must have earned to trade places with a weak peer
/// nearer the root.
const LIFT_EARNED: usize = 2;
/// Weak peers looked at per level for a trade ([`Tracker::lift`]): the
/// last listed, so a level's stale entries cost once.
const WEAK_SCAN: usize = 8;

/// Most peers an orphan's search for a peer near the top to trade places
/// with visits (breadth-first from the edge): the top levels of a tree of
/// fan-out 4 to 8 hold a few hundred.
const DISPLACE_VISITS: usize = 512;

/// How [`Tracker::displace`] places the peer whose slot an orphan takes.
#[derive(Debug, Clone, Copy)]
enum Trade {
    /// Under the orphan, in one of its free slots.
    Under,
    /// Under the orphan, in the slot of the orphan's child given here,
    /// which is placed again.
    HandOn(u32),
    /// Placed again on its own (its subtree is shorter than the orphan's).
    Shorter,
}

/// Most peers one peer stands in for as backup: each keeps a warm QUIC
/// connection to it, and a peer's connections are capped (children come
/// first), so a popular shallow peer must not be everyone's backup.
const MAX_BACKERS: u32 = 8;

/// Most peers a full peer with [room for one more](Tracker::spare_for_one)
/// backs, none two of them siblings: each bridges one child while the
/// tracker places it, and independent parents seldom die in the same
/// second. (One each left most repairs in the 100-peer lab to the edge:
/// the few such peers near a child were all taken.)
const BRIDGE_BACKERS: u32 = 3;

/// How often a heartbeat may look for a better backup than the one a peer
/// has (the edge of last resort, or one that left or filled up): often
/// enough to name a peer within a few heartbeats, rarely enough that
/// heartbeats stay cheap.
const BACKUP_RECHECK: Duration = Duration::from_secs(3);

/// A peer's age when a heartbeat's answer first asks it to test its
/// uplink: its first heartbeat. Early enough that a flash crowd's first
/// parents can be chosen among tested peers (tested at 4 s, the first
/// promoted had children already, and a test shares the uplink with
/// them), late enough that its first segments are on their way.
pub const UPLINK_TEST_AFTER: Duration = Duration::from_secs(1);

/// Newcomers an early promotion looks through for one whose uplink test
/// passed, oldest first, before it takes the oldest.
const EARLY_SCAN: usize = 64;

/// Uplink tests asked of a peer at most: a second when the first fell
/// short of the rate (a test can lose a round trip to a lost packet; the
/// better of two counts).
const UPLINK_TESTS: u8 = 2;

impl Peer {
    /// The share of what its children received in this window that came
    /// from it (the rest they took from the edge); `None` before any.
    fn delivered(&self) -> Option<f64> {
        let got = self.credit_bytes + self.credit_missed;
        (got > 0).then(|| self.credit_bytes as f64 / got as f64)
    }

    /// Listed on its site and parented there first: behind a NAT, or
    /// without UDP beyond its site.
    fn site_bound(&self) -> bool {
        self.nat || self.no_udp
    }

    /// Children it has shown it can feed ([`Peer::earned`]'s field).
    fn earned(&self) -> Option<usize> {
        self.earned.map(usize::from)
    }

    fn set_earned(&mut self, n: usize) {
        self.earned = Some(u16::try_from(n).unwrap_or(u16::MAX));
    }
}

/// Width of a [`SilenceWheel`] bucket.
const WHEEL_SLOT: Duration = Duration::from_millis(100);

/// Deadlines by 100 ms bucket: one entry (slot, generation) per live
/// peer, filed under when it counts as silent unless it heartbeats first.
/// A tick takes the buckets that are due, and the tracker files again
/// those that heartbeat meanwhile under their new deadline: finding the
/// silent costs O(entries due), not a walk of the audience at every tick
/// (which, at 100,000 peers every 500 ms, streamed the whole slab through
/// the cache twice a second). A heap did the same in O(log N) per entry
/// and cost more than the walk.
#[derive(Debug, Default)]
struct SilenceWheel {
    /// Index of `buckets[0]`.
    first: u64,
    buckets: VecDeque<Vec<(u32, u32)>>,
}

impl SilenceWheel {
    /// Files `(slot, generation)` under `due`, in the first bucket that
    /// ends at or after it (never one already taken).
    fn push(&mut self, due: Stamp, slot: u32, generation: u32) {
        let k = due
            .0
            .div_ceil(WHEEL_SLOT.as_micros() as u64)
            .max(self.first);
        let at = (k - self.first) as usize;
        if self.buckets.len() <= at {
            self.buckets.resize_with(at + 1, Vec::new);
        }
        self.buckets[at].push((slot, generation));
    }

    /// Every entry in buckets that end before `now`, taken out.
    fn due(&mut self, now: Stamp) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        while !self.buckets.is_empty() {
            let end = self.first * WHEEL_SLOT.as_micros() as u64;
            if end >= now.0 {
                break;
            }
            if let Some(b) = self.buckets.pop_front() {
                out.extend(b);
            }
            self.first += 1;
        }
        out
    }
}

/// A time on the tracker's clock: microseconds since the first `now` it
/// was given. Half the size of an `Instant`, which is what lets all that
/// a heartbeat touches of a peer share one cache line (see [`Peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Stamp(u64);

impl Stamp {
    /// Time from `earlier` to this one; zero if `earlier` is later.
    fn since(self, earlier: Stamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    fn after(self, d: Duration) -> Stamp {
        Stamp(self.0.saturating_add(d.as_micros() as u64))
    }
}

/// Traversals a peer is blamed for before it counts as unreachable
/// through its NAT (when it has not succeeded more often).
pub const DEMOTE_AFTER: u16 = 2;

fn traversals_failed(p: &Peer) -> bool {
    p.punch_failed >= DEMOTE_AFTER && p.punch_failed > p.punch_ok
}

/// One peer as an operator sees it (see [`Tracker::peers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// Its id.
    pub id: PeerId,
    /// Its parent: `None` for the edge, and for a peer waiting for one
    /// (then `placed` is false).
    pub parent: Option<PeerId>,
    /// Placed under a parent.
    pub placed: bool,
    /// Depth (edge's children: 1).
    pub depth: u8,
    /// Children now.
    pub children: u32,
    /// Child slots it may have now.
    pub slots: u32,
    /// Upload its children measured, kb/s.
    pub measured_kbps: u32,
    /// What its uplink test carried, kb/s (at most the rate it sent at,
    /// [`Tracker::uplink_test_kbps`]).
    pub tested_kbps: Option<u32>,
    /// Leaf only (zero upload).
    pub leaf_only: bool,
    /// Site key.
    pub site: u32,
    /// Behind a NAT.
    pub nat: bool,
    /// Who can dial it.
    pub reach: Reach,
}

/// The placement state machine; see the module docs.
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    peers: Vec<Peer>,
    free: Vec<u32>,
    root_children: Vec<u32>,
    /// Site leaders the edge feeds over HTTP (peers whose UDP is blocked):
    /// under the root, but not in its QUIC slots.
    http_children: Vec<u32>,
    /// Per depth, peers anyone can dial that may have a free slot (checked
    /// when used).
    open: Vec<Vec<u32>>,
    /// Per depth, peers that may be weak ([`Tracker::is_weak`]; checked
    /// when used): where [`Tracker::lift`] looks for a place for a feeder.
    weak: Vec<Vec<u32>>,
    /// Per site and depth, peers behind a NAT that may have a free slot
    /// (checked when used; an emptied list is removed).
    site_open: std::collections::HashMap<(u32, u8), Vec<u32>>,
    /// Newcomers in join order, for promotion (checked when used).
    newcomers: VecDeque<u32>,
    /// Peers without a parent, placed at the next tick with room.
    orphans: Vec<u32>,
    /// When each live peer counts as silent unless it heartbeats first;
    /// see [`SilenceWheel`].
    silence: SilenceWheel,
    events: VecDeque<TrackerEvent>,
    live: usize,
    /// Live peers at each depth (index 0: waiting for a parent), kept up
    /// to date on every move so gauges never scan the audience.
    depth_counts: Vec<u64>,
    /// While a reported peer is re-placed: the parent it reported, which
    /// is neither its new parent nor its backup (its child would refuse
    /// it, and waits out a cooldown instead of streaming).
    avoid: u32,
    /// Peers that may bridge one child more: [spare for
    /// one](Self::spare_for_one) and backing fewer than
    /// [`BRIDGE_BACKERS`], as of their last change; see
    /// [`Self::note_bridge`]. [`Self::stretch_near`] reads a bit here
    /// before a candidate's record: in the 100,000-viewer simulation it
    /// looked at eight candidates a recheck, 0.4% of which could bridge,
    /// and reading their records was a quarter of the run.
    bridges: FixedBitSet,
    /// The first `now` given: [`Stamp`] 0.
    origin: Option<Instant>,
    /// The last `now` given.
    now: Stamp,
}

impl Tracker {
    /// `now` on the tracker's clock.
    fn clock(&mut self, now: Instant) -> Stamp {
        let origin = *self.origin.get_or_insert(now);
        self.now = Stamp(now.saturating_duration_since(origin).as_micros() as u64);
        self.now
    }

    /// An empty tree.
    pub fn new(config: TrackerConfig) -> Self {
        let depths = usize::from(config.max_depth) + 1;
        Self {
            config,
            peers: Vec::new(),
            free: Vec::new(),
            root_children: Vec::new(),
            http_children: Vec::new(),
            open: vec![Vec::new(); depths],
            weak: vec![Vec::new(); depths],
            site_open: std::collections::HashMap::new(),
            newcomers: VecDeque::new(),
            orphans: Vec::new(),
            silence: SilenceWheel::default(),
            events: VecDeque::new(),
            live: 0,
            depth_counts: vec![0; depths],
            bridges: FixedBitSet::new(),
            origin: None,
            now: Stamp(0),
            avoid: NONE,
        }
    }

    /// Live peers.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Every live peer, in slot order.
    pub fn peers(&self) -> impl Iterator<Item = PeerView> + '_ {
        (0..self.peers.len() as u32).filter_map(move |i| {
            let p = &self.peers[i as usize];
            if !p.live {
                return None;
            }
            let parent = match p.parent {
                ROOT | NONE => None,
                par => Some(self.id_of(par)),
            };
            Some(PeerView {
                id: self.id_of(i),
                parent,
                placed: p.parent != NONE,
                depth: p.depth,
                children: p.children.len() as u32,
                slots: self.slots(i) as u32,
                measured_kbps: p.measured_kbps,
                tested_kbps: p.tested_kbps,
                leaf_only: p.leaf_only,
                site: p.site,
                nat: p.nat,
                reach: p.reach,
            })
        })
    }

    /// Whether no peer is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn lookup(&self, id: PeerId) -> Result<u32, UnknownPeer> {
        let i = id.index();
        match self.peers.get(i as usize) {
            Some(p) if p.live && p.generation == id.generation() => Ok(i),
            _ => Err(UnknownPeer(id)),
        }
    }

    fn id_of(&self, i: u32) -> PeerId {
        PeerId::new(i, self.peers[i as usize].generation)
    }

    fn node(&self, i: u32) -> Option<Node> {
        match i {
            ROOT => Some(Node::Root),
            NONE => None,
            i => Some(Node::Peer(self.id_of(i))),
        }
    }

    /// A hint for a caller that knows which peer it asks about next (the
    /// simulator: at 100,000 peers the slab is far larger than the CPU's
    /// caches, and a heartbeat mostly waits on memory): asks the CPU for
    /// the first two cache lines of `id`'s record, which hold all a
    /// heartbeat reads of it. Changes nothing.
    pub fn prefetch(&self, id: PeerId) {
        let i = id.index() as usize;
        if i < self.peers.len() {
            prefetch_index(&self.peers, i);
            prefetch_line(&self.peers, i, 1);
        }
    }

    /// The same hint for `id`'s parent and backup, once `id`'s own record
    /// has arrived ([`Self::prefetch`] a little earlier). Changes nothing.
    pub fn prefetch_links(&self, id: PeerId) {
        let Some(p) = self.peers.get(id.index() as usize) else {
            return;
        };
        // The edge and "none" are past the slab's end.
        for n in [p.parent as usize, p.backup as usize] {
            if n < self.peers.len() {
                prefetch_index(&self.peers, n);
            }
        }
        // A parent's window may end at this heartbeat: `earn` then reads
        // its children, on the second line.
        if (p.parent as usize) < self.peers.len() {
            prefetch_line(&self.peers, p.parent as usize, 1);
        }
    }

    /// The current assignment of `id`.
    pub fn assignment(&self, id: PeerId) -> Result<Assignment, UnknownPeer> {
        let i = self.lookup(id)?;
        Ok(self.assignment_of(i))
    }

    fn assignment_of(&self, i: u32) -> Assignment {
        let p = &self.peers[i as usize];
        Assignment {
            id: self.id_of(i),
            parent: self.node(p.parent),
            backup: self.node(p.backup),
            depth: if p.parent == NONE { 0 } else { p.depth },
            test_uplink_kbps: None,
        }
    }

    /// Places a new peer.
    pub fn handle_join(&mut self, req: JoinRequest, now: Instant) -> Result<Assignment, JoinError> {
        let now = self.clock(now);
        let leaf_only = req.max_upload_kbps == Some(0);
        let peer = Peer {
            // Generations start at 1, so no id is 0 (which names the edge on
            // the wire).
            generation: 1,
            live: true,
            parent: NONE,
            backup: NONE,
            children: Vec::new(),
            depth: 0,
            height: 0,
            leaf_only,
            promoted: false,
            uplink_tests: 0,
            tested_kbps: None,
            reprobes: 0,
            fed: false,
            in_open: false,
            in_weak: false,
            site: req.site,
            nat: req.nat,
            in_site_open: false,
            no_udp: false,
            reach: if req.nat { req.reach } else { Reach::Public },
            punch_ok: 0,
            punch_failed: 0,
            joined: now,
            last_seen: now,
            cap_kbps: req.max_upload_kbps,
            credit_bytes: 0,
            credit_missed: 0,
            credit_since: now,
            measured_kbps: 0,
            earned: None,
            shed_at: None,
            slow_start: true,
            bridge_kids: 0,
            backup_checked: now,
            backup_generation: 0,
            backers: 0,
            suspect: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                let generation = self.peers[i as usize].generation.wrapping_add(1).max(1);
                self.peers[i as usize] = Peer { generation, ..peer };
                i
            }
            None => {
                self.peers.push(peer);
                (self.peers.len() - 1) as u32
            }
        };
        let resumed = req
            .resume_parent
            .and_then(|p| self.lookup(p).ok())
            .filter(|&p| self.reaches(i, p))
            .filter(|&p| {
                // A parent from before the restart was established: let it take
                // children again at once.
                if !self.peers[p as usize].promoted {
                    self.promote(p);
                }
                self.has_room(p)
            });
        let Some(parent) = resumed.or_else(|| self.find_parent(i, req.site)) else {
            // Not kept: the peer plays from the edge and joins again later.
            self.peers[i as usize].live = false;
            self.free.push(i);
            return Err(JoinError::NoCapacity);
        };
        self.live += 1;
        let generation = self.peers[i as usize].generation;
        self.silence
            .push(now.after(self.config.heartbeat_timeout), i, generation);
        self.recount(None, i);
        self.attach(i, parent);
        if !leaf_only {
            self.newcomers.push_back(i);
        }
        let b = self.find_backup(i);
        self.set_backup(i, b);
        Ok(self.assignment_of(i))
    }

    /// `p`'s uplink fell short (it shed a child, or a child found it
    /// silent while it lived): it keeps the children it has left as its
    /// slots, leaves slow start, and probes for more only after
    /// [`PROBE_HOLD`].
    fn fell_short(&mut self, i: u32, now: Stamp) {
        let p = &mut self.peers[i as usize];
        let n = p.children.len();
        p.set_earned(n);
        p.shed_at = Some(now);
        p.slow_start = false;
        self.mark_weak(i);
    }

    /// A peer whose uplink fell short of one child has no slot, and
    /// without a child it is never measured again: it stayed a leaf for
    /// its session, whatever cut it (a busy minute, a shared uplink
    /// that freed up, a burst of loss). If its last measured window
    /// showed an uplink of at least one stream, then after
    /// [`PROBE_HOLD`], doubled for each probe of this kind that failed
    /// since, it gets one slot in slow start again: if the child is fed,
    /// its slots grow as a joiner's do; if not, it is cut at once (the
    /// silence rule, a shed) and waits twice as long. A peer whose uplink
    /// never carried one child is not asked again: probing those too cost
    /// the simulated 100,000-viewer event a third more edge streams (98
    /// to 132) and 8% more stalls.
    fn reprobe(&mut self, i: u32, now: Stamp) {
        let stream = self.config.stream_kbps;
        let p = &mut self.peers[i as usize];
        // The hold's end (a third cache line) only for a peer cut to no
        // slots: few are.
        if p.earned != Some(0) || !p.children.is_empty() || p.measured_kbps < stream {
            return;
        }
        let hold = PROBE_HOLD * (1u32 << p.reprobes.min(MAX_REPROBE_SHIFT));
        if p.shed_at.is_none_or(|t| now.since(t) < hold) {
            return;
        }
        p.earned = Some(1);
        p.slow_start = true;
        p.reprobes = p.reprobes.saturating_add(1);
        self.mark_open(i);
    }

    /// Records a heartbeat; answers the peer's current assignment.
    pub fn handle_heartbeat(
        &mut self,
        id: PeerId,
        hb: Heartbeat,
        now: Instant,
    ) -> Result<Assignment, UnknownPeer> {
        let now = self.clock(now);
        let i = self.lookup(id)?;
        let parent = {
            let p = &mut self.peers[i as usize];
            p.last_seen = now;
            p.parent
        };
        if std::mem::take(&mut self.peers[i as usize].suspect) {
            // Alive after a child found its stream stopped: what failed
            // was its delivery, not its life. A parent still in slow
            // start has not shown where its uplink ends, nor has one that
            // fell short within the hold; left with their slots, a parent
            // on a small uplink (too small to shed before its children
            // give up on it) was handed child after child, each of which
            // waited out a silence and switched (the network lab's 1 Mb/s
            // peers, on probation), and one that shed kept the slot of a
            // child that was leaving anyway (a mobile parent at depth 1
            // shed 13 children in a minute). (Cutting only parents on
            // probation measured worse in the lab: docs/tracker.md.)
            // Two keep their slots: a parent past slow start (a silence
            // of a busy machine says little, and its own shedding sees a
            // full uplink), and one whose children's bytes came from it,
            // this window or the last measured one (a pause, not its
            // uplink: a loaded machine pauses every process at once; in
            // the 100-peer lab, 144 silences in 25 s cut parents that fed
            // their children fully, until 60 peers waited for slots the
            // tree no longer offered).
            let p = &self.peers[i as usize];
            let fed = p.delivered().map_or(p.fed, |d| d >= SATURATED);
            if !fed && (p.slow_start || p.shed_at.is_some_and(|t| now.since(t) < PROBE_HOLD)) {
                self.fell_short(i, now);
            }
            self.note_bridge(i);
            self.mark_open(i);
        }
        self.reprobe(i, now);
        if parent != ROOT && parent != NONE {
            let par = &mut self.peers[parent as usize];
            par.credit_bytes += hb.bytes_from_parent;
            par.credit_missed += hb.bytes_from_edge;
            let elapsed = now.since(par.credit_since);
            // A parent in slow start that delivered is judged after
            // `slow_start_window`, to grow; a shortfall waits for the full
            // window, as before: over a couple of seconds, a joiner's first
            // segments (taken from the edge while it connects) would cut a
            // parent that is fine.
            let grows_early = par.slow_start
                && elapsed >= self.config.slow_start_window
                && par.delivered().is_some_and(|d| d >= SATURATED);
            if elapsed >= self.config.upload_window || grows_early {
                par.measured_kbps =
                    (par.credit_bytes * 8 / elapsed.as_millis().max(1) as u64) as u32;
                self.earn(parent, now);
                self.lift(parent);
                let par = &mut self.peers[parent as usize];
                par.credit_bytes = 0;
                par.credit_missed = 0;
                par.credit_since = now;
                self.mark_open(parent);
                self.shed_excess(parent);
            }
        }
        let due = now.since(self.peers[i as usize].backup_checked) >= BACKUP_RECHECK;
        let better = |b: u32| {
            let p = &self.peers[b as usize];
            !p.fed || p.backers > self.backer_room(b)
        };
        if parent != NONE && due && self.backup_peer(i).is_none_or(better) {
            // The edge was the backup of last resort, the backup left, is
            // untried, or took children since: a proven peer that can take
            // the child now is better. (Found out only at repair, a full
            // backup took the child, shed it or its newest, and held the
            // repair for a `Welcome` its full uplink delayed past a
            // second.)
            self.peers[i as usize].backup_checked = now;
            let b = self.find_backup(i);
            self.set_backup(i, b);
        }
        let mut a = self.assignment_of(i);
        let target = self.uplink_test_kbps();
        let p = &mut self.peers[i as usize];
        // Only a peer without children: with them, a test measures what
        // they leave of its uplink (their windows measure the rest).
        let wanted = match p.tested_kbps {
            None => p.uplink_tests == 0,
            Some(t) => t < target && p.uplink_tests < UPLINK_TESTS,
        };
        if wanted
            && !p.leaf_only
            && p.children.is_empty()
            && now.since(p.joined) >= UPLINK_TEST_AFTER
        {
            p.uplink_tests += 1;
            a.test_uplink_kbps = Some(target);
        }
        Ok(a)
    }

    /// The rate a peer's uplink test sends at: what its probation slots
    /// would carry.
    pub fn uplink_test_kbps(&self) -> u32 {
        self.config.stream_kbps.max(1) * u32::from(self.config.probation_slots.max(1))
    }

    /// The edge measured `kbps` from `id`'s uplink test: sent at
    /// [`Self::uplink_test_kbps`], it carried this much. Below that rate
    /// the uplink caps the peer's slots (a 1 Mb/s uplink takes no child
    /// of a 2.5 Mb/s stream, a 5 Mb/s one takes one) before any child is
    /// sent there. Without the test a promoted peer got its probation
    /// slots whatever its uplink; in the network lab a 1 Mb/s peer given
    /// a child flooded its uplink with the child's stream until even its
    /// own acknowledgements, handshakes and `Welcome`s were lost, and
    /// every child and backer it had waited seconds for a repair. At or
    /// above the rate the test says nothing about where the uplink ends:
    /// measured windows decide, as before. A test is asked only of a peer
    /// without children and counts only if it still has none; of two
    /// tests, the better counts.
    pub fn handle_uplink_test(
        &mut self,
        id: PeerId,
        kbps: u32,
        now: Instant,
    ) -> Result<(), UnknownPeer> {
        self.clock(now);
        let i = self.lookup(id)?;
        let p = &mut self.peers[i as usize];
        // Children taken since the test was asked shared its uplink.
        if p.children.is_empty() {
            p.tested_kbps = Some(p.tested_kbps.map_or(kbps, |t| t.max(kbps)));
        }
        self.note_bridge(i);
        self.mark_weak(i);
        Ok(())
    }

    /// `i`'s backup, if it is a peer still in the slot it was chosen in.
    fn backup_peer(&self, i: u32) -> Option<u32> {
        let p = &self.peers[i as usize];
        let b = p.backup;
        (b != ROOT
            && b != NONE
            && self.peers[b as usize].live
            && self.peers[b as usize].generation == p.backup_generation)
            .then_some(b)
    }

    /// Names `b` as `i`'s backup, keeping the backers counts.
    fn set_backup(&mut self, i: u32, b: u32) {
        if let Some(old) = self.backup_peer(i) {
            let o = &mut self.peers[old as usize];
            o.backers = o.backers.saturating_sub(1);
            self.note_bridge(old);
        }
        let generation = if b == ROOT || b == NONE {
            0
        } else {
            let n = &mut self.peers[b as usize];
            n.backers += 1;
            let generation = n.generation;
            self.note_bridge(b);
            generation
        };
        let p = &mut self.peers[i as usize];
        p.backup = b;
        p.backup_generation = generation;
    }

    /// Whether `c` keeps streaming when `i`'s parent dies: not `i` or
    /// below it, and not the parent or below it (a sibling backup would be
    /// orphaned by the same death).
    fn survives_parent(&self, c: u32, i: u32) -> bool {
        let parent = self.peers[i as usize].parent;
        !self.is_in_subtree(c, i) && (parent == ROOT || !self.is_in_subtree(c, parent))
    }

    /// A peer leaves politely.
    pub fn handle_leave(&mut self, id: PeerId, now: Instant) -> Result<(), UnknownPeer> {
        self.clock(now);
        let i = self.lookup(id)?;
        self.remove(i);
        Ok(())
    }

    /// A peer reports a problem with its parent.
    pub fn handle_report(
        &mut self,
        id: PeerId,
        report: Report,
        now: Instant,
    ) -> Result<(), UnknownPeer> {
        let now = self.clock(now);
        let i = self.lookup(id)?;
        let parent = self.peers[i as usize].parent;
        match report {
            Report::ParentCorrupt if parent != ROOT && parent != NONE => {
                let bad = self.id_of(parent);
                self.remove(parent);
                self.events.push_back(TrackerEvent::Evicted {
                    id: bad,
                    reason: EvictReason::Corrupt,
                });
            }
            _ if parent == NONE => {}
            report => {
                self.avoid = parent;
                if report == Report::ParentGap && parent != ROOT {
                    self.peers[parent as usize].suspect = true;
                }
                self.detach(i);
                if report == Report::ParentShed && parent != ROOT {
                    self.fell_short(parent, now);
                }
                self.replace(i);
                self.avoid = NONE;
            }
        }
        Ok(())
    }

    /// The service learned `id`'s address outside its NAT: peers elsewhere
    /// may reach it through a simultaneous open from now on, unless
    /// traversals through its NAT have failed already.
    pub fn handle_reach(&mut self, id: PeerId) -> Result<(), UnknownPeer> {
        let i = self.lookup(id)?;
        let p = &mut self.peers[i as usize];
        if p.nat && !p.no_udp && p.reach == Reach::SiteOnly && !traversals_failed(p) {
            p.reach = Reach::Punch;
            self.mark_open(i);
        }
        Ok(())
    }

    /// No UDP leaves `id`'s site (its QUIC packets never reached the
    /// edge, while its HTTP requests do): it can neither dial nor be
    /// dialled from elsewhere. It moves to a parent on its site, or
    /// becomes the site's leader, fed over HTTP (freeing a QUIC root slot
    /// if it held one); its children and backers from elsewhere move.
    pub fn handle_no_udp(&mut self, id: PeerId, now: Instant) -> Result<(), UnknownPeer> {
        self.clock(now);
        let i = self.lookup(id)?;
        if self.peers[i as usize].no_udp {
            return Ok(());
        }
        self.peers[i as usize].no_udp = true;
        self.peers[i as usize].reach = Reach::SiteOnly;
        if let Some(pos) = self.root_children.iter().position(|&c| c == i) {
            self.root_children.swap_remove(pos);
            self.http_children.push(i);
        }
        self.cut_dependents(i);
        self.keep_reachable(i);
        // Listed on its site now (a public peer was not).
        self.mark_open(i);
        Ok(())
    }

    /// `child` reports whether it got through to `parent` (its parent or
    /// backup) across a NAT. A success vouches for both sides. A failure
    /// is blamed on the side not yet proven (both when neither is) and
    /// the child is moved off that parent at once; a peer blamed
    /// [`DEMOTE_AFTER`] times and more often than it succeeded is taken
    /// to be unreachable ([`Reach::SiteOnly`]) and everyone who could
    /// only reach it through its NAT moves.
    pub fn handle_dial(
        &mut self,
        child: PeerId,
        parent: PeerId,
        ok: bool,
        now: Instant,
    ) -> Result<(), UnknownPeer> {
        self.clock(now);
        let c = self.lookup(child)?;
        // A parent that is gone teaches nothing.
        let Ok(p) = self.lookup(parent) else {
            return Ok(());
        };
        let (cp, pp) = (&self.peers[c as usize], &self.peers[p as usize]);
        if c == p || cp.site == pp.site || pp.reach == Reach::Public {
            // Not a traversal: nothing crossed a NAT towards the parent.
            return Ok(());
        }
        if ok {
            for x in [c, p] {
                let q = &mut self.peers[x as usize];
                if q.nat {
                    q.punch_ok = q.punch_ok.saturating_add(1);
                }
            }
            return Ok(());
        }
        let blame: &[u32] = if !cp.nat || (cp.punch_ok > 0 && pp.punch_ok == 0) {
            &[p]
        } else if pp.punch_ok > 0 && cp.punch_ok == 0 {
            &[c]
        } else {
            &[c, p]
        };
        let mut demote = Vec::new();
        for &x in blame {
            let q = &mut self.peers[x as usize];
            q.punch_failed = q.punch_failed.saturating_add(1);
            if q.reach == Reach::Punch && traversals_failed(q) {
                demote.push(x);
            }
        }
        self.avoid = p;
        if self.peers[c as usize].parent == p {
            self.detach(c);
            self.replace(c);
        } else if self.backup_peer(c) == Some(p) {
            let b = self.find_backup(c);
            self.set_backup(c, b);
        }
        self.avoid = NONE;
        for x in demote {
            self.demote(x);
        }
        Ok(())
    }

    /// `x` turned out unreachable through its NAT: it parents and backs
    /// only its own site from now on, and dials only public peers off it.
    fn demote(&mut self, x: u32) {
        self.peers[x as usize].reach = Reach::SiteOnly;
        self.cut_dependents(x);
        self.keep_reachable(x);
    }

    /// Moves the children and backers of `x` that cannot reach it any more.
    /// Finding who named it as backup walks the audience; this happens at
    /// most once per peer.
    fn cut_dependents(&mut self, x: u32) {
        self.avoid = x;
        let cut: Vec<u32> = self.peers[x as usize]
            .children
            .iter()
            .copied()
            .filter(|&c| !self.reaches(c, x))
            .collect();
        for c in cut {
            self.detach(c);
            self.replace(c);
        }
        for i in 0..self.peers.len() as u32 {
            if self.peers[i as usize].live && self.backup_peer(i) == Some(x) && !self.reaches(i, x)
            {
                let b = self.find_backup(i);
                self.set_backup(i, b);
            }
        }
        self.avoid = NONE;
    }

    /// Re-places `x` if it cannot reach its parent any more (it was across
    /// another NAT), and names another backup if it cannot reach that.
    fn keep_reachable(&mut self, x: u32) {
        let parent = self.peers[x as usize].parent;
        if parent != NONE && !self.reaches(x, parent) {
            self.avoid = parent;
            self.detach(x);
            self.replace(x);
            self.avoid = NONE;
        }
        if self.backup_peer(x).is_some_and(|b| !self.reaches(x, b)) {
            let b = self.find_backup(x);
            self.set_backup(x, b);
        }
    }

    /// Expires silent peers, places orphans, promotes newcomers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock(now);
        let timeout = self.config.heartbeat_timeout;
        let mut silent = Vec::new();
        for (i, generation) in self.silence.due(now) {
            let p = &self.peers[i as usize];
            if !p.live || p.generation != generation {
                // Left, or its slot went to a newcomer with its own entry.
                continue;
            }
            if now.since(p.last_seen) > timeout {
                silent.push(i);
            } else {
                // It heartbeat meanwhile: due again from its last one.
                let due = p.last_seen.after(timeout);
                self.silence.push(due, i, generation);
            }
        }
        for i in silent {
            let id = self.id_of(i);
            self.remove(i);
            self.events.push_back(TrackerEvent::Evicted {
                id,
                reason: EvictReason::Silent,
            });
        }
        while let Some(&i) = self.newcomers.front() {
            let p = &self.peers[i as usize];
            if !p.live || p.promoted {
                self.newcomers.pop_front();
                continue;
            }
            if now.since(p.joined) < self.config.promote_after {
                break;
            }
            self.newcomers.pop_front();
            self.promote(i);
        }
        // Orphans placed in a pass can make room for ones that found none
        // earlier in it (a placed orphan's subtree has free slots): pass
        // again while a pass placed someone.
        loop {
            let mut placed = false;
            for i in std::mem::take(&mut self.orphans) {
                if self.peers[i as usize].live && self.peers[i as usize].parent == NONE {
                    // Still waiting: back on the list, told once already.
                    placed |= self.place_again(i);
                }
            }
            if !placed || self.orphans.is_empty() {
                break;
            }
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<TrackerEvent> {
        self.events.pop_front()
    }

    /// At the end of a measured window with children: a parent that has
    /// filled what it earned and has not shed a child for [`PROBE_HOLD`]
    /// earns more (a probe: if the uplink cannot carry it, the parent
    /// sheds the newest child, reported with [`Report::ParentShed`], and
    /// its slots drop to what it kept): twice what it has until its uplink
    /// first falls short, one slot more after that, as TCP's slow start
    /// and congestion avoidance. (One slot per window left a flash crowd's
    /// tree two children wide for its first minute: 100,000 viewers in
    /// the simulator had 73,438 joins refused, against 18,194 doubling.)
    /// A parent whose children had to take most of the stream from the
    /// edge ([`SATURATED`]) without it shedding keeps only the children
    /// its measured upload carries, fewer than it has.
    fn earn(&mut self, i: u32, now: Stamp) {
        let stream = u64::from(self.config.stream_kbps.max(1));
        let p = &mut self.peers[i as usize];
        let children = p.children.len();
        let Some(delivered) = p.delivered().filter(|_| children > 0) else {
            return;
        };
        let earned = p.earned().unwrap_or(children);
        let may_probe = p.shed_at.is_none_or(|t| now.since(t) >= PROBE_HOLD);
        p.fed = delivered >= SATURATED;
        if p.fed {
            // It carried its children: a probe from zero slots worked.
            p.reprobes = 0;
        }
        let next = if delivered < SATURATED {
            p.slow_start = false;
            p.shed_at = Some(now);
            let proven = (u64::from(p.measured_kbps) / stream) as usize;
            proven.min(children - 1)
        } else if children >= earned && may_probe {
            let more = if p.slow_start {
                children * 2
            } else {
                children + 1
            };
            more.min(usize::from(self.config.max_children))
        } else {
            earned
        };
        p.set_earned(next);
        self.note_bridge(i);
        self.mark_weak(i);
    }

    /// Moves a proven feeder `f` towards the root: if a shallower peer
    /// has shown it can feed at most one child ([`Self::is_weak`]), the
    /// two trade places, each with its subtree, the shallowest such peer
    /// first. A weak peer costs the tree a level for everything below it
    /// (a peer at depth 1 that feeds one child makes the whole tree a level
    /// deeper), and feeders that joined late sat deep for their session:
    /// with only the top two levels searched, 100 simulated peers on
    /// `residential` links under 2 root slots stayed 7 to 12 deep after
    /// the joins; with every level, 5 to 7 ([`Self::weak`] keeps the
    /// search to a few entries per level, as [`Self::open`] does for
    /// joins).
    fn lift(&mut self, f: u32) {
        let fp = &self.peers[f as usize];
        let feeds = fp.earned().unwrap_or(0) >= LIFT_EARNED
            && self.within_caps(fp, LIFT_EARNED) >= LIFT_EARNED;
        if !feeds || fp.parent == NONE || fp.depth <= 1 {
            return;
        }
        let depth = fp.depth;
        let fparent = fp.parent;
        let Some(w) = (1..depth).find_map(|d| self.weak_at(d, f, fparent)) else {
            return;
        };
        let wparent = self.peers[w as usize].parent;
        self.detach(f);
        self.detach(w);
        self.attach(f, wparent);
        self.attach(w, fparent);
        for moved in [f, w] {
            let b = self.find_backup(moved);
            self.set_backup(moved, b);
            self.events
                .push_back(TrackerEvent::Moved(self.assignment_of(moved)));
        }
    }

    /// A weak peer at depth `d` that feeder `f` (under `fparent`) may
    /// trade places with: among the few listed last there, one not above
    /// `f` whose subtree fits under `fparent`. Drops stale entries.
    fn weak_at(&mut self, d: u8, f: u32, fparent: u32) -> Option<u32> {
        let list = usize::from(d);
        while let Some(&top) = self.weak[list].last() {
            if self.peers[top as usize].depth == d && self.is_weak(top) {
                break;
            }
            self.weak[list].pop();
            self.peers[top as usize].in_weak = false;
            self.mark_weak(top);
        }
        let fits = |t: &Self, w: u32| {
            let p = &t.peers[w as usize];
            let wparent = p.parent;
            w != f
                && p.depth == d
                && t.is_weak(w)
                && !t.is_in_subtree(f, w)
                && t.depth(fparent) + 1 + p.height <= t.config.max_depth
                && !t.is_in_subtree(wparent, f)
                && t.reaches(f, wparent)
                && t.reaches(w, fparent)
                && !t.leaves_its_lan(f, fparent, wparent)
                && !t.leaves_its_lan(w, wparent, fparent)
        };
        self.weak[list]
            .iter()
            .rev()
            .take(WEAK_SCAN)
            .copied()
            .find(|&w| fits(self, w))
    }

    /// Whether `w`, placed, feeds fewer than [`LIFT_EARNED`] children
    /// whatever it is given: it earned fewer, its uplink test or its
    /// viewer's cap allow fewer, or it takes none. (A site's leader fed
    /// over HTTP is in no QUIC slot a feeder could take.)
    fn is_weak(&self, w: u32) -> bool {
        let p = &self.peers[w as usize];
        p.live
            && p.parent != NONE
            && !p.no_udp
            && (p.leaf_only
                || p.earned().is_some_and(|e| e < LIFT_EARNED)
                || self.within_caps(p, LIFT_EARNED) < LIFT_EARNED)
    }

    /// Lists `w` in [`Self::weak`] at its depth if it is weak. Called
    /// where it may become so: its depth changes, its window closes, its
    /// uplink falls short or is tested.
    fn mark_weak(&mut self, w: u32) {
        if self.peers[w as usize].in_weak || !self.is_weak(w) {
            return;
        }
        let p = &mut self.peers[w as usize];
        // Below the depth bound for a moment (see `Self::trim`): no
        // feeder is deeper.
        let Some(list) = self.weak.get_mut(usize::from(p.depth)) else {
            return;
        };
        p.in_weak = true;
        list.push(w);
        let d = usize::from(p.depth);
        // Entries go stale as peers move; a level deeper than the feeders
        // is never searched, so its list is swept when it has grown to
        // twice the level's peers.
        if self.weak[d].len() as u64 > 2 * self.depth_counts[d] + 64 {
            self.sweep_weak(d);
        }
    }

    /// Keeps in `weak[d]` only the weak peers at depth `d`, once each.
    fn sweep_weak(&mut self, d: usize) {
        let mut list = std::mem::take(&mut self.weak[d]);
        for &w in &list {
            let p = &mut self.peers[w as usize];
            if usize::from(p.depth) == d {
                p.in_weak = false;
            }
        }
        list.retain(|&w| {
            let keep = {
                let p = &self.peers[w as usize];
                usize::from(p.depth) == d && !p.in_weak && self.is_weak(w)
            };
            if keep {
                self.peers[w as usize].in_weak = true;
            }
            keep
        });
        self.weak[d] = list;
    }

    /// Whether moving `c`, behind its site's NAT or firewall, from `from`
    /// to `to` takes it off a parent on its site (over the LAN) to one
    /// elsewhere: a second copy of the stream into its site over the WAN
    /// link, which the site placement in [`Self::find_parent`] exists to
    /// avoid. (A public peer's site, its /24, is only a preference.)
    fn leaves_its_lan(&self, c: u32, from: u32, to: u32) -> bool {
        let me = &self.peers[c as usize];
        let on_site = |p: u32| p != ROOT && p != NONE && self.peers[p as usize].site == me.site;
        me.site_bound() && on_site(from) && !on_site(to)
    }

    fn slots(&self, i: u32) -> usize {
        if i == ROOT {
            return self.config.root_slots as usize;
        }
        let p = &self.peers[i as usize];
        if p.leaf_only || !p.promoted {
            return 0;
        }
        self.capped(
            p,
            p.earned()
                .unwrap_or(usize::from(self.config.probation_slots)),
        )
    }

    /// `earned` children, within what `p` may have whatever it earns:
    /// [its uplink's caps](Self::within_caps) and `max_children`.
    fn capped(&self, p: &Peer, earned: usize) -> usize {
        self.within_caps(p, earned)
            .min(usize::from(self.config.max_children))
    }

    /// `children`, within the viewer's cap and an uplink test that fell
    /// short of its rate.
    fn within_caps(&self, p: &Peer, children: usize) -> usize {
        let tested = p.tested_kbps.filter(|&t| t < self.uplink_test_kbps());
        let stream = self.config.stream_kbps.max(1);
        [p.cap_kbps, tested]
            .into_iter()
            .flatten()
            .fold(children, |n, cap| n.min((cap / stream) as usize))
    }

    /// Whether `c`, full, has shown its uplink may carry one child more:
    /// it fed its children, is in slow start or past the hold after a
    /// shortfall (its next measured window would probe for more), and
    /// neither the viewer's cap nor its uplink test says otherwise. Such a
    /// peer may be a backup ([`Self::stretch_near`]): its uplink bridges a
    /// child whose parent died until the tracker has placed it.
    fn spare_for_one(&self, c: u32) -> bool {
        let p = &self.peers[c as usize];
        self.spare_but_for_the_hold(c)
            && (p.slow_start || p.shed_at.is_none_or(|t| self.now.since(t) >= PROBE_HOLD))
    }

    /// [`Self::spare_for_one`] but for the hold after a shortfall, which
    /// ends with time alone, unseen by [`Self::note_bridge`].
    fn spare_but_for_the_hold(&self, c: u32) -> bool {
        let p = &self.peers[c as usize];
        let n = p.children.len();
        if !p.fed || p.earned() != Some(n) {
            return false;
        }
        p.live
            && p.parent != NONE
            && !p.suspect
            && p.promoted
            && !p.leaf_only
            && self.within_caps(p, n + 1) > n
            && p.depth < self.config.max_depth
    }

    /// Keeps `c`'s bit in [`Self::bridges`]. Called where what it reads
    /// changes: its window closes ([`Self::earn`]), its children come or
    /// go, its depth changes, it is named or dropped as a backup. The
    /// rest (the hold after a shortfall running out, a flag set by a
    /// heartbeat) shows at its next window, one upload window later at
    /// most; a bit that is set wrongly only costs reading the record.
    fn note_bridge(&mut self, c: u32) {
        if c == ROOT || c == NONE {
            return;
        }
        let on = self.peers[c as usize].backers < BRIDGE_BACKERS && self.spare_but_for_the_hold(c);
        self.set_bridge(c, on);
    }

    /// Sets `c`'s bit in [`Self::bridges`], and its parent's count.
    fn set_bridge(&mut self, c: u32, on: bool) {
        let k = c as usize;
        if self.bridges.contains(k) == on {
            return;
        }
        if k >= self.bridges.len() {
            self.bridges.grow(k + 1);
        }
        self.bridges.set(k, on);
        self.count_bridge(c, on);
    }

    /// Counts `c`'s bit in its parent's [`Peer::bridge_kids`] (`on`) or
    /// takes it out, as the bit changes or `c` changes parent.
    fn count_bridge(&mut self, c: u32, on: bool) {
        let parent = self.peers[c as usize].parent;
        // A parent that left keeps no count: its children are placed
        // again one by one, the others still naming it meanwhile.
        if parent == ROOT || parent == NONE || !self.peers[parent as usize].live {
            return;
        }
        let p = &mut self.peers[parent as usize];
        p.bridge_kids = if on {
            p.bridge_kids + 1
        } else {
            p.bridge_kids - 1
        };
    }

    /// Whether `c` may keep the child it bridges as its own: it
    /// [has room for one](Self::spare_for_one) and is below
    /// `max_children`. The child is its probe, early.
    fn may_stretch(&self, c: u32) -> bool {
        self.spare_for_one(c) && self.children(c).len() < usize::from(self.config.max_children)
    }

    fn children(&self, i: u32) -> &[u32] {
        if i == ROOT {
            &self.root_children
        } else {
            &self.peers[i as usize].children
        }
    }

    fn depth(&self, i: u32) -> u8 {
        if i == ROOT {
            0
        } else {
            self.peers[i as usize].depth
        }
    }

    fn has_room(&self, i: u32) -> bool {
        (i == ROOT || {
            let p = &self.peers[i as usize];
            p.live && p.parent != NONE && !p.suspect
        }) && self.children(i).len() < self.slots(i)
            && self.depth(i) < self.config.max_depth
    }

    /// Lists `i` where children look for parents, if it has room: a peer
    /// behind a NAT in its site's lists, one others can dial in `open`.
    fn mark_open(&mut self, i: u32) {
        let p = &self.peers[i as usize];
        if !(p.live && p.parent != NONE && self.has_room(i)) {
            return;
        }
        let (d, site) = (p.depth, p.site);
        if p.site_bound() && !p.in_site_open {
            self.peers[i as usize].in_site_open = true;
            self.site_open.entry((site, d)).or_default().push(i);
        }
        let p = &mut self.peers[i as usize];
        if p.reach != Reach::SiteOnly && !p.in_open {
            p.in_open = true;
            self.open[usize::from(d)].push(i);
        }
    }

    /// Whether `child` can dial `parent`: the edge (over HTTP when no UDP
    /// leaves the child's site), a peer of its own site (over the LAN), a
    /// public peer, or a `Punch` peer when the child can be punched to (it
    /// is public or `Punch` too); a child whose UDP is blocked, only its
    /// own site.
    fn reaches(&self, child: u32, parent: u32) -> bool {
        if parent == ROOT || parent == NONE {
            return true;
        }
        let p = &self.peers[parent as usize];
        let c = &self.peers[child as usize];
        if c.no_udp {
            return p.site == c.site;
        }
        // The sites last: they are on the records' third cache line.
        match p.reach {
            Reach::Public => true,
            Reach::Punch => c.reach != Reach::SiteOnly || p.site == c.site,
            Reach::SiteOnly => p.site == c.site,
        }
    }

    /// The shallowest peer behind `site`'s NAT that can take `i` (and
    /// the subtree of `height` below it). The site's lists are tidied
    /// first: entries that no longer belong (gone, full, moved to another
    /// depth) are dropped and listed again where they belong, so a peer
    /// that moved shallower is found at its new depth in the same call.
    fn pick_on_site(&mut self, i: u32, site: u32, height: u8) -> Option<u32> {
        if self.site_open.is_empty() {
            // No peer behind a NAT: nothing to look through (an audience
            // of public peers pays nothing for sites).
            return None;
        }
        let depths = self.open.len();
        let mut dropped = Vec::new();
        for d in 1..depths {
            let key = (site, d as u8);
            let Some(list) = self.site_open.remove(&key) else {
                continue;
            };
            let mut keep = Vec::with_capacity(list.len());
            for c in list {
                let p = &self.peers[c as usize];
                let belongs = p.live
                    && p.site_bound()
                    && p.site == site
                    && p.parent != NONE
                    && usize::from(p.depth) == d
                    && self.has_room(c);
                if belongs {
                    keep.push(c);
                } else {
                    self.peers[c as usize].in_site_open = false;
                    dropped.push(c);
                }
            }
            if !keep.is_empty() {
                self.site_open.insert(key, keep);
            }
        }
        for c in dropped {
            self.mark_open(c);
        }
        for d in 1..depths {
            if d + usize::from(height) + 1 > usize::from(self.config.max_depth) {
                return None;
            }
            let Some(list) = self.site_open.get(&(site, d as u8)) else {
                continue;
            };
            // The most recently listed first, as in `open`.
            if let Some(&c) = list
                .iter()
                .rev()
                .find(|&&c| c != i && c != self.avoid && !self.is_in_subtree(c, i))
            {
                return Some(c);
            }
        }
        None
    }

    fn promote(&mut self, i: u32) {
        self.peers[i as usize].promoted = true;
        self.mark_open(i);
        self.note_bridge(i);
    }

    /// The shallowest parent with room for `i` (and the subtree below it),
    /// preferring one on `site`; promotes a newcomer early if nobody has room.
    fn find_parent(&mut self, i: u32, site: u32) -> Option<u32> {
        let height = self.subtree_height(i);
        if self.peers[i as usize].site_bound() {
            if let Some(p) = self.pick_on_site(i, site, height) {
                return Some(p);
            }
            // A peer of the site that cannot take children yet is promoted
            // early, rather than the site pulling a second copy over its
            // WAN link.
            if let Some(early) = self.site_newcomer(i, site, height) {
                self.promote(early);
                if let Some(p) = self.pick_on_site(i, site, height) {
                    return Some(p);
                }
            }
        }
        if self.peers[i as usize].no_udp {
            // The site's leader: fed by the edge over HTTP.
            return Some(ROOT);
        }
        loop {
            if let Some(p) = self.pick_open(i, site, height) {
                return Some(p);
            }
            // A peer behind `site`'s NAT, when the site has one with room
            // (a public peer on a site named by the operator can use it
            // too; the last promotion may have been of such a peer).
            if let Some(p) = self.pick_on_site(i, site, height) {
                return Some(p);
            }
            // Nobody established has room: promote the oldest placed
            // newcomer early. One waiting for a parent itself (`i` among
            // them) stays listed, to be promoted when its time comes: taken
            // off here, it was never promoted and stayed a leaf for good.
            // One whose uplink test showed it can feed children first.
            let t = &*self;
            let target = self.uplink_test_kbps();
            let can = |c: u32| {
                let p = &t.peers[c as usize];
                p.live && !p.promoted && p.parent != NONE && c != i
            };
            // Among the oldest few only: a flash crowd's queue of newcomers
            // is tens of thousands long, and scanning all of it for each
            // promotion made the 100,000-viewer simulation twice as slow.
            let early = self
                .newcomers
                .iter()
                .take(EARLY_SCAN)
                .position(|&c| can(c) && t.peers[c as usize].tested_kbps >= Some(target))
                .or_else(|| self.newcomers.iter().position(|&c| can(c)))?;
            let early = self.newcomers.remove(early)?;
            self.promote(early);
        }
    }

    fn pick_open(&mut self, i: u32, site: u32, height: u8) -> Option<u32> {
        // Peers that will never upload take the deepest free slot, leaving
        // shallow ones to peers that will feed others.
        let leaf_only = self.peers[i as usize].leaf_only;
        let root_free = self.root_children.len() < self.config.root_slots as usize;
        if !leaf_only && root_free && height < self.config.max_depth {
            return Some(ROOT);
        }
        let depths: Vec<usize> = if leaf_only {
            (1..self.open.len()).rev().collect()
        } else {
            (1..self.open.len()).collect()
        };
        for d in depths {
            if d + usize::from(height) + 1 > usize::from(self.config.max_depth) {
                if leaf_only {
                    continue;
                }
                return None;
            }
            // Drop stale entries from the top, then look at a few for the site.
            // (So is a peer only its site can dial now: it stays listed on
            // its site.)
            while let Some(&top) = self.open[d].last() {
                let p = &self.peers[top as usize];
                if p.reach != Reach::SiteOnly && self.has_room(top) && usize::from(p.depth) == d {
                    break;
                }
                self.open[d].pop();
                self.peers[top as usize].in_open = false;
                self.mark_open(top);
            }
            let n = self.open[d].len();
            let mut chosen = None;
            // Look at the top few for a same-site parent; if none of them
            // fits at all (say, they are all below `i`), look at the rest.
            let mut from = n.saturating_sub(8);
            let mut k = n;
            while k > 0 {
                k -= 1;
                if k < from {
                    if chosen.is_some() {
                        break;
                    }
                    from = 0;
                }
                let c = self.open[d][k];
                if c != i
                    && c != self.avoid
                    && self.reaches(i, c)
                    && self.has_room(c)
                    && self.depth(c) as usize == d
                    && !self.is_in_subtree(c, i)
                {
                    if self.peers[c as usize].site == site {
                        chosen = Some(c);
                        break;
                    }
                    chosen.get_or_insert(c);
                }
            }
            if let Some(c) = chosen {
                return Some(c);
            }
        }
        if leaf_only && root_free {
            return Some(ROOT);
        }
        None
    }

    /// A placed, not yet promoted peer behind `site`'s NAT that could
    /// take `i` (and the subtree of `height` below it) once promoted.
    fn site_newcomer(&self, i: u32, site: u32, height: u8) -> Option<u32> {
        self.newcomers.iter().copied().find(|&c| {
            let p = &self.peers[c as usize];
            c != i
                && p.live
                && p.site_bound()
                && p.site == site
                && !p.promoted
                && !p.leaf_only
                && p.parent != NONE
                && usize::from(p.depth) + usize::from(height) < usize::from(self.config.max_depth)
                && !self.is_in_subtree(c, i)
        })
    }

    /// Whether `c` is `root` or below it.
    fn is_in_subtree(&self, c: u32, root: u32) -> bool {
        let mut cur = c;
        for _ in 0..=self.config.max_depth {
            if cur == root {
                return true;
            }
            if cur == ROOT || cur == NONE {
                return false;
            }
            cur = self.peers[cur as usize].parent;
        }
        false
    }

    fn subtree_height(&self, i: u32) -> u8 {
        self.peers[i as usize].height
    }

    /// The height of `i`'s subtree counted level by level, to check the
    /// kept one.
    fn walked_height(&self, i: u32) -> u8 {
        let mut h = 0;
        let mut level: Vec<u32> = self.peers[i as usize].children.clone();
        while !level.is_empty() {
            h += 1;
            level = level
                .iter()
                .flat_map(|&c| self.peers[c as usize].children.iter().copied())
                .collect();
        }
        h
    }

    /// Updates the kept heights from peer `p` up, after its children
    /// changed: O(depth × fan-out), and it stops at the first ancestor
    /// whose height stays.
    fn fix_heights(&mut self, mut p: u32) {
        while p != ROOT && p != NONE {
            let h = self.peers[p as usize]
                .children
                .iter()
                .map(|&c| self.peers[c as usize].height + 1)
                .max()
                .unwrap_or(0);
            let rec = &mut self.peers[p as usize];
            if rec.height == h {
                break;
            }
            rec.height = h;
            p = rec.parent;
        }
    }

    fn find_backup(&self, i: u32) -> u32 {
        // A peer that fed its children in its last measured window first,
        // then any: a repair lands on the backup at once, and an untried
        // parent on a small uplink held it for seconds (in the 100-peer
        // lab its uplink, flooded by a first child, delayed even its
        // `Welcome`; repair p95 3.7-4.2 s with any backup, 1.5-2.6 s with
        // only proven ones). The edge only when there is none (it feeds a
        // peer that switches to it until the tracker moves it on).
        let parent = self.peers[i as usize].parent;
        self.backup_among(i)
            .unwrap_or(if parent == ROOT { NONE } else { ROOT })
    }

    /// A backup for `i`: one with room, no deeper than `i`, that is
    /// neither its parent nor below it (on its own site first, for a peer
    /// only its site can reach); the first that fed its children, else a
    /// full one near `i` that fed its children and may take one more
    /// ([`Self::stretch_near`]), else the first untried. One pass over the candidates: in the 100,000-viewer
    /// simulation, where a quarter of the peers test too small to feed
    /// anyone, a pass for each kind made backups a sixth of the run.
    fn backup_among(&self, i: u32) -> Option<u32> {
        let me = &self.peers[i as usize];
        let mut untried = None;
        let mut consider = |c: u32| {
            let fits = c != i
                && c != self.avoid
                && self.has_room(c)
                && self.peers[c as usize].backers < self.backer_room(c)
                && self.survives_parent(c, i);
            if fits && self.peers[c as usize].fed {
                return true;
            }
            if fits && untried.is_none() {
                untried = Some(c);
            }
            false
        };
        if me.site_bound() {
            for d in 1..=self.depth_of_parent_slot(i) {
                let Some(list) = self.site_open.get(&(me.site, d)) else {
                    continue;
                };
                for &c in list.iter().rev().take(8) {
                    let p = &self.peers[c as usize];
                    if p.live && p.site == me.site && p.depth == d && consider(c) {
                        return Some(c);
                    }
                }
            }
        }
        // Bounded by the lists there are, whatever `i`'s depth: a peer below
        // `max_depth` once made a heartbeat's backup search panic (the
        // 1,000,000-viewer simulation).
        let deepest = usize::from(self.depth_of_parent_slot(i)).min(self.open.len() - 1);
        for d in 1..=deepest {
            for &c in self.open[d].iter().rev().take(8) {
                // Room first: it reads only the records' first two lines.
                if self.has_room(c) && self.reaches(i, c) && consider(c) {
                    return Some(c);
                }
            }
        }
        self.stretch_near(i).or(untried)
    }

    /// Most peers `c` may back: its free slots (siblings lose their parent
    /// together; named the same backup with one free slot, they all
    /// switched to it, saturated its uplink and waited out its `Welcome`:
    /// most repairs over a second in the 100-peer lab), and never more
    /// than [`MAX_BACKERS`]; a full one with
    /// [room for one more](Self::spare_for_one), [`BRIDGE_BACKERS`].
    fn backer_room(&self, c: u32) -> u32 {
        let free = self.slots(c).saturating_sub(self.children(c).len());
        if free == 0 && self.spare_for_one(c) {
            return BRIDGE_BACKERS;
        }
        (free as u32).min(MAX_BACKERS)
    }

    /// Whether `b` backs a sibling of `i`: siblings lose their parent
    /// together, and a full peer bridges one child at a time.
    fn backs_a_sibling(&self, b: u32, i: u32) -> bool {
        let parent = self.peers[i as usize].parent;
        parent != NONE
            && self
                .children(parent)
                .iter()
                .any(|&s| s != i && self.backup_peer(s) == Some(b))
    }

    /// A full peer near `i` with [room for one more](Self::spare_for_one)
    /// to back it: a sibling of its parent, else of its grandparent (so
    /// `i` stays at its depth or rises). Proven parents are mostly full:
    /// their slots grow only once filled, and many are at `max_children`.
    /// One below `max_children` keeps `i` ([`Self::may_stretch`]); one at
    /// it feeds `i` while the tracker places it elsewhere, as the edge
    /// would. In the 100-peer `residential` lab, before this, 70 of 104
    /// repairs went to the edge as the backup of last resort (edge 2.4
    /// streams over QUIC against 2 root slots), and a dozen were refused
    /// there, the tracker having moved on, and waited for a parent
    /// dialled cold (repair p95 1.3 s).
    fn stretch_near(&self, i: u32) -> Option<u32> {
        let height = self.peers[i as usize].height;
        let mut a = self.peers[i as usize].parent;
        for _ in 0..2 {
            if a == ROOT || a == NONE {
                return None;
            }
            let up = self.peers[a as usize].parent;
            if up == NONE {
                return None;
            }
            if up != ROOT && self.peers[up as usize].bridge_kids == 0 {
                a = up;
                continue;
            }
            let found = self.children(up).iter().copied().find(|&s| {
                s != a
                    && s != i
                    && self.bridges.contains(s as usize)
                    && s != self.avoid
                    && self.peers[s as usize].backers < BRIDGE_BACKERS
                    && self.spare_for_one(s)
                    && self.depth(s) + 1 + height <= self.config.max_depth
                    && self.reaches(i, s)
                    && self.survives_parent(s, i)
                    && !self.backs_a_sibling(s, i)
            });
            if found.is_some() {
                return found;
            }
            a = up;
        }
        None
    }

    fn depth_of_parent_slot(&self, i: u32) -> u8 {
        self.peers[i as usize].depth.max(1)
    }

    /// Where peer `i` counts in [`Self::depth_counts`]: `None` if not live.
    fn bucket(&self, i: u32) -> Option<usize> {
        let p = &self.peers[i as usize];
        p.live.then(|| {
            let d = if p.parent == NONE {
                0
            } else {
                usize::from(p.depth)
            };
            d.min(self.depth_counts.len() - 1)
        })
    }

    /// Moves peer `i` in the depth counts from `before` to where it is now.
    fn recount(&mut self, before: Option<usize>, i: u32) {
        let after = self.bucket(i);
        if before != after {
            if let Some(b) = before {
                self.depth_counts[b] -= 1;
            }
            if let Some(a) = after {
                self.depth_counts[a] += 1;
            }
        }
    }

    fn attach(&mut self, i: u32, parent: u32) {
        if parent == ROOT && self.peers[i as usize].no_udp {
            self.http_children.push(i);
        } else if parent == ROOT {
            self.root_children.push(i);
        } else {
            self.peers[parent as usize].children.push(i);
        }
        let before = self.bucket(i);
        self.peers[i as usize].parent = parent;
        if self.bridges.contains(i as usize) {
            self.count_bridge(i, true);
        }
        self.recount(before, i);
        self.fix_heights(parent);
        let base = self.depth(parent) + 1;
        self.set_depths(i, base);
        self.note_bridge(parent);
    }

    fn set_depths(&mut self, i: u32, depth: u8) {
        let mut stack = vec![(i, depth)];
        while let Some((n, d)) = stack.pop() {
            let before = self.bucket(n);
            self.peers[n as usize].depth = d;
            self.recount(before, n);
            let p = &mut self.peers[n as usize];
            p.in_open = false;
            p.in_site_open = false;
            p.in_weak = false;
            for &c in &p.children {
                stack.push((c, d + 1));
            }
            self.mark_open(n);
            self.mark_weak(n);
            self.note_bridge(n);
        }
    }

    fn detach(&mut self, i: u32) {
        let parent = self.peers[i as usize].parent;
        let list = match parent {
            NONE => return,
            ROOT if self.http_children.contains(&i) => &mut self.http_children,
            ROOT => &mut self.root_children,
            p => &mut self.peers[p as usize].children,
        };
        if let Some(pos) = list.iter().position(|&c| c == i) {
            list.swap_remove(pos);
        }
        if self.bridges.contains(i as usize) {
            self.count_bridge(i, false);
        }
        let before = self.bucket(i);
        self.peers[i as usize].parent = NONE;
        self.recount(before, i);
        self.fix_heights(parent);
        if parent != ROOT {
            self.mark_open(parent);
            self.note_bridge(parent);
        }
    }

    /// Gives `i` (already detached) a new parent: its backup if it has
    /// room or [may stretch](Self::may_stretch), else the best free slot; an orphan if there is none.
    fn replace(&mut self, i: u32) {
        if !self.place_again(i) {
            self.events.push_back(TrackerEvent::Orphaned(self.id_of(i)));
        }
    }

    /// [`Self::replace`] without telling: whether `i` was placed.
    fn place_again(&mut self, i: u32) -> bool {
        let backup = match self.peers[i as usize].backup {
            ROOT => Some(ROOT),
            _ => self.backup_peer(i),
        };
        let height = self.subtree_height(i);
        // A site's leader is chosen by `find_parent`, its site first: a
        // peer without UDP whose backup is the edge takes it only there.
        let no_udp = self.peers[i as usize].no_udp;
        let backup = backup.filter(|&b| {
            !(no_udp && b == ROOT)
                && self.reaches(i, b)
                && (self.has_room(b) || (b != ROOT && self.may_stretch(b)))
                && !self.is_in_subtree(b, i)
                && self.depth(b) + 1 + height <= self.config.max_depth
        });
        let site = self.peers[i as usize].site;
        let target = backup.or_else(|| self.find_parent(i, site));
        let was_edge = self.peers[i as usize].backup == ROOT;
        match target {
            Some(t) => {
                if t != ROOT && !self.has_room(t) {
                    // A backup stretched by one: its next probe, taken now.
                    let p = &mut self.peers[t as usize];
                    let n = p.children.len() + 1;
                    p.set_earned(n);
                }
                self.attach(i, t);
                // A peer whose backup was the edge may be switching to it
                // this moment: its report and its `Hello` race, and the
                // edge admits over its slots only a peer the tracker names.
                // It stays the backup until the next recheck, so the edge
                // bridges the peer to its new parent. (Refused, a dozen
                // repairs in a 100-peer lab run waited for the new parent
                // dialled cold: 0.6-2.6 s.)
                let b = if was_edge && t != ROOT {
                    ROOT
                } else {
                    self.find_backup(i)
                };
                self.set_backup(i, b);
                self.events
                    .push_back(TrackerEvent::Moved(self.assignment_of(i)));
                true
            }
            None if self.displace(i, height) => true,
            None => {
                self.orphans.push(i);
                false
            }
        }
    }

    /// Places orphan `i`, whose subtree is `height` tall, in the slot of a
    /// peer `w` near the top, at a depth where `i`'s subtree fits; `w`
    /// (with its subtree) becomes `i`'s child. Without this, a peer high in
    /// the tree whose parent left waited, with everything below it, for a
    /// slot shallow enough to come free: minutes, in a full tree
    /// (docs/sim.md, "Orphans that wait minutes").
    ///
    /// `w` is one of three kinds, in this order of preference, each the one
    /// with the shortest subtree: one whose subtree still fits a level
    /// deeper, when `i` has a free slot (after a depth-1 peer leaves and one
    /// of its children takes its slot, everything below that child has a
    /// level to spare; its siblings trade with its children); the same when
    /// `i` is full and tall, `i` then handing its child with the shortest
    /// subtree on to be placed again (the siblings of a lost peer near the
    /// top are mostly full, and waited minutes for a slot at their depth: a
    /// short subtree fits almost anywhere); or one whose subtree is shorter
    /// than `i`'s by two or more, placed again on its own if it does not
    /// fit under `i`, where a shorter subtree fits in more places. Each trade
    /// leaves only strictly shorter subtrees to place, so a chain of them
    /// ends. `w` moves make-before-break.
    ///
    /// The search is breadth-first from the edge and stops after
    /// [`DISPLACE_VISITS`] peers: a tall subtree needs one of the top few
    /// levels, which are small.
    fn displace(&mut self, i: u32, height: u8) -> bool {
        let p = &self.peers[i as usize];
        if height == 0 || p.leaf_only || p.no_udp {
            return false;
        }
        let Some(deepest) = self.config.max_depth.checked_sub(height) else {
            return false;
        };
        // When no trade near the top fits the whole subtree (in a tree at
        // its depth bound everywhere, every peer at that depth is as tall
        // as the orphan), it goes one level lower and its peers that end
        // up too deep are placed again on their own: a few of them, near
        // the leaves, against the whole subtree fed by the edge until a
        // slot near the top comes free, which took minutes.
        let (w, trade, trim) = match self.trade_near_top(i, deepest, height) {
            Some((w, trade)) => (w, trade, false),
            None if height >= 2 => match self.trade_near_top(i, deepest + 1, height) {
                Some((w, trade)) => (w, trade, true),
                None => return false,
            },
            None => return false,
        };
        let parent = self.peers[w as usize].parent;
        self.detach(w);
        self.attach(i, parent);
        let b = self.find_backup(i);
        self.set_backup(i, b);
        self.events
            .push_back(TrackerEvent::Moved(self.assignment_of(i)));
        let handed_on = match trade {
            Trade::HandOn(c) => {
                self.detach(c);
                Some(c)
            }
            Trade::Under | Trade::Shorter => None,
        };
        let fits = self.depth(i) + 1 + self.peers[w as usize].height <= self.config.max_depth;
        if fits && self.has_room(i) && self.reaches(w, i) {
            self.attach(w, i);
            let b = self.find_backup(w);
            self.set_backup(w, b);
            self.events
                .push_back(TrackerEvent::Moved(self.assignment_of(w)));
        } else {
            self.replace(w);
        }
        if let Some(c) = handed_on {
            self.replace(c);
        }
        if trim {
            self.trim(i);
        }
        true
    }

    /// Places again, on their own, the peers of `i`'s subtree deeper than
    /// `max_depth` (after [`Self::displace`] put it one level too low).
    fn trim(&mut self, i: u32) {
        let mut level = vec![i];
        for _ in self.depth(i)..self.config.max_depth {
            level = level
                .iter()
                .flat_map(|&p| self.peers[p as usize].children.iter().copied())
                .collect();
        }
        let too_deep: Vec<u32> = level
            .iter()
            .flat_map(|&p| self.peers[p as usize].children.iter().copied())
            .collect();
        for c in too_deep {
            self.detach(c);
            self.replace(c);
        }
    }

    /// The peer [`Self::displace`] trades orphan `i` (subtree `height`
    /// tall) with, at depth `deepest` or above (the shallowest of equals);
    /// `None` if there is none within [`DISPLACE_VISITS`].
    fn trade_near_top(&self, i: u32, deepest: u8, height: u8) -> Option<(u32, Trade)> {
        let orphan = &self.peers[i as usize];
        let room = !orphan.suspect && orphan.children.len() < self.slots(i);
        // Without a free slot, `i` makes one by handing on its child with
        // the shortest subtree, if its own is over a quarter of the depth
        // bound tall: it then fits only near the top, and waits long. A
        // shorter one soon has a place, and handing a child on costs that
        // child a switch, or a wait of its own in a full tree (in a swarm
        // of 12, `tests/swarm.rs`, that showed as repairs of 2 s; the long
        // waits the rule is for were of subtrees 7 to 10 tall, of 12).
        let tall = u16::from(height) * 4 > u16::from(self.config.max_depth);
        let under = if room {
            Some(Trade::Under)
        } else if orphan.suspect || !tall {
            None
        } else {
            orphan
                .children
                .iter()
                .copied()
                .min_by_key(|&c| self.peers[c as usize].height)
                .map(Trade::HandOn)
        };
        let max_depth = self.config.max_depth;
        let mut level: Vec<u32> = self.root_children.clone();
        // (0 if it would go under `i`, else 1; its height), the least wins.
        let mut best: Option<((u8, u8), u32, Trade)> = None;
        let mut visits = 0;
        for _ in 1..=deepest {
            let mut next = Vec::new();
            for &w in &level {
                visits += 1;
                if visits > DISPLACE_VISITS {
                    return best.map(|(_, w, trade)| (w, trade));
                }
                let p = &self.peers[w as usize];
                next.extend_from_slice(&p.children);
                let parent = p.parent;
                let parent_ok = parent == ROOT || {
                    let q = &self.peers[parent as usize];
                    q.live && !q.suspect
                };
                if w == i || !parent_ok || parent == self.avoid || !self.reaches(i, parent) {
                    continue;
                }
                let goes_under =
                    under.filter(|_| p.depth + 1 + p.height <= max_depth && self.reaches(w, i));
                let (key, trade) = match goes_under {
                    Some(trade) => ((0, p.height), trade),
                    None if p.height + 1 < height => ((1, p.height), Trade::Shorter),
                    None => continue,
                };
                if best.is_none_or(|(k, _, _)| key < k) {
                    best = Some((key, w, trade));
                    if key.1 == 0 && (key.0 == 0 || under.is_none()) {
                        return Some((w, trade));
                    }
                }
            }
            level = next;
        }
        best.map(|(_, w, trade)| (w, trade))
    }

    /// Moves the newest children of `i` elsewhere when its measured upload
    /// no longer covers them all.
    fn shed_excess(&mut self, i: u32) {
        while self.peers[i as usize].children.len() > self.slots(i) {
            let Some(&c) = self.peers[i as usize].children.last() else {
                break;
            };
            self.detach(c);
            self.replace(c);
        }
    }

    fn remove(&mut self, i: u32) {
        self.detach(i);
        self.set_backup(i, NONE);
        // Its children's bits leave with them (`attach` counts them where
        // they land), and a newcomer in its slot starts without one.
        self.set_bridge(i, false);
        let children = std::mem::take(&mut self.peers[i as usize].children);
        let before = self.bucket(i);
        {
            let p = &mut self.peers[i as usize];
            p.height = 0;
            p.live = false;
            p.in_open = false;
            p.in_site_open = false;
            p.in_weak = false;
        }
        self.recount(before, i);
        self.live -= 1;
        self.free.push(i);
        self.peers[i as usize].bridge_kids = 0;
        for c in children {
            let before = self.bucket(c);
            self.peers[c as usize].parent = NONE;
            self.recount(before, c);
            if self.peers[c as usize].backup == i {
                // Its slot is gone, and its backers count with it.
                self.peers[c as usize].backup = NONE;
            }
            self.replace(c);
        }
    }

    /// Checks every invariant in the module docs; `Err` names the first broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.root_children.len() > self.config.root_slots as usize {
            return Err("root over its slots".into());
        }
        let mut live = 0;
        for (i, p) in self.peers.iter().enumerate() {
            if !p.live {
                continue;
            }
            live += 1;
            let i = i as u32;
            if p.children.len() > self.slots(i) {
                return Err(format!(
                    "peer {i} has {} children, {} slots",
                    p.children.len(),
                    self.slots(i)
                ));
            }
            if p.leaf_only && !p.children.is_empty() {
                return Err(format!("leaf-only peer {i} has children"));
            }
            for &c in &p.children {
                let cp = &self.peers[c as usize];
                if !cp.live || cp.parent != i {
                    return Err(format!("peer {i} lists {c} as child, which disagrees"));
                }
            }
            let bridging = p
                .children
                .iter()
                .filter(|&&c| self.bridges.contains(c as usize))
                .count();
            if usize::from(p.bridge_kids) != bridging {
                return Err(format!(
                    "peer {i} counts {} children that may bridge, {bridging} have the bit",
                    p.bridge_kids
                ));
            }
            if p.height != self.walked_height(i) {
                return Err(format!(
                    "peer {i} keeps height {} but its subtree is {} deep",
                    p.height,
                    self.walked_height(i)
                ));
            }
            if p.parent == NONE {
                if !self.orphans.contains(&i) {
                    return Err(format!(
                        "peer {i} has no parent and is not queued as an orphan"
                    ));
                }
                continue;
            }
            // Path to the root within the depth bound, depths consistent.
            let mut cur = i;
            let mut steps = 0u8;
            while cur != ROOT && cur != NONE {
                // NONE: below an orphan, allowed while it waits for room.
                let c = &self.peers[cur as usize];
                if !c.live {
                    return Err(format!("peer {i} hangs below dead peer {cur}"));
                }
                if steps > 0 && cur == i {
                    return Err(format!("peer {i} is its own ancestor"));
                }
                steps += 1;
                if steps > self.config.max_depth {
                    return Err(format!("peer {i}: path longer than max depth (a cycle?)"));
                }
                cur = c.parent;
            }
            if cur == ROOT && steps != p.depth {
                return Err(format!(
                    "peer {i} depth {} but {} steps to the root",
                    p.depth, steps
                ));
            }
            if p.parent == ROOT
                && !self.root_children.contains(&i)
                && !self.http_children.contains(&i)
            {
                return Err(format!("root does not list child {i}"));
            }
            if p.no_udp && self.root_children.contains(&i) {
                return Err(format!("peer {i} without UDP holds a QUIC root slot"));
            }
        }
        if live != self.live {
            return Err(format!("live count {} but {} live peers", self.live, live));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let i = i as u32;
            let backup_ok = self.backup_peer(i).is_none_or(|b| self.reaches(i, b));
            if p.live && !(self.reaches(i, p.parent) && backup_ok) {
                return Err(format!(
                    "peer {i} (site {}) cannot dial its parent or backup",
                    p.site
                ));
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            let listed = |d: usize| self.weak[d].contains(&(i as u32));
            let d = usize::from(p.depth);
            if d < self.weak.len() && self.is_weak(i as u32) && !listed(d) {
                return Err(format!("weak peer {i} at depth {d} is not listed there"));
            }
            let dialable = p.live && p.parent != NONE && p.reach != Reach::SiteOnly;
            if dialable && self.has_room(i as u32) && !self.open[d].contains(&(i as u32)) {
                return Err(format!(
                    "peer {i} with room at depth {d} is not listed open"
                ));
            }
        }
        let mut backers = vec![0u32; self.peers.len()];
        for i in 0..self.peers.len() as u32 {
            if let (true, Some(b)) = (self.peers[i as usize].live, self.backup_peer(i)) {
                backers[b as usize] += 1;
            }
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.live && p.backers != backers[i] {
                return Err(format!(
                    "peer {i} counts {} backers, {} name it",
                    p.backers, backers[i]
                ));
            }
        }
        let mut counts = vec![0u64; self.depth_counts.len()];
        for i in 0..self.peers.len() as u32 {
            if let Some(b) = self.bucket(i) {
                counts[b] += 1;
            }
        }
        if counts != self.depth_counts {
            return Err(format!(
                "depth counts {:?} but the peers give {counts:?}",
                self.depth_counts
            ));
        }
        Ok(())
    }

    /// Site leaders the edge feeds over HTTP now.
    pub fn http_fed(&self) -> usize {
        self.http_children.len()
    }

    /// Peers with no path to the root right now.
    pub fn orphan_count(&self) -> usize {
        self.orphans
            .iter()
            .filter(|&&i| self.peers[i as usize].live && self.peers[i as usize].parent == NONE)
            .count()
    }

    /// Deepest depth in use; O(max depth).
    pub fn max_depth_in_use(&self) -> u8 {
        self.depth_counts
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, |d| d as u8)
    }

    /// Live peers at each depth, index 0 for those waiting for a parent
    /// (depths past the configured maximum count at the last index); kept
    /// up to date, so O(1).
    pub fn depth_counts(&self) -> &[u64] {
        &self.depth_counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Join {
            site: u32,
            cap: Option<u32>,
            nat: bool,
        },
        /// The service learned a peer's reflexive address.
        Reach(usize),
        /// A child reports its parent reached or not through a NAT.
        Dial(usize, bool),
        /// The service learned a peer's UDP is blocked.
        NoUdp(usize),
        Leave(usize),
        Heartbeat(usize, u64),
        Report(usize, bool),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u32..3, prop_oneof![Just(None), Just(Some(0)), (1u32..20_000).prop_map(Some)], any::<bool>())
                .prop_map(|(site, cap, nat)| Op::Join { site, cap, nat }),
            2 => any::<usize>().prop_map(Op::Reach),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(k, ok)| Op::Dial(k, ok)),
            1 => any::<usize>().prop_map(Op::NoUdp),
            2 => any::<usize>().prop_map(Op::Leave),
            4 => (any::<usize>(), 0u64..5_000_000).prop_map(|(k, b)| Op::Heartbeat(k, b)),
            1 => (any::<usize>(), any::<bool>()).prop_map(|(k, c)| Op::Report(k, c)),
            2 => (1u64..8).prop_map(Op::Tick),
        ]
    }

    fn config() -> TrackerConfig {
        TrackerConfig {
            root_slots: 3,
            max_depth: 5,
            max_children: 4,
            stream_kbps: 1_000,
            probation_slots: 2,
            promote_after: Duration::from_secs(3),
            heartbeat_timeout: Duration::from_secs(6),
            upload_window: Duration::from_secs(2),
            slow_start_window: Duration::from_secs(2),
        }
    }

    /// Moves the clock past `promote_after` (still within the heartbeat
    /// timeout), with a heartbeat from each of `alive`, then ticks.
    fn age(t: &mut Tracker, now: &mut Instant, alive: &[PeerId]) {
        *now += Duration::from_secs(4);
        for &p in alive {
            t.handle_heartbeat(p, Heartbeat::default(), *now)
                .expect("alive");
        }
        t.handle_timeout(*now);
    }

    /// Whether some orphan could have been placed: a node with room, not
    /// below it, shallow enough for its subtree.
    fn orphan_had_a_place(t: &Tracker) -> bool {
        t.orphans.iter().any(|&o| {
            let p = &t.peers[o as usize];
            if !p.live || p.parent != NONE {
                return false;
            }
            let h = t.subtree_height(o);
            std::iter::once(ROOT)
                .chain((0..t.peers.len() as u32).filter(|&c| t.peers[c as usize].live))
                .any(|c| {
                    c != o
                        && t.has_room(c)
                        && t.reaches(o, c)
                        && !t.is_in_subtree(c, o)
                        && t.depth(c) + 1 + h <= t.config.max_depth
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn invariants_hold_under_any_sequence(ops in proptest::collection::vec(op(), 1..300)) {
            let start = Instant::now();
            let mut now = start;
            let mut t = Tracker::new(config());
            let mut ids: Vec<PeerId> = Vec::new();
            for op in ops {
                match op {
                    Op::Join { site, cap, nat } => {
                        let resume_parent = ids.first().copied().filter(|_| site == 2);
                        let reach = if nat { Reach::SiteOnly } else { Reach::Public };
                        if let Ok(a) = t.handle_join(JoinRequest { site, max_upload_kbps: cap, resume_parent, nat, reach }, now) {
                            prop_assert!(a.parent.is_some());
                            prop_assert!(a.depth >= 1 && a.depth <= 5);
                            ids.push(a.id);
                        }
                    }
                    Op::Leave(k) if !ids.is_empty() => {
                        let id = ids.swap_remove(k % ids.len());
                        let _ = t.handle_leave(id, now);
                        prop_assert!(t.assignment(id).is_err(), "a peer that left is gone");
                    }
                    Op::Heartbeat(k, bytes) if !ids.is_empty() => {
                        let _ = t.handle_heartbeat(ids[k % ids.len()], Heartbeat { bytes_from_parent: bytes, bytes_from_edge: if k % 3 == 0 { bytes } else { 0 } }, now);
                    }
                    Op::Report(k, corrupt) if !ids.is_empty() => {
                        let id = ids[k % ids.len()];
                        let parent = t.assignment(id).ok().and_then(|a| a.parent);
                        let report = if corrupt { Report::ParentCorrupt } else { Report::ParentGap };
                        let _ = t.handle_report(id, report, now);
                        if let (true, Some(Node::Peer(p))) = (corrupt, parent) {
                            prop_assert!(t.assignment(p).is_err(), "corrupt parent evicted");
                        }
                    }
                    Op::Reach(k) if !ids.is_empty() => {
                        let _ = t.handle_reach(ids[k % ids.len()]);
                    }
                    Op::NoUdp(k) if !ids.is_empty() => {
                        let _ = t.handle_no_udp(ids[k % ids.len()], now);
                    }
                    Op::Dial(k, ok) if !ids.is_empty() => {
                        let id = ids[k % ids.len()];
                        if let Ok(Assignment { parent: Some(Node::Peer(p)), .. }) = t.assignment(id) {
                            let _ = t.handle_dial(id, p, ok, now);
                        }
                    }
                    Op::Tick(secs) => {
                        now += Duration::from_secs(secs);
                        // Everyone alive keeps heartbeating except a few.
                        for (n, id) in ids.iter().enumerate() {
                            if n % 7 != 3 {
                                let _ = t.handle_heartbeat(*id, Heartbeat::default(), now);
                            }
                        }
                        t.handle_timeout(now);
                        prop_assert!(!orphan_had_a_place(&t), "an orphan was left while there was room for it");
                    }
                    _ => {}
                }
                if let Err(e) = t.check_invariants() {
                    prop_assert!(false, "{}", e);
                }
                ids.retain(|id| t.assignment(*id).is_ok());
            }
        }
    }

    #[test]
    fn what_a_heartbeat_touches_fills_one_cache_line() {
        assert_eq!(std::mem::offset_of!(Peer, children), 64);
        assert_eq!(std::mem::align_of::<Peer>(), 64);
        // What a peer's own heartbeat and its backup search read stays
        // on the second line.
        for end in [
            std::mem::offset_of!(Peer, fed),
            std::mem::offset_of!(Peer, nat),
            std::mem::offset_of!(Peer, no_udp),
            std::mem::offset_of!(Peer, promoted),
            std::mem::offset_of!(Peer, reach),
            std::mem::offset_of!(Peer, tested_kbps),
        ] {
            assert!((64..128).contains(&end), "{end}");
        }
    }

    #[test]
    fn after_a_restart_peers_resume_under_the_parent_they_still_have() {
        let now = Instant::now();
        let mut t = Tracker::new(config());
        // Root slots fill up first, then c asks to stay under b.
        let a = t.handle_join(JoinRequest::default(), now).expect("a");
        let b = t.handle_join(JoinRequest::default(), now).expect("b");
        let _ = t.handle_join(JoinRequest::default(), now).expect("x");
        let c = t
            .handle_join(
                JoinRequest {
                    resume_parent: Some(b.id),
                    ..JoinRequest::default()
                },
                now,
            )
            .expect("c");
        assert_eq!(c.parent, Some(Node::Peer(b.id)));
        // Without the hint, the oldest newcomer (a) would have been promoted
        // and chosen; b, promoted by the hint, now also takes newcomers.
        let d = t.handle_join(JoinRequest::default(), now).expect("d");
        assert_eq!(d.parent, Some(Node::Peer(b.id)));
        assert_ne!(a.id, b.id);
        // A hint naming nobody is ignored.
        let e = t
            .handle_join(
                JoinRequest {
                    resume_parent: Some(PeerId(999)),
                    ..JoinRequest::default()
                },
                now,
            )
            .expect("e");
        assert!(e.parent.is_some());
        t.check_invariants().expect("invariants");
    }

    /// An office behind a NAT: its peers hang below one peer of the site
    /// (one copy over its WAN link), no peer of another site is ever
    /// placed under or backed by a peer only its site can dial, and
    /// public peers still fill the public tree.
    /// A peer of `site` behind a NAT joins (its address outside not known).
    fn behind_a_nat(t: &mut Tracker, site: u32, now: Instant) -> Assignment {
        t.handle_join(
            JoinRequest {
                site,
                nat: true,
                reach: Reach::SiteOnly,
                ..JoinRequest::default()
            },
            now,
        )
        .expect("placed")
    }

    /// A public peer of `site` joins.
    fn public(t: &mut Tracker, site: u32, now: Instant) -> Assignment {
        t.handle_join(
            JoinRequest {
                site,
                ..JoinRequest::default()
            },
            now,
        )
        .expect("public peer")
    }

    #[test]
    fn a_site_behind_a_nat_pulls_one_copy_and_parents_only_its_own() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 2,
            promote_after: Duration::from_secs(10),
            ..config()
        });
        let office = |t: &mut Tracker, now: Instant| behind_a_nat(t, 7, now);
        let p1 = public(&mut t, 1, now);
        let first = office(&mut t, now);
        now += Duration::from_secs(1);
        let mut offices = vec![first.id];
        let mut publics = vec![p1.id];
        for k in 0..12 {
            offices.push(office(&mut t, now).id);
            publics.push(public(&mut t, 100 + k, now).id);
            now += Duration::from_millis(100);
            t.check_invariants().expect("invariants");
        }
        let views: std::collections::HashMap<PeerId, PeerView> =
            t.peers().map(|v| (v.id, v)).collect();
        // Exactly one office peer takes its parent from outside the site.
        let from_outside = offices
            .iter()
            .filter(|o| match views[*o].parent {
                None => true,
                Some(p) => !offices.contains(&p),
            })
            .count();
        assert_eq!(from_outside, 1, "{views:?}");
        // No public peer below an office peer, nor backed by one.
        for p in &publics {
            let a = t.assignment(*p).expect("public");
            for n in [a.parent, a.backup].into_iter().flatten() {
                if let Node::Peer(q) = n {
                    assert!(!offices.contains(&q), "{p:?} depends on office peer {q:?}");
                }
            }
        }
        t.check_invariants().expect("invariants");
    }

    /// A proven feeder of an office, fed over its LAN, is not lifted into
    /// the slot of a weak public peer at the root: that would pull the
    /// office a second copy over its WAN link (the weak peer, dialable
    /// through the office's NAT, would have gone below the feeder's
    /// parent). `tests/netlab_sites.rs` caught this one run in three.
    #[test]
    fn a_feeder_fed_over_its_lan_is_not_lifted_off_its_site() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 2,
            max_children: 2,
            ..config()
        });
        let mut offices = vec![behind_a_nat(&mut t, 7, now).id];
        let weak = public(&mut t, 1, now).id;
        let mut all = vec![offices[0], weak];
        for wave in 0..2 {
            age(&mut t, &mut now, &all);
            for _ in 0..2 << wave {
                let o = behind_a_nat(&mut t, 7, now).id;
                offices.push(o);
                all.push(o);
            }
        }
        for &o in &offices {
            t.handle_reach(o).expect("office peer");
        }
        age(&mut t, &mut now, &all);
        all.push(public(&mut t, 2, now).id);
        let from_outside = |t: &Tracker| {
            offices
                .iter()
                .filter(|&&o| match t.assignment(o).expect("alive").parent {
                    Some(Node::Peer(p)) => !offices.contains(&p),
                    _ => true,
                })
                .count()
        };
        assert_eq!(from_outside(&t), 1);
        let depth = |t: &Tracker, p| t.assignment(p).expect("alive").depth;
        assert!(
            offices
                .iter()
                .any(|&o| depth(&t, o) >= 2 && t.children(o.index()).len() == 2),
            "an office peer below the top feeds two colleagues"
        );
        // The public peer at the root delivers a tenth of the stream and
        // sheds everything; the office's feeders deliver it all.
        for _ in 0..20 {
            second(&mut t, &mut now, &all, &[weak], 0.1);
            t.check_invariants().expect("invariants");
            assert_eq!(from_outside(&t), 1, "{:?}", t.peers().collect::<Vec<_>>());
        }
        assert_eq!(
            t.peers[weak.index() as usize].earned,
            Some(0),
            "the public peer fell short"
        );
    }

    #[test]
    fn a_peer_behind_a_nat_feeds_others_once_observed_until_traversals_fail() {
        let mut now = Instant::now();
        let mut t = Tracker::new(config());
        let join = |t: &mut Tracker, site: u32, nat: bool, leaf: bool, now: Instant| {
            t.handle_join(
                JoinRequest {
                    site,
                    nat,
                    reach: if nat { Reach::SiteOnly } else { Reach::Public },
                    max_upload_kbps: leaf.then_some(0),
                    ..JoinRequest::default()
                },
                now,
            )
        };
        let office = join(&mut t, 7, true, false, now).expect("office").id;
        age(&mut t, &mut now, &[office]);
        // Two leaf-only public peers fill the edge's other slots.
        let a = join(&mut t, 1, false, true, now).expect("a").id;
        let b = join(&mut t, 2, false, true, now).expect("b").id;
        let alive = [office, a, b];
        age(&mut t, &mut now, &alive);
        // Before its address outside the NAT is known, only its site can
        // use the office peer.
        assert_eq!(
            join(&mut t, 3, false, false, now).err(),
            Some(JoinError::NoCapacity)
        );
        t.handle_reach(office).expect("live");
        let c = join(&mut t, 3, false, false, now).expect("c");
        assert_eq!(
            c.parent,
            Some(Node::Peer(office)),
            "reached through the NAT"
        );
        t.check_invariants().expect("invariants");
        // The public child could not get through: the office peer is
        // blamed, and the child moved off it (nowhere else has room).
        t.handle_dial(c.id, office, false, now).expect("live");
        assert_eq!(t.assignment(c.id).expect("c").parent, None);
        t.check_invariants().expect("invariants");
        let d = join(&mut t, 4, false, false, now).expect("d");
        assert_eq!(
            d.parent,
            Some(Node::Peer(office)),
            "one failure is not proof"
        );
        t.handle_dial(d.id, office, false, now).expect("live");
        // Twice blamed, never reached: its own site only from now on.
        t.check_invariants().expect("invariants");
        assert_eq!(
            join(&mut t, 5, false, false, now).err(),
            Some(JoinError::NoCapacity)
        );
        let colleague = join(&mut t, 7, true, false, now).expect("colleague");
        assert_eq!(colleague.parent, Some(Node::Peer(office)));
        // A peer observed again after that stays its site's only.
        t.handle_reach(office).expect("live");
        assert_eq!(
            join(&mut t, 6, false, false, now).err(),
            Some(JoinError::NoCapacity)
        );
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_site_without_udp_is_fed_over_http_through_one_leader() {
        let mut now = Instant::now();
        let mut t = Tracker::new(config());
        let office = |t: &mut Tracker, now: Instant| behind_a_nat(t, 7, now).id;
        // The edge's QUIC slots go to public peers.
        let publics: Vec<PeerId> = (0..3)
            .map(|k| {
                t.handle_join(
                    JoinRequest {
                        site: k,
                        ..JoinRequest::default()
                    },
                    now,
                )
                .expect("public")
                .id
            })
            .collect();
        let leader = office(&mut t, now);
        t.handle_no_udp(leader, now).expect("live");
        // Its parent elsewhere is out of reach: it is fed over HTTP,
        // beside the root's full QUIC slots.
        assert_eq!(
            t.assignment(leader).expect("leader").parent,
            Some(Node::Root)
        );
        assert_eq!(t.root_children.len(), 3);
        t.check_invariants().expect("invariants");
        let mut alive = publics.clone();
        alive.push(leader);
        age(&mut t, &mut now, &alive);
        // Colleagues go under it over the LAN, and nobody from elsewhere.
        let colleagues: Vec<PeerId> = (0..2).map(|_| office(&mut t, now)).collect();
        for &c in &colleagues {
            assert_eq!(t.assignment(c).expect("c").parent, Some(Node::Peer(leader)));
            t.handle_no_udp(c, now).expect("live");
            assert_eq!(t.assignment(c).expect("c").parent, Some(Node::Peer(leader)));
        }
        let outsider = t
            .handle_join(
                JoinRequest {
                    site: 9,
                    ..JoinRequest::default()
                },
                now,
            )
            .expect("outsider");
        assert_ne!(outsider.parent, Some(Node::Peer(leader)));
        t.check_invariants().expect("invariants");
        // The leader leaves: a colleague takes over, over HTTP.
        t.handle_leave(leader, now).expect("live");
        let fed_over_http = colleagues
            .iter()
            .filter(|&&c| t.assignment(c).expect("c").parent == Some(Node::Root))
            .count();
        assert_eq!(fed_over_http, 1);
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn silent_peers_are_evicted_after_the_timeout_and_only_they() {
        let start = Instant::now();
        let mut t = Tracker::new(config());
        let a = t.handle_join(JoinRequest::default(), start).expect("a").id;
        let b = t.handle_join(JoinRequest::default(), start).expect("b").id;
        // Both heartbeat until 4 s; then only `a` does, every second.
        let mut now = start;
        for s in 1..=20 {
            now = start + Duration::from_secs(s);
            if s <= 4 {
                t.handle_heartbeat(b, Heartbeat::default(), now).expect("b");
            }
            t.handle_heartbeat(a, Heartbeat::default(), now).expect("a");
            t.handle_timeout(now);
            // `b` is gone once 6 s passed since its last heartbeat.
            assert_eq!(t.assignment(b).is_ok(), s <= 10, "at {s} s");
        }
        assert!(t.assignment(a).is_ok(), "heartbeating all along");
        let evicted: Vec<_> = std::iter::from_fn(|| t.poll_event())
            .filter_map(|e| match e {
                TrackerEvent::Evicted { id, reason } => Some((id, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(evicted, vec![(b, EvictReason::Silent)]);
        // A slot freed and taken again is the newcomer's, not the old
        // peer's deadline.
        let c = t.handle_join(JoinRequest::default(), now).expect("c").id;
        t.handle_timeout(now + Duration::from_secs(5));
        assert!(t.assignment(c).is_ok());
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_traversal_that_worked_vouches_for_both_sides() {
        let mut now = Instant::now();
        let mut t = Tracker::new(config());
        let nat = |t: &mut Tracker, site: u32, now: Instant| {
            let id = behind_a_nat(t, site, now).id;
            t.handle_reach(id).expect("live");
            id
        };
        let parent = nat(&mut t, 7, now);
        let child = nat(&mut t, 8, now);
        age(&mut t, &mut now, &[parent, child]);
        t.handle_dial(child, parent, true, now).expect("live");
        let i = t.lookup(parent).expect("live");
        assert_eq!(t.peers[i as usize].punch_ok, 1);
        // A later failure with another child is blamed on that child,
        // since this parent has been reached before.
        let other = nat(&mut t, 9, now);
        t.handle_dial(other, parent, false, now).expect("live");
        assert_eq!(t.peers[i as usize].punch_failed, 0);
        let o = t.lookup(other).expect("live");
        assert_eq!(t.peers[o as usize].punch_failed, 1);
        t.check_invariants().expect("invariants");
    }

    /// One second of heartbeats: each peer in `weak_parents`' subtree
    /// gets `share` of a 1000 kb/s stream from its parent and the rest
    /// from the edge; everyone else gets it all from the tree.
    fn second(t: &mut Tracker, now: &mut Instant, all: &[PeerId], weak: &[PeerId], share: f64) {
        *now += Duration::from_secs(1);
        for &p in all {
            let a = t.assignment(p).expect("alive");
            let under_weak = matches!(a.parent, Some(Node::Peer(q)) if weak.contains(&q));
            let from_tree = if under_weak {
                (125_000.0 * share) as u64
            } else {
                125_000
            };
            let hb = Heartbeat {
                bytes_from_parent: from_tree,
                bytes_from_edge: 125_000 - from_tree,
            };
            t.handle_heartbeat(p, hb, *now).expect("alive");
        }
        t.handle_timeout(*now);
    }

    /// A default peer joins and is placed.
    fn join(t: &mut Tracker, now: Instant) -> PeerId {
        t.handle_join(JoinRequest::default(), now)
            .expect("placed")
            .id
    }

    #[test]
    fn a_saturated_parent_sheds_and_a_proven_feeder_trades_places_with_it() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 2,
            max_children: 4,
            probation_slots: 2,
            ..config()
        });
        let weak = join(&mut t, now);
        let strong = join(&mut t, now);
        let mut all = vec![weak, strong];
        // Both at the root get children on probation.
        for _ in 0..4 {
            all.push(join(&mut t, now));
        }
        let under = |t: &Tracker, p: PeerId| {
            all.iter()
                .filter(|&&c| t.assignment(c).expect("alive").parent == Some(Node::Peer(p)))
                .count()
        };
        assert_eq!(under(&t, weak), 2);
        // The weak parent delivers a tenth of the stream; a window later it
        // has no children and earns no slot.
        for _ in 0..3 {
            second(&mut t, &mut now, &all, &[weak], 0.1);
        }
        assert_eq!(under(&t, weak), 0, "the saturated parent shed its children");
        assert_eq!(t.peers[weak.index() as usize].earned, Some(0));
        t.check_invariants().expect("invariants");
        // The strong side delivers everything: its subtree grows, and a
        // feeder below it that has earned two children trades places with
        // the weak peer at the root.
        for _ in 0..20 {
            second(&mut t, &mut now, &all, &[weak], 0.1);
            t.check_invariants().expect("invariants");
        }
        let depth = |t: &Tracker, p| t.assignment(p).expect("alive").depth;
        assert!(depth(&t, weak) > 1, "the weak peer left the root");
        let roots: Vec<PeerId> = all.iter().copied().filter(|&p| depth(&t, p) == 1).collect();
        assert_eq!(roots.len(), 2);
        assert!(
            roots.iter().all(|&r| under(&t, r) >= 1),
            "both root slots feed peers"
        );
        let moved = std::iter::from_fn(|| t.poll_event())
            .filter(|e| matches!(e, TrackerEvent::Moved(a) if a.id == weak))
            .count();
        assert!(moved >= 1, "the weak peer was told of its move");
    }

    #[test]
    fn a_feeder_deep_in_the_tree_trades_places_with_a_weak_peer_at_any_shallower_depth() {
        // The edge (one slot) feeds A, A feeds P, P feeds W and a chain
        // Q, R down to F at depth 5 (W, Q and R on 1 Mb/s uplinks: one
        // child each at most). F takes two children and feeds them: it
        // earns its slots and trades places with W, the shallowest weak
        // peer not above it, below the top two levels the search used to
        // stop at.
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            max_depth: 8,
            ..config()
        });
        let a = join(&mut t, now);
        let under = |t: &mut Tracker, parent: PeerId| joins_under(t, parent, None, now);
        let p = under(&mut t, a);
        let w = joins_under(&mut t, p, Some(1_000), now);
        let q = joins_under(&mut t, p, Some(1_000), now);
        let r = joins_under(&mut t, q, Some(1_000), now);
        let f = under(&mut t, r);
        let kids = [under(&mut t, f), under(&mut t, f)];
        let mut all = vec![a, p, w, q, r, f];
        all.extend(kids);
        let depth = |t: &Tracker, x| t.assignment(x).expect("alive").depth;
        assert_eq!((depth(&t, w), depth(&t, f)), (3, 5));
        for _ in 0..4 {
            second(&mut t, &mut now, &all, &[], 1.0);
            t.check_invariants().expect("invariants");
        }
        assert_eq!(depth(&t, f), 3, "the feeder took the weak peer's place");
        assert_eq!(t.assignment(f).expect("alive").parent, Some(Node::Peer(p)));
        assert_eq!(t.assignment(w).expect("alive").parent, Some(Node::Peer(r)));
        assert_eq!(depth(&t, kids[0]), 4, "with its subtree");
        let moved: Vec<PeerId> = std::iter::from_fn(|| t.poll_event())
            .filter_map(|e| match e {
                TrackerEvent::Moved(m) => Some(m.id),
                _ => None,
            })
            .collect();
        assert!(moved.contains(&f) && moved.contains(&w), "{moved:?}");
    }

    /// A tree with one root slot and one established peer in it, which
    /// may have `max_children` and gets `probation` slots.
    fn one_parent(max_children: u8, probation: u8) -> (Tracker, Instant, PeerId) {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            max_children,
            probation_slots: probation,
            ..config()
        });
        let parent = join(&mut t, now);
        age(&mut t, &mut now, &[parent]);
        (t, now, parent)
    }

    #[test]
    fn a_parent_that_sheds_keeps_what_it_has_left_and_probes_again_only_later() {
        let (mut t, mut now, parent) = one_parent(4, 3);
        let kids: Vec<PeerId> = (0..3).map(|_| join(&mut t, now)).collect();
        let mut all = vec![parent];
        all.extend(&kids);
        let under = |t: &Tracker| {
            all.iter()
                .filter(|&&c| t.assignment(c).expect("alive").parent == Some(Node::Peer(parent)))
                .count()
        };
        assert_eq!(under(&t), 3);
        // The newest child is let go for lack of uplink.
        t.handle_report(kids[2], Report::ParentShed, now)
            .expect("known");
        assert_ne!(
            t.assignment(kids[2]).expect("alive").parent,
            Some(Node::Peer(parent)),
            "the shed child went elsewhere"
        );
        assert_eq!(under(&t), 2);
        assert_eq!(t.peers[parent.index() as usize].earned, Some(2));
        // Its two children get everything from it, window after window:
        // no probe for a third within the hold...
        let extra = join(&mut t, now);
        all.push(extra);
        for _ in 0..30 {
            second(&mut t, &mut now, &all, &[], 1.0);
        }
        assert_eq!(t.peers[parent.index() as usize].earned, Some(2));
        // ...and a probe once it is over.
        for _ in 0..40 {
            second(&mut t, &mut now, &all, &[], 1.0);
        }
        assert_eq!(t.peers[parent.index() as usize].earned, Some(3));
        t.check_invariants().expect("invariants");
    }

    /// A parent in slow start, or one that fell short within the hold,
    /// that its children find silent while it lives (its uplink too small
    /// to shed before they give up on it) keeps only the children it has
    /// left, as after a shed; a parent past slow start keeps its slots,
    /// and so does one whose children's bytes came from it.
    #[test]
    fn a_parent_found_silent_while_alive_keeps_only_what_it_has_left() {
        // Three slots, three children; one of them reports.
        let cases = [
            ("slow start", 2),
            ("past it", 3),
            ("shed lately", 1),
            // Kept, and grown by the window its child's heartbeat closed.
            ("slow start, its children fed", 4),
        ];
        for (case, slots_after) in cases {
            let (mut t, mut now, parent) = one_parent(4, 3);
            let kids: Vec<PeerId> = (0..3).map(|_| join(&mut t, now)).collect();
            match case {
                "past it" => t.peers[parent.index() as usize].slow_start = false,
                "shed lately" => {
                    t.handle_report(kids[2], Report::ParentShed, now)
                        .expect("known");
                    assert_eq!(t.slots(parent.index()), 2);
                }
                "slow start, its children fed" => {
                    // A second of the stream, all from the parent: the
                    // silence was a pause of a parent that delivers.
                    let hb = Heartbeat {
                        bytes_from_parent: 125_000,
                        bytes_from_edge: 0,
                    };
                    t.handle_heartbeat(kids[0], hb, now).expect("alive");
                }
                _ => {}
            }
            t.handle_report(kids[1], Report::ParentGap, now)
                .expect("known");
            now += Duration::from_secs(1);
            t.handle_heartbeat(parent, Heartbeat::default(), now)
                .expect("alive");
            assert_eq!(t.slots(parent.index()), slots_after, "{case}");
            t.check_invariants().expect("invariants");
        }
    }

    /// A peer cut to no slots whose uplink once carried a child probes
    /// with one slot again after the hold, and after each failed probe of
    /// that kind waits twice as long; one that feeds its probe child
    /// grows again. One whose uplink never carried a child stays a leaf.
    #[test]
    fn a_peer_cut_to_no_slots_probes_again_later_and_later() {
        for (share, case) in [(1.0, "carried a child"), (0.3, "never did")] {
            let (mut t, mut now, parent) = one_parent(4, 1);
            let slots = |t: &Tracker| t.slots(parent.index());
            // Its first child, fed `share` of the stream by it for a
            // window; then the parent sheds it (if it still has it).
            let first = join(&mut t, now);
            for _ in 0..11 {
                second(&mut t, &mut now, &[parent, first], &[parent], share);
            }
            if t.assignment(first).expect("alive").parent == Some(Node::Peer(parent)) {
                t.handle_report(first, Report::ParentShed, now)
                    .expect("known");
            }
            t.handle_leave(first, now).expect("known");
            assert_eq!(slots(&t), 0, "{case}");
            if case == "never did" {
                for _ in 0..600 {
                    second(&mut t, &mut now, &[parent], &[], 1.0);
                }
                assert_eq!(slots(&t), 0, "{case}: still a leaf 10 minutes on");
                continue;
            }
            let fail_probe = |t: &mut Tracker, now: Instant| {
                let kid = join(t, now);
                assert_eq!(
                    t.assignment(kid).expect("placed").parent,
                    Some(Node::Peer(parent))
                );
                t.handle_report(kid, Report::ParentShed, now)
                    .expect("known");
                t.handle_leave(kid, now).expect("known");
            };
            for (wait, probe) in [(60, "first probe"), (120, "after one failed")] {
                for _ in 0..wait - 1 {
                    second(&mut t, &mut now, &[parent], &[], 1.0);
                }
                assert_eq!(slots(&t), 0, "{probe}: before the hold is over");
                second(&mut t, &mut now, &[parent], &[], 1.0);
                assert_eq!(slots(&t), 1, "{probe}: once it is over");
                if probe == "first probe" {
                    fail_probe(&mut t, now);
                }
            }
            // This probe child is fed: the parent grows as a joiner does,
            // and a later cut waits the first hold again.
            let kid = join(&mut t, now);
            for _ in 0..5 {
                second(&mut t, &mut now, &[parent, kid], &[], 1.0);
            }
            assert_eq!(slots(&t), 2);
            assert_eq!(t.peers[parent.index() as usize].reprobes, 0);
            t.check_invariants().expect("invariants");
        }
    }

    #[test]
    fn a_parent_doubles_its_slots_until_its_uplink_first_falls_short_then_adds_one() {
        let (mut t, mut now, parent) = one_parent(6, 2);
        let mut all = vec![parent];
        let earned = |t: &Tracker| t.peers[parent.index() as usize].earned;
        // Fills its two probation slots for a window: four.
        all.extend((0..2).map(|_| join(&mut t, now)));
        for _ in 0..11 {
            second(&mut t, &mut now, &all, &[], 1.0);
        }
        assert_eq!(earned(&t), Some(4));
        // Fills the four: eight, but no more than `max_children`.
        all.extend((0..2).map(|_| join(&mut t, now)));
        for _ in 0..11 {
            second(&mut t, &mut now, &all, &[], 1.0);
        }
        assert_eq!(earned(&t), Some(6));
        assert_eq!(t.slots(parent.index()), 6);
        // Six children are too many for its uplink: it sheds the newest...
        all.extend((0..2).map(|_| join(&mut t, now)));
        let kids: Vec<PeerId> = all[1..]
            .iter()
            .copied()
            .filter(|&c| t.assignment(c).expect("alive").parent == Some(Node::Peer(parent)))
            .collect();
        assert_eq!(kids.len(), 6);
        t.handle_report(kids[5], Report::ParentShed, now)
            .expect("known");
        assert_eq!(earned(&t), Some(5));
        // ...and, once the hold is over, probes one slot at a time.
        for _ in 0..75 {
            second(&mut t, &mut now, &all, &[], 1.0);
        }
        assert_eq!(earned(&t), Some(6));
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_parent_in_slow_start_is_measured_over_one_heartbeat_not_a_full_window() {
        let (mut t, mut now, parent) = one_parent(6, 2);
        t.config.upload_window = Duration::from_secs(10);
        let mut all = vec![parent];
        all.extend((0..2).map(|_| join(&mut t, now)));
        for _ in 0..3 {
            second(&mut t, &mut now, &all, &[], 1.0);
        }
        // Two seconds of full delivery, not ten: it has doubled.
        assert_eq!(t.peers[parent.index() as usize].earned, Some(4));
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_newcomer_orphaned_while_the_tree_is_full_is_still_promoted_in_time() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            ..config()
        });
        let a = join(&mut t, now);
        age(&mut t, &mut now, &[a]);
        // A is past slow start (in it, a parent found silent while alive
        // would keep only the children it has left: none here).
        t.peers[a.index() as usize].slow_start = false;
        let n = join(&mut t, now);
        // N gives up on A while A is the only place: N waits...
        t.handle_report(n, Report::ParentGap, now).expect("known");
        assert_eq!(t.assignment(n).expect("alive").parent, None);
        // ...until A is heard from again, and N is placed under it.
        now += Duration::from_secs(1);
        t.handle_heartbeat(a, Heartbeat::default(), now)
            .expect("alive");
        t.handle_timeout(now);
        assert_eq!(t.assignment(n).expect("alive").parent, Some(Node::Peer(a)));
        // Its wait did not cost it its promotion: once old enough, it
        // takes children like any other.
        age(&mut t, &mut now, &[a, n]);
        assert!(t.peers[n.index() as usize].promoted);
        assert!(t.slots(n.index()) > 0);
        t.check_invariants().expect("invariants");
    }

    /// A peer that joins naming `parent` (as after a tracker restart),
    /// with the upload cap `upload`, and is placed there: builds a tree
    /// of a chosen shape.
    fn joins_under(t: &mut Tracker, parent: PeerId, upload: Option<u32>, now: Instant) -> PeerId {
        let req = JoinRequest {
            resume_parent: Some(parent),
            max_upload_kbps: upload,
            ..JoinRequest::default()
        };
        let a = t.handle_join(req, now).expect("placed");
        assert_eq!(a.parent, Some(Node::Peer(parent)), "{a:?}");
        a.id
    }

    #[test]
    fn a_tall_orphan_takes_the_slot_of_a_leaf_near_the_top_and_adopts_it() {
        // Depth 5 at most. The edge (one slot) feeds A; A feeds L (leaf
        // only) and P; P feeds X, X a chain two deep. X gives up on P: a
        // subtree two tall needs a parent at depth 2 or above, and the
        // only ones (the edge, A) are full.
        let now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            ..config()
        });
        let a = join(&mut t, now);
        let leaf = joins_under(&mut t, a, Some(0), now);
        let under = |t: &mut Tracker, parent: PeerId| joins_under(t, parent, None, now);
        let p = under(&mut t, a);
        let x = under(&mut t, p);
        let x4 = under(&mut t, x);
        let x5 = under(&mut t, x4);
        assert_eq!(t.assignment(x5).expect("alive").depth, 5);
        t.handle_report(x, Report::ParentGap, now).expect("known");
        let ax = t.assignment(x).expect("alive");
        assert_eq!((ax.parent, ax.depth), (Some(Node::Peer(a)), 2), "{ax:?}");
        let al = t.assignment(leaf).expect("alive");
        assert_eq!((al.parent, al.depth), (Some(Node::Peer(x)), 3), "{al:?}");
        assert_eq!(t.assignment(x5).expect("alive").depth, 4);
        assert_eq!(t.orphan_count(), 0);
        t.check_invariants().expect("invariants");
    }

    /// Depth 5 at most. The edge (one slot) feeds A; A feeds W and P; W
    /// feeds Wa and Wb, each feeding one leaf; P feeds X, X a chain two
    /// deep (and a leaf, Xl, when `full`: X then has no free slot), and Y,
    /// Y a leaf. X gives up on P: it needs a parent at depth 2 or above,
    /// all full, and nothing near the top is a leaf. But Wa's subtree (and
    /// P's, taller) fits a level deeper: X takes Wa's place, and Wa goes
    /// under X; Xl is placed elsewhere.
    fn tall_orphan_trades_with_a_level_to_spare(full: bool) {
        let now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            ..config()
        });
        let under = |t: &mut Tracker, parent: PeerId| joins_under(t, parent, None, now);
        let a = join(&mut t, now);
        let w = under(&mut t, a);
        let p = under(&mut t, a);
        let (wa, wb) = (under(&mut t, w), under(&mut t, w));
        let wa4 = under(&mut t, wa);
        under(&mut t, wb);
        let x = under(&mut t, p);
        let y = under(&mut t, p);
        under(&mut t, y);
        let x4 = under(&mut t, x);
        let x5 = under(&mut t, x4);
        let xl = full.then(|| under(&mut t, x));
        assert_eq!(t.assignment(x5).expect("alive").depth, 5);
        t.handle_report(x, Report::ParentGap, now).expect("known");
        let ax = t.assignment(x).expect("alive");
        let aw = t.assignment(wa).expect("alive");
        assert_eq!((ax.parent, ax.depth), (Some(Node::Peer(w)), 3), "{ax:?}");
        assert_eq!((aw.parent, aw.depth), (Some(Node::Peer(x)), 4), "{aw:?}");
        assert_eq!(t.assignment(wa4).expect("alive").depth, 5);
        assert_eq!(t.assignment(x5).expect("alive").depth, 5);
        assert_eq!(t.orphan_count(), 0);
        t.check_invariants().expect("invariants");
        if let Some(xl) = xl {
            let al = t.assignment(xl).expect("alive");
            assert!(
                matches!(al.parent, Some(Node::Peer(q)) if q != x && q != p),
                "{al:?}"
            );
        }
    }

    #[test]
    fn a_tall_orphan_with_room_takes_the_slot_of_a_subtree_with_a_level_to_spare() {
        tall_orphan_trades_with_a_level_to_spare(false);
    }

    #[test]
    fn a_full_tall_orphan_hands_on_its_shortest_child_to_take_a_slot_near_the_top() {
        // Xl gives up its slot under X and is placed again on its own.
        tall_orphan_trades_with_a_level_to_spare(true);
    }

    #[test]
    fn a_tall_orphan_that_fits_nowhere_near_the_top_goes_a_level_lower_and_sheds_its_deepest() {
        // Depth 5 at most. The edge (one slot) feeds A; A feeds W and P;
        // every peer at depth 3 heads a chain down to depth 5, so no
        // subtree near the top has a level to spare. P feeds X (a chain
        // two deep) and Y; Y feeds a chain and a leaf, L. X gives up on P:
        // it fits whole at depth 3 or above only, and nothing there can
        // make room. It takes L's slot at depth 4 with L under it, and
        // its deepest peer, X5, now one level too deep, is placed again.
        let now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            ..config()
        });
        let under = |t: &mut Tracker, parent: PeerId| joins_under(t, parent, None, now);
        let chain = |t: &mut Tracker, parent: PeerId| {
            let top = under(t, parent);
            let mid = under(t, top);
            under(t, mid);
            top
        };
        let a = join(&mut t, now);
        let w = under(&mut t, a);
        let p = under(&mut t, a);
        chain(&mut t, w);
        chain(&mut t, w);
        let x = under(&mut t, p);
        let x4 = under(&mut t, x);
        let x5 = under(&mut t, x4);
        let y = under(&mut t, p);
        let y4 = under(&mut t, y);
        under(&mut t, y4);
        let leaf = under(&mut t, y);
        t.handle_report(x, Report::ParentGap, now).expect("known");
        let ax = t.assignment(x).expect("alive");
        assert_eq!((ax.parent, ax.depth), (Some(Node::Peer(y)), 4), "{ax:?}");
        let al = t.assignment(leaf).expect("alive");
        assert_eq!((al.parent, al.depth), (Some(Node::Peer(x)), 5), "{al:?}");
        assert_eq!(t.assignment(x4).expect("alive").depth, 5);
        let a5 = t.assignment(x5).expect("alive");
        assert!(
            matches!(a5.parent, Some(Node::Peer(q)) if q != x4 && q != p) && a5.depth <= 5,
            "{a5:?}"
        );
        assert_eq!(t.orphan_count(), 0);
        t.check_invariants().expect("invariants");
    }

    /// Two established peers with room under the edge, and a newcomer C
    /// under one of them: the tracker, C and C's parent.
    fn child_under_a_peer() -> (Tracker, Instant, PeerId, PeerId) {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 2,
            max_children: 4,
            probation_slots: 4,
            ..config()
        });
        let (a, b) = (join(&mut t, now), join(&mut t, now));
        age(&mut t, &mut now, &[a, b]);
        let c = join(&mut t, now);
        let first = t.assignment(c).expect("alive").parent;
        let Some(Node::Peer(parent)) = first else {
            panic!("C goes under a peer: {first:?}");
        };
        (t, now, c, parent)
    }

    #[test]
    fn a_child_that_reports_its_parent_silent_is_not_placed_back_under_it() {
        let (mut t, now, c, old) = child_under_a_peer();
        // The old parent still has three free slots, shallower than any
        // other; yet C's child side has just given up on it.
        t.handle_report(c, Report::ParentGap, now).expect("known");
        let after = t.assignment(c).expect("alive");
        assert_ne!(after.parent, Some(Node::Peer(old)), "{after:?}");
        assert_ne!(after.backup, Some(Node::Peer(old)), "{after:?}");
        assert!(matches!(after.parent, Some(Node::Peer(_))), "{after:?}");
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_parent_reported_silent_is_offered_to_nobody_until_it_heartbeats() {
        let (mut t, now, c, old) = child_under_a_peer();
        // A parent past slow start (one in it keeps only the children it
        // has left: `a_parent_found_silent_while_alive_keeps_only_what_it_has_left`).
        t.peers[old.index() as usize].slow_start = false;
        t.handle_report(c, Report::ParentGap, now).expect("known");
        // Newcomers go elsewhere, and nobody is given it as backup.
        for _ in 0..3 {
            let n = join(&mut t, now);
            let got = t.assignment(n).expect("alive");
            assert_ne!(got.parent, Some(Node::Peer(old)), "{got:?}");
            assert_ne!(got.backup, Some(Node::Peer(old)), "{got:?}");
        }
        t.check_invariants().expect("invariants");
        // It was alive after all: once it heartbeats, it takes children.
        t.handle_heartbeat(old, Heartbeat::default(), now)
            .expect("alive");
        let n = join(&mut t, now);
        assert_eq!(
            t.assignment(n).expect("alive").parent,
            Some(Node::Peer(old))
        );
    }

    fn slots_of(t: &Tracker, id: PeerId) -> u32 {
        t.peers().find(|v| v.id == id).map_or(0, |v| v.slots)
    }

    #[test]
    fn an_uplink_test_that_falls_short_bounds_slots_before_any_child_comes() {
        let mut now = Instant::now();
        let mut t = Tracker::new(config());
        let peers = [(); 3].map(|_| join(&mut t, now));
        let [weak, one, strong] = peers;
        now += UPLINK_TEST_AFTER;
        for p in peers {
            let a = t.handle_heartbeat(p, Heartbeat::default(), now);
            // Twice the 1,000 kb/s stream: the probation slots' rate.
            assert_eq!(a.expect("alive").test_uplink_kbps, Some(2_000));
        }
        // 1,500 kb/s carries one child of the stream, 600 none; the full
        // rate says nothing of where the uplink ends: probation slots.
        for (p, kbps) in [(weak, 600), (one, 1_500), (strong, 2_000)] {
            t.handle_uplink_test(p, kbps, now).expect("known");
        }
        // Those that fell short are asked once more, and the better test
        // counts; nobody is asked a third time.
        let asked = |t: &mut Tracker, p, now| {
            let a = t.handle_heartbeat(p, Heartbeat::default(), now);
            a.expect("alive").test_uplink_kbps.is_some()
        };
        assert_eq!(peers.map(|p| asked(&mut t, p, now)), [true, true, false]);
        t.handle_uplink_test(weak, 300, now).expect("known");
        assert_eq!(peers.map(|p| asked(&mut t, p, now)), [false; 3]);
        age(&mut t, &mut now, &peers);
        assert_eq!(peers.map(|p| slots_of(&t, p)), [0, 1, 2]);
        let newcomers: Vec<_> = (0..3)
            .map(|_| t.handle_join(JoinRequest::default(), now).expect("placed"))
            .collect();
        for a in newcomers {
            assert_ne!(a.parent, Some(Node::Peer(weak)), "{a:?}");
        }
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_peer_with_children_is_not_asked_and_a_test_among_them_does_not_count() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            ..config()
        });
        let a = join(&mut t, now);
        // Nobody has room: `a` is promoted early and takes `b`.
        let b = t.handle_join(JoinRequest::default(), now).expect("placed");
        assert_eq!(b.parent, Some(Node::Peer(a)));
        now += UPLINK_TEST_AFTER;
        let answer = t.handle_heartbeat(a, Heartbeat::default(), now);
        assert_eq!(answer.expect("alive").test_uplink_kbps, None);
        // A test it ran anyway shared its uplink with `b`'s stream.
        t.handle_uplink_test(a, 100, now).expect("known");
        assert_eq!(slots_of(&t, a), 2);
    }

    #[test]
    fn a_flash_crowd_promotes_a_newcomer_whose_uplink_test_passed_first() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 2,
            ..config()
        });
        let weak = join(&mut t, now);
        let strong = join(&mut t, now);
        now += UPLINK_TEST_AFTER;
        for (p, kbps) in [(weak, 500), (strong, 2_000)] {
            t.handle_heartbeat(p, Heartbeat::default(), now)
                .expect("alive");
            t.handle_uplink_test(p, kbps, now).expect("known");
        }
        // Nobody is promoted yet and the edge is full: the newcomer that
        // passed is promoted early, though `weak` is older.
        let c = t.handle_join(JoinRequest::default(), now).expect("placed");
        assert_eq!(c.parent, Some(Node::Peer(strong)));
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn newcomers_are_leaves_and_leaf_only_peers_stay_leaves() {
        let now = Instant::now();
        let mut t = Tracker::new(config());
        let a = t
            .handle_join(
                JoinRequest {
                    max_upload_kbps: Some(0),
                    ..JoinRequest::default()
                },
                now,
            )
            .expect("placed");
        let b = t.handle_join(JoinRequest::default(), now).expect("placed");
        let c = t.handle_join(JoinRequest::default(), now).expect("placed");
        // The root has 3 slots: all three hang off the edge.
        for x in [a, b, c] {
            assert_eq!(x.parent, Some(Node::Root));
        }
        // The fourth finds no established parent; the oldest newcomer that
        // may upload (b, not the leaf-only a) is promoted early.
        let d = t.handle_join(JoinRequest::default(), now).expect("placed");
        assert_eq!(d.parent, Some(Node::Peer(b.id)));
        assert_eq!(d.depth, 2);
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_departed_parents_children_move_with_their_subtrees() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            ..config()
        });
        let a = t.handle_join(JoinRequest::default(), now).expect("a");
        age(&mut t, &mut now, &[]);
        let b = t.handle_join(JoinRequest::default(), now).expect("b");
        assert_eq!(b.parent, Some(Node::Peer(a.id)));
        age(&mut t, &mut now, &[a.id, b.id]);
        let c = t.handle_join(JoinRequest::default(), now).expect("c");
        assert_eq!(c.depth, 2, "{c:?}");
        t.handle_leave(a.id, now).expect("leave");
        // b takes the root slot a left; c stays with b or moves, but is placed.
        let b2 = t.assignment(b.id).expect("b");
        assert_eq!(b2.parent, Some(Node::Root));
        assert!(t.assignment(c.id).expect("c").parent.is_some());
        assert!(matches!(t.poll_event(), Some(TrackerEvent::Moved(m)) if m.id == b.id));
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn the_edge_stays_backup_only_until_a_peer_can_be() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 2,
            ..config()
        });
        let a = t.handle_join(JoinRequest::default(), now).expect("a");
        let b = t.handle_join(JoinRequest::default(), now).expect("b");
        // c promotes a early; b, a newcomer, cannot take children yet, so
        // the edge is c's backup of last resort.
        let c = t.handle_join(JoinRequest::default(), now).expect("c");
        assert_eq!(c.parent, Some(Node::Peer(a.id)));
        assert_eq!(c.backup, Some(Node::Root));
        // Once b is promoted, c's next heartbeat names b.
        age(&mut t, &mut now, &[a.id, b.id]);
        let c2 = t
            .handle_heartbeat(c.id, Heartbeat::default(), now)
            .expect("c");
        assert_eq!(c2.backup, Some(Node::Peer(b.id)));
        t.check_invariants().expect("invariants");
    }

    /// `g` at the root with `p` and `u` under it: `c` under `p`, and
    /// `fed` children under `u`, which is full at what it fed; peers may
    /// have `max_children`.
    fn uncle_full_at_what_it_fed(fed: usize, max_children: u8) -> (Tracker, Instant, [PeerId; 3]) {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            max_children,
            ..config()
        });
        let g = join(&mut t, now);
        age(&mut t, &mut now, &[g]);
        let (x, y) = (join(&mut t, now), join(&mut t, now));
        age(&mut t, &mut now, &[g, x, y]);
        let c = join(&mut t, now);
        let Some(Node::Peer(p)) = t.assignment(c).expect("c").parent else {
            panic!("c is not under a peer");
        };
        let u = if p == x { y } else { x };
        let mut all = vec![g, x, y, c];
        while t.peers[u.index() as usize].children.len() < fed {
            all.push(join(&mut t, now));
            assert!(all.len() <= 4 + 2 * fed, "u took too few of the joiners");
        }
        let rec = &mut t.peers[u.index() as usize];
        rec.set_earned(fed);
        rec.fed = true;
        // What the window closing with these would note.
        t.note_bridge(u.index());
        // Whoever u backs while it had a free slot backs nobody now.
        for k in 0..t.peers.len() as u32 {
            if t.backup_peer(k) == Some(u.index()) {
                t.set_backup(k, ROOT);
            }
        }
        age(&mut t, &mut now, &all);
        (t, now, [c, p, u])
    }

    #[test]
    fn a_full_uncle_that_fed_its_child_backs_a_peer_and_takes_it_as_its_probe() {
        let (mut t, mut now, [c, p, u]) = uncle_full_at_what_it_fed(1, 6);
        now += BACKUP_RECHECK;
        let a = t.handle_heartbeat(c, Heartbeat::default(), now).expect("c");
        assert_eq!(a.backup, Some(Node::Peer(u)), "not the edge");
        assert_eq!(slots_of(&t, u), 1);
        // c's parent leaves: c goes to u, which now has the slot it would
        // have probed for at its next window.
        t.handle_leave(p, now).expect("p");
        let a = t.assignment(c).expect("c");
        assert_eq!(a.parent, Some(Node::Peer(u)));
        assert_eq!(a.depth, 3, "at the depth it had");
        assert_eq!(slots_of(&t, u), 2);
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn an_uncle_full_at_max_children_bridges_a_peer_the_tracker_places_elsewhere() {
        let (mut t, mut now, [c, p, u]) = uncle_full_at_what_it_fed(2, 2);
        now += BACKUP_RECHECK;
        let a = t.handle_heartbeat(c, Heartbeat::default(), now).expect("c");
        assert_eq!(a.backup, Some(Node::Peer(u)));
        // c switches to u when p dies, and is placed where there is a
        // slot: u stays at `max_children`.
        t.handle_leave(p, now).expect("p");
        let a = t.assignment(c).expect("c");
        assert!(matches!(a.parent, Some(Node::Peer(q)) if q != u), "{a:?}");
        assert_eq!(slots_of(&t, u), 2);
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_full_uncle_backs_nobody_within_the_hold_after_it_fell_short() {
        let (mut t, mut now, [c, _, u]) = uncle_full_at_what_it_fed(1, 6);
        let stamp = t.now;
        let rec = &mut t.peers[u.index() as usize];
        (rec.slow_start, rec.shed_at) = (false, Some(stamp));
        t.note_bridge(u.index());
        now += BACKUP_RECHECK;
        let a = t.handle_heartbeat(c, Heartbeat::default(), now).expect("c");
        assert_ne!(a.backup, Some(Node::Peer(u)));
        // Past the hold it may probe again, and back c.
        // Past the hold, its next window probes for one more child, and
        // it may back c.
        now += PROBE_HOLD;
        let kid = t.id_of(t.peers[u.index() as usize].children[0]);
        let fed = Heartbeat {
            bytes_from_parent: 1_000_000,
            bytes_from_edge: 0,
        };
        t.handle_heartbeat(kid, fed, now).expect("u's child");
        let a = t.handle_heartbeat(c, Heartbeat::default(), now).expect("c");
        assert_eq!(a.backup, Some(Node::Peer(u)));
    }

    #[test]
    fn a_peer_repaired_off_the_edge_as_backup_keeps_it_until_the_next_recheck() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 2,
            ..config()
        });
        let a = join(&mut t, now);
        let b = join(&mut t, now);
        // c under a, with the edge as its backup (b is a newcomer).
        let c = join(&mut t, now);
        assert_eq!(t.assignment(c).expect("c").backup, Some(Node::Root));
        age(&mut t, &mut now, &[a, b, c]);
        t.set_backup(c.index(), ROOT);
        // a dies: c's report reaches the tracker, which places it under b;
        // its `Hello` to the edge, on its way, must still be admitted.
        t.handle_report(c, Report::ParentGap, now).expect("c");
        let after = t.assignment(c).expect("c");
        assert_eq!(after.parent, Some(Node::Peer(b)));
        assert_eq!(after.backup, Some(Node::Root));
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_backup_is_a_peer_that_fed_its_children_when_there_is_one() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 3,
            ..config()
        });
        // a carries one stream: one child, c.
        let a = t
            .handle_join(
                JoinRequest {
                    max_upload_kbps: Some(1_000),
                    ..JoinRequest::default()
                },
                now,
            )
            .expect("a")
            .id;
        let (b, e) = (join(&mut t, now), join(&mut t, now));
        let c = join(&mut t, now);
        assert_eq!(t.assignment(c).expect("c").parent, Some(Node::Peer(a)));
        // b and e, promoted, are untried: with no proven peer, one of them
        // rather than the edge.
        age(&mut t, &mut now, &[a, b, e, c]);
        now += BACKUP_RECHECK;
        let backup = t
            .handle_heartbeat(c, Heartbeat::default(), now)
            .expect("c")
            .backup;
        let untried = match backup {
            Some(Node::Peer(x)) if x == b || x == e => x,
            other => panic!("backup {other:?}, not b or e"),
        };
        // The other one feeds children from now on: c's next recheck
        // names it.
        let proven = if untried == b { e } else { b };
        t.peers[proven.index() as usize].fed = true;
        now += BACKUP_RECHECK;
        let backup = t
            .handle_heartbeat(c, Heartbeat::default(), now)
            .expect("c")
            .backup;
        assert_eq!(backup, Some(Node::Peer(proven)));
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn siblings_are_not_named_one_backup_with_one_free_slot() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 2,
            ..config()
        });
        // Two parents of two slots each (probation; a cap of two streams).
        let a = join(&mut t, now);
        let b = t
            .handle_join(
                JoinRequest {
                    max_upload_kbps: Some(2_000),
                    ..JoinRequest::default()
                },
                now,
            )
            .expect("b")
            .id;
        age(&mut t, &mut now, &[a, b]);
        let kids: Vec<Assignment> = (0..3)
            .map(|_| t.handle_join(JoinRequest::default(), now).expect("kid"))
            .collect();
        // One parent has two children; the other has one slot left. Once
        // both have fed their children, the siblings' rechecks name a
        // backup each: the one slot goes to one of them.
        // (The children heartbeat first: the peers at the root look for
        // a backup too, and would take the slot first.)
        let all: Vec<PeerId> = kids.iter().map(|k| k.id).chain([a, b]).collect();
        for _ in 0..4 {
            second(&mut t, &mut now, &all, &[], 1.0);
        }
        let (full, spare) = if t.children(a.index()).len() == 2 {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(t.children(full.index()).len(), 2);
        assert_eq!(t.children(spare.index()).len(), 1);
        let siblings: Vec<&Assignment> = kids
            .iter()
            .filter(|k| k.parent == Some(Node::Peer(full)))
            .collect();
        let backed_by_spare = siblings
            .iter()
            .filter(|k| t.assignment(k.id).expect("kid").backup == Some(Node::Peer(spare)))
            .count();
        assert_eq!(
            backed_by_spare, 1,
            "both siblings would move to its one free slot"
        );
        t.check_invariants().expect("invariants");
    }

    #[test]
    fn a_backup_never_shares_the_parent_it_stands_in_for() {
        let mut now = Instant::now();
        let mut t = Tracker::new(TrackerConfig {
            root_slots: 1,
            ..config()
        });
        let a = t.handle_join(JoinRequest::default(), now).expect("a");
        age(&mut t, &mut now, &[a.id]);
        let b = t.handle_join(JoinRequest::default(), now).expect("b");
        let c = t.handle_join(JoinRequest::default(), now).expect("c");
        assert_eq!(b.parent, Some(Node::Peer(a.id)));
        assert_eq!(c.parent, Some(Node::Peer(a.id)));
        // Once b and c may take children, each is still no backup for the
        // other: a's death would orphan both.
        age(&mut t, &mut now, &[a.id, b.id, c.id]);
        for (me, other) in [(b.id, c.id), (c.id, b.id)] {
            let backup = t
                .handle_heartbeat(me, Heartbeat::default(), now)
                .expect("alive")
                .backup;
            assert_ne!(backup, Some(Node::Peer(other)), "a sibling as backup");
            assert_eq!(backup, Some(Node::Root), "only the edge survives a");
        }
        t.check_invariants().expect("invariants");
    }
}
