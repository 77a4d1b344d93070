//! Receiving the stream: the link to the parent, and the warm backup.
//!
//! - the manager follows the tracker's assignment as its sans-IO plan
//!   ([`crate::links`]) decides: it connects to the
//!   parent it names (certificate pinned to the fingerprint the tracker
//!   vouches for), says `Hello` with the ticket, and only then drops the
//!   old parent (make before break); it keeps a QUIC connection to the
//!   backup open, so switching costs one round trip;
//! - a link reads the control stream (playlists, pongs) and one stream per
//!   segment: each chunk goes straight into a growing body that children
//!   are already streaming from (cut-through), and the whole segment is
//!   verified against the origin's signature at its end;
//! - the link ends when the parent goes silent for longer than the link's
//!   own round trips and cadence allow ([`crate::liveness`]: at least
//!   120 ms, at most `gap_ms`), closes, sheds this peer (its uplink is
//!   saturated: [`treecast_proto::uplink`]), breaks the protocol, or sends a
//!   segment that fails verification; the manager then switches to the warm backup at
//!   once and tells the tracker, which names a new backup;
//! - a parent behind a NAT on another site (`NodeInfo::traversal`) opens
//!   its NAT towards this peer when the tracker tells it to, which can be
//!   a heartbeat after this peer was told to dial: such a dial retries the
//!   handshake for up to [`TRAVERSAL_TRIES`] × [`TRAVERSAL_TRY`], and its
//!   outcome goes to the tracker, which learns who can be reached; the
//!   backup is warmed in the background, so a long dial never holds up a
//!   switch;
//! - what a hostile parent can make this peer hold is bounded: segments in
//!   flight per link, bytes per segment, time per segment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use treecast_proto::quic::{client_config, parse_fingerprint, SERVER_NAME};
use treecast_proto::tracker::{NodeInfo, ReportKind};
use treecast_proto::tree::{
    encode, frame_name, read_frame, TreeError, CLOSE_SHED, CONTROL_PRIORITY, RECENT,
};
use treecast_proto::wire::{Frame, FrameDecoder, VERSION};

use crate::links::{reportable, NodeKey, Plan, Step};
use crate::liveness::Liveness;
use crate::shared::{ParentLink, Partial, Shared, Source, ToTracker, TraversalOutcome};

/// Segment streams one parent may have open to this peer at once: a
/// joining child's backfill (the parent's recent segments) and, on a slow
/// link, the live segments that start while that backfill is still going;
/// beyond that a parent is misbehaving.
const MAX_INFLIGHT: usize = 2 * RECENT + 2;
/// Shortest silence that ends a link ([`Liveness`] gives a slow or
/// bursty link more).
const SILENCE_FLOOR: Duration = Duration::from_millis(120);
/// Longest a QUIC handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the parent may take to answer `Hello` once connected. More than
/// the handshake: a parent busy feeding other children over a small
/// uplink queues this child's first packets behind their data, and loses
/// some there (measured in the network lab: `Welcome` took over 2 s behind
/// two children's backfill on a 17 Mb/s uplink).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// While nothing streams after a parent was lost, `Welcome` gets this many
/// round trips of the connection (within [`REPAIR_HELLO_FLOOR`] and
/// [`REPAIR_HELLO_CEILING`]) before the parent is given up and the
/// tracker asked for another: in the network lab, a warm backup whose
/// uplink was full held repairs for the whole [`HELLO_TIMEOUT`] (the
/// slowest 5% took 5.3–5.5 s), and such a parent would soon shed this
/// child anyway.
const REPAIR_HELLO_RTTS: u32 = 8;
/// Least time `Welcome` gets during a repair.
const REPAIR_HELLO_FLOOR: Duration = Duration::from_secs(1);
/// Most time `Welcome` gets during a repair.
const REPAIR_HELLO_CEILING: Duration = Duration::from_secs(2);
/// One handshake attempt through a NAT: short, so that the next attempt
/// sends a fresh first packet soon after the parent punched (QUIC's own
/// retransmissions back off to seconds).
const TRAVERSAL_TRY: Duration = Duration::from_millis(1500);
/// Attempts through a NAT: the parent punches at its next heartbeat (2 s
/// apart by default), plus a round trip.
const TRAVERSAL_TRIES: u32 = 5;

