//! The `origin ingest` client: pushes a file, stdin or UDP feed to a
//! running origin.
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
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};
use treecast_proto::app::error_chain;
use treecast_proto::ChannelName;

use crate::channel::ChannelStatus;
use crate::segmenter::{Event, Segmenter, SegmenterConfig};
use crate::source::{read_source, Input, SourceConfig, SourceError};
use crate::ts::nal::VideoCodec;

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
    /// The input could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
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
        return Err(e.into());
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
