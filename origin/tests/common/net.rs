//! Network helpers for the origin's integration tests: a small HTTP client,
//! spawning the real `origin` binary, and requiring external tools.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

pub async fn request(method: Method, url: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response within 30 s")
        .expect("request succeeds");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    request(Method::GET, url, Vec::new(), &[]).await
}

/// Fails loudly when a tool the test needs is missing (CI installs it).
pub fn require_tool(name: &str) {
    let found = Command::new(name)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{name} is required for this test: install it (apt-get install ffmpeg); .ci/run does"
    );
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `origin serve` on a free port and waits until it answers.
pub async fn spawn_origin(data: &Path, extra: &[&str]) -> (Proc, String) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_origin"))
        .args(["serve", "--listen", &addr, "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("origin starts");
    let proc = Proc(child);
    let base = format!("http://{addr}");
    wait_until(Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(&addr).await.is_ok()
    })
    .await;
    (proc, base)
}

/// A UDP port on 127.0.0.1 free right now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

/// A TCP port on 127.0.0.1 free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Re-checks `cond` until it holds; panics after `timeout`. Each check is a
/// real observation (a connect, a request), not a guess about timing.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The media playlist at `url`: its text and its parsed form.
pub async fn media_playlist(url: &str) -> (String, m3u8_rs::MediaPlaylist) {
    let text = String::from_utf8(get(url).await.body.to_vec()).expect("utf-8 playlist");
    let parsed = m3u8_rs::parse_media_playlist_res(text.as_bytes()).expect("valid playlist");
    (text, parsed)
}

/// Runs ffmpeg quietly with `args`; panics with its error output if it fails.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-y"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the Prometheus sample `series` (name and labels) on the
/// origin at `base`; 0 when absent.
pub async fn metric(base: &str, series: &str) -> u64 {
    let text = String::from_utf8(get(&format!("{base}/metrics")).await.body.to_vec())
        .expect("utf-8 metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// `/api/channels/<channel>` of the origin at `base` (null if absent).
pub async fn channel_status(base: &str, channel: &str) -> serde_json::Value {
    let r = get(&format!("{base}/api/channels/{channel}")).await;
    serde_json::from_slice(&r.body).unwrap_or_default()
}

/// Waits until `channel` is live and has cut more than `after` segments.
pub async fn wait_until_cut_past(base: &str, channel: &str, after: u64) {
    wait_until(Duration::from_secs(30), || async {
        let s = channel_status(base, channel).await;
        s["live"] == true && s["segments_cut"].as_u64().is_some_and(|n| n > after)
    })
    .await;
}

/// A live publisher: ffmpeg sending `file` looped in real time as `format`
/// to `url`, publishing on the origin at `base` as `channel`. Returns it
/// once the origin has cut a segment of it, with the count cut by then.
pub async fn live_publisher(
    file: &str,
    format: &str,
    url: &str,
    base: &str,
    channel: &str,
) -> (Proc, u64) {
    let live = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-re", "-stream_loop", "-1"])
        .args(["-i", file, "-c", "copy", "-f", format, url])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ffmpeg starts");
    let live = Proc(live);
    wait_until_cut_past(base, channel, 0).await;
    let cut = channel_status(base, channel).await["segments_cut"]
        .as_u64()
        .expect("count");
    (live, cut)
}

/// Waits until `channel` on the origin at `base` has no publisher and has
/// cut at least one segment: what a pushed stream left is all published.
pub async fn wait_until_published(base: &str, channel: &str) {
    let url = format!("{base}/api/channels/{channel}");
    wait_until(Duration::from_secs(30), || async {
        let r = get(&url).await;
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            return false;
        };
        status["live"] == false && status["segments_cut"].as_u64().is_some_and(|n| n > 0)
    })
    .await;
}

/// Runs `origin ingest --quiet` against `base` on `channel`, waiting for it to end.
pub fn ingest_cmd(base: &str, channel: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_origin"))
        .args(["ingest", "--quiet", "--origin", base, "--channel", channel])
        .args(extra)
        .output()
        .expect("origin ingest runs")
}
