//! SRT ingest: OBS, vMix and ffmpeg send MPEG-TS over SRT as callers to
//! `srt://HOST:PORT?streamid=<channel>`, with the publish key (if the
//! origin has one) as the SRT passphrase. The stream id may also use SRT's
//! access control syntax, `#!::r=<channel>,m=publish`.
//!
//! SRT is `srt-tokio`'s (pure Rust, the handshake, encryption, retransmission
//! and latency buffer); each caller's messages are MPEG-TS and feed a
//! [`Session`](crate::publish::Session) directly, as UDP datagrams do.
//!
//! What is checked before a caller is accepted: a valid channel name, a
//! `publish` mode, encryption when the origin has a key (and none when it
//! has none), at most [`MAX_CONNECTIONS`] callers; a wrong passphrase fails
//! the SRT handshake, which must complete within [`ACCEPT_TIMEOUT`]. Each
//! refusal is logged and counted in `treecast_origin_srt_connections_total`.
//! `srt-tokio` panics on a few malformed handshakes in its listener task;
//! when the listener stops for any reason it is bound again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use srt_protocol::settings::KeySettings;
use srt_tokio::access::RejectReason;
use srt_tokio::options::{KeySize, Passphrase};
use srt_tokio::{ConnectionRequest, SrtIncoming, SrtListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};
use treecast_proto::ChannelName;

use crate::publish::Ingest;

/// Most SRT callers at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time an accepted caller has to finish the SRT handshake.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// A caller that sends nothing for this long has its session ended.
pub const MEDIA_IDLE: Duration = Duration::from_secs(10);
/// Wait before binding the listener again after it stopped.
const REBIND_AFTER: Duration = Duration::from_secs(1);

/// Why a caller was turned away, or how its connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ended,
    BadStreamId,
    NotPublish,
    WrongKey,
    Busy,
    HandshakeFailed,
    Idle,
    TooMany,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ended => "ended",
            Self::BadStreamId => "bad_stream_id",
            Self::NotPublish => "not_publish",
            Self::WrongKey => "wrong_key",
            Self::Busy => "busy",
            Self::HandshakeFailed => "handshake_failed",
            Self::Idle => "idle",
            Self::TooMany => "too_many_connections",
        }
    }
}

/// What a caller's stream id asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    /// The channel.
    pub channel: ChannelName,
}

/// Why a stream id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    /// No stream id, or no channel in it.
    #[error("no channel: set streamid=<channel> (or #!::r=<channel>,m=publish)")]
    Missing,
    /// The channel name is not valid.
    #[error("{0}")]
    BadChannel(String),
    /// A mode other than `publish` (this origin serves HLS, not SRT).
    #[error("mode {0:?}: this origin only takes m=publish over SRT; play over HLS")]
    NotPublish(String),
}

/// Parses a caller's stream id: a bare channel name, or SRT's access
/// control syntax `#!::r=<channel>,m=publish` (other keys are ignored).
pub fn parse_stream_id(id: Option<&str>) -> Result<StreamRequest, StreamIdError> {
    let id = id
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(StreamIdError::Missing)?;
    let name = match id.strip_prefix("#!::") {
        None => id,
        Some(pairs) => {
            let mut resource = None;
            for (k, v) in pairs.split(',').filter_map(|kv| kv.split_once('=')) {
                match k {
                    "r" => resource = Some(v),
                    "m" if v != "publish" => return Err(StreamIdError::NotPublish(v.to_owned())),
                    _ => {}
                }
            }
            resource.ok_or(StreamIdError::Missing)?
        }
    };
    let channel = ChannelName::new(name).map_err(|e| StreamIdError::BadChannel(e.to_string()))?;
    Ok(StreamRequest { channel })
}

/// A bound SRT listener.
pub type Bound = (SrtListener, SrtIncoming);

/// Binds the SRT listener on `listen` with a receive `latency`.
pub async fn bind(listen: SocketAddr, latency: Duration) -> std::io::Result<Bound> {
    // Both ways: srt-tokio drains a closing connection for twice the send
    // latency, and with a shorter send than receive latency it would drop
    // the last packets still waiting out the receive latency.
    SrtListener::builder().latency(latency).bind(listen).await
}

/// Accepts SRT callers on `first` (bound on `listen`) until `shutdown`,
/// binding `listen` again if the listener stops. `key` must be a valid SRT
/// passphrase (10 to 79 bytes; the config checks it).
pub async fn run_srt(
    ingest: Arc<Ingest>,
    listen: SocketAddr,
    latency: Duration,
    first: Bound,
    key: Option<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut callers = JoinSet::new();
    let mut bound = Some(first);
    'bind: loop {
        let bound = match bound.take() {
            Some(b) => Ok(b),
            None => bind(listen, latency).await,
        };
        let (_listener, mut incoming) = match bound {
            Ok(l) => l,
            Err(e) => {
                warn!(%listen, error = %e, "cannot bind the SRT listener; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(REBIND_AFTER) => continue 'bind,
                    _ = shutdown.changed() => break 'bind,
                }
            }
        };
        loop {
            let request = tokio::select! {
                r = incoming.incoming().next() => match r {
                    Some(r) => r,
                    None => {
                        warn!(%listen, "the SRT listener stopped; binding it again");
                        tokio::select! {
                            _ = tokio::time::sleep(REBIND_AFTER) => continue 'bind,
                            _ = shutdown.changed() => break 'bind,
                        }
                    }
                },
                Some(_) = callers.join_next(), if !callers.is_empty() => continue,
                _ = shutdown.changed() => break 'bind,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(peer = %request.remote(), limit = MAX_CONNECTIONS, "SRT caller refused: too many connections");
                count(&ingest, Outcome::TooMany);
                let _ = request
                    .reject(RejectReason::Server(
                        srt_tokio::access::ServerRejectReason::Overload,
                    ))
                    .await;
                continue;
            };
            let ingest = ingest.clone();
            let key = key.clone();
            let shutdown = shutdown.clone();
            callers.spawn(async move {
                let outcome = serve_caller(&ingest, request, key.as_deref(), shutdown).await;
                count(&ingest, outcome);
                drop(slot);
            });
        }
    }
    while callers.join_next().await.is_some() {}
}