/// Why a link to a parent ended.
#[derive(Debug, thiserror::Error)]
enum LinkEnd {
    /// Silent for longer than `gap_ms`.
    #[error("the parent went silent")]
    Gap,
    /// A segment failed verification.
    #[error("segment {0} from the parent failed verification")]
    Corrupt(u64),
    /// The parent let this peer go: its uplink is saturated.
    #[error("the parent's uplink is saturated; it let this child go")]
    Shed,
    /// The connection closed or broke the protocol.
    #[error("the link closed: {0}")]
    Closed(TreeError),
}

struct Link {
    node: NodeInfo,
    number: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Warm {
    node: NodeInfo,
    conn: quinn::Connection,
}

fn same(a: &NodeInfo, b: &NodeInfo) -> bool {
    NodeKey::of(a) == NodeKey::of(b)
}

/// Runs the manager until `shutdown`.
pub async fn run(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut assignments = shared.assignment.subscribe();
    let (ended_tx, mut ended) = mpsc::channel::<(u64, LinkEnd, Instant)>(8);
    let (warmed_tx, mut warmed) = mpsc::channel::<Warmed>(2);
    let mut m = Manager {
        shared: shared.clone(),
        endpoint,
        plan: Plan::new(),
        current: None,
        warm: None,
        warmed_tx,
        links: 0,
        ended_tx,
        lost_at: None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            changed = assignments.changed() => {
                if changed.is_err() { break; }
                m.reconcile().await;
            }
            _ = tick.tick() => {
                shared.expire_parked(Instant::now());
                m.reconcile().await;
            }
            Some((number, end, last_heard)) = ended.recv() => m.link_ended(number, end, last_heard).await,
            Some((node, result)) = warmed.recv() => m.warmed(node, result),
            _ = shutdown.changed() => break,
        }
    }
    shared.clear_parent();
}

/// A backup dial finished in the background.
type Warmed = (NodeInfo, Result<quinn::Connection, TreeError>);

/// The driver of a [`Plan`]: it holds the connections the plan decides
/// about, does what the plan's steps say, and tells it what came of them.
struct Manager {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    plan: Plan,
    current: Option<Link>,
    warm: Option<Warm>,
    /// Where background backup dials report.
    warmed_tx: mpsc::Sender<Warmed>,
    links: u64,
    ended_tx: mpsc::Sender<(u64, LinkEnd, Instant)>,
    /// The lost parent's last sign of life, until a new parent streams.
    lost_at: Option<Instant>,
}

impl Manager {
    /// Brings the links in line with the tracker's latest assignment.
    async fn reconcile(&mut self) {
        let Some(a) = self.shared.assignment.borrow().clone() else {
            return;
        };
        if self
            .warm
            .as_ref()
            .is_some_and(|w| w.conn.close_reason().is_some())
        {
            self.warm = None;
            self.plan.handle_warm_closed();
        }
        // Tickets expire: keep the warm backup's the freshest the tracker
        // gave.
        if let (Some(w), Some(b)) = (self.warm.as_mut(), &a.backup) {
            if same(&w.node, b) {
                w.node = b.clone();
            }
        }
        let no_udp = self.shared.traversal.no_udp();
        let now = Instant::now();
        for step in self.plan.handle_assignment(&a, no_udp, now) {
            match step {
                Step::Switch { to, reason } => {
                    let result = self.switch_to(to.clone(), reason).await;
                    if let Err(e) = &result {
                        warn!(parent = to.id, addr = ?to.addr, error = %e, "cannot connect to the assigned parent");
                        self.report_failed(&to, e);
                    }
                    self.plan
                        .handle_switched(&to, result.is_ok(), Instant::now());
                }
                Step::Warm(node) => {
                    // In the background: a dial through a NAT takes seconds.
                    let (shared, endpoint) = (self.shared.clone(), self.endpoint.clone());
                    let done = self.warmed_tx.clone();
                    tokio::spawn(async move {
                        let result = dial(&shared, &endpoint, &node).await;
                        let _ = done.send((node, result)).await;
                    });
                }
                Step::DropWarm => self.warm = None,
                Step::Report(node) => {
                    info!(
                        parent = node.id,
                        "the tracker names a parent that failed moments ago; asking for another"
                    );
                    self.tell(ReportKind::ParentGap, &node);
                }
            }
        }
    }

