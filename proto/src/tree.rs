//! The parent's side of the tree protocol, shared by the edge (the root)
//! and by every peer that relays to children.
//!
//! - a [`Feed`] holds what a parent has for its children: the few most
//!   recent segments (complete or still growing), a broadcast of each new
//!   one, and the latest playlist;
//! - [`admit`] takes a new connection through `Hello` → ticket check →
//!   `Welcome` (or `Refuse`);
//! - [`push`] then sends the child the recent segments it still needs
//!   (from the `next_seq` of its `Hello`, the first of them from the byte
//!   the child holds when it lost its parent mid-segment; the decisions
//!   are [`crate::forward`]'s) and every new one,
//!   each on its own unidirectional stream, chunk by chunk as the bytes
//!   arrive (cut-through), closed by the origin's signature; playlists go on
//!   the control stream, pings are answered;
//! - a child that falls behind skips ahead (the broadcast lags), a segment
//!   that cannot be delivered within the deadline is abandoned, and a
//!   child that already has a segment stops its stream: nothing is buffered
//!   per child beyond what the QUIC stream window holds.
//!
//! See `docs/tree-protocol.md` for the exchange.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::body::GrowingBody;
use crate::forward::{Forwarding, Offer, Send};
use crate::uplink::{ChildHandle, Shedder, VERY_LATE};
use crate::wire::{Frame, FrameDecoder, WireError, VERSION};

/// Largest piece of a segment sent in one frame.
pub const CHUNK: usize = 16 * 1024;
/// How long a child has to say `Hello` once it opened its control stream.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Priority of the control stream over segment streams (live 1, backfill 0).
pub const CONTROL_PRIORITY: i32 = 10;
/// Application close code of a parent that lets a child go because its
/// uplink is saturated ([`crate::uplink`]): the child switches to its
/// backup at once and tells the tracker.
pub const CLOSE_SHED: u32 = 4;

/// Recent segments a parent keeps for a child that just connected: the one
/// being cut and the five before it, so a new or switching child can fill
/// its player's buffer from the tree instead of the edge. A child's local
/// playlist ends its buffer behind the newest complete segment (4 s by
/// default, two segments) and opens on three (a player's first buffer),
/// so it needs the five before the one being cut; its `Hello` says where
/// its first buffer starts, so a child with a shorter buffer is not sent
/// the older ones. With only three kept, every joiner's first playlist
/// held two or fewer, and its player waited a segment's duration for each
/// missing one (startup p95 5.6 s in the loopback swarm).
pub const RECENT: usize = 6;

/// One segment on its way down the tree.
#[derive(Debug)]
pub struct TreeSegment {
    /// Media sequence number.
    pub seq: u64,
    /// The segment bytes, growing while they arrive from upstream.
    pub data: GrowingBody,
    /// The origin's `.sig` document, complete once the data is.
    pub signature: GrowingBody,
}

/// A segment as the feed handed it out: each copy has its own number,
/// so a child is sent each copy once ([`crate::forward`]).
#[derive(Debug, Clone)]
struct Published {
    id: u64,
    segment: Arc<TreeSegment>,
}

/// What a parent offers its children for one channel.
#[derive(Debug)]
pub struct Feed {
    recent: Mutex<VecDeque<Published>>,
    published: AtomicU64,
    segments: broadcast::Sender<Published>,
    playlist: watch::Sender<Option<Bytes>>,
    edge: watch::Sender<Option<String>>,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    /// An empty feed.
    pub fn new() -> Self {
        // Room for a few segments: a child further behind skips ahead.
        let (segments, _) = broadcast::channel(4);
        let (playlist, _) = watch::channel(None);
        Self {
            recent: Mutex::new(VecDeque::new()),
            published: AtomicU64::new(0),
            segments,
            playlist,
            edge: watch::channel(None).0,
        }
    }

    fn recent(&self) -> MutexGuard<'_, VecDeque<Published>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a segment (usually still growing) to every child. A segment
    /// with the sequence number of an earlier one replaces it: that is a
    /// second attempt after the first failed.
    pub fn publish(&self, segment: Arc<TreeSegment>) {
        let published = Published {
            id: self.published.fetch_add(1, Ordering::Relaxed),
            segment,
        };
        {
            let mut recent = self.recent();
            recent.retain(|p| p.segment.seq != published.segment.seq);
            recent.push_back(published.clone());
            while recent.len() > RECENT {
                recent.pop_front();
            }
        }
        let _ = self.segments.send(published);
    }

