//! The pull-through cache of the origin, one origin fetch per object.
//!
//! - a request for `/live/<channel>/<file>` looks the path up; a usable entry
//!   (a complete or in-flight segment or signature, a fresh playlist) is
//!   served from its [`GrowingBody`], so requests that arrive while the
//!   object is still coming from the origin are streamed the bytes as they
//!   arrive instead of polling;
//! - a miss starts exactly one fetch (single flight) and every concurrent
//!   request waits on that fetch's response head, then streams its body;
//! - errors from the origin (a status other than 200, a broken playlist, no
//!   connection) are handed to the waiting requests and never cached;
//! - playlists are fresh for half their target duration; when the origin
//!   cannot be reached the last good playlist is served (flagged stale) so
//!   viewers keep playing what the edge has;
//! - segments and signatures are immutable; complete ones are evicted least
//!   recently used first once the cache holds more than its byte budget;
//! - nothing unverified is published: a signature document is checked
//!   against the origin's key (pinned in the config, or asked once from the
//!   source's `/origin/key`) before anyone sees it, and a segment streams
//!   through as it arrives but its last chunk is held back until the bytes
//!   hash to the digest the origin signed. A source that serves another
//!   channel's bytes, unsigned or altered segments (a misconfigured cache
//!   tier, another edge) makes the body fail instead of completing, and
//!   the object is not kept. The source may be the origin, another edge or
//!   any HTTP cache serving the origin's URL layout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::watch;
use treecast_proto::body::BodyWriter;
use treecast_proto::{
    ChannelName, GrowingBody, OriginPublicKey, SegmentFile, SignedSegment, VerifyError,
};

use crate::metrics::CacheMetrics;
use crate::origin::{OriginClient, OriginError};

/// What kind of object a path names; decides freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `index.m3u8`: fresh for half a target duration.
    Playlist,
    /// `<seq>.ts`: immutable.
    Segment,
    /// `<seq>.sig`: immutable.
    Signature,
}

impl Kind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Playlist => "playlist",
            Kind::Segment => "segment",
            Kind::Signature => "signature",
        }
    }

    fn of(file: SegmentFile) -> Self {
        match file {
            SegmentFile::Playlist => Kind::Playlist,
            SegmentFile::Segment(_) => Kind::Segment,
            SegmentFile::Signature(_) => Kind::Signature,
        }
    }
}

/// Why an object could not be served.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    /// The origin answered with an error status; passed on to the client.
    #[error("the origin answered {status}: {message}")]
    Origin {
        /// The origin's status.
        status: StatusCode,
        /// The origin's explanation.
        message: String,
    },
    /// The origin could not be reached, or did not answer in time.
    #[error("the origin is unreachable: {0}")]
    Unreachable(String),
    /// The origin sent a playlist that does not parse.
    #[error("the origin sent a malformed playlist: {0}")]
    BadPlaylist(String),
    /// The source sent a signature or segment the origin's key does not
    /// vouch for.
    #[error("the source sent {what} the origin did not sign: {reason}")]
    Unverified {
        /// Which object.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// The origin's public key could not be had, so nothing can be checked.
    #[error("cannot get the origin's public key from the source: {0}")]
    NoKey(String),
}

