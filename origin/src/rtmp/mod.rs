//! RTMP ingest: OBS, vMix, Wirecast and hardware encoders publish to
//! `rtmp://HOST[:1935]/live/<channel>`, with the publish key (if the origin
//! has one) as `<channel>?key=<key>` in the stream key field.
//!
//! Per TCP connection, bytes go through the sans-IO [`Connection`]
//! (handshake, chunk stream, commands, FLV remux in [`flv`]); the transport
//! stream it writes feeds a [`Session`] exactly as an HTTP or UDP input does.
//!
//! Bounds on a client that is not a publisher: the handshake and the
//! `publish` must come within [`HANDSHAKE_TIMEOUT`] and [`MAX_UNPUBLISHED_BYTES`];
//! at most [`MAX_CONNECTIONS`] connections at once. A publisher that sends no
//! media for [`MEDIA_IDLE`] has its session ended (what it sent is
//! published); if it resumes on the same connection a new session starts,
//! which the playlist marks with one discontinuity.

pub mod connection;
pub mod flv;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tracing::{info, warn};
use treecast_proto::ChannelName;

use crate::publish::{constant_time_eq, Ingest, Session};
use connection::{Connection, ConnectionError, Output};

/// Time a client has from connecting to an accepted `publish`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a client may send before its `publish` is accepted (a handshake and
/// the commands before it take about 4 KiB).
pub const MAX_UNPUBLISHED_BYTES: usize = 64 * 1024;
/// Most RTMP connections at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A publisher silent for this long has its session ended.
pub const MEDIA_IDLE: Duration = Duration::from_secs(10);
/// A connection silent for this long is closed.
pub const CONNECTION_IDLE: Duration = Duration::from_secs(120);
/// Longest wait for the client to take bytes we send it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection ended, for the `treecast_origin_rtmp_connections_total`
/// metric and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ended,
    HandshakeFailed,
    ProtocolError,
    Timeout,
    TooMuchBeforePublish,
    BadStreamKey,
    WrongKey,
    Busy,
    UnsupportedCodec,
    Closed,
    TooMany,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ended => "ended",
            Self::HandshakeFailed => "handshake_failed",
            Self::ProtocolError => "protocol_error",
            Self::Timeout => "timeout",
            Self::TooMuchBeforePublish => "too_much_before_publish",
            Self::BadStreamKey => "bad_stream_key",
            Self::WrongKey => "wrong_key",
            Self::Busy => "busy",
            Self::UnsupportedCodec => "unsupported_codec",
            Self::Closed => "closed",
            Self::TooMany => "too_many_connections",
        }
    }
}

/// Accepts RTMP publishers on `listener` until `shutdown`.
pub async fn run_rtmp(
    ingest: Arc<Ingest>,
    listener: TcpListener,
    key: Option<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "RTMP accept failed");
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%peer, limit = MAX_CONNECTIONS, "RTMP connection refused: too many connections");
            count(&ingest, Outcome::TooMany);
            continue;
        };
        let ingest = ingest.clone();
        let key = key.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let outcome = serve_connection(&ingest, stream, peer, key.as_deref(), shutdown).await;
            count(&ingest, outcome);
            drop(slot);
        });
    }
    // Connections see the same shutdown and end their sessions.
    while connections.join_next().await.is_some() {}
}

fn count(ingest: &Ingest, outcome: Outcome) {
    ingest
        .metrics
        .rtmp_connections
        .with_label_values(&[outcome.label()])
        .inc();
}

/// One connection's state in the driver.
struct Driver<'a> {
    ingest: &'a Ingest,
    stream: TcpStream,
    peer: SocketAddr,
    key: Option<&'a str>,
    conn: Connection,
    /// The channel of the accepted publish.
    channel: Option<ChannelName>,
    session: Option<Session<'a>>,
    received: usize,
}

async fn serve_connection(
    ingest: &Ingest,
    stream: TcpStream,
    peer: SocketAddr,
    key: Option<&str>,
    mut shutdown: watch::Receiver<bool>,
) -> Outcome {
    // Media is small messages; waiting to fill segments helps nobody.
    let _ = stream.set_nodelay(true);
    let mut d = Driver {
        ingest,
        stream,
        peer,
        key,
        conn: Connection::new(),
        channel: None,
        session: None,
        received: 0,
    };
    let outcome = d.run(&mut shutdown).await;
    let error = match outcome {
        Outcome::Ended | Outcome::Closed => None,
        other => Some(other.label()),
    };
    if let Some(session) = d.session.take() {
        session.finish(error.map(|_| "the RTMP connection failed"));
    }
    outcome
}