    /// Sets the playlist children receive; false when it did not change.
    pub fn set_playlist(&self, bytes: Bytes) -> bool {
        self.playlist.send_if_modified(|cur| {
            if cur.as_ref() == Some(&bytes) {
                false
            } else {
                *cur = Some(bytes);
                true
            }
        })
    }

    /// Sets the edge children are told this parent is placed by
    /// ([`Frame::Edge`]).
    pub fn set_edge(&self, base: &str) {
        self.edge.send_if_modified(|cur| {
            if cur.as_deref() == Some(base) {
                false
            } else {
                *cur = Some(base.to_owned());
                true
            }
        });
    }

    /// The latest playlist.
    pub fn playlist(&self) -> Option<Bytes> {
        self.playlist.borrow().clone()
    }

    /// Whether `data` is the body of the copy of segment `seq` children
    /// are sent now (not one a later copy replaced).
    pub fn is_current(&self, seq: u64, data: &GrowingBody) -> bool {
        self.recent()
            .iter()
            .any(|p| p.segment.seq == seq && p.segment.data.same(data))
    }

    /// Segments still arriving from upstream: (sequence number, bytes so
    /// far), oldest first.
    pub fn in_progress(&self) -> Vec<(u64, usize)> {
        self.recent()
            .iter()
            .map(|p| &p.segment)
            .filter(|s| !s.data.is_complete() && s.data.failure().is_none())
            .map(|s| (s.seq, s.data.len()))
            .collect()
    }

    /// Children subscribed now.
    pub fn children(&self) -> usize {
        self.segments.receiver_count()
    }
}

