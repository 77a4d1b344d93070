//! What the peer's tasks share: the store, the feed to children, the
//! current assignment, counters. Every segment and playlist, whatever its
//! source, enters through [`Shared::on_segment`] and
//! [`Shared::on_playlist`], so verification and bookkeeping happen in one
//! place.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};
use treecast_proto::body::BodyWriter;
use treecast_proto::tracker::{Assignment, NodeInfo, ReportKind};
use treecast_proto::tree::{Feed, TreeSegment};
use treecast_proto::{ChannelName, GrowingBody, VerifyError};

use crate::config::PeerConfig;
use crate::edges::Edges;
use crate::metrics::PeerMetrics;
use crate::store::{PlaylistUpdate, Store};
use crate::traversal::Traversal;
use crate::viewer::Viewer;

/// Where bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The parent, over QUIC.
    Tree,
    /// The edge, over HTTP.
    Edge,
}

impl Source {
    /// Its name in metrics' labels and reports.
    pub fn label(self) -> &'static str {
        match self {
            Source::Tree => "tree",
            Source::Edge => "edge",
        }
    }
}

/// A segment verified: when, from where, at what depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    /// Media sequence number.
    pub seq: u64,
    /// Where it came from.
    pub source: Source,
    /// Wall clock, Unix milliseconds.
    pub at_ms: u64,
    /// When the origin had it complete (signed), Unix milliseconds.
    pub origin_ms: u64,
    /// Depth in the tree at the time.
    pub depth: u8,
    /// Complete at the origin before this peer first streamed from a
    /// parent: the join's backfill (it fills the player's buffer), not
    /// a segment the tree carried live.
    pub backfill: bool,
}

impl Verified {
    /// Verified here minus complete at the origin, ms (0 if the clocks
    /// disagree the other way).
    pub fn lag_from_origin_ms(&self) -> u64 {
        self.at_ms.saturating_sub(self.origin_ms)
    }
}

/// Recent events kept for `/status`.
const HISTORY: usize = 32;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A report for the tracker task to send.
#[derive(Debug, Clone, Copy)]
pub struct ToTracker {
    /// What happened.
    pub kind: ReportKind,
    /// The parent or backup it is about, where the report needs one.
    pub parent_id: Option<u64>,
}

/// The parent this peer is streaming from.
#[derive(Debug, Clone)]
pub struct ParentLink {
    /// The node.
    pub node: NodeInfo,
    /// Since when.
    pub since: Instant,
}

/// How long a segment whose parent was lost mid-way waits for the next
/// parent to resume it. Its children wait as long on its bytes; past it,
/// the segment is failed, and the fallback fetches it whole from the edge.
pub const RESUME_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

/// A segment being received: the writers of its data and signature, which
/// this peer's children already stream from (cut-through), and the data
/// so far. When its link ends mid-way it is parked ([`Shared::park`])
/// rather than failed, so that the next parent continues from the byte it
/// stopped at and the children never see the switch.
#[derive(Debug)]
pub struct Partial {
    /// Media sequence number.
    pub seq: u64,
    /// The data's writer.
    pub data_w: BodyWriter,
    /// The data so far.
    pub data: GrowingBody,
    /// The signature's writer (written once the data verify).
    pub sig_w: BodyWriter,
    /// Continued from another parent's bytes: a failed verification is
    /// then no proof against this parent.
    pub resumed: bool,
}

/// A parent and a child would be the same peer: a loop in the tree.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("peer {0} would be both this peer's parent and its child")]
pub struct LoopError(pub u64);

/// A peer as one tracker numbers it: ids are per tracker, so a peer that
/// moved to another edge may have a new parent whose id an old child has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// The tracker's ticket key (hex), naming the tracker.
    pub tracker: String,
    /// The peer's id there.
    pub id: u64,
}

/// Whom this peer streams from and to, kept apart: two peers that lose
/// their parents at once, each the other's backup, would otherwise each
/// take the other as parent and feed each other nothing. A parent is
/// refused while it is a child, a child while it is the parent; both are
/// checked under one lock, so that of two such crossing switches at least
/// one side fails (sans-IO).
#[derive(Debug, Default)]
pub struct Family {
    parent: Option<Member>,
    /// Sessions per child: a child that connects again (its warm backup
    /// connection, say) before its old session has ended is counted
    /// until both have.
    children: HashMap<Member, u32>,
}

