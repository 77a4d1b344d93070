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
//!   recently used first once the cache holds more than its byte budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use tokio::sync::watch;
use treecast_proto::body::BodyWriter;
use treecast_proto::{ChannelName, GrowingBody, SegmentFile};

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
}

/// The cache; see the module docs.
#[derive(Debug)]
pub struct Cache {
    origin: OriginClient,
    config: CacheConfig,
    metrics: CacheMetrics,
    state: Mutex<State>,
}

impl Cache {
    /// A cache in front of `origin`.
    pub fn new(origin: OriginClient, config: CacheConfig, metrics: CacheMetrics) -> Arc<Self> {
        Arc::new(Self {
            origin,
            config,
            metrics,
            state: Mutex::new(State::default()),
        })
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
                    tokio::spawn(async move { cache.fetch(f2, writer, p2, c2, kind).await });
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
    async fn fetch(
        self: Arc<Self>,
        flight: Arc<Flight>,
        writer: BodyWriter,
        path: String,
        channel: ChannelName,
        kind: Kind,
    ) {
        let outcome = self
            .fetch_inner(&flight, writer, &path, &channel, kind)
            .await;
        let label = match &outcome {
            Ok(()) => "ok",
            Err(CacheError::Origin { status, .. }) if *status == StatusCode::NOT_FOUND => {
                "not_found"
            }
            Err(CacheError::Origin { .. }) | Err(CacheError::BadPlaylist(_)) => "error",
            Err(CacheError::Unreachable(_)) => "unreachable",
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
                tracing::debug!(%path, error = %e, "origin fetch failed");
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
    }

    async fn fetch_inner(
        &self,
        flight: &Flight,
        writer: BodyWriter,
        path: &str,
        channel: &ChannelName,
        kind: Kind,
    ) -> Result<(), CacheError> {
        let mut resp = self.origin.get(path).await.map_err(|e| match e {
            OriginError::Status { status, message } => CacheError::Origin { status, message },
            other => CacheError::Unreachable(other.to_string()),
        })?;
        if kind == Kind::Playlist {
            // Small, and must be checked whole before anyone sees it.
            let bytes = resp
                .collect()
                .await
                .map_err(|e| CacheError::Unreachable(e.to_string()))?;
            let playlist = m3u8_rs::parse_media_playlist_res(&bytes).map_err(|e| {
                CacheError::BadPlaylist(format!("{e:?}").chars().take(200).collect())
            })?;
            let ttl = Duration::from_millis(playlist.target_duration.max(1) * 500);
            {
                let mut st = self.lock();
                st.playlist_ttl.insert(channel.clone(), ttl);
                st.last_playlist.insert(path.to_owned(), bytes.clone());
            }
            writer.push(bytes);
            writer.finish();
            flight.head.send_replace(Head::Ready);
            return Ok(());
        }
        flight.head.send_replace(Head::Ready);
        loop {
            match resp.next_chunk().await {
                Ok(Some(chunk)) => writer.push(chunk),
                Ok(None) => break,
                Err(e) => {
                    let reason = format!("origin body broke off: {e}");
                    writer.fail(reason.clone());
                    return Err(CacheError::Unreachable(reason));
                }
            }
        }
        writer.finish();
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
