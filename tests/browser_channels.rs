//! hls.js in headless Chromium plays two channels at once through one
//! agent started with no channel, from a page on another origin that
//! attaches the player plugin without telling it where the agent is: the
//! plugin must find the agent on its ports by itself (the default port is
//! held by something that is not an agent, so the agent took the next one
//! and the plugin must pass over the impostor), the agent must grant the
//! page's origin, and both channels must play through it without a stall.
//! Needs `node`, `chromium` and `npm ci` in `player-plugin/` (`.ci/run`
//! installs them); fails, never skips, when they are missing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use treecast::cluster::PeerOptions;
use treecast_peer::config::{DEFAULT_PROXY_PORT, PROXY_PORTS};
use treecast_peer::status::AgentStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_plays_two_channels_through_one_agent_it_found_by_itself() {
    let (plugin, chromium, artifacts) = common::browser_tools();

    let (_dir, mut cluster) = common::cluster(2, 2).await;
    cluster.start_channel("news").await.expect("second channel");
    // Something that is not an agent holds the default port (when nothing
    // else does already): it accepts and never answers.
    let impostor = std::net::TcpListener::bind(("127.0.0.1", DEFAULT_PROXY_PORT)).ok();
    let page_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let agent = cluster
        .spawn_peer(PeerOptions {
            no_channel: true,
            proxy_listen: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PROXY_PORT))),
            args: vec![
                "--page-origin".into(),
                format!("http://127.0.0.1:{page_port}"),
            ],
            ..PeerOptions::default()
        })
        .await
        .expect("agent");
    assert!(
        PROXY_PORTS.contains(&agent.proxy.port()) && agent.proxy.port() != DEFAULT_PROXY_PORT
            || impostor.is_none(),
        "the agent took {} with the default port held",
        agent.proxy
    );

    let run = tokio::process::Command::new("node")
        .arg(plugin.join("test/two-channels.mjs"))
        .args(["--edge", &cluster.edge_url(), "--channels", "demo,news"])
        .args(["--page-port", &page_port.to_string(), "--secs", "20"])
        .arg("--out")
        .arg(&artifacts)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the browser run ends")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let b = agent
        .client()
        .get("/status", 1 << 20, Duration::from_secs(3))
        .await
        .expect("status");
    let status: AgentStatus = serde_json::from_slice(&b).expect("status JSON");
    for s in &status.channels {
        eprintln!(
            "{}: depth {}, fallbacks {}, proxy waits {}, inferred stalls {} ({} ms), reported {} ({} ms)",
            s.channel,
            s.depth,
            s.fallbacks,
            s.proxy_waits,
            s.viewer.inferred.stalls,
            s.viewer.inferred.stall_ms,
            s.viewer.reported.stalls,
            s.viewer.reported.stall_ms
        );
    }
    let line = stdout.lines().last().unwrap_or("");
    let r: serde_json::Value = serde_json::from_str(line).expect("one JSON line");
    assert_eq!(r["ok"], true, "{r}");
    for c in ["demo", "news"] {
        let s = &r["channels"][c];
        assert_eq!(s["p2p"], true, "{c} played through the agent: {s}");
        assert_eq!(s["switches"], 0, "{c} never fell back to the edge: {s}");
        assert_eq!(s["stalls"], 0, "{c}: {s}");
        assert!(s["fatal"].is_null(), "{c}: {s}");
        let played = s["played_s"].as_f64().unwrap_or(0.0);
        let wall = s["wall_s"].as_f64().unwrap_or(f64::MAX);
        assert!(played >= wall - 2.0, "{c}: {played} s of media in {wall} s");
    }
    for c in ["demo", "news"] {
        let s = status.channel(c).unwrap_or_else(|| panic!("{c} joined"));
        assert!(s.depth > 0 && s.segments_verified > 5, "{s:?}");
        assert_eq!(s.corrupt, 0);
        assert!(
            s.viewer.reported.watched_ms > 5_000,
            "the page's plugin reported its {c} player to the agent: {s:?}"
        );
    }
    drop(impostor);
    agent.terminate_owned().await;
    cluster.shutdown().await;
}