impl Family {
    /// The parent is now `parent` (`None`: the edge, or no parent).
    pub fn take_parent(&mut self, parent: Option<Member>) -> Result<(), LoopError> {
        match parent {
            Some(p) if self.children.contains_key(&p) => Err(LoopError(p.id)),
            p => {
                self.parent = p;
                Ok(())
            }
        }
    }

    /// `child` streams from this peer now.
    pub fn adopt(&mut self, child: Member) -> Result<(), LoopError> {
        if self.parent.as_ref() == Some(&child) {
            return Err(LoopError(child.id));
        }
        *self.children.entry(child).or_default() += 1;
        Ok(())
    }

    /// One session of `child` ended.
    pub fn release(&mut self, child: &Member) {
        if let Some(n) = self.children.get_mut(child) {
            *n -= 1;
            if *n == 0 {
                self.children.remove(child);
            }
        }
    }
}

/// State shared by the peer's tasks.
#[derive(Debug)]
pub struct Shared {
    /// The channel.
    pub channel: ChannelName,
    /// Settings.
    pub config: PeerConfig,
    store: Mutex<Store>,
    /// Bumped whenever the store changes (a segment verified, the local
    /// playlist moved), for requests waiting on it.
    pub changed: watch::Sender<u64>,
    /// What children receive.
    pub feed: Feed,
    /// Counters.
    pub metrics: PeerMetrics,
    /// How the player's playback is going.
    pub viewer: Viewer,
    /// The event's edges and the one in use (the agent's, shared by every
    /// channel).
    pub edges: std::sync::Arc<Edges>,
    /// When the tracker of the edge in use last placed this peer (a join
    /// answered), Unix milliseconds; 0 before.
    pub joined_ms: AtomicU64,
    /// The tracker's latest answer.
    pub assignment: watch::Sender<Option<Assignment>>,
    /// The parent streaming now.
    parent: Mutex<Option<ParentLink>>,
    /// The parent's and the children's ids, kept apart (locked before
    /// `parent`).
    family: Mutex<Family>,
    /// Segments whose parent was lost mid-way, for the next to resume,
    /// and when each was parked.
    parked: Mutex<Vec<(Instant, Partial)>>,
    /// When the parent last sent a playlist.
    pub last_tree_playlist: Mutex<Option<Instant>>,
    /// Requests for the tracker task.
    pub tracker: mpsc::Sender<ToTracker>,
    /// The agent's reflexive address and punching.
    pub traversal: std::sync::Arc<Traversal>,
    /// This peer's QUIC address as given to the tracker.
    pub advertise: SocketAddr,
    /// Its certificate fingerprint.
    pub fingerprint: String,
    /// When the peer started.
    pub started: Instant,
    /// When a parent first streamed to this peer, Unix milliseconds.
    first_streaming_ms: std::sync::OnceLock<u64>,
    /// The last segments verified.
    recent: Mutex<VecDeque<Verified>>,
    /// The last repair times: from the parent's last sign of life to the
    /// new parent streaming, in milliseconds.
    repairs: Mutex<VecDeque<u64>>,
    /// Repairs since start (`repairs` keeps the last [`HISTORY`]).
    repairs_total: AtomicU64,
    /// The last dials through a NAT.
    traversals: Mutex<VecDeque<TraversalOutcome>>,
}

