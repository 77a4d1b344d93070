//! `origin ingest`: push a file, stdin or UDP feed to a running origin.
//!
//! - a source task reads the input (a file, optionally looped and paced in
//!   real time by its own timestamps the way `ffmpeg -re` does; stdin; or
//!   UDP datagrams) and sends chunks down a bounded channel;
//! - the chunks stream to the origin as the chunked body of one
//!   `PUT /ingest/<channel>`;
//! - a local [`Segmenter`] reads the same bytes so the producer sees input
//!   bitrate, GOP length and input errors at once, and the origin's
//!   `/api/channels/<channel>` supplies segments cut; a status line shows
//!   both every second.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use treecast_proto::app::error_chain;
use treecast_proto::ChannelName;

use crate::channel::ChannelStatus;
use crate::segmenter::{Event, Segmenter, SegmenterConfig};
use crate::ts::nal::VideoCodec;
use crate::ts::packet::PacketHeader;
use crate::ts::pes::PesHeader;
use crate::ts::timestamp::Unwrapper;
use crate::ts::{PACKET_LEN, SYNC_BYTE, TICKS_PER_SECOND};

/// Where the stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An MPEG-TS file.
    File(PathBuf),
    /// Standard input.
    Stdin,
    /// MPEG-TS datagrams received on this address.
    Udp(SocketAddr),
}

/// What `origin ingest` was asked to do.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The input.
    pub input: Input,
    /// Base URL of the origin, e.g. `http://127.0.0.1:8080`.
    pub origin: Uri,
    /// Channel to publish to.
    pub channel: ChannelName,
    /// Publish key, if the origin requires one.
    pub key: Option<String>,
    /// Repeat a file forever.
    pub looped: bool,
    /// Pace a file or stdin by its own timestamps.
    pub realtime: bool,
    /// Print a status line this often (none: quiet).
    pub status_every: Option<Duration>,
}

/// Why pushing failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The input file could not be opened or read.
    #[error("cannot read input {path}: {source}")]
    Input {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The input is not MPEG-TS.
    #[error("{0} does not look like MPEG-TS (no 0x47 sync byte every 188 bytes); remux it with: ffmpeg -i INPUT -c copy -f mpegts out.ts")]
    NotTransportStream(String),
    /// `--loop` on something that cannot be rewound.
    #[error("--loop needs a file input")]
    LoopNeedsFile,
    /// The UDP address could not be bound.
    #[error("cannot listen for UDP on {addr}: {source}")]
    UdpBind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// The origin could not be reached.
    #[error("cannot reach the origin at {url}: {reason}. Is `origin serve` running there?")]
    Unreachable {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The origin refused the stream.
    #[error("the origin refused to publish channel {channel} ({status}): {message}")]
    Refused {
        /// The channel.
        channel: String,
        /// HTTP status.
        status: StatusCode,
        /// The origin's explanation.
        message: String,
    },
}

/// What a finished push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushSummary {
    /// Bytes sent.
    pub bytes: u64,
    /// Segments the origin reported cutting during the push.
    pub segments: u64,
    /// Input problems seen locally.
    pub local_problems: u64,
}

/// Paces a transport stream by its timestamps.
///
/// Feed each packet to [`Pacer::observe`]; it answers with the media time
/// since the feed began (continuing across loops and timestamp jumps) when
/// the packet carries a decode timestamp of the first timed stream.
#[derive(Debug)]
pub struct Pacer {
    pid: Option<u16>,
    unwrap: Unwrapper,
    origin: Option<i64>,
    /// Media time already played before the last jump.
    offset: i64,
    last: i64,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new()
    }
}

impl Pacer {
    /// A pacer that has seen nothing.
    pub fn new() -> Self {
        Self {
            pid: None,
            unwrap: Unwrapper::new(TICKS_PER_SECOND as i64, 10 * TICKS_PER_SECOND as i64),
            origin: None,
            offset: 0,
            last: 0,
        }
    }