impl CacheError {
    /// The status to answer a client with.
    pub fn status(&self) -> StatusCode {
        match self {
            CacheError::Origin { status, .. } if status.is_client_error() => *status,
            CacheError::Unreachable(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// An object ready to be sent.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Its body (maybe still growing).
    pub body: GrowingBody,
    /// The playlist is older than its freshness limit because the origin
    /// cannot be reached.
    pub stale: bool,
}

#[derive(Debug, Clone)]
enum Head {
    Waiting,
    Ready,
    Failed(CacheError),
}

#[derive(Debug)]
struct Flight {
    head: watch::Sender<Head>,
    body: GrowingBody,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    flight: Arc<Flight>,
    started: Instant,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Last good playlist per path, served when the origin is unreachable.
    last_playlist: HashMap<String, Bytes>,
    /// Freshness of each channel's playlist: half its target duration.
    playlist_ttl: HashMap<ChannelName, Duration>,
}

/// Tunables of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Most bytes of complete segments and signatures kept.
    pub max_bytes: usize,
    /// Playlist freshness before the first playlist says its target duration.
    pub default_playlist_ttl: Duration,
    /// The origin's key, when pinned in the config; otherwise it is asked
    /// from the source once.
    pub origin_key: Option<OriginPublicKey>,
}

/// Largest segment the edge relays, in bytes: a source streaming without
/// end is cut off here rather than filling memory.
pub const MAX_SEGMENT_BYTES: usize = 64 << 20;

/// The cache; see the module docs.
#[derive(Debug)]
pub struct Cache {
    origin: OriginClient,
    config: CacheConfig,
    metrics: CacheMetrics,
    state: Mutex<State>,
    key: tokio::sync::OnceCell<OriginPublicKey>,
}

impl Cache {
    /// A cache in front of `origin`.
    pub fn new(origin: OriginClient, config: CacheConfig, metrics: CacheMetrics) -> Arc<Self> {
        let key = tokio::sync::OnceCell::new_with(config.origin_key);
        Arc::new(Self {
            origin,
            config,
            metrics,
            state: Mutex::new(State::default()),
            key,
        })
    }

    /// The origin's public key: the pinned one, or the source's
    /// `/origin/key`, asked until it answers with a key and then kept.
    pub async fn origin_key(&self) -> Result<OriginPublicKey, CacheError> {
        self.key
            .get_or_try_init(|| async {
                let body = self
                    .origin
                    .get("/origin/key")
                    .await
                    .map_err(|e| CacheError::NoKey(e.to_string()))?
                    .collect()
                    .await
                    .map_err(|e| CacheError::NoKey(e.to_string()))?;
                let text = String::from_utf8_lossy(&body);
                text.trim()
                    .parse::<OriginPublicKey>()
                    .map_err(|e| CacheError::NoKey(e.to_string()))
            })
            .await
            .copied()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Updates are single inserts and removes: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once a playlist of `channel` came from the origin: this edge
    /// carries the channel.
    pub fn carries(&self, channel: &str) -> bool {
        self.lock()
            .last_playlist
            .contains_key(&format!("/live/{channel}/index.m3u8"))
    }

    /// Gets `/live/<channel>/<file>`, from the cache or with one origin fetch.
    pub async fn get(
        self: &Arc<Self>,
        channel: &ChannelName,
        file: SegmentFile,
    ) -> Result<Hit, CacheError> {
        let kind = Kind::of(file);
        let path = format!("/live/{channel}/{}", file.file_name());
        let now = Instant::now();
        let (flight, result) = {
            let mut st = self.lock();
            let ttl = st
                .playlist_ttl
                .get(channel)
                .copied()
                .unwrap_or(self.config.default_playlist_ttl);
            let usable = st.entries.get_mut(&path).and_then(|e| {
                let fresh = kind != Kind::Playlist || now.duration_since(e.started) < ttl;
                let failed = matches!(*e.flight.head.borrow(), Head::Failed(_))
                    || e.flight.body.failure().is_some();
                (fresh && !failed).then(|| {
                    e.last_used = now;
                    e.flight.clone()
                })
            });
            match usable {
                Some(f) => {
                    let result = if f.body.is_complete() {
                        "hit"
                    } else {
                        "coalesced"
                    };
                    (f, result)
                }
                None => {
                    let (writer, body) = GrowingBody::new();
                    let flight = Arc::new(Flight {
                        head: watch::channel(Head::Waiting).0,
                        body,
                    });
                    st.entries.insert(
                        path.clone(),
                        Entry {
                            kind,
                            flight: flight.clone(),
                            started: now,
                            last_used: now,
                        },
                    );
                    let cache = self.clone();
                    let (f2, p2, c2) = (flight.clone(), path.clone(), channel.clone());
                    tokio::spawn(async move { cache.fetch(f2, writer, p2, c2, file).await });
                    (flight, "miss")
                }
            }
        };
        self.metrics
            .requests
            .with_label_values(&[kind.label(), result])
            .inc();
        let mut rx = flight.head.subscribe();
        let head = match rx.wait_for(|h| !matches!(h, Head::Waiting)).await {
            Ok(h) => h.clone(),
            Err(_) => Head::Failed(CacheError::Unreachable("fetch was abandoned".into())),
        };
        match head {
            Head::Ready | Head::Waiting => Ok(Hit {
                body: flight.body.clone(),
                stale: false,
            }),
            Head::Failed(CacheError::Unreachable(reason)) if kind == Kind::Playlist => {
                match self.lock().last_playlist.get(&path) {
                    Some(b) => {
                        self.metrics
                            .requests
                            .with_label_values(&[kind.label(), "stale"])
                            .inc();
                        Ok(Hit {
                            body: GrowingBody::complete(b.clone()),
                            stale: true,
                        })
                    }
                    None => Err(CacheError::Unreachable(reason)),
                }
            }
            Head::Failed(e) => Err(e),
        }
    }

    /// The single fetch behind a flight: streams the origin's body into the
    /// flight, or records why it failed and forgets the entry.
    ///
    /// Boxed with its `Send` bound spelled out: a segment's fetch asks
    /// [`get`](Self::get) for its signature, which may start another fetch,
    /// and the compiler cannot infer `Send` through that cycle.
    fn fetch(
        self: Arc<Self>,
        flight: Arc<Flight>,
        writer: BodyWriter,
        path: String,
        channel: ChannelName,
        file: SegmentFile,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let kind = Kind::of(file);
            let outcome = self
                .fetch_inner(&flight, writer, &path, &channel, file)
                .await;
            let label = match &outcome {
                Ok(()) => "ok",
                Err(CacheError::Origin { status, .. }) if *status == StatusCode::NOT_FOUND => {
                    "not_found"
                }
                Err(CacheError::Origin { .. }) | Err(CacheError::BadPlaylist(_)) => "error",
                Err(CacheError::Unverified { .. }) => "unverified",
                Err(CacheError::Unreachable(_)) | Err(CacheError::NoKey(_)) => "unreachable",
            };
            self.metrics
                .origin_fetches
                .with_label_values(&[kind.label(), label])
                .inc();
            self.metrics.origin_up.set(i64::from(!matches!(
                outcome,
                Err(CacheError::Unreachable(_))
            )));
            match outcome {
                Ok(()) => self.evict(),
                Err(e) => {
                    if matches!(e, CacheError::Unverified { .. }) {
                        tracing::warn!(%path, error = %e, "refused an object from the source");
                    } else {
                        tracing::debug!(%path, error = %e, "origin fetch failed");
                    }
                    flight.head.send_replace(Head::Failed(e));
                    let mut st = self.lock();
                    if st
                        .entries
                        .get(&path)
                        .is_some_and(|en| Arc::ptr_eq(&en.flight, &flight))
                    {
                        st.entries.remove(&path);
                    }
                }
            }
        })
    }

    async fn fetch_inner(
        self: &Arc<Self>,
        flight: &Flight,
        writer: BodyWriter,
        path: &str,
        channel: &ChannelName,
        file: SegmentFile,
    ) -> Result<(), CacheError> {
        let seq = match file {
            SegmentFile::Playlist => {
                return self.fetch_playlist(flight, writer, path, channel).await
            }
            SegmentFile::Segment(seq) | SegmentFile::Signature(seq) => seq,
        };
        // Without the key nothing could be checked: fail before any byte.
        let key = self.origin_key().await?;
        let mut resp = self.source_get(path).await?;
        if let SegmentFile::Signature(_) = file {
            // Small, and checked whole before anyone sees it.
            let bytes = collect(resp).await?;
            SignedSegment::from_json(&bytes)
                .and_then(|signed| key.verify_record(&signed, channel, seq))
                .map_err(|e| unverified(format!("the signature of {channel}/{seq}"), e))?;
            writer.push(bytes);
            writer.finish();
            flight.head.send_replace(Head::Ready);
            return Ok(());
        }
        // The signature exists once the segment is complete; ask for it now
        // (the source holds the request until then) so checking the digest
        // costs no round trip at the segment's end.
        let signature = {
            let cache = self.clone();
            let channel = channel.clone();
            tokio::spawn(async move {
                let hit = cache.get(&channel, SegmentFile::Signature(seq)).await?;
                let doc = hit
                    .body
                    .wait_complete()
                    .await
                    .map_err(|e| CacheError::Unreachable(e.to_string()))?;
                // The cache verified it; parsing again cannot fail.
                SignedSegment::from_json(&doc)
                    .map_err(|e| unverified(format!("the signature of {channel}/{seq}"), e))
            })
        };
        let _abort = AbortOnDrop(signature.abort_handle());
        flight.head.send_replace(Head::Ready);
        match relay_verified(&mut resp, &writer, signature, &key, channel, seq).await {
            Ok(last) => {
                writer.push(last);
                writer.finish();
                Ok(())
            }
            Err(e) => {
                writer.fail(e.to_string());
                Err(e)
            }
        }
    }

    async fn source_get(&self, path: &str) -> Result<crate::origin::OriginResponse, CacheError> {
        self.origin.get(path).await.map_err(|e| match e {
            OriginError::Status { status, message } => CacheError::Origin { status, message },
            other => CacheError::Unreachable(other.to_string()),
        })
    }

    /// A playlist: small, and parsed whole before anyone sees it.
    async fn fetch_playlist(
        &self,
        flight: &Flight,
        writer: BodyWriter,
        path: &str,
        channel: &ChannelName,
    ) -> Result<(), CacheError> {
        let bytes = collect(self.source_get(path).await?).await?;
        let playlist = m3u8_rs::parse_media_playlist_res(&bytes)
            .map_err(|e| CacheError::BadPlaylist(format!("{e:?}").chars().take(200).collect()))?;
        let ttl = Duration::from_millis(playlist.target_duration.max(1) * 500);
        {
            let mut st = self.lock();
            st.playlist_ttl.insert(channel.clone(), ttl);
            st.last_playlist.insert(path.to_owned(), bytes.clone());
        }
        writer.push(bytes);
        writer.finish();
        flight.head.send_replace(Head::Ready);
        Ok(())
    }

    /// Evicts complete immutable objects, least recently used first, until
    /// the cache is within its byte budget.
    fn evict(&self) {
        let mut st = self.lock();
        let mut total: usize = st.entries.values().map(|e| e.flight.body.len()).sum();
        if total > self.config.max_bytes {
            let mut victims: Vec<(Instant, String, usize)> = st
                .entries
                .iter()
                .filter(|(_, e)| e.kind != Kind::Playlist && e.flight.body.is_complete())
                .map(|(p, e)| (e.last_used, p.clone(), e.flight.body.len()))
                .collect();
            victims.sort();
            for (_, path, size) in victims {
                if total <= self.config.max_bytes {
                    break;
                }
                st.entries.remove(&path);
                total -= size;
                self.metrics.evictions.inc();
            }
        }
        self.metrics.bytes.set(total as i64);
        self.metrics.objects.set(st.entries.len() as i64);
    }
}

/// Streams a segment's body into `writer` as it arrives, hashing it, and
/// returns its last chunk only once the whole matches the origin's signed
/// digest: until then no reader has a complete segment.
async fn relay_verified(
    resp: &mut crate::origin::OriginResponse,
    writer: &BodyWriter,
    signature: tokio::task::JoinHandle<Result<SignedSegment, CacheError>>,
    key: &OriginPublicKey,
    channel: &ChannelName,
    seq: u64,
) -> Result<Bytes, CacheError> {
    let mut hasher = blake3::Hasher::new();
    let mut len = 0usize;
    let mut held = Bytes::new();
    loop {
        match resp.next_chunk().await {
            Ok(Some(chunk)) => {
                len += chunk.len();
                if len > MAX_SEGMENT_BYTES {
                    return Err(CacheError::Unverified {
                        what: format!("segment {channel}/{seq}"),
                        reason: format!("it exceeds {MAX_SEGMENT_BYTES} bytes"),
                    });
                }
                hasher.update(&chunk);
                let previous = std::mem::replace(&mut held, chunk);
                if !previous.is_empty() {
                    writer.push(previous);
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(CacheError::Unreachable(format!(
                    "origin body broke off: {e}"
                )))
            }
        }
    }
    let signed = match signature.await {
        Ok(Ok(signed)) => signed,
        // The source answered, without a signature the key accepts: the
        // segment is unsigned as far as this edge can tell.
        Ok(Err(CacheError::Origin { status, message })) => {
            return Err(CacheError::Unverified {
                what: format!("segment {channel}/{seq}"),
                reason: format!("its signature is missing ({status}: {message})"),
            })
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(CacheError::Unreachable(
                "the signature fetch was abandoned".into(),
            ))
        }
    };
    key.verify_digest(
        &signed,
        channel,
        seq,
        len as u64,
        hasher.finalize().as_bytes(),
    )
    .map_err(|e| unverified(format!("segment {channel}/{seq}"), e))?;
    Ok(held)
}

async fn collect(resp: crate::origin::OriginResponse) -> Result<Bytes, CacheError> {
    resp.collect()
        .await
        .map_err(|e| CacheError::Unreachable(e.to_string()))
}

fn unverified(what: String, e: VerifyError) -> CacheError {
    CacheError::Unverified {
        what,
        reason: e.to_string(),
    }
}

/// Aborts a task when dropped: the signature fetch of a segment whose own
/// fetch ended early is not needed.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lets tests and the status API see the cache's size.
impl Cache {
    /// Bytes held and objects cached.
    pub fn usage(&self) -> (usize, usize) {
        let st = self.lock();
        (
            st.entries.values().map(|e| e.flight.body.len()).sum(),
            st.entries.len(),
        )
    }
}
