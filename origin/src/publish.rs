//! Ingest sessions: one publisher's byte stream into one channel.
//!
//! - a session claims its channel (one publisher at a time), then every
//!   chunk it receives goes through its own [`Segmenter`] and the events go
//!   to the [`Channel`];
//! - problems in the input become a metric each time and a log line at most
//!   once per [`LOG_EVERY`] per kind, so a garbage flood cannot flood logs;
//! - when the feed ends the open segment is closed and published, and the
//!   channel is released; the next session starts with a discontinuity.
//!
//! The HTTP `/ingest/` handler and the UDP listener are the two drivers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{info, warn};
use treecast_proto::ChannelName;

use crate::channel::{Channel, ChannelBusy, Channels, OpenChannelError};
use crate::config::SegmentsConfig;
use crate::metrics::IngestMetrics;
use crate::segmenter::{Event, Segmenter, SegmenterConfig};

/// Least time between two log lines about the same kind of input problem.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// A UDP input that receives nothing for this long ends its session.
pub const UDP_IDLE: Duration = Duration::from_secs(5);

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed publish key was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The channel could not be opened.
    #[error(transparent)]
    Open(#[from] OpenChannelError),
    /// Someone else is publishing.
    #[error(transparent)]
    Busy(#[from] ChannelBusy),
}

/// Shared by every session: where channels live and how to cut streams.
#[derive(Debug)]
pub struct Ingest {
    /// The channels.
    pub channels: Arc<Channels>,
    /// Segmenting parameters.
    pub segments: SegmentsConfig,
    /// Metrics.
    pub metrics: IngestMetrics,
    next_id: AtomicU64,
}

impl Ingest {
    /// Creates the ingest side.
    pub fn new(channels: Arc<Channels>, segments: SegmentsConfig, metrics: IngestMetrics) -> Self {
        Self {
            channels,
            segments,
            metrics,
            next_id: AtomicU64::new(1),
        }
    }

    /// Starts a session publishing to `name`.
    pub fn start(&self, name: &ChannelName, from: &str) -> Result<Session<'_>, StartError> {
        let channel = match self.channels.open(name) {
            Ok(c) => c,
            Err(e) => {
                self.reject(name);
                return Err(e.into());
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = channel.claim(id) {
            self.reject(name);
            return Err(e.into());
        }
        info!(channel = %name, publisher = from, "publishing started");
        let segmenter = Segmenter::new(self.segmenter_config(&channel));
        Ok(Session {
            ingest: self,
            channel,
            id,
            segmenter,
            last_logged: HashMap::new(),
            suppressed: HashMap::new(),
            segments: 0,
            bytes: 0,
            problems: 0,
            ended: false,
        })
    }

    /// How a session on `channel` cuts: a target the operator fixed, else
    /// the one an earlier session chose (HLS keeps it for the playlist's
    /// life), else learned from this stream's GOP.
    fn segmenter_config(&self, channel: &Channel) -> SegmenterConfig {
        let s = &self.segments;
        match s.target_duration.or(channel.chosen_target_duration()) {
            Some(t) => SegmenterConfig::new(s.segment_seconds, t),
            None => SegmenterConfig::learning(s.segment_seconds, s.max_target_duration),
        }
    }

    fn reject(&self, name: &ChannelName) {
        self.metrics
            .sessions
            .with_label_values(&[name.as_str(), "rejected"])
            .inc();
    }
}

/// One publisher's session; see the module docs.
#[derive(Debug)]
pub struct Session<'a> {
    ingest: &'a Ingest,
    channel: Arc<Channel>,
    id: u64,
    segmenter: Segmenter,
    last_logged: HashMap<&'static str, Instant>,
    suppressed: HashMap<&'static str, u64>,
    segments: u64,
    bytes: u64,
    problems: u64,
    ended: bool,
}

/// What a finished session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SessionSummary {
    /// Bytes received.
    pub bytes: u64,
    /// Segments published.
    pub segments: u64,
    /// Problems found in the input.
    pub problems: u64,
}

