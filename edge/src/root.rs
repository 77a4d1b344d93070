//! The edge as the root of every delivery tree: it pushes each segment to
//! its direct children over QUIC with the same frames a peer uses to push
//! to its own children.
//!
//! - one *feed* per channel (started with its first child) follows the live
//!   edge through the cache: it finds the segment being cut from the
//!   playlist, asks the cache for it (one origin fetch, streamed as the
//!   origin cuts it) and hands its growing body to every child at once;
//! - a child connects with the certificate fingerprint the tracker gave it,
//!   opens a control stream and sends `Hello` with its ticket; the root
//!   checks the ticket (this channel, this child, parent = edge, not
//!   expired) and answers `Welcome` or `Refuse`;
//! - each segment goes to each child on its own unidirectional stream,
//!   chunk by chunk as the bytes arrive (cut-through), closed by the
//!   origin's signed digest; playlists go on the control stream when they
//!   change;
//! - a child that falls a whole segment behind skips ahead, and a segment
//!   that cannot be delivered within three target durations is abandoned,
//!   so a slow child never holds back the others or grows memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use treecast_proto::ticket::{self, VerifyingKey};
use treecast_proto::wire::{Frame, FrameDecoder, VERSION};
use treecast_proto::{ChannelName, GrowingBody, SegmentFile};

use crate::cache::Cache;

/// Largest piece of a segment sent in one frame.
pub const CHUNK: usize = 16 * 1024;
/// How long a child has to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time one segment may take to deliver to one child.
const SEGMENT_DEADLINE: Duration = Duration::from_secs(9);

/// Root metrics.
#[derive(Debug, Clone)]
pub struct RootMetrics {
    /// Bytes pushed down the tree (segment data frames).
    pub egress: IntCounter,
    /// Children connected now.
    pub children: IntGauge,
    /// Children refused (bad or missing ticket, wrong protocol).
    pub refused: IntCounter,
    /// Segment deliveries abandoned (slow or gone child).
    pub abandoned: IntCounter,
}

