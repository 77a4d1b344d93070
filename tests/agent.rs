//! The viewer's agent started with no channel, as `peer install` runs it:
//! ffmpeg plays two channels through it at once, each joined when its
//! player asks; a third is refused while `max_channels` (2) are playing;
//! when the players stop, the agent leaves each channel's tree after its
//! idle time and the edge's tracker sees the leaves (not a timeout).
//! Requests from a rebinding page (`Host: evil.example`), from a page
//! origin not allowed, and for channels that are malformed or that no
//! edge carries are refused and create nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{cluster, edge_metric, edge_metric_if_any, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use treecast::cluster::{PeerOptions, PeerProcess};
use treecast_peer::status::AgentStatus;

const IDLE_SECS: u64 = 4;

/// One HTTP/1.1 request written by hand, so its headers are exactly
/// these: the status code and the whole answer.
async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (code, text)
}

async fn agent_status(agent: &PeerProcess) -> AgentStatus {
    let b = agent
        .client()
        .get("/status", 1 << 20, Duration::from_secs(3))
        .await
        .expect("agent status");
    serde_json::from_slice(&b).expect("agent status JSON")
}

fn joined(s: &AgentStatus) -> Vec<String> {
    s.channels.iter().map(|c| c.channel.clone()).collect()
}

/// ffmpeg reading `url` for `secs` of media (video copied, not decoded):
/// the number of video frames it got.
async fn ffmpeg_plays(url: String, secs: u32) -> u64 {
    let out = tokio::process::Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-i",
            &url,
            "-t",
            &secs.to_string(),
        ])
        .args([
            "-map",
            "0:v",
            "-c",
            "copy",
            "-f",
            "null",
            "-progress",
            "pipe:1",
            "-",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("ffmpeg runs (bash .ci/run installs it)");
    assert!(
        out.status.success(),
        "ffmpeg failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("frame=")?.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_plays_two_channels_on_demand_and_leaves_each_when_idle() {
    let (_dir, mut cluster) = cluster(2, 2).await;
    for channel in ["news", "sport"] {
        cluster
            .start_channel(channel)
            .await
            .expect("another channel");
    }
    let agent = cluster
        .spawn_peer(PeerOptions {
            no_channel: true,
            args: [
                "--idle-secs",
                &IDLE_SECS.to_string(),
                "--max-channels",
                "2",
                "--page-origin",
                "https://townhall.example",
            ]
            .map(String::from)
            .to_vec(),
            ..PeerOptions::default()
        })
        .await
        .expect("agent");
    let addr = agent.proxy;
    let host = addr.to_string();
    let host = host.as_str();
    assert!(joined(&agent_status(&agent).await).is_empty());

    // Refused before anything is created.
    let (code, _) = raw(
        addr,
        "GET",
        "/live/demo/index.m3u8",
        &[("Host", "evil.example")],
    )
    .await;
    assert_eq!(code, 421, "a page that rebinds its name to 127.0.0.1");
    let (code, _) = raw(addr, "GET", "/status", &[("Host", "evil.example:8090")]).await;
    assert_eq!(code, 421, "its status is not readable either");
    let (code, _) = raw(
        addr,
        "GET",
        "/live/demo/index.m3u8",
        &[("Host", host), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(code, 403, "a page origin not allowed");
    let (code, _) = raw(
        addr,
        "GET",
        "/live/demo/index.m3u8",
        &[("Host", host), ("Sec-Fetch-Site", "cross-site")],
    )
    .await;
    assert_eq!(code, 403, "another site's <video> without an Origin");
    let (code, _) = raw(
        addr,
        "GET",
        "/live/Bad%20Name!/index.m3u8",
        &[("Host", host)],
    )
    .await;
    assert_eq!(code, 400, "a malformed channel");
    let (code, body) = raw(addr, "GET", "/live/nothere/index.m3u8", &[("Host", host)]).await;
    assert_eq!(code, 404, "a channel no edge carries: {body}");
    assert!(body.contains("no edge carries channel nothere"), "{body}");
    assert!(
        joined(&agent_status(&agent).await).is_empty(),
        "no refused request joined a channel"
    );
    // The allowed page's preflight: granted by name, Private Network Access
    // included; a foreign one is not.
    let (code, answer) = raw(
        addr,
        "OPTIONS",
        "/live/demo/index.m3u8",
        &[
            ("Host", host),
            ("Origin", "https://townhall.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Private-Network", "true"),
        ],
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert_eq!(code, 204, "{answer}");
    assert!(
        lower.contains("access-control-allow-origin: https://townhall.example"),
        "{answer}"
    );
    assert!(
        lower.contains("access-control-allow-private-network: true"),
        "{answer}"
    );
    let (code, answer) = raw(
        addr,
        "OPTIONS",
        "/status",
        &[("Host", host), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(code, 403, "{answer}");
    assert!(!answer
        .to_ascii_lowercase()
        .contains("access-control-allow-origin"));

    let leaves = r#"treecast_edge_tracker_requests_total{endpoint="leave",outcome="ok"}"#;
    let leaves_before = edge_metric_if_any(&cluster, leaves).await.unwrap_or(0.0);

    // Two players at once, each on its own channel.
    let players: Vec<_> = ["demo", "news"]
        .iter()
        .map(|c| {
            tokio::spawn(ffmpeg_plays(
                format!("http://{addr}/live/{c}/index.m3u8"),
                10,
            ))
        })
        .collect();
    let both = wait_for(
        "the agent to join both channels' trees",
        Duration::from_secs(20),
        || async {
            let s = agent_status(&agent).await;
            let placed = s.channels.iter().filter(|c| c.depth > 0).count();
            (placed == 2).then_some(s)
        },
    )
    .await;
    assert_eq!(joined(&both), ["demo", "news"]);
    for c in ["demo", "news"] {
        let viewers = format!("treecast_edge_viewers{{channel=\"{c}\"}}");
        assert_eq!(edge_metric(&cluster, &viewers).await, 1.0, "{c}");
    }
    // A third channel while two play: refused, nothing joined.
    let (code, body) = raw(addr, "GET", "/live/sport/index.m3u8", &[("Host", host)]).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("max_channels"), "{body}");

    for p in players {
        let frames = p.await.expect("player");
        // 10 s at 30 frames a second.
        assert!(frames >= 270, "ffmpeg got {frames} frames of 10 s");
    }
    let played = agent_status(&agent).await;
    for c in &played.channels {
        assert_eq!(c.corrupt, 0, "{}", c.channel);
        assert!(c.segments_verified >= 5, "{}: {c:?}", c.channel);
    }

    // Nobody asks any more: each channel is left after the idle time, and
    // the tracker is told.
    let gone = std::time::Instant::now();
    wait_for(
        "the agent to leave both channels",
        Duration::from_secs(IDLE_SECS + 10),
        || async { joined(&agent_status(&agent).await).is_empty().then_some(()) },
    )
    .await;
    assert!(
        gone.elapsed() >= Duration::from_secs(IDLE_SECS - 1),
        "left before the idle time: {:?}",
        gone.elapsed()
    );
    wait_for(
        "the tracker to see both leaves",
        Duration::from_secs(5),
        || async {
            let now = edge_metric_if_any(&cluster, leaves).await.unwrap_or(0.0);
            (now >= leaves_before + 2.0).then_some(())
        },
    )
    .await;
    for c in ["demo", "news"] {
        let viewers = format!("treecast_edge_viewers{{channel=\"{c}\"}}");
        assert_eq!(edge_metric(&cluster, &viewers).await, 0.0, "{c}");
    }
    let metrics = agent
        .client()
        .get("/metrics", 1 << 20, Duration::from_secs(3))
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    for series in [
        r#"treecast_peer_channels_left_total{why="idle"} 2"#,
        r#"treecast_peer_channels_joined_total{why="player"} 2"#,
        r#"treecast_peer_proxy_refused_total{reason="host"} 2"#,
        r#"treecast_peer_proxy_refused_total{reason="full"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }

    // Playing again joins again.
    let frames = ffmpeg_plays(format!("http://{addr}/live/sport/index.m3u8"), 4).await;
    assert!(frames >= 100, "{frames}");
    assert_eq!(joined(&agent_status(&agent).await), ["sport"]);
    agent.terminate_owned().await;
    cluster.shutdown().await;
}

/// `treecast peer …` run to completion: exit success, stdout, stderr.
async fn peer_cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_treecast"))
        .arg("peer")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("treecast runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_writes_a_unit_systemd_accepts_and_status_finds_the_agent() {
    let dir = common::TestDir::new();
    let units = dir.path().join("units");
    let units_arg = units.to_string_lossy().into_owned();
    // Flags the agent would refuse are refused now, and nothing is written.
    let (ok, _, err) = peer_cli(&[
        "install",
        "--no-start",
        "--unit-dir",
        &units_arg,
        "--",
        "--idle-secs",
        "0",
    ])
    .await;
    assert!(!ok, "idle 0 accepted");
    assert!(err.contains("idle_secs"), "{err}");
    assert!(!units.join("treecast-peer.service").exists());

    let (ok, out, err) = peer_cli(&[
        "install",
        "--no-start",
        "--unit-dir",
        &units_arg,
        "--",
        "--edge",
        "http://127.0.0.1:9",
        "--page-origin",
        "https://townhall.example",
    ])
    .await;
    assert!(ok, "{out}{err}");
    let unit_path = units.join("treecast-peer.service");
    let unit = std::fs::read_to_string(&unit_path).expect("unit written");
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_treecast")).expect("exe");
    assert!(
        unit.contains(&format!(
            "ExecStart={} peer --edge http://127.0.0.1:9 --page-origin https://townhall.example\n",
            exe.display()
        )),
        "{unit}"
    );
    let verify = tokio::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .await
        .expect("systemd-analyze runs (bash .ci/run installs systemd)");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let (ok, out, _) = peer_cli(&["uninstall", "--no-stop", "--unit-dir", &units_arg]).await;
    assert!(ok && out.contains("removed"), "{out}");
    assert!(!unit_path.exists());

    // `peer status` with nothing there, then against a running agent.
    let (ok, _, err) = peer_cli(&["status", "--proxy", "127.0.0.1:9"]).await;
    assert!(!ok && err.contains("no treecast peer answers"), "{err}");
    let (_dir, mut cluster) = cluster(1, 2).await;
    let agent = cluster
        .spawn_peer(PeerOptions::default())
        .await
        .expect("agent");
    let (ok, out, err) = peer_cli(&["status", "--proxy", &agent.proxy.to_string()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("demo (kept)"), "{out}");
    agent.terminate_owned().await;
    cluster.shutdown().await;
}