impl Session<'_> {
    /// Feeds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.channel.add_bytes_in(data.len());
        self.segmenter.handle_input(data);
        self.drain();
    }

    /// Ends the session; `error` is why the feed broke off, if it did.
    /// What was received is published either way: the open segment is
    /// closed at the last complete frame.
    pub fn finish(mut self, error: Option<&str>) -> SessionSummary {
        self.end(error)
    }

    fn summary(&self) -> SessionSummary {
        SessionSummary {
            bytes: self.bytes,
            segments: self.segments,
            problems: self.problems,
        }
    }

    fn end(&mut self, error: Option<&str>) -> SessionSummary {
        if self.ended {
            return self.summary();
        }
        self.ended = true;
        self.segmenter.handle_end_of_input();
        self.drain();
        let name = self.channel.name().clone();
        let outcome = if error.is_some() { "error" } else { "ended" };
        self.ingest
            .metrics
            .sessions
            .with_label_values(&[name.as_str(), outcome])
            .inc();
        let summary = self.summary();
        match error {
            None => {
                info!(channel = %name, bytes = summary.bytes, segments = summary.segments, problems = summary.problems, "publishing ended")
            }
            Some(e) => {
                warn!(channel = %name, bytes = summary.bytes, segments = summary.segments, problems = summary.problems, error = e, "publishing broke off")
            }
        }
        self.channel.release(self.id);
        summary
    }

    /// Counts and reports a problem a driver found before the segmenter
    /// (a bad RTMP tag): in the channel's metric and status each time, a log
    /// line at most once per [`LOG_EVERY`] for its `kind`.
    pub fn report_problem(&mut self, kind: &'static str, problem: &dyn std::fmt::Display) {
        self.channel.count_input_problem(kind, problem.to_string());
        self.log_problem(kind, problem);
    }

    /// The channel this session publishes to.
    pub fn channel(&self) -> &ChannelName {
        self.channel.name()
    }

    fn log_problem(&mut self, kind: &'static str, problem: &dyn std::fmt::Display) {
        self.problems += 1;
        let now = Instant::now();
        let due = self
            .last_logged
            .get(kind)
            .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY);
        if due {
            let suppressed = self.suppressed.remove(kind).unwrap_or(0);
            warn!(channel = %self.channel.name(), kind, suppressed, "input problem: {problem}");
            self.last_logged.insert(kind, now);
        } else {
            *self.suppressed.entry(kind).or_default() += 1;
        }
    }

    fn drain(&mut self) {
        while let Some(event) = self.segmenter.poll_event() {
            match &event {
                Event::SegmentEnd { .. } => self.segments += 1,
                Event::Notice(n) if n.is_info() => {
                    info!(channel = %self.channel.name(), "{n}");
                }
                Event::Notice(n) => self.log_problem(n.kind(), n),
                _ => {}
            }
            if let Some(state) = self.channel.apply(event, SystemTime::now()) {
                if let Err(e) = self.ingest.channels.save_state(self.channel.name(), state) {
                    warn!(channel = %self.channel.name(), error = %e, "cannot persist channel state; a restart may reuse segment numbers");
                }
            }
        }
    }
}

impl Drop for Session<'_> {
    /// A session dropped without [`Session::finish`] (the HTTP connection
    /// closed under its handler) still publishes what it received.
    fn drop(&mut self) {
        self.end(Some("the publisher's connection closed"));
    }
}

/// Receives MPEG-TS datagrams on `socket` into `channel` until `shutdown`.
/// A session starts with the first datagram and ends after [`UDP_IDLE`]
/// without any.
pub async fn run_udp(
    ingest: Arc<Ingest>,
    socket: UdpSocket,
    channel: ChannelName,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    let local = socket
        .local_addr()
        .map_or_else(|_| "udp".to_owned(), |a| a.to_string());
    loop {
        // Wait for the first datagram of a session.
        let (n, from): (usize, SocketAddr) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => { warn!(%local, error = %e, "UDP receive failed"); continue; }
            },
            _ = shutdown.changed() => return,
        };
        let mut session = match ingest.start(&channel, &format!("udp {from} -> {local}")) {
            Ok(s) => s,
            Err(e) => {
                warn!(%local, error = %e, "UDP input cannot publish");
                // Back off so a busy channel does not spin this loop.
                tokio::select! {
                    _ = tokio::time::sleep(UDP_IDLE) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        session.feed(&buf[..n]);
        loop {
            tokio::select! {
                r = tokio::time::timeout(UDP_IDLE, socket.recv_from(&mut buf)) => match r {
                    Ok(Ok((n, _))) => session.feed(&buf[..n]),
                    Ok(Err(e)) => warn!(%local, error = %e, "UDP receive failed"),
                    Err(_) => { session.finish(None); break; }
                },
                _ = shutdown.changed() => { session.finish(None); return; }
            }
        }
    }
}

/// Plays `path` into `channel` forever, paced in real time, until `shutdown`.
/// A read error ends the session, is logged, and the file is retried after
/// [`UDP_IDLE`].
pub async fn run_file(
    ingest: Arc<Ingest>,
    path: std::path::PathBuf,
    channel: ChannelName,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::source::{read_source, Input, SourceConfig};
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let source = SourceConfig {
            input: Input::File(path.clone()),
            looped: true,
            realtime: true,
        };
        let reader = tokio::spawn(read_source(source, tx, shutdown.clone()));
        let result = match ingest.start(&channel, &format!("file {}", path.display())) {
            Ok(mut session) => {
                while let Some(chunk) = rx.recv().await {
                    session.feed(&chunk);
                }
                let result = reader.await;
                let error = match &result {
                    Ok(Err(e)) => Some(e.to_string()),
                    _ => None,
                };
                session.finish(error.as_deref());
                error
            }
            Err(e) => {
                reader.abort();
                Some(e.to_string())
            }
        };
        if *shutdown.borrow() {
            return;
        }
        if let Some(e) = result {
            warn!(file = %path.display(), %channel, error = %e, "file input failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(UDP_IDLE) => {}
            _ = shutdown.changed() => return,
        }
    }
}