/// One dial to a parent or backup behind a NAT on another site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraversalOutcome {
    /// The address dialled (the parent's, outside its NAT).
    pub to: SocketAddr,
    /// The handshake completed.
    pub ok: bool,
    /// Handshakes tried before it completed or this peer gave up.
    pub tries: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single call; a panic elsewhere
    // leaves them consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Builds the shared state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        channel: ChannelName,
        config: PeerConfig,
        store: Store,
        metrics: PeerMetrics,
        edges: std::sync::Arc<Edges>,
        tracker: mpsc::Sender<ToTracker>,
        advertise: SocketAddr,
        fingerprint: String,
        traversal: std::sync::Arc<Traversal>,
    ) -> Self {
        Self {
            channel,
            config,
            store: Mutex::new(store),
            changed: watch::channel(0).0,
            feed: Feed::new(),
            viewer: Viewer::new(metrics.clone()),
            metrics,
            edges,
            joined_ms: Default::default(),
            assignment: watch::channel(None).0,
            parent: Mutex::new(None),
            family: Mutex::new(Family::default()),
            parked: Mutex::new(Vec::new()),
            last_tree_playlist: Mutex::new(None),
            tracker,
            traversal,
            advertise,
            fingerprint,
            started: Instant::now(),
            first_streaming_ms: std::sync::OnceLock::new(),
            recent: Mutex::new(VecDeque::new()),
            repairs: Mutex::new(VecDeque::new()),
            repairs_total: AtomicU64::new(0),
            traversals: Mutex::new(VecDeque::new()),
        }
    }

    /// The store, locked.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// A live playlist from `source`. Bad playlists are logged and counted,
    /// never forwarded.
    pub fn on_playlist(&self, bytes: Bytes, source: Source) {
        let now = Instant::now();
        let result = self.store().handle_playlist(&bytes, now);
        match result {
            Ok(PlaylistUpdate::Stale) => debug!(source = source.label(), "stale playlist ignored"),
            Ok(_) => {
                if source == Source::Tree {
                    *lock(&self.last_tree_playlist) = Some(now);
                }
                self.feed.set_playlist(bytes);
                self.store().refresh();
                self.bump();
            }
            Err(e) => {
                self.metrics.bad_input.inc();
                warn!(source = source.label(), error = %e, "unusable playlist ignored");
            }
        }
    }

    /// A complete segment from `source` with the origin's signature
    /// document: verified and kept, or refused. `Ok(false)` when it was
    /// already there.
    pub fn on_segment(
        &self,
        seq: u64,
        bytes: Bytes,
        signature: &[u8],
        source: Source,
    ) -> Result<bool, VerifyError> {
        let result = self.store().handle_segment(seq, bytes, signature);
        match &result {
            Ok(Some(origin_ms)) => {
                self.metrics
                    .verified
                    .with_label_values(&[source.label()])
                    .inc();
                let depth = self.assignment.borrow().as_ref().map_or(0, |a| a.depth);
                let joined = self.first_streaming_ms.get().copied().unwrap_or(u64::MAX);
                push_bounded(
                    &self.recent,
                    Verified {
                        seq,
                        source,
                        at_ms: unix_ms(),
                        origin_ms: *origin_ms,
                        depth,
                        backfill: *origin_ms < joined,
                    },
                );
                self.store().refresh();
                self.bump();
            }
            Ok(None) => {}
            Err(e) => {
                self.metrics.corrupt.inc();
                warn!(seq, source = source.label(), error = %e, "segment failed verification; not used");
            }
        }
        result.map(|r| r.is_some())
    }

    /// The parent streaming now.
    pub fn parent(&self) -> Option<ParentLink> {
        lock(&self.parent).clone()
    }

    /// Makes `link` the parent streaming now, unless its node is one of
    /// this peer's children ([`Family`]); `tracker` is the ticket key of
    /// the tracker that named it.
    pub fn take_parent(&self, link: ParentLink, tracker: &str) -> Result<(), LoopError> {
        let mut family = lock(&self.family);
        let parent = (link.node.kind == "peer").then(|| Member {
            tracker: tracker.to_owned(),
            id: link.node.id,
        });
        family.take_parent(parent)?;
        self.store_parent(Some(link));
        Ok(())
    }

    /// Counts `child` among this peer's children, unless it is this
    /// peer's parent ([`Family`]).
    pub fn adopt(&self, child: Member) -> Result<(), LoopError> {
        lock(&self.family).adopt(child)
    }

    /// `child` no longer streams from this peer.
    pub fn release(&self, child: &Member) {
        lock(&self.family).release(child);
    }

    /// No parent streams now.
    pub fn clear_parent(&self) {
        let mut family = lock(&self.family);
        let _ = family.take_parent(None);
        self.store_parent(None);
    }

    fn store_parent(&self, link: Option<ParentLink>) {
        self.metrics.connected.set(i64::from(link.is_some()));
        if link.is_some() {
            let _ = self.first_streaming_ms.set(unix_ms());
        }
        *lock(&self.parent) = link;
    }

    /// When the parent last sent a playlist.
    pub fn last_tree_playlist(&self) -> Option<Instant> {
        *lock(&self.last_tree_playlist)
    }

    /// Records a repair that took `ms`.
    pub fn record_repair(&self, ms: u64) {
        push_bounded(&self.repairs, ms);
        self.repairs_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts handing segment `seq` to the children as it arrives (cut
    /// through): the writers of its data and of its signature, which goes
    /// after the data once the whole is verified, and the data as it
    /// grows.
    pub fn relay(&self, seq: u64) -> Partial {
        let (data_w, data) = GrowingBody::new();
        let (sig_w, signature) = GrowingBody::new();
        self.feed.publish(std::sync::Arc::new(TreeSegment {
            seq,
            data: data.clone(),
            signature,
        }));
        Partial {
            seq,
            data_w,
            data,
            sig_w,
            resumed: false,
        }
    }

    /// Keeps a segment whose link ended mid-way for the next parent to
    /// resume, for [`RESUME_WINDOW`]. One with no bytes yet is not worth
    /// it, nor one a later copy has replaced already (a switch the
    /// tracker asked for: the new parent sent the segment whole while the
    /// old link was still being let go); dropping it fails it.
    pub fn park(&self, partial: Partial, now: Instant) {
        if partial.data_w.is_empty() || !self.feed.is_current(partial.seq, &partial.data) {
            return;
        }
        let mut parked = lock(&self.parked);
        parked.retain(|(_, p)| p.seq != partial.seq);
        parked.push((now, partial));
    }

    /// How many bytes of `seq` are parked (0: none).
    pub fn parked_len(&self, seq: u64) -> u64 {
        lock(&self.parked)
            .iter()
            .find(|(_, p)| p.seq == seq)
            .map_or(0, |(_, p)| p.data_w.len() as u64)
    }

    /// Takes the parked segment `seq`, to resume or to drop.
    pub fn unpark(&self, seq: u64) -> Option<Partial> {
        let mut parked = lock(&self.parked);
        let i = parked.iter().position(|(_, p)| p.seq == seq)?;
        Some(parked.swap_remove(i).1)
    }

    /// Fails the parked segments no parent resumed within
    /// [`RESUME_WINDOW`] (their children's streams end, and the fallback
    /// covers them).
    pub fn expire_parked(&self, now: Instant) {
        lock(&self.parked).retain(|(at, _)| now.saturating_duration_since(*at) < RESUME_WINDOW);
    }

    /// Records a dial through a NAT.
    pub fn record_traversal(&self, t: TraversalOutcome) {
        push_bounded(&self.traversals, t);
    }

    /// The last dials through a NAT, oldest first.
    pub fn traversals(&self) -> Vec<TraversalOutcome> {
        lock(&self.traversals).iter().copied().collect()
    }

    /// The last segments verified, oldest first.
    pub fn recent(&self) -> Vec<Verified> {
        lock(&self.recent).iter().copied().collect()
    }

    /// The last repair times in milliseconds, oldest first.
    pub fn repairs(&self) -> Vec<u64> {
        lock(&self.repairs).iter().copied().collect()
    }

    /// Repairs since start.
    pub fn repairs_total(&self) -> u64 {
        self.repairs_total.load(Ordering::Relaxed)
    }
}

fn push_bounded<T>(q: &Mutex<VecDeque<T>>, v: T) {
    let mut q = lock(q);
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_never_both_parent_and_child() {
        let m = |tracker: &str, id| Member {
            tracker: tracker.into(),
            id,
        };
        // A and B lost their parents at once and each dials the other.
        let (mut a, mut b) = (Family::default(), Family::default());
        // A welcomes B first, then its own switch to B completes: refused.
        a.adopt(m("t", 2)).expect("B as A's child");
        assert_eq!(a.take_parent(Some(m("t", 2))), Err(LoopError(2)));
        // B's switch to A completed first: A's Hello, arriving later, is
        // refused.
        b.take_parent(Some(m("t", 1))).expect("A as B's parent");
        assert_eq!(b.adopt(m("t", 1)), Err(LoopError(1)));
        // B connected twice (a second session before the first ended):
        // still a child until both end.
        a.adopt(m("t", 2)).expect("B's second session");
        a.release(&m("t", 2));
        assert_eq!(a.take_parent(Some(m("t", 2))), Err(LoopError(2)));
        // Another tracker's peer 2 is another peer (A moved edges; B has
        // not yet).
        a.take_parent(Some(m("u", 2))).expect("peer 2 of tracker u");
        // Once B has gone, A may take it as parent, and the edge is never
        // in the way.
        a.release(&m("t", 2));
        a.take_parent(Some(m("t", 2))).expect("B as A's parent");
        a.take_parent(None).expect("the edge");
        a.adopt(m("t", 2)).expect("B as a child again");
    }
}