struct Feed {
    segments: broadcast::Sender<(u64, GrowingBody)>,
    playlist: watch::Sender<Option<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The root; see the module docs.
pub struct Root {
    cache: Arc<Cache>,
    ticket_key: VerifyingKey,
    feeds: Mutex<HashMap<ChannelName, Arc<Feed>>>,
    metrics: RootMetrics,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Root").finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn encode(frame: &Frame) -> Bytes {
    let mut b = BytesMut::new();
    frame.encode(&mut b);
    b.freeze()
}

impl Root {
    /// A root pushing from `cache`, admitting children with tickets signed
    /// by `ticket_key`.
    pub fn new(cache: Arc<Cache>, ticket_key: VerifyingKey, metrics: RootMetrics) -> Arc<Self> {
        Arc::new(Self {
            cache,
            ticket_key,
            feeds: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Stops every feed.
    pub fn stop(&self) {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn feed(self: &Arc<Self>, channel: &ChannelName) -> Arc<Feed> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = feeds.get(channel) {
            if !f.task.is_finished() {
                return f.clone();
            }
        }
        // Room for a few segments: a child further behind skips ahead.
        let (segments, _) = broadcast::channel(4);
        let (playlist, _) = watch::channel(None);
        let task = tokio::spawn(follow(
            self.cache.clone(),
            channel.clone(),
            segments.clone(),
            playlist.clone(),
        ));
        let feed = Arc::new(Feed {
            segments,
            playlist,
            task,
        });
        feeds.insert(channel.clone(), feed.clone());
        feed
    }

    /// Stops a channel's feed once its last child is gone, so the edge does
    /// not keep pulling a channel nobody receives through the tree.
    fn drop_idle_feed(&self, channel: &ChannelName) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if feeds
            .get(channel)
            .is_some_and(|f| f.segments.receiver_count() == 0)
        {
            feeds.remove(channel);
        }
    }

    /// Accepts children on `endpoint` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let root = self.clone();
                    conns.spawn(async move {
                        let remote = incoming.remote_address();
                        if let Err(e) = root.child(incoming).await {
                            debug!(%remote, error = %e, "child connection ended");
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = shutdown.changed() => break,
            }
        }
        endpoint.close(0u32.into(), b"edge shutting down");
        conns.abort_all();
        self.stop();
    }

    async fn child(self: Arc<Self>, incoming: quinn::Incoming) -> Result<(), String> {
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let (mut control, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
            .await
            .map_err(|_| "no control stream in time".to_string())?
            .map_err(|e| e.to_string())?;
        let hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut recv))
            .await
            .map_err(|_| "no Hello in time".to_string())??;
        let (channel, peer_id) = match self.admit(hello) {
            Ok(ok) => ok,
            Err(reason) => {
                self.metrics.refused.inc();
                warn!(remote = %conn.remote_address(), %reason, "refused a child");
                let _ = control
                    .write_all(&encode(&Frame::Refuse {
                        reason: reason.clone(),
                    }))
                    .await;
                let _ = control.finish();
                // Let the refusal reach the child before closing.
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
                conn.close(1u32.into(), b"refused");
                return Err(reason);
            }
        };
        control
            .write_all(&encode(&Frame::Welcome { version: VERSION }))
            .await
            .map_err(|e| e.to_string())?;
        info!(%channel, peer_id, remote = %conn.remote_address(), "child connected to the edge");
        self.metrics.children.inc();
        let result = self.push(&conn, &mut control, &mut recv, &channel).await;
        self.metrics.children.dec();
        self.drop_idle_feed(&channel);
        result
    }

    fn admit(&self, hello: Frame) -> Result<(ChannelName, u64), String> {
        let Frame::Hello {
            version,
            channel,
            peer_id,
            ticket,
        } = hello
        else {
            return Err("expected Hello first".into());
        };
        if version != VERSION {
            return Err(format!(
                "protocol version {version} not supported (this edge speaks {VERSION})"
            ));
        }
        let channel = ChannelName::new(&channel).map_err(|e| e.to_string())?;
        ticket::verify(&ticket, &self.ticket_key, &channel, peer_id, 0, unix_now())
            .map_err(|e| e.to_string())?;
        Ok((channel, peer_id))
    }

    async fn push(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        control: &mut quinn::SendStream,
        control_rx: &mut quinn::RecvStream,
        channel: &ChannelName,
    ) -> Result<(), String> {
        let feed = self.feed(channel);
        let mut segments = feed.segments.subscribe();
        let mut playlist = feed.playlist.subscribe();
        let mut sends = JoinSet::new();
        let mut inbound = FrameDecoder::new();
        let first = playlist.borrow_and_update().clone();
        if let Some(p) = first {
            control
                .write_all(&encode(&Frame::Playlist(p)))
                .await
                .map_err(|e| e.to_string())?;
        }
        loop {
            tokio::select! {
                seg = segments.recv() => match seg {
                    Ok((seq, body)) => {
                        let (conn, cache, ch, m) = (conn.clone(), self.cache.clone(), channel.clone(), self.metrics.clone());
                        sends.spawn(async move {
                            let sent = tokio::time::timeout(SEGMENT_DEADLINE, send_segment(&conn, &cache, &ch, seq, body, &m.egress)).await;
                            if !matches!(sent, Ok(Ok(()))) {
                                m.abandoned.inc();
                            }
                        });
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(%channel, skipped = n, "child fell behind; skipping ahead");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                changed = playlist.changed() => {
                    if changed.is_err() { return Ok(()); }
                    let p = playlist.borrow_and_update().clone();
                    if let Some(p) = p {
                        control.write_all(&encode(&Frame::Playlist(p))).await.map_err(|e| e.to_string())?;
                    }
                }
                Some(_) = sends.join_next(), if !sends.is_empty() => {}
                chunk = control_rx.read_chunk(64 * 1024, true) => {
                    // The child speaks on the control stream only to ping.
                    match chunk.map_err(|e| e.to_string())? {
                        None => return Ok(()),
                        Some(c) => {
                            inbound.feed(&c.bytes);
                            while let Some(frame) = inbound.poll_frame().map_err(|e| e.to_string())? {
                                match frame {
                                    Frame::Ping(n) => control.write_all(&encode(&Frame::Pong(n))).await.map_err(|e| e.to_string())?,
                                    Frame::Pong(_) => {}
                                    other => return Err(format!("unexpected {other:?} from a child")),
                                }
                            }
                        }
                    }
                }
                reason = conn.closed() => return Err(reason.to_string()),
            }
        }
    }
}

/// Sends one segment on its own stream: start, data as it arrives, end.
async fn send_segment(
    conn: &quinn::Connection,
    cache: &Arc<Cache>,
    channel: &ChannelName,
    seq: u64,
    body: GrowingBody,
    egress: &IntCounter,
) -> Result<(), String> {
    let mut s = conn.open_uni().await.map_err(|e| e.to_string())?;
    s.write_all(&encode(&Frame::SegmentStart { seq }))
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = body.reader();
    while let Some(chunk) = reader.next_chunk().await.map_err(|e| e.to_string())? {
        for piece in chunk.chunks(CHUNK) {
            s.write_all(&encode(&Frame::SegmentData(chunk.slice_ref(piece))))
                .await
                .map_err(|e| e.to_string())?;
            egress.inc_by(piece.len() as u64);
        }
    }
    let sig = cache
        .get(channel, SegmentFile::Signature(seq))
        .await
        .map_err(|e| e.to_string())?
        .body
        .wait_complete()
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(&encode(&Frame::SegmentEnd { signature: sig }))
        .await
        .map_err(|e| e.to_string())?;
    s.finish().map_err(|e| e.to_string())
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Frame, String> {
    let mut d = FrameDecoder::new();
    loop {
        if let Some(f) = d.poll_frame().map_err(|e| e.to_string())? {
            return Ok(f);
        }
        match recv
            .read_chunk(64 * 1024, true)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(c) => d.feed(&c.bytes),
            None => return Err("stream ended before a whole frame".into()),
        }
    }
}

/// Follows a channel's live edge through the cache, announcing each new
/// segment (still growing) and each new playlist.
async fn follow(
    cache: Arc<Cache>,
    channel: ChannelName,
    segments: broadcast::Sender<(u64, GrowingBody)>,
    playlist: watch::Sender<Option<Bytes>>,
) {
    loop {
        // Where is live? The segment after the last listed one is being cut.
        let next = match current_playlist(&cache, &channel, &playlist).await {
            Some(next) => next,
            None => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut seq = next;
        loop {
            let Ok(hit) = cache.get(&channel, SegmentFile::Segment(seq)).await else {
                break;
            };
            let _ = segments.send((seq, hit.body.clone()));
            if hit.body.wait_complete().await.is_err() {
                break;
            }
            let _ = current_playlist(&cache, &channel, &playlist).await;
            seq += 1;
        }
        // A gap (origin restart, expired segment): find live again shortly.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Refreshes the playlist watch; returns the sequence number after the
/// last listed segment.
async fn current_playlist(
    cache: &Arc<Cache>,
    channel: &ChannelName,
    watch: &watch::Sender<Option<Bytes>>,
) -> Option<u64> {
    let bytes = cache
        .get(channel, SegmentFile::Playlist)
        .await
        .ok()?
        .body
        .wait_complete()
        .await
        .ok()?;
    let p = m3u8_rs::parse_media_playlist_res(&bytes).ok()?;
    watch.send_if_modified(|cur| {
        if cur.as_ref() == Some(&bytes) {
            false
        } else {
            *cur = Some(bytes.clone());
            true
        }
    });
    Some(p.media_sequence + p.segments.len() as u64)
}

/// Binds the root's QUIC endpoint.
pub fn bind(addr: SocketAddr, server: quinn::ServerConfig) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::server(server, addr)
}
