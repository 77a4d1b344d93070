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
//! - the root enforces its slots itself: a child beyond `root_slots` on a
//!   channel is refused ("root slots full") unless the tracker names the
//!   edge as its parent or backup now (a replacement arriving before a
//!   killed child's connection timed out; a peer switching to its backup
//!   of last resort, which the tracker moves on); a stale ticket is not
//!   enough; at most
//!   [`MAX_CONNECTIONS`] QUIC connections are held, more are refused
//!   before the handshake;
//! - the push itself is [`treecast_proto::tree`], shared with peers: each
//!   segment on its own stream, cut-through, closed by the origin's signed
//!   digest (fetched through the cache once the segment is complete); a
//!   new child first gets the last few segments; a slow child skips ahead
//!   and a segment undeliverable within 9 s is abandoned.
//! - what each child is sent counts in the edge's tree egress every
//!   500 ms, and apart as bridged while the tracker names the
//!   edge only as that peer's backup (a repair it carries until the
//!   tracker's placement takes over).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use treecast_proto::ticket::{self, VerifyingKey};
use treecast_proto::tree::{
    self, Admitted, Arrival, Feed, PushMetrics, PushOptions, TreeError, TreeSegment, RECENT,
};
use treecast_proto::{ChannelName, GrowingBody, SegmentFile};

use crate::cache::Cache;

/// Longest time one segment may take to deliver to one child.
const SEGMENT_DEADLINE: Duration = Duration::from_secs(9);
/// Most QUIC connections the root holds at once (children of every
/// channel and peers keeping the edge as their warm backup).
pub const MAX_CONNECTIONS: usize = 4096;

/// How often a child's bytes are counted towards the edge's egress, each
/// time under what the tracker names the edge for it then.
const ACCOUNT_EVERY: Duration = Duration::from_millis(500);

/// What the tracker names the edge for a peer on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeRole {
    /// The peer is one of the edge's children (a root slot).
    Parent,
    /// The edge is the peer's backup of last resort: fed by it, the peer
    /// bridges a repair until the tracker's placement takes over.
    Backup,
}

/// What the tracker names the edge for a peer on a channel now, if
/// anything.
pub type EdgeNamed = Arc<dyn Fn(&ChannelName, u64) -> Option<EdgeRole> + Send + Sync>;

/// Root metrics.
#[derive(Debug, Clone)]
pub struct RootMetrics {
    /// Bytes pushed down the tree (segment data frames).
    pub egress: IntCounter,
    /// Of those, bytes to peers the edge is not the parent of: it bridges
    /// their repair as their backup, or they are on their way to the
    /// parent the tracker placed them under.
    pub bridged: IntCounter,
    /// Children connected now.
    pub children: IntGauge,
    /// Children refused (bad or missing ticket, wrong protocol, slots full,
    /// too many connections).
    pub refused: IntCounter,
    /// Peers told their reflexive address (`Frame::Observe`).
    pub observed: IntCounter,
    /// Segment deliveries abandoned (slow or gone child).
    pub abandoned: IntCounter,
}

/// A channel's feed and the task that fills it.
struct Following {
    feed: Arc<Feed>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The root; see the module docs.
pub struct Root {
    cache: Arc<Cache>,
    ticket_key: VerifyingKey,
    feeds: Mutex<HashMap<ChannelName, Following>>,
    metrics: RootMetrics,
    push: PushOptions,
    root_slots: usize,
    names_the_edge: EdgeNamed,
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

impl Root {
    /// A root pushing from `cache`, admitting children with tickets signed
    /// by `ticket_key`, at most `root_slots` per channel beyond those
    /// `names_the_edge` vouches for.
    pub fn new(
        cache: Arc<Cache>,
        ticket_key: VerifyingKey,
        metrics: RootMetrics,
        root_slots: usize,
        names_the_edge: EdgeNamed,
    ) -> Arc<Self> {
        let push = PushOptions {
            deadline: SEGMENT_DEADLINE,
            cap: None,
            tamper_every: None,
            // The edge's root slots are its operator's decision, not a
            // guess to correct.
            shedder: None,
            metrics: PushMetrics {
                egress: metrics.egress.clone(),
                abandoned: metrics.abandoned.clone(),
            },
        };
        Arc::new(Self {
            cache,
            ticket_key,
            feeds: Mutex::new(HashMap::new()),
            metrics,
            push,
            root_slots,
            names_the_edge,
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
                return f.feed.clone();
            }
        }
        let feed = Arc::new(Feed::new());
        let task = tokio::spawn(follow(self.cache.clone(), channel.clone(), feed.clone()));
        feeds.insert(
            channel.clone(),
            Following {
                feed: feed.clone(),
                task,
            },
        );
        feed
    }