    /// Tells the tracker that the parent it named could not be switched
    /// to, so that it places this peer elsewhere now (see
    /// [`crate::links`], "saying so").
    fn report_failed(&self, node: &NodeInfo, error: &TreeError) {
        if !reportable(node) {
            return;
        }
        let kind = match error {
            TreeError::Shed => ReportKind::ParentShed,
            _ => ReportKind::ParentGap,
        };
        self.tell(kind, node);
    }

    /// Reports `kind` about `node` to the tracker (dropped when the queue
    /// to the tracker client is full).
    fn tell(&self, kind: ReportKind, node: &NodeInfo) {
        let _ = self.shared.tracker.try_send(ToTracker {
            kind,
            parent_id: Some(node.id),
        });
    }

    /// A backup dial finished: keep the connection if the tracker still
    /// names that backup.
    fn warmed(&mut self, node: NodeInfo, result: Result<quinn::Connection, TreeError>) {
        let keep = self
            .plan
            .handle_warmed(&node, result.is_ok(), Instant::now());
        match result {
            Ok(conn) if keep => {
                debug!(backup = node.id, "backup parent connection warm");
                self.warm = Some(Warm { node, conn });
            }
            Ok(conn) => conn.close(0u32.into(), b"no longer the backup"),
            Err(e) => debug!(backup = node.id, error = %e, "cannot warm the backup parent"),
        }
    }

    async fn link_ended(&mut self, number: u64, end: LinkEnd, last_heard: Instant) {
        let Some(link) = self.current.take_if(|l| l.number == number) else {
            return;
        };
        self.lost_at = Some(last_heard);
        let node = link.node.clone();
        drop(link);
        self.shared.clear_parent();
        let backup = self.plan.handle_link_ended(Instant::now());
        let (report, reason) = match &end {
            LinkEnd::Gap => (ReportKind::ParentGap, "gap"),
            LinkEnd::Corrupt(_) => (ReportKind::ParentCorrupt, "corrupt"),
            LinkEnd::Shed => (ReportKind::ParentShed, "shed"),
            LinkEnd::Closed(_) => (ReportKind::ParentGap, "closed"),
        };
        let silent_ms = last_heard.elapsed().as_millis() as u64;
        warn!(parent = node.id, reason = %end, silent_ms, "lost the parent; switching to the backup");
        self.tell(report, &node);
        let warm = self.warm.take_if(|w| backup == Some(NodeKey::of(&w.node)));
        if let Some(w) = warm {
            let result = self.start(w.node.clone(), w.conn, reason).await;
            if let Err(e) = &result {
                warn!(backup = w.node.id, error = %e, "the backup parent refused; waiting for the tracker");
                self.report_failed(&w.node, e);
            }
            self.plan
                .handle_switched(&w.node, result.is_ok(), Instant::now());
        }
    }

    async fn switch_to(&mut self, node: NodeInfo, reason: &'static str) -> Result<(), TreeError> {
        let conn = match self.warm.take_if(|w| same(&w.node, &node)) {
            Some(w) if w.conn.close_reason().is_none() => w.conn,
            _ => dial(&self.shared, &self.endpoint, &node).await?,
        };
        self.start(node, conn, reason).await
    }