/// Why a tree connection or stream ended.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The QUIC connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing a stream failed.
    #[error("write: {}", write_detail(.0))]
    Write(#[from] quinn::WriteError),
    /// Reading a stream failed.
    #[error("read: {}", read_detail(.0))]
    Read(#[from] quinn::ReadError),
    /// The stream was already finished or reset.
    #[error("stream already closed")]
    Closed(#[from] quinn::ClosedStream),
    /// The other side sent bytes that are not a frame.
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// The other side was silent too long.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A stream ended before a whole frame arrived.
    #[error("stream ended mid-frame")]
    Truncated,
    /// The other side broke the protocol (wrong frame, refused ticket...).
    #[error("{0}")]
    Protocol(String),
    /// The upstream copy of a segment failed.
    #[error("segment source failed: {0}")]
    Source(String),
    /// This parent let the child go: its uplink is saturated.
    #[error("shed: this parent's uplink is saturated")]
    Shed,
}

/// A failed read, with why the connection was lost when it was (quinn's
/// own text says only "connection lost": a timeout, a reset and a parent
/// that shed its child read the same).
fn read_detail(e: &quinn::ReadError) -> String {
    match e {
        quinn::ReadError::ConnectionLost(why) => format!("connection lost: {why}"),
        other => other.to_string(),
    }
}

/// A failed write, with why the connection was lost when it was.
fn write_detail(e: &quinn::WriteError) -> String {
    match e {
        quinn::WriteError::ConnectionLost(why) => format!("connection lost: {why}"),
        other => other.to_string(),
    }
}

/// Encodes one frame.
pub fn encode(frame: &Frame) -> Bytes {
    let mut b = BytesMut::new();
    frame.encode(&mut b);
    b.freeze()
}

/// Reads the next frame from a stream through `d`, which keeps any bytes
/// of later frames that arrived with it.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    d: &mut FrameDecoder,
) -> Result<Frame, TreeError> {
    loop {
        if let Some(f) = d.poll_frame()? {
            return Ok(f);
        }
        match recv.read_chunk(64 * 1024, true).await? {
            Some(c) => d.feed(&c.bytes),
            None => return Err(TreeError::Truncated),
        }
    }
}

/// A child that said `Hello` with an acceptable ticket.
#[derive(Debug)]
pub struct Admitted {
    /// Its connection.
    pub conn: quinn::Connection,
    /// The control stream, parent to child.
    pub control: quinn::SendStream,
    /// The control stream, child to parent.
    pub control_rx: quinn::RecvStream,
    /// The channel it asked for.
    pub channel: String,
    /// Its peer id.
    pub peer_id: u64,
    /// Decoder of the control stream from the child (holds bytes that
    /// arrived after `Hello`).
    pub inbound: FrameDecoder,
    /// First segment the child needs; older ones are not sent.
    pub next_seq: u64,
    /// Bytes of segment `next_seq` the child holds already (0: none).
    pub resume_offset: u64,
}

/// What arrived on an accepted connection.
#[derive(Debug)]
pub enum Arrival {
    /// A child, admitted.
    Child(Admitted),
    /// A peer asked where its packets come from, and was told.
    Observed(std::net::SocketAddr),
}

/// Accepts a connection: waits for the control stream (as long as the
/// connection lives: a warm backup opens it only when it switches), then
/// for `Hello`, asks `check(channel, peer_id, ticket)`, and answers
/// `Welcome` or `Refuse` (with the reason, then closes). With `observe`, a
/// first frame `Observe` is answered with the address the connection's
/// packets come from (the edge does this for peers behind NATs; the QUIC
/// handshake has validated that address, so the answer goes nowhere the
/// asker is not).
pub async fn admit(
    incoming: quinn::Incoming,
    observe: bool,
    check: impl FnOnce(&str, u64, &str) -> Result<(), String>,
) -> Result<Arrival, TreeError> {
    admit_connection(incoming.await?, observe, check).await
}

/// [`admit`] on a connection already up.
pub async fn admit_connection(
    conn: quinn::Connection,
    observe: bool,
    check: impl FnOnce(&str, u64, &str) -> Result<(), String>,
) -> Result<Arrival, TreeError> {
    // No time limit here: a child keeps its backup parent's connection
    // warm (QUIC keep-alives) and opens the control stream only when it
    // switches. The caller bounds how many connections it holds.
    tracing::debug!(remote = %conn.remote_address(), "connection up; waiting for its control stream");
    let (mut control, mut control_rx) = conn.accept_bi().await?;
    // `Welcome`, playlists and pongs go before segment data, so that a
    // child never takes a busy parent for a silent one. Set before anything
    // is written: quinn queues a stream for sending at the priority it has
    // when its first bytes are written, and a later `set_priority` does
    // not move it. Set after `Welcome`, the control stream waited behind
    // every byte of the live segment the push queued at a higher priority:
    // in the network lab, children waiting for `Welcome` received up to
    // 2 MB of segment data instead, for seconds, and gave the parent up.
    let _ = control.set_priority(CONTROL_PRIORITY);
    tracing::debug!(remote = %conn.remote_address(), "control stream open");
    let mut inbound = FrameDecoder::new();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut control_rx, &mut inbound))
        .await
        .map_err(|_| TreeError::Timeout("Hello"))??;
    let verdict = match hello {
        Frame::Observe if observe => {
            let seen = conn.remote_address();
            control.write_all(&encode(&Frame::Observed(seen))).await?;
            let _ = control.finish();
            // The asker closes once it has the answer.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            conn.close(0u32.into(), b"observed");
            return Ok(Arrival::Observed(seen));
        }
        Frame::Hello {
            version,
            channel,
            peer_id,
            ticket,
            next_seq,
            resume_offset,
        } => {
            if version != VERSION {
                Err(format!(
                    "protocol version {version} not supported (this node speaks {VERSION})"
                ))
            } else {
                check(&channel, peer_id, &ticket)
                    .map(|()| (channel, peer_id, next_seq, resume_offset))
            }
        }
        other => Err(format!("expected Hello first, got {}", frame_name(&other))),
    };
    match verdict {
        Ok((channel, peer_id, next_seq, resume_offset)) => {
            control
                .write_all(&encode(&Frame::Welcome { version: VERSION }))
                .await?;
            Ok(Arrival::Child(Admitted {
                conn,
                control,
                control_rx,
                channel,
                peer_id,
                inbound,
                next_seq,
                resume_offset,
            }))
        }
        Err(reason) => {
            let _ = control
                .write_all(&encode(&Frame::Refuse {
                    reason: reason.clone(),
                }))
                .await;
            let _ = control.finish();
            // Let the refusal reach the child before closing.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            conn.close(1u32.into(), b"refused");
            Err(TreeError::Protocol(reason))
        }
    }
}

