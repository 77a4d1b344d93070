//! The operator dashboard in a real browser (headless Chromium via
//! playwright-core, as `.ci/run` installs them) during a small swarm: what
//! the page shows matches the JSON API and the swarm; the API is protected
//! by the configured token.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{cluster_with, spawn_streaming};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_api_says_and_needs_its_token() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let plugin = repo.join("player-plugin");
    assert!(
        plugin.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in player-plugin/ (.ci/run does)"
    );
    let artifacts = repo.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    // A second edge of the event, whose origin is away: the page gathers
    // its figures next to the first's.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = treecast_edge::EdgeHandle::start(treecast_edge::EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        quic_listen: "127.0.0.1:0".parse().expect("addr"),
        origin: "http://127.0.0.1:9".into(),
        data_dir: other_dir.path().to_owned(),
        dashboard_token: Some("t0ken".into()),
        ..treecast_edge::EdgeConfig::default()
    })
    .await
    .expect("second edge");
    let other_url = format!("http://{}", other.local_addr());
    let (_dir, mut cluster) = cluster_with(1, 2, |c| {
        c.dashboard_token = Some("t0ken".into());
        c.price_per_gb = Some(0.05);
        c.event_edges = vec![other_url.clone()];
    })
    .await;
    let peers = spawn_streaming(&mut cluster, 4).await;
    let edge = cluster.edge_client();
    let denied = edge
        .get("/api/v1/dashboard", 1 << 20, Duration::from_secs(5))
        .await
        .expect_err("no token, no data");
    assert!(denied.to_string().contains("401"), "{denied}");

    let url = format!("{}/dashboard?token=t0ken", cluster.edge_url());
    let run = tokio::process::Command::new("node")
        .arg(plugin.join("test/edge-dashboard.mjs"))
        .args(["--url", &url, "--viewers", "4"])
        .arg("--out")
        .arg(&artifacts)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser run ends in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr)));
    eprintln!("{r}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["error"], "", "the page loaded its data");
    let (api, dom) = (&r["api"], &r["dom"]);
    for k in ["viewers", "stalls", "fallbacks", "repairs"] {
        assert_eq!(
            dom[k].as_str(),
            Some(api[k].to_string().as_str()),
            "{k} shown as the API says"
        );
    }
    let hist = api["depth_histogram"].as_array().expect("histogram");
    let placed: u64 = hist.iter().filter_map(|v| v.as_u64()).sum();
    assert_eq!(placed, 4, "every peer in the histogram");
    for (d, n) in hist.iter().enumerate() {
        if n.as_u64().unwrap_or(0) > 0 {
            assert_eq!(
                dom["depths"][d.to_string()].as_str(),
                Some(n.to_string().as_str()),
                "depth {d}"
            );
        }
    }
    assert_eq!(dom["tree_rows"], 4, "one tree row per peer");
    // All edges of the event: this one with its 4 viewers, the other with
    // none, and the total.
    let edges = dom["edges"].as_array().expect("edges table");
    let row = |i: usize, k: &str| edges[i][k].as_str().unwrap_or_default().to_owned();
    assert_eq!(edges.len(), 3, "{edges:?}");
    assert!(row(0, "edge").ends_with("(this edge)"), "{edges:?}");
    assert_eq!(row(0, "viewers"), "4");
    assert_eq!(row(1, "edge"), other_url);
    assert_eq!(row(1, "viewers"), "0");
    assert_eq!(
        (row(2, "edge"), row(2, "viewers")),
        ("total".into(), "4".into())
    );
    // Peers are named for people: site and a short id, as the API says.
    let names: Vec<&str> = dom["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert_eq!(names.len(), 4);
    for (shown, api) in names
        .iter()
        .zip(api["names"].as_array().expect("api names"))
    {
        assert!(shown.contains(" · p"), "a readable name: {shown}");
        assert_eq!(Some(*shown), api.as_str(), "the name the API gives");
    }
    // What P2P saved: bytes peers carried, priced as configured.
    let event = &api["event"];
    assert!(event["peer_bytes"].as_u64().unwrap_or(0) > 0, "{event}");
    let saved = event["saved"].as_f64().expect("a saving with a price");
    let expected = event["peer_bytes"].as_f64().unwrap_or(0.0) / 1e9 * 0.05;
    assert!(
        (saved - expected).abs() < 1e-9,
        "saved {saved} vs {expected}"
    );
    assert_eq!(
        dom["saved"].as_str(),
        Some(format!("{saved:.2} USD").as_str()),
        "the saving shown"
    );
    // Every chart has axes: a unit, value labels and times.
    let charts = dom["charts"].as_array().expect("charts");
    assert_eq!(charts.len(), 3, "three charts");
    for (chart, unit) in charts.iter().zip(["peers", "Mb/s", "%"]) {
        let labels: Vec<&str> = chart
            .as_array()
            .expect("labels")
            .iter()
            .filter_map(|l| l.as_str())
            .collect();
        assert!(labels.contains(&unit), "unit {unit} on {labels:?}");
        assert!(labels.contains(&"0"), "a zero on the y axis: {labels:?}");
        assert!(
            labels.iter().filter(|l| l.contains(':')).count() >= 2,
            "times on the x axis: {labels:?}"
        );
    }
    let offload = api["offload"].as_f64().expect("offload");
    assert!(
        dom["offload"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{:.1}", offload * 100.0)),
        "offload shown {} vs {offload}",
        dom["offload"]
    );
    // And the API agrees with the swarm itself.
    let b = edge
        .get(
            "/api/v1/dashboard?token=t0ken",
            1 << 20,
            Duration::from_secs(5),
        )
        .await
        .expect("with the token");
    let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
    assert_eq!(v["channels"][0]["viewers"], 4);
    assert!(artifacts.join("dashboard.png").is_file());
    for mut p in peers {
        p.terminate().await;
    }
    cluster.shutdown().await;
    other.shutdown().await;
}