    /// Says `Hello` on `conn` and makes it the current link. While a lost
    /// parent is being replaced, `Welcome` gets a few round trips
    /// ([`REPAIR_HELLO_RTTS`]), not the whole [`HELLO_TIMEOUT`].
    async fn start(
        &mut self,
        node: NodeInfo,
        conn: quinn::Connection,
        reason: &'static str,
    ) -> Result<(), TreeError> {
        let (my_id, tracker) = self
            .shared
            .assignment
            .borrow()
            .as_ref()
            .map_or((0, String::new()), |a| (a.peer_id, a.ticket_key.clone()));
        // The segment in flight when the last parent was lost continues
        // from the byte it stopped at.
        let next_seq = self.shared.store().next_wanted();
        let hello = Frame::Hello {
            version: VERSION,
            channel: self.shared.channel.to_string(),
            peer_id: my_id,
            ticket: node.ticket.clone(),
            next_seq,
            resume_offset: self.shared.parked_len(next_seq),
        };
        let hello_timeout = if self.lost_at.is_some() {
            (conn.rtt() * REPAIR_HELLO_RTTS).clamp(REPAIR_HELLO_FLOOR, REPAIR_HELLO_CEILING)
        } else {
            HELLO_TIMEOUT
        };
        let before = conn.stats();
        let (control, control_rx, decoder) = tokio::time::timeout(hello_timeout, async {
            let (mut tx, mut rx) = conn.open_bi().await?;
            let _ = tx.set_priority(CONTROL_PRIORITY);
            tx.write_all(&encode(&hello)).await?;
            let mut d = FrameDecoder::new();
            match read_frame(&mut rx, &mut d).await? {
                Frame::Welcome { .. } => Ok((tx, rx, d)),
                Frame::Refuse { reason } => Err(TreeError::Protocol(format!("refused: {reason}"))),
                other => Err(TreeError::Protocol(format!(
                    "expected Welcome, got {}",
                    frame_name(&other)
                ))),
            }
        })
        .await
        .map_err(|_| {
            // What arrived meanwhile tells a parent that sent nothing from
            // a `Welcome` held behind the parent's other streams.
            let after = conn.stats();
            info!(
                parent = node.id,
                waited_ms = hello_timeout.as_millis() as u64,
                rtt_ms = conn.rtt().as_millis() as u64,
                datagrams_in = after.udp_rx.datagrams - before.udp_rx.datagrams,
                stream_frames_in = after.frame_rx.stream - before.frame_rx.stream,
                bytes_in = after.udp_rx.bytes - before.udp_rx.bytes,
                "no Welcome in time"
            );
            TreeError::Timeout("Hello")
        })
        .and_then(|r| r)
        // A parent whose uplink is full may shed a child before its
        // `Welcome` gets through.
        .map_err(|e| if shed_us(&conn) { TreeError::Shed } else { e })?;
        let link = ParentLink {
            node: node.clone(),
            since: Instant::now(),
        };
        if let Err(e) = self.shared.take_parent(link, &tracker) {
            conn.close(0u32.into(), b"a loop");
            return Err(TreeError::Protocol(e.to_string()));
        }
        self.links += 1;
        let number = self.links;
        let ended = self.ended_tx.clone();
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let (end, last_heard) = run_link(shared, conn, control, control_rx, decoder).await;
            let _ = ended.send((number, end, last_heard)).await;
        });
        let repair_ms = self
            .lost_at
            .take()
            .map(|lost| lost.elapsed().as_millis() as u64);
        if let Some(ms) = repair_ms {
            self.shared.record_repair(ms);
        }
        info!(parent = node.id, kind = %node.kind, addr = ?node.addr, reason, repair_ms, "streaming from a new parent");
        self.shared
            .metrics
            .parent_switches
            .with_label_values(&[reason])
            .inc();
        // The old link (if any) is aborted only now: make before break.
        self.current = Some(Link { node, number, task });
        Ok(())
    }
}

/// Whether the parent closed `conn` with the shed code: its uplink is
/// saturated and it let this peer go.
fn shed_us(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == CLOSE_SHED.into()
    )
}