/// Asks the node at the other end of `conn` (an edge) which address this
/// side's packets come from: its reflexive address, outside any NAT.
pub async fn observe(conn: &quinn::Connection) -> Result<std::net::SocketAddr, TreeError> {
    let (mut tx, mut rx) = conn.open_bi().await?;
    tx.write_all(&encode(&Frame::Observe)).await?;
    let mut d = FrameDecoder::new();
    let answer = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut rx, &mut d))
        .await
        .map_err(|_| TreeError::Timeout("Observed"))??;
    conn.close(0u32.into(), b"thanks");
    match answer {
        Frame::Observed(addr) => Ok(addr),
        Frame::Refuse { reason } => Err(TreeError::Protocol(format!("refused: {reason}"))),
        other => Err(TreeError::Protocol(format!(
            "expected Observed, got {}",
            frame_name(&other)
        ))),
    }
}

/// A frame's name for logs (never its payload).
pub fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello { .. } => "Hello",
        Frame::Welcome { .. } => "Welcome",
        Frame::Refuse { .. } => "Refuse",
        Frame::Playlist(_) => "Playlist",
        Frame::Ping(_) => "Ping",
        Frame::Pong(_) => "Pong",
        Frame::Edge(_) => "Edge",
        Frame::Observe => "Observe",
        Frame::Observed(_) => "Observed",
        Frame::SegmentStart { .. } => "SegmentStart",
        Frame::SegmentData(_) => "SegmentData",
        Frame::SegmentEnd { .. } => "SegmentEnd",
    }
}

/// Counters a parent keeps about what it pushes.
#[derive(Debug, Clone)]
pub struct PushMetrics {
    /// Segment bytes written to children.
    pub egress: IntCounter,
    /// Segment deliveries abandoned (slow or gone child, failed source).
    pub abandoned: IntCounter,
}

/// How a parent pushes.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Longest time one segment may take to deliver to one child.
    pub deadline: Duration,
    /// Shared upload cap over all children, if any.
    pub cap: Option<Arc<UploadCap>>,
    /// Fault injection for tests and the swarm harness: flip one byte in
    /// every segment whose sequence number is a multiple of this.
    pub tamper_every: Option<u64>,
    /// Times live deliveries and sheds the newest child when the uplink
    /// saturates (a peer's uplink; the edge's root slots are fixed).
    pub shedder: Option<Arc<Shedder>>,
    /// Counters.
    pub metrics: PushMetrics,
}

