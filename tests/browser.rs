//! Playback in a real browser: headless Chromium (Debian's `chromium`)
//! plays a depth-2 peer's demo page with hls.js and the player plugin
//! against a real origin, edge and peers on loopback. While it plays, the
//! peer's parent is SIGKILLed with a segment part-way to the peer: the
//! viewer must see no stall and no error, and media time must keep up with
//! wall time. Then the encoder stops for longer than any buffer: hls.js
//! stalls, and both the plugin's report and the peer's own inference must
//! say so. Last, the viewer's own peer is killed and playback must go on
//! from the edge. Needs `node`, `chromium` and `npm ci` in
//! `player-plugin/` (`.ci/run` installs them); fails, never skips, when
//! they are missing.

mod common;

use std::time::Duration;

use common::{cluster, kill_parent_mid_segment, spawn_streaming, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_plays_through_a_parents_death_and_then_its_own_peers() {
    let (plugin, chromium, artifacts) = common::browser_tools();

    // Edge → {A, B}; the viewer's peer V sits below one of them.
    let (_dir, mut cluster) = cluster(2, 2).await;
    let mut peers = spawn_streaming(&mut cluster, 3).await;
    let v = peers.pop().expect("V");
    wait_for(
        "V at depth 2 with a peer as warm backup",
        Duration::from_secs(15),
        || async {
            let s = v.status().await.ok()?;
            (s.depth == 2 && s.backup.as_ref()?.kind == "peer").then_some(())
        },
    )
    .await;

    let page = format!("http://{}/player/?channel=demo", v.proxy);
    let pid = v.pid().expect("peer pid");
    let run = tokio::process::Command::new("node")
        .arg(plugin.join("test/browser.mjs"))
        .args(["--page", &page, "--peer-pid", &pid.to_string()])
        .args(["--p2p-secs", "30", "--stall-secs", "35"])
        .arg("--out")
        .arg(&artifacts)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let browser = tokio::spawn(tokio::time::timeout(Duration::from_secs(180), run));

    // Once the page plays through V (the plugin reports to V) and V holds
    // part of a segment from its parent: SIGKILL the parent.
    wait_for(
        "the page's player to report to V",
        Duration::from_secs(60),
        || async {
            let s = v.status().await.ok()?;
            (s.viewer.reported.watched_ms > 2_000).then_some(())
        },
    )
    .await;
    let (held, after) = kill_parent_mid_segment(&v, &mut peers).await;
    // After the P2P phase, the stream stops for 12 s.
    wait_for("the P2P phase to end", Duration::from_secs(60), || async {
        let s = v.status().await.ok()?;
        (s.viewer.reported.watched_ms > 35_000).then_some(())
    })
    .await;
    let before_gap = v.status().await.expect("status").viewer;
    cluster.stop_encoder().await;
    let stalled = wait_for(
        "V to see its player stall",
        Duration::from_secs(30),
        || async {
            let s = v.status().await.ok()?;
            (s.viewer.reported.stalls > before_gap.reported.stalls
                && s.viewer.inferred.stalls > before_gap.inferred.stalls)
                .then_some(s.viewer)
        },
    )
    .await;
    cluster.start_encoder().expect("encoder restarts");
    // The browser's view of it all.
    let output = browser
        .await
        .expect("browser task")
        .expect("the browser run ends within 3 minutes")
        .expect("node runs (is nodejs installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("no JSON result ({e}); stdout {stdout}; stderr {stderr}"));
    eprintln!("{result}");
    eprintln!(
        "V held {} bytes of segment {} when its parent died; new parent {:?}, repair {:?} ms",
        held.bytes, held.seq, after.parent, after.repairs_ms
    );
    assert_eq!(result["ok"], true, "{result}; stderr {stderr}");
    let p2p = &result["p2p_phase"];
    assert_eq!(p2p["p2p"], true, "P2P active while V ran");
    assert!(
        p2p["bytesFromPeers"].as_f64().unwrap_or(0.0) > 0.0,
        "bytes came from the tree"
    );
    assert!(p2p["fatalError"].is_null(), "no fatal hls.js error: {p2p}");
    assert_eq!(
        p2p["stalls"], 0,
        "hls.js saw no stall across the parent's death: {}",
        p2p["stallLog"]
    );
    assert_eq!(p2p["bufferStalledErrors"], 0, "no BUFFER_STALLED_ERROR");
    let wall = p2p["wall_s"].as_f64().expect("wall");
    let played = p2p["played_s"].as_f64().expect("played");
    assert!(
        played >= wall - 1.0,
        "media played {played:.1} s in {wall:.1} s of wall time since playback started"
    );
    let end = v.status().await;
    // V was killed by the page script at the start of phase 2; its last
    // figures were read above. What hls.js reported reached V.
    assert!(end.is_err(), "V was killed for phase 2");
    assert_eq!(after.viewer.reported.stalls, 0, "V heard of no stall");
    assert_eq!(
        before_gap.inferred.stalls, 0,
        "nor inferred one before the gap"
    );
    let gap = &result["stall_phase"];
    assert!(
        gap["stalls"].as_u64().unwrap_or(0) >= 1,
        "hls.js stalled while the stream stopped: {gap}"
    );
    assert!(gap["fatalError"].is_null(), "and recovered: {gap}");
    eprintln!(
        "stream gap: plugin reported {} stalls ({} ms), V inferred {} ({} ms)",
        stalled.reported.stalls,
        stalled.reported.stall_ms,
        stalled.inferred.stalls,
        stalled.inferred.stall_ms
    );
    let edge = &result["edge_phase"];
    assert_eq!(
        edge["p2p"], false,
        "playing from the edge after the peer died"
    );
    assert!(edge["fatalError"].is_null(), "no fatal error on the edge");
    assert!(
        edge["currentTime"].as_f64().unwrap_or(0.0)
            >= p2p["currentTime"].as_f64().unwrap_or(0.0) + 10.0,
        "playback went on"
    );
    assert!(
        artifacts.join("player-p2p.png").is_file(),
        "screenshot saved"
    );
    for p in peers {
        p.terminate_owned().await;
    }
    cluster.shutdown().await;
}