/// Milliseconds since `base`, for a lock-free "last heard" stamp.
fn stamp(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// A QUIC connection to `node`. Through a NAT (`traversal`), handshakes
/// are retried until the parent's punch lets one in, and the outcome is
/// recorded and reported to the tracker.
async fn dial(
    shared: &Shared,
    endpoint: &quinn::Endpoint,
    node: &NodeInfo,
) -> Result<quinn::Connection, TreeError> {
    let addr = node
        .addr
        .ok_or_else(|| TreeError::Protocol("the tracker gave no address".into()))?;
    let fp = node
        .cert_fingerprint
        .as_deref()
        .and_then(parse_fingerprint)
        .ok_or_else(|| {
            TreeError::Protocol("the tracker gave no valid certificate fingerprint".into())
        })?;
    let config = client_config(fp).map_err(|e| TreeError::Protocol(e.to_string()))?;
    let (tries, each) = if node.traversal {
        (TRAVERSAL_TRIES, TRAVERSAL_TRY)
    } else {
        (1, CONNECT_TIMEOUT)
    };
    let mut result = Err(TreeError::Timeout("connecting"));
    let mut tried = 0;
    while tried < tries {
        tried += 1;
        let connecting = endpoint
            .connect_with(config.clone(), addr, SERVER_NAME)
            .map_err(|e| TreeError::Protocol(e.to_string()))?;
        result = match tokio::time::timeout(each, connecting).await {
            Ok(r) => r.map_err(TreeError::from),
            Err(_) => Err(TreeError::Timeout("connecting")),
        };
        if result.is_ok() {
            break;
        }
    }
    if node.traversal {
        let ok = result.is_ok();
        let outcome = if ok { "reached" } else { "unreachable" };
        shared
            .metrics
            .traversals
            .with_label_values(&[outcome])
            .inc();
        shared.record_traversal(TraversalOutcome {
            to: addr,
            ok,
            tries: tried,
        });
        info!(parent = node.id, %addr, tries = tried, outcome, "dialled a parent through its NAT");
        let kind = if ok {
            ReportKind::Reached
        } else {
            ReportKind::Unreachable
        };
        let _ = shared.tracker.try_send(ToTracker {
            kind,
            parent_id: Some(node.id),
        });
    }
    result
}

async fn run_link(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut control: quinn::SendStream,
    mut control_rx: quinn::RecvStream,
    decoder: FrameDecoder,
) -> (LinkEnd, Instant) {
    let base = Instant::now();
    let heard = Arc::new(AtomicU64::new(0));
    let mut segments = JoinSet::new();
    let end = link_loop(
        &shared,
        &conn,
        (&mut control, &mut control_rx, decoder),
        &mut segments,
        base,
        &heard,
    )
    .await;
    // The segments still arriving are parked before the manager hears of
    // the end, so that the next parent's `Hello` can ask to resume them.
    segments.shutdown().await;
    // However the loop saw it end (a stream, the control stream, the
    // connection), a parent that closed with the shed code shed us.
    let end = if shed_us(&conn) { LinkEnd::Shed } else { end };
    conn.close(0u32.into(), b"switching parent");
    let last_heard = base + Duration::from_millis(heard.load(Ordering::Relaxed));
    (end, last_heard)
}

/// The control stream, both ways, and the decoder of what the parent sent
/// on it so far.
type Control<'a> = (
    &'a mut quinn::SendStream,
    &'a mut quinn::RecvStream,
    FrameDecoder,
);