    /// Media time at `packet`, if it carries a timestamp of the paced stream.
    pub fn observe(&mut self, packet: &[u8; PACKET_LEN]) -> Option<Duration> {
        let h = PacketHeader::parse(packet).ok()?;
        if !h.payload_start || h.pid == 0 || self.pid.is_some_and(|p| p != h.pid) {
            return None;
        }
        let pes = PesHeader::parse(&packet[h.payload_offset..]).ok()?;
        let ts = pes.dts.or(pes.pts)?;
        self.pid.get_or_insert(h.pid);
        let u = self.unwrap.unwrap(ts);
        let origin = *self.origin.get_or_insert(u.ticks);
        if u.jump {
            // Looped or restarted: continue from where playback was.
            self.offset = self.last;
            self.origin = Some(u.ticks);
        }
        let now = self.offset + (u.ticks - self.origin.unwrap_or(origin)).max(0);
        self.last = self.last.max(now);
        Some(Duration::from_micros(
            (self.last as u64) * 1_000_000 / TICKS_PER_SECOND,
        ))
    }
}

/// Checks that `head` (the first bytes of an input) look like MPEG-TS.
pub fn looks_like_ts(head: &[u8]) -> bool {
    (0..PACKET_LEN.min(head.len())).any(|start| {
        let mut syncs = head[start..].iter().step_by(PACKET_LEN);
        let n = (head.len() - start).div_ceil(PACKET_LEN).min(4);
        n >= 2 && syncs.by_ref().take(n).all(|&b| b == SYNC_BYTE)
    })
}

const CHUNK: usize = 7 * PACKET_LEN * 8;

/// How a source is read.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The input.
    pub input: Input,
    /// Repeat a file forever.
    pub looped: bool,
    /// Pace by the stream's own timestamps.
    pub realtime: bool,
}

/// Reads `source` into `tx` until it ends, the receiver goes away or
/// `stop` fires. Also used by `origin serve --file` to loop a file in.
pub async fn read_source(
    config: SourceConfig,
    tx: mpsc::Sender<Bytes>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), PushError> {
    match &config.input {
        Input::Udp(addr) => {
            let socket =
                tokio::net::UdpSocket::bind(addr)
                    .await
                    .map_err(|source| PushError::UdpBind {
                        addr: *addr,
                        source,
                    })?;
            let mut buf = vec![0u8; 65_536];
            loop {
                tokio::select! {
                    r = socket.recv_from(&mut buf) => {
                        let Ok((n, _)) = r else { continue };
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            return Ok(());
                        }
                    }
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
        Input::Stdin => {
            if config.looped {
                return Err(PushError::LoopNeedsFile);
            }
            let reader = tokio::io::stdin();
            pump(
                reader,
                "stdin",
                &config,
                &tx,
                &mut stop,
                &mut Pacer::new(),
                Instant::now(),
            )
            .await
            .map(|_| ())
        }
        Input::File(path) => {
            let open = || async {
                tokio::fs::File::open(path)
                    .await
                    .map_err(|source| PushError::Input {
                        path: path.clone(),
                        source,
                    })
            };
            let mut head = vec![0u8; 4 * PACKET_LEN];
            let n = open()
                .await?
                .read(&mut head)
                .await
                .map_err(|source| PushError::Input {
                    path: path.clone(),
                    source,
                })?;
            if !looks_like_ts(&head[..n]) {
                return Err(PushError::NotTransportStream(path.display().to_string()));
            }
            let mut pacer = Pacer::new();
            let started = Instant::now();
            loop {
                let file = open().await?;
                let name = path.display().to_string();
                let stopped =
                    pump(file, &name, &config, &tx, &mut stop, &mut pacer, started).await?;
                if stopped || !config.looped {
                    return Ok(());
                }
            }
        }
    }
}

/// Copies `reader` into `tx`, pacing by timestamps if asked. Returns whether
/// it stopped early (stop signal or the sender went away).
async fn pump(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    name: &str,
    config: &SourceConfig,
    tx: &mpsc::Sender<Bytes>,
    stop: &mut watch::Receiver<bool>,
    pacer: &mut Pacer,
    started: Instant,
) -> Result<bool, PushError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            r = read_full(&mut reader, &mut buf) => r.map_err(|source| PushError::Input { path: name.into(), source })?,
            _ = stop.changed() => return Ok(true),
        };
        if n == 0 {
            return Ok(false);
        }
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        if config.realtime {
            let due = chunk
                .chunks_exact(PACKET_LEN)
                .filter_map(|p| p.try_into().ok().and_then(|p| pacer.observe(p)))
                .last();
            if let Some(due) = due {
                tokio::select! {
                    _ = tokio::time::sleep_until((started + due).into()) => {}
                    _ = stop.changed() => return Ok(true),
                }
            }
        }
        if tx.send(chunk).await.is_err() {
            return Ok(true);
        }
    }
}