impl<'a> Driver<'a> {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Outcome {
        let started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let wait = if self.channel.is_none() {
                HANDSHAKE_TIMEOUT.saturating_sub(started.elapsed())
            } else if self.session.is_some() {
                MEDIA_IDLE
            } else {
                CONNECTION_IDLE
            };
            let read = tokio::select! {
                r = timeout(wait, self.stream.read(&mut buf)) => r,
                _ = shutdown.changed() => return Outcome::Ended,
            };
            let n = match read {
                Ok(Ok(0)) => return Outcome::Closed,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    warn!(peer = %self.peer, error = %e, "RTMP connection failed");
                    return Outcome::Closed;
                }
                Err(_) if self.channel.is_none() => {
                    warn!(peer = %self.peer, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "RTMP client did not publish in time; closed");
                    return Outcome::Timeout;
                }
                Err(_) => match self.session.take() {
                    Some(session) => {
                        warn!(channel = %session.channel(), peer = %self.peer, idle_s = MEDIA_IDLE.as_secs(), "RTMP publisher sent no media; session ended, the connection stays open");
                        session.finish(Some("the RTMP publisher went silent"));
                        continue;
                    }
                    None => return Outcome::Timeout,
                },
            };
            if self.channel.is_none() {
                self.received += n;
                if self.received > MAX_UNPUBLISHED_BYTES {
                    warn!(peer = %self.peer, bytes = self.received, "RTMP client sent too much without publishing; closed");
                    return Outcome::TooMuchBeforePublish;
                }
            }
            let outputs = match self.conn.handle_input(&buf[..n]) {
                Ok(o) => o,
                Err(e) => return self.protocol_error(&e),
            };
            if let Some(outcome) = self.outputs(outputs).await {
                return outcome;
            }
        }
    }

    fn protocol_error(&self, e: &ConnectionError) -> Outcome {
        warn!(peer = %self.peer, error = %e, "RTMP client refused");
        match e {
            ConnectionError::Handshake(_) => Outcome::HandshakeFailed,
            ConnectionError::Protocol(_) => Outcome::ProtocolError,
        }
    }

    /// Carries out what the connection asked for; `Some` ends it.
    async fn outputs(&mut self, outputs: Vec<Output>) -> Option<Outcome> {
        let mut queue = std::collections::VecDeque::from(outputs);
        while let Some(o) = queue.pop_front() {
            match o {
                Output::Send(bytes) => {
                    match timeout(WRITE_TIMEOUT, self.stream.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        _ => return Some(Outcome::Closed),
                    }
                }
                Output::Publish {
                    request_id,
                    app,
                    stream_key,
                } => match self.publish(&app, &stream_key) {
                    Ok(()) => match self.conn.accept_publish(request_id) {
                        Ok(more) => queue.extend(more),
                        Err(e) => return Some(self.protocol_error(&e)),
                    },
                    Err((outcome, why)) => {
                        warn!(peer = %self.peer, app, stream = %redact(&stream_key), "RTMP publish refused: {why}");
                        // Tell the encoder why, then close.
                        if let Ok(more) = self.conn.reject_publish(request_id, &why) {
                            for o in more {
                                if let Output::Send(bytes) = o {
                                    let _ =
                                        timeout(WRITE_TIMEOUT, self.stream.write_all(&bytes)).await;
                                }
                            }
                        }
                        return Some(outcome);
                    }
                },
                Output::Media(ts) => {
                    if self.session.is_none() {
                        // Media again after a silence: a new session.
                        let Some(name) = self.channel.clone() else {
                            continue;
                        };
                        match self.ingest.start(&name, &format!("rtmp {}", self.peer)) {
                            Ok(s) => self.session = Some(s),
                            Err(e) => {
                                warn!(peer = %self.peer, channel = %name, error = %e, "RTMP publisher cannot resume");
                                return Some(Outcome::Busy);
                            }
                        }
                    }
                    if let Some(s) = self.session.as_mut() {
                        s.feed(&ts);
                    }
                }
                Output::Problem(e) => {
                    if let Some(s) = self.session.as_mut() {
                        s.report_problem(e.kind(), &e);
                    }
                    if e.is_fatal() {
                        if let Some(s) = self.session.take() {
                            s.finish(Some(&e.to_string()));
                        }
                        warn!(peer = %self.peer, error = %e, "RTMP publisher refused");
                        return Some(Outcome::UnsupportedCodec);
                    }
                }
                Output::Unpublished => {
                    if let Some(s) = self.session.take() {
                        s.finish(None);
                    }
                    self.channel = None;
                    return Some(Outcome::Ended);
                }
            }
        }
        None
    }

    /// Checks a publish request and starts its session.
    fn publish(&mut self, app: &str, stream_key: &str) -> Result<(), (Outcome, String)> {
        let (name, query) = stream_key.split_once('?').unwrap_or((stream_key, ""));
        let name = ChannelName::new(name).map_err(|e| {
            (
                Outcome::BadStreamKey,
                format!("stream key must be <channel>[?key=<publish key>]: {e}"),
            )
        })?;
        if let Some(expected) = self.key {
            let given = query.split('&').find_map(|kv| kv.strip_prefix("key="));
            if !given.is_some_and(|k| constant_time_eq(k.as_bytes(), expected.as_bytes())) {
                return Err((
                    Outcome::WrongKey,
                    "wrong or missing publish key (stream key <channel>?key=<publish key>)".into(),
                ));
            }
        }
        let session = self
            .ingest
            .start(&name, &format!("rtmp {} app {app}", self.peer))
            .map_err(|e| (Outcome::Busy, e.to_string()))?;
        info!(peer = %self.peer, channel = %name, "RTMP publisher accepted");
        self.channel = Some(name);
        self.session = Some(session);
        Ok(())
    }
}

/// The stream key without its publish key, for logs.
fn redact(stream_key: &str) -> &str {
    stream_key
        .split_once('?')
        .map_or(stream_key, |(name, _)| name)
}