/// Pushes `feed` to an admitted child until it or the connection goes, or
/// the parent sheds it ([`TreeError::Shed`], the connection closed with
/// [`CLOSE_SHED`]).
pub async fn push(child: &mut Admitted, feed: &Feed, opts: &PushOptions) -> Result<(), TreeError> {
    let mut segments = feed.segments.subscribe();
    let mut playlist = feed.playlist.subscribe();
    let mut edge = feed.edge.subscribe();
    let recent: Vec<Published> = feed.recent().iter().cloned().collect();
    let mut plan = Forwarding::new(child.next_seq, child.resume_offset);
    let uplink = opts.shedder.as_ref().map(|s| Arc::new(s.join()));
    let mut sends = JoinSet::new();
    let conn = child.conn.clone();
    let mut offer = |sends: &mut JoinSet<()>, p: Published| {
        let seg = p.segment;
        let Some(send) = plan.handle_offer(Offer {
            seq: seg.seq,
            publication: p.id,
            complete: seg.data.is_complete(),
        }) else {
            return;
        };
        let (conn, opts, uplink) = (conn.clone(), opts.clone(), uplink.clone());
        // Only live segments say anything about the uplink: a backfill
        // takes as long as its size needs.
        if let (true, Some(u)) = (send.live, &uplink) {
            u.segment(seg.seq);
        }
        sends.spawn(async move {
            let sent =
                tokio::time::timeout(opts.deadline, send_segment(&conn, &seg, send, &opts)).await;
            let lag = match sent {
                Ok(Ok(lag)) => lag,
                Ok(Err(_)) => None,
                Err(_) => Some(opts.deadline),
            };
            if !matches!(sent, Ok(Ok(_))) {
                opts.metrics.abandoned.inc();
            }
            if let (true, Some(u), Some(lag)) = (send.live, &uplink, lag) {
                u.delivered(seg.seq, lag);
            }
        });
    };
    let first = playlist.borrow_and_update().clone();
    if let Some(p) = first {
        child
            .control
            .write_all(&encode(&Frame::Playlist(p)))
            .await?;
    }
    let first_edge = edge.borrow_and_update().clone();
    if let Some(e) = first_edge {
        child.control.write_all(&encode(&Frame::Edge(e))).await?;
    }
    for p in recent {
        offer(&mut sends, p);
    }
    loop {
        tokio::select! {
            p = segments.recv() => match p {
                Ok(p) => offer(&mut sends, p),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(child = child.peer_id, skipped = n, "child fell behind; skipping ahead");
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            changed = playlist.changed() => {
                if changed.is_err() { return Ok(()); }
                let p = playlist.borrow_and_update().clone();
                if let Some(p) = p {
                    child.control.write_all(&encode(&Frame::Playlist(p))).await?;
                }
            }
            Ok(()) = edge.changed() => {
                let e = edge.borrow_and_update().clone();
                if let Some(e) = e {
                    child.control.write_all(&encode(&Frame::Edge(e))).await?;
                }
            }
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
            chunk = child.control_rx.read_chunk(64 * 1024, true) => {
                // A child speaks on the control stream only to ping.
                let Some(c) = chunk? else { return Ok(()) };
                child.inbound.feed(&c.bytes);
                while let Some(frame) = child.inbound.poll_frame()? {
                    match frame {
                        Frame::Ping(n) => child.control.write_all(&encode(&Frame::Pong(n))).await?,
                        Frame::Pong(_) => {}
                        other => return Err(TreeError::Protocol(format!("unexpected {} from a child", frame_name(&other)))),
                    }
                }
            }
            () = shed(uplink.as_deref()) => {
                conn.close(CLOSE_SHED.into(), b"uplink saturated");
                return Err(TreeError::Shed);
            }
            reason = conn.closed() => return Err(reason.into()),
        }
    }
}

/// Completes when the parent sheds this child; never without a shedder.
async fn shed(uplink: Option<&ChildHandle>) {
    match uplink {
        Some(u) => u.shed().await,
        None => std::future::pending().await,
    }
}

/// Sends one segment on its own stream: start, data as it arrives, end.
/// A child that stops the stream because it has the segment already
/// (code 0) ends it quietly; a failed source resets it, so the child sees
/// an incomplete segment rather than a wrong one. Answers how long after
/// this parent held the whole segment the child had acknowledged all of
/// it; a child that gave up on the stream (it timed out, or had too many
/// open) got it at the deadline as far as the uplink is concerned.
async fn send_segment(
    conn: &quinn::Connection,
    seg: &TreeSegment,
    send: Send,
    opts: &PushOptions,
) -> Result<Option<Duration>, TreeError> {
    let gave_up = |code: quinn::VarInt| (code != 0u32.into()).then_some(opts.deadline);
    let mut s = conn.open_uni().await?;
    let _ = s.set_priority(send.priority);
    match write_segment(&mut s, seg, send.offset, opts).await {
        // A child not done by `VERY_LATE` after the parent held the whole
        // segment is counted then, not when its acknowledgement finally
        // comes (seconds later behind a full uplink): the uplink learns
        // it is full within a second. The stream itself goes on.
        Ok(held) => tokio::select! {
            stopped = s.stopped() => match stopped {
                Ok(None) => Ok(Some(held.elapsed())),
                Ok(Some(code)) => Ok(gave_up(code)),
                // The connection went: nothing to time.
                Err(_) => Ok(None),
            },
            () = tokio::time::sleep_until(held + VERY_LATE) => Ok(Some(held.elapsed())),
        },
        Err(TreeError::Write(quinn::WriteError::Stopped(code))) => Ok(gave_up(code)),
        Err(e) => {
            let _ = s.reset(1u32.into());
            Err(e)
        }
    }
}

/// Writes one segment's frames from byte `offset` on; answers when the
/// last of its bytes had arrived here.
async fn write_segment(
    s: &mut quinn::SendStream,
    seg: &TreeSegment,
    offset: u64,
    opts: &PushOptions,
) -> Result<Instant, TreeError> {
    s.write_all(&encode(&Frame::SegmentStart {
        seq: seg.seq,
        offset,
    }))
    .await?;
    let tamper = opts.tamper_every.is_some_and(|n| n > 0 && seg.seq % n == 0);
    let mut tampered = false;
    let mut reader = seg
        .data
        .reader_at(usize::try_from(offset).unwrap_or(usize::MAX));
    while let Some(chunk) = reader
        .next_chunk()
        .await
        .map_err(|e| TreeError::Source(e.to_string()))?
    {
        for piece in chunk.chunks(CHUNK) {
            if let Some(cap) = &opts.cap {
                cap.take(piece.len()).await;
            }
            let mut data = chunk.slice_ref(piece);
            if tamper && !tampered && !data.is_empty() {
                let mut bad = BytesMut::from(&data[..]);
                let mid = bad.len() / 2;
                bad[mid] ^= 0xff;
                data = bad.freeze();
                tampered = true;
            }
            s.write_all(&encode(&Frame::SegmentData(data))).await?;
            opts.metrics.egress.inc_by(piece.len() as u64);
        }
    }
    // The data were all here when the source finished them, which may be
    // well before this send got to its end behind a full uplink.
    let held = seg
        .data
        .completed_at()
        .map_or_else(Instant::now, Instant::from_std);
    let signature = seg
        .signature
        .wait_complete()
        .await
        .map_err(|e| TreeError::Source(e.to_string()))?;
    s.write_all(&encode(&Frame::SegmentEnd { signature }))
        .await?;
    s.finish()?;
    Ok(held)
}

/// A token bucket shared by all of a parent's children: the viewer's
/// upload cap. A burst of one second is allowed; beyond that a sender
/// waits, and a child that waits too long falls behind and is skipped.
#[derive(Debug)]
pub struct UploadCap {
    bytes_per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl UploadCap {
    /// A cap of `kbps` kilobits per second.
    pub fn new(kbps: u32) -> Self {
        let bytes_per_sec = f64::from(kbps.max(1)) * 1000.0 / 8.0;
        Self {
            bytes_per_sec,
            state: Mutex::new((bytes_per_sec, Instant::now())),
        }
    }

    /// Waits until `n` bytes may be sent.
    pub async fn take(&self, n: usize) {
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.saturating_duration_since(st.1).as_secs_f64() * self.bytes_per_sec;
            st.0 = (st.0 + refill).min(self.bytes_per_sec);
            st.1 = now;
            st.0 -= n as f64;
            if st.0 >= 0.0 {
                return;
            }
            Duration::from_secs_f64(-st.0 / self.bytes_per_sec)
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost connection says why it was lost: the logs of a failed
    /// switch tell a timeout from a close.
    #[test]
    fn a_lost_connection_says_why() {
        let lost = || quinn::ConnectionError::TimedOut;
        assert_eq!(
            TreeError::from(quinn::ReadError::ConnectionLost(lost())).to_string(),
            "read: connection lost: timed out"
        );
        assert_eq!(
            TreeError::from(quinn::WriteError::ConnectionLost(lost())).to_string(),
            "write: connection lost: timed out"
        );
        assert_eq!(
            TreeError::from(quinn::ReadError::ClosedStream).to_string(),
            "read: closed stream"
        );
    }

    fn seg(seq: u64) -> Arc<TreeSegment> {
        Arc::new(TreeSegment {
            seq,
            data: GrowingBody::complete(Bytes::from_static(b"x")),
            signature: GrowingBody::complete(Bytes::from_static(b"{}")),
        })
    }

    #[test]
    fn feed_keeps_the_latest_attempt_of_the_last_few_segments() {
        let feed = Feed::new();
        let n = RECENT as u64;
        for s in 1..=n {
            feed.publish(seg(s));
        }
        let retry = seg(n);
        feed.publish(retry.clone());
        let recent: Vec<u64> = feed.recent().iter().map(|p| p.segment.seq).collect();
        assert_eq!(recent, (1..=n).collect::<Vec<_>>());
        assert!(Arc::ptr_eq(&feed.recent()[RECENT - 1].segment, &retry));
        for s in n + 1..=n + 2 {
            feed.publish(seg(s));
        }
        let recent: Vec<u64> = feed.recent().iter().map(|p| p.segment.seq).collect();
        assert_eq!(recent, (3..=n + 2).collect::<Vec<_>>());
        assert!(Arc::ptr_eq(&feed.recent()[RECENT - 3].segment, &retry));
        assert!(feed.set_playlist(Bytes::from_static(b"a")));
        assert!(!feed.set_playlist(Bytes::from_static(b"a")));
    }

    /// A congestion window the test opens and closes: shut, whatever is
    /// queued on the connection waits, and once opened a packet at a time
    /// leaves in the order of the streams' priorities (on loopback, an
    /// open window would send everything at once, in any order).
    struct Gate(Arc<AtomicU64>);

    impl quinn::congestion::ControllerFactory for Gate {
        fn build(
            self: Arc<Self>,
            _now: std::time::Instant,
            _mtu: u16,
        ) -> Box<dyn quinn::congestion::Controller> {
            Box::new(GateWindow(self.0.clone()))
        }
    }

    #[derive(Clone)]
    struct GateWindow(Arc<AtomicU64>);

    impl quinn::congestion::Controller for GateWindow {
        fn on_congestion_event(
            &mut self,
            _: std::time::Instant,
            _: std::time::Instant,
            _: bool,
            _: u64,
        ) {
        }
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
        fn clone_box(&self) -> Box<dyn quinn::congestion::Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            self.window()
        }
        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
            self
        }
    }

    /// A parent busy with a live segment still answers `Hello` first: the
    /// segment's bytes already queued on the connection wait behind
    /// `Welcome`. (With the control stream's priority set after `Welcome`
    /// was written, the child received the whole segment first.)
    #[tokio::test]
    async fn welcome_goes_before_segment_data_already_queued() {
        const SEGMENT: usize = 1 << 20;
        let identity = crate::quic::Identity::generate().expect("identity");
        let gate = Arc::new(AtomicU64::new(1 << 20));
        let mut server_config = identity.server_config().expect("server config");
        let mut transport = quinn::TransportConfig::default();
        transport.congestion_controller_factory(Arc::new(Gate(gate.clone())));
        server_config.transport_config(Arc::new(transport));
        let loopback = "127.0.0.1:0".parse().expect("address");
        let server = quinn::Endpoint::server(server_config, loopback).expect("server");
        let addr = server.local_addr().expect("server address");
        let mut client = quinn::Endpoint::client(loopback).expect("client");
        let fingerprint = crate::quic::parse_fingerprint(&identity.fingerprint_hex()).expect("fp");
        client.set_default_client_config(
            crate::quic::client_config(fingerprint).expect("client config"),
        );

        let parent = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("handshake");
            // Nothing leaves the parent while the segment and `Welcome` queue.
            gate.store(0, Ordering::Relaxed);
            let mut live = conn.open_uni().await.expect("segment stream");
            live.set_priority(crate::forward::LIVE_PRIORITY)
                .expect("priority");
            live.write_all(&vec![7u8; SEGMENT])
                .await
                .expect("segment queued");
            let Ok(Arrival::Child(mut child)) =
                admit_connection(conn, false, |_, _, _| Ok(())).await
            else {
                panic!("the child must be admitted");
            };
            // Two packets per round trip from now on; the playlist wakes
            // the connection to send, as `push` does.
            gate.store(2 * 1500, Ordering::Relaxed);
            child
                .control
                .write_all(&encode(&Frame::Playlist(Bytes::from_static(b"#EXTM3U"))))
                .await
                .expect("playlist");
            (child, live, server)
        });

        let conn = client
            .connect(addr, "treecast")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut tx, mut rx) = conn.open_bi().await.expect("control stream");
        let hello = Frame::Hello {
            version: VERSION,
            channel: "demo".into(),
            peer_id: 7,
            ticket: String::new(),
            next_seq: 1,
            resume_offset: 0,
        };
        tx.write_all(&encode(&hello)).await.expect("Hello");
        let mut d = FrameDecoder::new();
        let answer = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut rx, &mut d))
            .await
            .expect("an answer to Hello")
            .expect("a frame");
        assert!(
            matches!(answer, Frame::Welcome { .. }),
            "{}",
            frame_name(&answer)
        );
        let received = conn.stats().udp_rx.bytes;
        assert!(
            received < 64 * 1024,
            "{received} bytes arrived before Welcome: the segment went first"
        );
        drop(parent.await.expect("parent"));
    }

    #[tokio::test(start_paused = true)]
    async fn upload_cap_paces_beyond_the_burst() {
        let cap = UploadCap::new(800); // 100 kB/s
        let start = tokio::time::Instant::now();
        cap.take(100_000).await; // the burst
        cap.take(50_000).await; // half a second more
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(450) && waited <= Duration::from_millis(600),
            "{waited:?}"
        );
    }
}
