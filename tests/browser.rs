//! Playback in a real browser: headless Chromium (Debian's `chromium`)
//! plays the peer's demo page with hls.js and the player plugin against a
//! real origin, edge and peer on loopback; then the peer is killed and
//! playback must go on from the edge. Needs `node`, `chromium` and
//! `npm ci` in `player-plugin/` (`.ci/run` installs them); fails, never
//! skips, when they are missing.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{cluster, streaming};
use treecast::cluster::PeerOptions;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_plays_through_the_peer_and_survives_its_death() {
    let plugin = repo().join("player-plugin");
    assert!(
        plugin.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in player-plugin/ (.ci/run does) to install playwright-core"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install chromium` (.ci/run does)"
    );
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");

    let (_dir, mut cluster) = cluster(1, 2).await;
    let peer = cluster
        .spawn_peer(PeerOptions::default())
        .await
        .expect("peer");
    streaming(&peer).await;
    let page = format!("http://{}/player/", peer.proxy);
    let pid = peer.pid().expect("peer pid");
    let run = tokio::process::Command::new("node")
        .arg(plugin.join("test/browser.mjs"))
        .args(["--page", &page, "--peer-pid", &pid.to_string()])
        .arg("--out")
        .arg(&artifacts)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser run ends within 3 minutes")
        .expect("node runs (is nodejs installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no JSON result ({e}); stdout {stdout}; stderr {stderr}"));
    eprintln!("{result}");
    assert_eq!(result["ok"], true, "{result}; stderr {stderr}");
    let p2p = &result["p2p_phase"];
    assert_eq!(p2p["p2p"], true, "P2P active while the peer ran");
    assert!(
        p2p["bytesFromPeers"].as_f64().unwrap_or(0.0) > 0.0,
        "bytes came from the tree"
    );
    assert!(p2p["fatalError"].is_null());
    let edge = &result["edge_phase"];
    assert_eq!(
        edge["p2p"], false,
        "playing from the edge after the peer died"
    );
    assert!(
        edge["currentTime"].as_f64().unwrap_or(0.0)
            >= p2p["currentTime"].as_f64().unwrap_or(0.0) + 10.0,
        "playback went on"
    );
    assert!(
        artifacts.join("player-p2p.png").is_file(),
        "screenshot saved"
    );
    cluster.shutdown().await;
}