async fn read_full(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let m = r.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    Ok(n)
}

/// Local view of the stream for the status line.
#[derive(Debug)]
struct Monitor {
    segmenter: Segmenter,
    problems: u64,
    last_problem: Option<String>,
    window_bytes: u64,
    window_start: Instant,
    bitrate: Option<f64>,
}

impl Monitor {
    fn new() -> Self {
        Self {
            segmenter: Segmenter::new(SegmenterConfig::learning(2.0, 12)),
            problems: 0,
            last_problem: None,
            window_bytes: 0,
            window_start: Instant::now(),
            bitrate: None,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.window_bytes += data.len() as u64;
        self.segmenter.handle_input(data);
        while let Some(e) = self.segmenter.poll_event() {
            if let Event::Notice(n) = e {
                if n.is_info() {
                    continue;
                }
                self.problems += 1;
                self.last_problem = Some(n.to_string());
            }
        }
        let elapsed = self.window_start.elapsed();
        if elapsed >= Duration::from_secs(2) {
            self.bitrate = Some(self.window_bytes as f64 * 8.0 / elapsed.as_secs_f64());
            self.window_bytes = 0;
            self.window_start = Instant::now();
        }
    }

    fn line(
        &self,
        channel: &ChannelName,
        started: Instant,
        sent: u64,
        origin: Option<&ChannelStatus>,
    ) -> String {
        let st = self.segmenter.stats();
        let t = started.elapsed().as_secs();
        let rate = self
            .bitrate
            .map_or("--".into(), |b| format!("{:.2} Mb/s", b / 1e6));
        let gop = st.last_gop_ticks.map_or("--".into(), |g| {
            format!(
                "{:.2} s ({} frames)",
                g as f64 / 90_000.0,
                st.last_gop_frames
            )
        });
        let codec = match st.video_codec {
            Some(VideoCodec::H264) => "H.264",
            Some(VideoCodec::H265) => "H.265",
            None if st.audio_streams > 0 => "audio only",
            None => "no stream yet",
        };
        let segs = origin.map_or("? (origin status unavailable)".into(), |o| {
            o.segments_cut.to_string()
        });
        let origin_errs = origin.map_or(0, |o| o.input_errors);
        let target = origin
            .and_then(|o| o.target_duration)
            .or(st.target_secs)
            .map_or("--".into(), |t| format!("{t} s"));
        let mut line = format!(
            "[{channel}] {:02}:{:02}:{:02} in {rate} | GOP {gop} | target {target} | {codec} +{} audio | segments cut {segs} | errors {} local, {origin_errs} at origin | sent {:.1} MB",
            t / 3600,
            (t / 60) % 60,
            t % 60,
            st.audio_streams,
            self.problems,
            sent as f64 / 1e6,
        );
        if let Some(p) = &self.last_problem {
            line.push_str(&format!(" | last problem: {p}"));
        }
        line
    }
}

fn ingest_uri(origin: &Uri, channel: &ChannelName, rest: &str) -> Result<Uri, PushError> {
    let base = origin.to_string();
    let url = format!("{}/{rest}{channel}", base.trim_end_matches('/'));
    url.parse()
        .map_err(|e: http::uri::InvalidUri| PushError::Unreachable {
            url,
            reason: e.to_string(),
        })
}

/// Pushes the input to the origin until it ends or `stop` fires.
pub async fn run_push(
    config: PushConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<PushSummary, PushError> {
    let client = Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>(
        );
    let put_uri = ingest_uri(&config.origin, &config.channel, "ingest/")?;
    let status_uri = ingest_uri(&config.origin, &config.channel, "api/channels/")?;
    // Ask whether we may publish before reading any input, so an
    // unreachable origin, a wrong key or a busy channel is a clear error
    // rather than a connection cut mid-stream.
    let mut check = Request::get(put_uri.clone());
    if let Some(key) = &config.key {
        check = check.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let check = check
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync())
        .map_err(|e| PushError::Unreachable {
            url: put_uri.to_string(),
            reason: e.to_string(),
        })?;
    let answer = client
        .request(check)
        .await
        .map_err(|e| PushError::Unreachable {
            url: config.origin.to_string(),
            reason: error_chain(&e),
        })?;
    if !answer.status().is_success() {
        let status = answer.status();
        let body = answer
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(PushError::Refused {
            channel: config.channel.to_string(),
            status,
            message: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }

    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(64);
    let source_stop = stop.clone();
    let source_config = SourceConfig {
        input: config.input.clone(),
        looped: config.looped,
        realtime: config.realtime,
    };
    let source = tokio::spawn(read_source(source_config, tx, source_stop));

    let body = StreamBody::new(stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    }))
    .boxed_unsync();
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(put_uri.clone())
        .header(header::CONTENT_TYPE, "video/mp2t");
    if let Some(key) = &config.key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let req = req.body(body).map_err(|e| PushError::Unreachable {
        url: put_uri.to_string(),
        reason: e.to_string(),
    })?;
    let mut response = Box::pin(client.request(req));

    let started = Instant::now();
    let mut monitor = Monitor::new();
    let mut sent = 0u64;
    let mut origin_status: Option<ChannelStatus> = None;
    let first_cut = fetch_status(&client, &status_uri)
        .await
        .map_or(0, |s| s.segments_cut);
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(config.status_every.unwrap_or(Duration::from_secs(3600)));
    let mut source_done = false;
    let mut body_tx = Some(body_tx);
    let response = loop {
        tokio::select! {
            chunk = rx.recv(), if !source_done => match chunk {
                Some(c) => {
                    monitor.feed(&c);
                    sent += c.len() as u64;
                    if let Some(btx) = &body_tx {
                        // The origin may answer (and refuse) before taking
                        // the body, so keep watching for its response.
                        tokio::select! {
                            sent = btx.send(c) => if sent.is_err() { body_tx = None; },
                            r = &mut response => break r,
                        }
                    }
                }
                None => {
                    source_done = true;
                    // Ending the body ends the publishing session.
                    body_tx = None;
                }
            },
            r = &mut response => break r,
            _ = tick.tick(), if config.status_every.is_some() => {
                origin_status = fetch_status(&client, &status_uri).await;
                let line = monitor.line(&config.channel, started, sent, origin_status.as_ref());
                if tty { eprint!("\r\x1b[2K{line}"); } else { eprintln!("{line}"); }
            }
            _ = stop.changed() => { body_tx = None; source_done = true; }
        }
    };
    drop(body_tx);
    // Nobody reads the source any more: let it see the closed channel.
    drop(rx);
    if tty && config.status_every.is_some() {
        eprintln!();
    }
    if let Ok(Err(e)) = source.await {
        return Err(e);
    }
    let response = response.map_err(|e| PushError::Unreachable {
        url: put_uri.to_string(),
        reason: error_chain(&e),
    })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !status.is_success() {
        return Err(PushError::Refused {
            channel: config.channel.to_string(),
            status,
            message: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    origin_status = fetch_status(&client, &status_uri).await.or(origin_status);
    Ok(PushSummary {
        bytes: sent,
        segments: origin_status.map_or(0, |s| s.segments_cut.saturating_sub(first_cut)),
        local_problems: monitor.problems,
    })
}

async fn fetch_status<C>(
    client: &Client<C, http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>,
    uri: &Uri,
) -> Option<ChannelStatus>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let req = Request::get(uri.clone())
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync())
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_transport_streams() {
        let mut ts = vec![0u8; 4 * PACKET_LEN];
        for i in 0..4 {
            ts[i * PACKET_LEN] = SYNC_BYTE;
        }
        assert!(looks_like_ts(&ts));
        assert!(!looks_like_ts(b"\x00\x00\x00\x20ftypisom"));
        assert!(!looks_like_ts(&[]));
    }

    #[test]
    fn pacer_continues_across_a_loop() {
        let sample = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../media/sample.ts"))
            .expect("sample");
        let mut pacer = Pacer::new();
        let mut last = Duration::ZERO;
        for _ in 0..2 {
            for p in sample.chunks_exact(PACKET_LEN) {
                if let Some(t) = pacer.observe(p.try_into().expect("packet")) {
                    assert!(t >= last, "media time went backwards");
                    last = t;
                }
            }
        }
        // Two passes over a 16 s clip: about 32 s of media.
        assert!(
            last > Duration::from_secs(31) && last < Duration::from_secs(33),
            "{last:?}"
        );
    }
}