async fn link_loop(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    (control, control_rx, mut decoder): Control<'_>,
    segments: &mut JoinSet<Result<(), LinkEnd>>,
    base: Instant,
    heard: &Arc<AtomicU64>,
) -> LinkEnd {
    let mut liveness = Liveness::new(
        Instant::now(),
        SILENCE_FLOOR,
        Duration::from_millis(shared.config.gap_ms),
    );
    // The detector decides when to ping and when silence is too long;
    // this only looks often enough for its shortest limit.
    let mut tick = tokio::time::interval(liveness.poll_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pings = 0u64;
    // Frames that arrived with `Welcome`.
    if let Err(end) = control_frames(shared, control, &mut decoder).await {
        return end;
    }
    loop {
        tokio::select! {
            chunk = control_rx.read_chunk(64 * 1024, true) => {
                let c = match chunk {
                    Ok(Some(c)) => c,
                    Ok(None) => return LinkEnd::Closed(TreeError::Protocol("parent ended the control stream".into())),
                    Err(e) => return LinkEnd::Closed(e.into()),
                };
                heard.store(stamp(base), Ordering::Relaxed);
                decoder.feed(&c.bytes);
                if let Err(end) = control_frames(shared, control, &mut decoder).await {
                    return end;
                }
            }
            uni = conn.accept_uni() => {
                let mut recv = match uni {
                    Ok(r) => r,
                    Err(e) => return LinkEnd::Closed(e.into()),
                };
                if segments.len() >= MAX_INFLIGHT {
                    shared.metrics.bad_input.inc();
                    warn!("parent opened too many segment streams at once; refusing one");
                    let _ = recv.stop(2u32.into());
                    continue;
                }
                let (shared, heard) = (shared.clone(), heard.clone());
                segments.spawn(async move { receive_segment(&shared, &mut recv, &heard, base).await });
            }
            Some(done) = segments.join_next(), if !segments.is_empty() => {
                if let Ok(Err(end)) = done {
                    return end;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let srtt = conn.rtt();
                liveness.handle_heard(base + Duration::from_millis(heard.load(Ordering::Relaxed)));
                if let Some(silence) = liveness.poll_silent(now, srtt) {
                    debug!(?silence, limit = ?liveness.limit(srtt), ?srtt, "parent silent");
                    return LinkEnd::Gap;
                }
                if liveness.poll_ping(now, srtt) {
                    pings += 1;
                    if let Err(e) = control.write_all(&encode(&Frame::Ping(pings))).await {
                        return LinkEnd::Closed(e.into());
                    }
                }
            }
        }
    }
}

/// Handles the complete frames `decoder` holds from the control stream.
async fn control_frames(
    shared: &Shared,
    control: &mut quinn::SendStream,
    decoder: &mut FrameDecoder,
) -> Result<(), LinkEnd> {
    loop {
        match decoder.poll_frame() {
            Ok(None) => return Ok(()),
            Ok(Some(Frame::Playlist(p))) => shared.on_playlist(p, Source::Tree),
            Ok(Some(Frame::Pong(_))) => {}
            Ok(Some(Frame::Edge(base))) => shared.edges.hint(&base),
            Ok(Some(Frame::Ping(n))) => control
                .write_all(&encode(&Frame::Pong(n)))
                .await
                .map_err(|e| LinkEnd::Closed(e.into()))?,
            Ok(Some(other)) => {
                shared.metrics.bad_input.inc();
                return Err(LinkEnd::Closed(TreeError::Protocol(format!(
                    "unexpected {} on the control stream",
                    frame_name(&other)
                ))));
            }
            Err(e) => {
                shared.metrics.bad_input.inc();
                return Err(LinkEnd::Closed(e.into()));
            }
        }
    }
}

/// Receives one segment stream. Incomplete or malformed streams are logged
/// and dropped (the fallback covers the segment); only a segment that
/// fails verification ends the link.
async fn receive_segment(
    shared: &Shared,
    recv: &mut quinn::RecvStream,
    heard: &AtomicU64,
    base: Instant,
) -> Result<(), LinkEnd> {
    let deadline = shared
        .store()
        .target_duration()
        .map_or(Duration::from_secs(10), |t| {
            (t * 3).max(Duration::from_secs(6))
        });
    match tokio::time::timeout(deadline, segment_stream(shared, recv, heard, base)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(StreamEnd::Corrupt(seq))) => Err(LinkEnd::Corrupt(seq)),
        Ok(Err(StreamEnd::Incomplete(why))) => {
            debug!(%why, "incomplete segment stream");
            Ok(())
        }
        Err(_) => {
            warn!("a segment stream from the parent did not end in time; dropped");
            let _ = recv.stop(3u32.into());
            Ok(())
        }
    }
}

enum StreamEnd {
    Corrupt(u64),
    Incomplete(String),
}

async fn segment_stream(
    shared: &Shared,
    recv: &mut quinn::RecvStream,
    heard: &AtomicU64,
    base: Instant,
) -> Result<(), StreamEnd> {
    let bad = |why: String| {
        shared.metrics.bad_input.inc();
        StreamEnd::Incomplete(why)
    };
    let mut decoder = FrameDecoder::new();
    let first = read_frame(recv, &mut decoder)
        .await
        .map_err(|e| StreamEnd::Incomplete(e.to_string()))?;
    let Frame::SegmentStart { seq, offset } = first else {
        return Err(bad(format!(
            "segment stream began with {}",
            frame_name(&first)
        )));
    };
    if !shared.store().wants(seq) {
        // Already verified (a backfill or a repeat): tell the parent to stop.
        let _ = recv.stop(0u32.into());
        return Ok(());
    }
    let partial = if offset == 0 {
        // A whole copy: what a lost parent left of it is dropped (its
        // children move to this copy).
        drop(shared.unpark(seq));
        shared.relay(seq)
    } else {
        // The rest of a segment this peer asked to resume.
        match shared.unpark(seq) {
            Some(mut p) if p.data_w.len() as u64 == offset => {
                shared.metrics.resumed.inc();
                shared.metrics.resumed_bytes.inc_by(offset);
                debug!(
                    seq,
                    offset, "resuming a segment the lost parent left mid-way"
                );
                p.resumed = true;
                p
            }
            held => {
                let len = held.as_ref().map_or(0, |p| p.data_w.len());
                if let Some(p) = held {
                    shared.park(p, Instant::now());
                }
                let _ = recv.stop(0u32.into());
                return Err(bad(format!(
                    "segment {seq} sent from byte {offset}, but this peer holds {len} bytes of it"
                )));
            }
        }
    };
    let mut inflight = InFlight {
        shared,
        partial: Some(partial),
    };
    let max = shared.config.max_segment_bytes;
    let mut chunk_bytes = bytes::Bytes::new();
    loop {
        decoder.feed(&chunk_bytes);
        while let Some(frame) = decoder.poll_frame().map_err(|e| bad(e.to_string()))? {
            let p = inflight.partial();
            match frame {
                Frame::SegmentData(b) => {
                    if p.data_w.len() + b.len() > max {
                        return Err(bad(format!("segment {seq} exceeds {max} bytes")));
                    }
                    shared.metrics.bytes_from_tree.inc_by(b.len() as u64);
                    p.data_w.push(b);
                }
                Frame::SegmentEnd { signature } => {
                    let Partial {
                        data_w,
                        data,
                        sig_w,
                        resumed,
                        ..
                    } = inflight.finish();
                    data_w.finish();
                    let bytes = data.bytes().unwrap_or_default();
                    return match shared.on_segment(seq, bytes, &signature, Source::Tree) {
                        Ok(_) => {
                            sig_w.push(signature);
                            sig_w.finish();
                            Ok(())
                        }
                        Err(_) => {
                            sig_w.fail("failed verification");
                            // Bytes from two parents: which one lied is
                            // unknown, and the fallback fetches it whole.
                            if resumed {
                                Err(StreamEnd::Incomplete(format!(
                                    "resumed segment {seq} failed verification"
                                )))
                            } else {
                                Err(StreamEnd::Corrupt(seq))
                            }
                        }
                    };
                }
                other => {
                    return Err(bad(format!(
                        "unexpected {} in segment {seq}",
                        frame_name(&other)
                    )));
                }
            }
        }
        let chunk = recv
            .read_chunk(64 * 1024, true)
            .await
            .map_err(|e| StreamEnd::Incomplete(e.to_string()))?;
        let Some(chunk) = chunk else {
            return Err(StreamEnd::Incomplete(format!(
                "segment {seq} ended without its signature"
            )));
        };
        heard.store(stamp(base), Ordering::Relaxed);
        chunk_bytes = chunk.bytes;
    }
}

/// A segment being received from the parent. However its stream ends
/// before the signature (the link lost, the task aborted on a switch, the
/// stream reset), what arrived is parked for the next parent to resume.
struct InFlight<'a> {
    shared: &'a Shared,
    partial: Option<Partial>,
}

impl InFlight<'_> {
    fn partial(&mut self) -> &mut Partial {
        self.partial
            .as_mut()
            .unwrap_or_else(|| unreachable!("taken only by `finish`, which ends the stream"))
    }

    /// The stream's end arrived: the segment is no longer parkable.
    fn finish(mut self) -> Partial {
        self.partial
            .take()
            .unwrap_or_else(|| unreachable!("finished once"))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.partial.take() {
            self.shared.park(p, Instant::now());
        }
    }
}