    /// Children streaming a channel's feed now.
    fn streaming_children(&self, channel: &ChannelName) -> usize {
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(channel)
            .map_or(0, |f| f.feed.children())
    }

    /// Stops a channel's feed once its last child is gone, so the edge does
    /// not keep pulling a channel nobody receives through the tree.
    fn drop_idle_feed(&self, channel: &ChannelName) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if feeds.get(channel).is_some_and(|f| f.feed.children() == 0) {
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
                    if conns.len() >= MAX_CONNECTIONS {
                        self.metrics.refused.inc();
                        warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                        incoming.refuse();
                        continue;
                    }
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

    async fn child(self: Arc<Self>, incoming: quinn::Incoming) -> Result<(), TreeError> {
        let remote = incoming.remote_address();
        let mut over_slots = false;
        let admitted = tree::admit(incoming, true, |channel, peer_id, ticket| {
            let channel = ChannelName::new(channel).map_err(|e| e.to_string())?;
            ticket::verify(ticket, &self.ticket_key, &channel, peer_id, 0, unix_now())
                .map_err(|e| e.to_string())?;
            let streaming = self.streaming_children(&channel);
            over_slots = streaming >= self.root_slots;
            if over_slots && (self.names_the_edge)(&channel, peer_id).is_none() {
                return Err(format!(
                    "the edge's root slots are full ({streaming} of {} streaming); the tracker will place you",
                    self.root_slots
                ));
            }
            Ok(())
        })
        .await;
        let mut child: Admitted = match admitted {
            Ok(Arrival::Child(c)) => c,
            Ok(Arrival::Observed(seen)) => {
                self.metrics.observed.inc();
                debug!(%seen, "told a peer its reflexive address");
                return Ok(());
            }
            Err(TreeError::Protocol(reason)) => {
                self.metrics.refused.inc();
                warn!(%remote, %reason, "refused a child");
                return Err(TreeError::Protocol(reason));
            }
            Err(e) => return Err(e),
        };
        let Ok(channel) = ChannelName::new(&child.channel) else {
            return Err(TreeError::Protocol("bad channel name".into()));
        };
        info!(%channel, peer_id = child.peer_id, %remote, over_slots, "child connected to the edge");
        self.metrics.children.inc();
        let feed = self.feed(&channel);
        let since = std::time::Instant::now();
        // This child's bytes first, then counted in the edge's egress by
        // what the edge is to it at the time.
        let sent = IntCounter::new("child_egress_bytes", "Segment bytes to one child.")
            .unwrap_or_else(|e| panic!("metric: {e}"));
        let mut push = self.push.clone();
        push.metrics.egress = sent.clone();
        let mut counted = 0;
        let peer_id = child.peer_id;
        let result = {
            let pushing = tree::push(&mut child, &feed, &push);
            tokio::pin!(pushing);
            let mut tick = tokio::time::interval(ACCOUNT_EVERY);
            loop {
                tokio::select! {
                    r = &mut pushing => break r,
                    _ = tick.tick() => self.account(&channel, peer_id, &sent, &mut counted),
                }
            }
        };
        self.account(&channel, peer_id, &sent, &mut counted);
        drop(feed);
        self.metrics.children.dec();
        self.drop_idle_feed(&channel);
        // What this child cost the edge's uplink, on the wire (headers and
        // retransmissions included): which children the edge's tree
        // egress went to, over its slots or within them.
        info!(
            %channel,
            peer_id = child.peer_id,
            secs = since.elapsed().as_secs_f32(),
            sent_bytes = child.conn.stats().udp_tx.bytes,
            over_slots,
            "child left the edge"
        );
        result
    }

    /// Adds what one child was sent since the last look to the edge's tree
    /// egress, and to its bridged bytes unless the edge is its parent now.
    fn account(&self, channel: &ChannelName, peer_id: u64, sent: &IntCounter, counted: &mut u64) {
        let total = sent.get();
        let new = total.saturating_sub(*counted);
        *counted = total;
        if new == 0 {
            return;
        }
        self.metrics.egress.inc_by(new);
        if (self.names_the_edge)(channel, peer_id) != Some(EdgeRole::Parent) {
            self.metrics.bridged.inc_by(new);
        }
    }
}

/// Follows a channel's live edge through the cache, publishing each new
/// segment (still growing) and each new playlist to the feed.
async fn follow(cache: Arc<Cache>, channel: ChannelName, feed: Arc<Feed>) {
    // The segment to fetch next, once following.
    let mut resume: Option<u64> = None;
    loop {
        // Where is live? The segment after the last listed one is being
        // cut. Start with the complete ones a feed keeps before it
        // ([`RECENT`]), so the first children can fill their buffers
        // from the tree too; after a pause (the
        // encoder stopped, the origin is away) go on where it stopped
        // while that is still listed: starting over would send children
        // the same segments again, every retry.
        let Some((first, next)) = current_playlist(&cache, &channel, &feed).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut seq = match resume {
            Some(s) if (first..=next).contains(&s) => s,
            _ => next.saturating_sub(RECENT as u64 - 1).max(first),
        };
        loop {
            resume = Some(seq);
            let Ok(hit) = cache.get(&channel, SegmentFile::Segment(seq)).await else {
                break;
            };
            let (sig_writer, signature) = GrowingBody::new();
            feed.publish(Arc::new(TreeSegment {
                seq,
                data: hit.body.clone(),
                signature,
            }));
            if hit.body.wait_complete().await.is_err() {
                break;
            }
            match fetch_signature(&cache, &channel, seq).await {
                Ok(sig) => {
                    sig_writer.push(sig);
                    sig_writer.finish();
                }
                Err(e) => {
                    warn!(%channel, seq, error = %e, "no signature for a segment");
                    sig_writer.fail(e);
                }
            }
            let _ = current_playlist(&cache, &channel, &feed).await;
            seq += 1;
        }
        // A gap (origin restart, expired segment): find live again shortly.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fetch_signature(
    cache: &Arc<Cache>,
    channel: &ChannelName,
    seq: u64,
) -> Result<bytes::Bytes, String> {
    cache
        .get(channel, SegmentFile::Signature(seq))
        .await
        .map_err(|e| e.to_string())?
        .body
        .wait_complete()
        .await
        .map_err(|e| e.to_string())
}

/// Refreshes the feed's playlist; returns the first listed sequence number
/// and the one after the last listed segment.
async fn current_playlist(
    cache: &Arc<Cache>,
    channel: &ChannelName,
    feed: &Feed,
) -> Option<(u64, u64)> {
    let bytes = cache
        .get(channel, SegmentFile::Playlist)
        .await
        .ok()?
        .body
        .wait_complete()
        .await
        .ok()?;
    let p = m3u8_rs::parse_media_playlist_res(&bytes).ok()?;
    feed.set_playlist(bytes);
    Some((p.media_sequence, p.media_sequence + p.segments.len() as u64))
}

/// Binds the root's QUIC endpoint.
pub fn bind(addr: SocketAddr, server: quinn::ServerConfig) -> std::io::Result<quinn::Endpoint> {
    quinn::Endpoint::server(server, addr)
}