fn count(ingest: &Ingest, outcome: Outcome) {
    ingest
        .metrics
        .srt_connections
        .with_label_values(&[outcome.label()])
        .inc();
}

async fn reject(request: ConnectionRequest, reason: srt_tokio::access::ServerRejectReason) {
    let _ = request.reject(RejectReason::Server(reason)).await;
}

async fn serve_caller(
    ingest: &Ingest,
    request: ConnectionRequest,
    key: Option<&str>,
    mut shutdown: watch::Receiver<bool>,
) -> Outcome {
    use srt_tokio::access::ServerRejectReason as Why;
    let peer = request.remote();
    let stream_id = request.stream_id().map(|s| s.to_string());
    let wanted = match parse_stream_id(stream_id.as_deref()) {
        Ok(w) => w,
        Err(e) => {
            warn!(%peer, stream_id = ?stream_id, "SRT caller refused: {e}");
            let (why, outcome) = match e {
                StreamIdError::NotPublish(_) => (Why::BadMode, Outcome::NotPublish),
                _ => (Why::BadRequest, Outcome::BadStreamId),
            };
            reject(request, why).await;
            return outcome;
        }
    };
    let encrypted = request.key_size() != KeySize::Unspecified;
    let key_settings = match (key, encrypted) {
        (Some(k), true) => match Passphrase::try_from(k.to_owned()) {
            Ok(passphrase) => Some(KeySettings {
                key_size: request.key_size(),
                passphrase,
            }),
            Err(_) => {
                warn!(%peer, "SRT caller refused: the publish key is not a valid SRT passphrase (10 to 79 bytes)");
                reject(request, Why::InternalServerError).await;
                return Outcome::WrongKey;
            }
        },
        (Some(_), false) => {
            warn!(%peer, channel = %wanted.channel, "SRT caller refused: no passphrase; set passphrase=<publish key>");
            reject(request, Why::Unauthorized).await;
            return Outcome::WrongKey;
        }
        (None, true) => {
            warn!(%peer, channel = %wanted.channel, "SRT caller refused: it encrypts, but this origin has no publish key to decrypt with");
            reject(request, Why::Unauthorized).await;
            return Outcome::WrongKey;
        }
        (None, false) => None,
    };
    let busy = || {
        ingest
            .channels
            .get(&wanted.channel)
            .is_some_and(|c| c.status().live)
    };
    if busy() {
        let e = crate::channel::ChannelBusy(wanted.channel.clone());
        warn!(%peer, "SRT caller refused: {e}");
        reject(request, Why::Conflict).await;
        return Outcome::Busy;
    }
    let mut socket = match tokio::time::timeout(ACCEPT_TIMEOUT, request.accept(key_settings)).await
    {
        Ok(Ok(s)) => s,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no handshake within {ACCEPT_TIMEOUT:?}"),
            };
            warn!(%peer, channel = %wanted.channel, error = why, "SRT caller refused: its handshake failed; a passphrase that is not the publish key fails here");
            return Outcome::HandshakeFailed;
        }
    };
    // Claimed only now, so a failed handshake leaves no session behind; a
    // publisher that came in between wins.
    let mut session = match ingest.start(&wanted.channel, &format!("srt {peer}")) {
        Ok(s) => s,
        Err(e) => {
            warn!(%peer, channel = %wanted.channel, error = %e, "SRT caller refused");
            return Outcome::Busy;
        }
    };
    info!(%peer, channel = %wanted.channel, "SRT caller accepted");
    let outcome = loop {
        tokio::select! {
            m = tokio::time::timeout(MEDIA_IDLE, socket.next()) => match m {
                Ok(Some(Ok((_, bytes)))) => session.feed(&bytes),
                Ok(Some(Err(e))) => {
                    warn!(%peer, channel = %wanted.channel, error = %e, "SRT connection failed");
                    break Outcome::Ended;
                }
                Ok(None) => break Outcome::Ended,
                Err(_) => {
                    warn!(%peer, channel = %wanted.channel, idle_s = MEDIA_IDLE.as_secs(), "SRT caller sent nothing; closed");
                    break Outcome::Idle;
                }
            },
            _ = shutdown.changed() => break Outcome::Ended,
        }
    };
    session.finish((outcome == Outcome::Idle).then_some("the SRT caller went silent"));
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_name_a_channel() {
        assert_eq!(
            parse_stream_id(Some("demo")).map(|r| r.channel.to_string()),
            Ok("demo".to_owned())
        );
        assert_eq!(
            parse_stream_id(Some("#!::r=live-1,m=publish,u=obs")).map(|r| r.channel.to_string()),
            Ok("live-1".to_owned())
        );
        assert_eq!(parse_stream_id(None), Err(StreamIdError::Missing));
        assert_eq!(
            parse_stream_id(Some("#!::m=publish")),
            Err(StreamIdError::Missing)
        );
        assert_eq!(
            parse_stream_id(Some("#!::r=demo,m=request")),
            Err(StreamIdError::NotPublish("request".into()))
        );
        assert!(matches!(
            parse_stream_id(Some("no spaces")),
            Err(StreamIdError::BadChannel(_))
        ));
    }
}
