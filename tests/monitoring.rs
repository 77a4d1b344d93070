//! Monitoring end to end: the files in `dashboards/` pass promtool, every
//! series they query is exported, and a real Prometheus server scraping a
//! live origin and edge sees the key series exist and move while peers
//! stream to players; no alert is pending in the healthy run, and the
//! stall alert fires once the encoder drops out and the players stall.
//! The alert rules are the shipped ones with `for:` shortened, so a test
//! can see them fire. Needs Debian's `prometheus` package (`.ci/run`
//! installs it).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{cluster, spawn_streaming, wait_for};
use tokio::sync::watch;
use treecast::player::play;
use treecast_peer::edge_client::EdgeClient;

fn dashboards() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("treecast_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(text[start..end].to_owned());
        i = end;
    }
    out
}

fn promtool(args: &[&str]) {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dashboards())
        .output()
        .expect("promtool runs (apt-get install prometheus; .ci/run does)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

async fn query(prom: &EdgeClient, q: &str) -> Vec<(serde_json::Value, f64)> {
    let Ok(b) = prom
        .get(
            &format!("/api/v1/query?query={}", encode(q)),
            1 << 20,
            Duration::from_secs(5),
        )
        .await
    else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| Some((r["metric"].clone(), r["value"][1].as_str()?.parse().ok()?)))
        .collect()
}

/// Alerts pending or firing now: (name, state).
async fn alerts(prom: &EdgeClient) -> Vec<(String, String)> {
    let Ok(b) = prom
        .get("/api/v1/alerts", 1 << 20, Duration::from_secs(5))
        .await
    else {
        return vec![("unreadable".into(), "/api/v1/alerts failed".into())];
    };
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("?").to_owned(),
                a["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_edge_and_origin_and_every_queried_series_exists() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "alerts.yml"]);

    let (dir, mut cluster) = cluster(1, 2).await;
    let peers = spawn_streaming(&mut cluster, 3).await;
    let (stop, rx) = watch::channel(false);
    let players: Vec<_> = peers
        .iter()
        .map(|p| {
            tokio::spawn(play(
                p.client(),
                "demo".into(),
                p.started,
                rx.clone(),
                watch::channel(0).0,
            ))
        })
        .collect();
    // Every series the alert rules and the Grafana dashboard query exists.
    let wanted: BTreeSet<String> =
        names_in(&std::fs::read_to_string(dashboards().join("alerts.yml")).expect("alerts"))
            .union(&names_in(
                &std::fs::read_to_string(dashboards().join("grafana.json")).expect("grafana"),
            ))
            .cloned()
            .collect();
    let exported = wait_for(
        "a heartbeat with stats",
        Duration::from_secs(10),
        || async {
            let mut all = String::new();
            for c in [cluster.edge_client(), cluster.origin_client()] {
                let b = c
                    .get("/metrics", 8 << 20, Duration::from_secs(5))
                    .await
                    .ok()?;
                all.push_str(&String::from_utf8_lossy(&b));
            }
            all.contains("treecast_edge_peer_bytes_total{channel=\"demo\",source=\"tree\"}")
                .then_some(all)
        },
    )
    .await;
    let exported = names_in(&exported);
    let missing: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");

    // A real Prometheus, scraping every second.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let strip = |u: String| u.trim_start_matches("http://").to_owned();
    let rules = std::fs::read_to_string(dashboards().join("alerts.yml"))
        .expect("alerts")
        .replace("for: 2m", "for: 5s")
        .replace("for: 5m", "for: 5s")
        .replace("for: 1m", "for: 5s");
    let rules_path = dir.path().join("alerts.yml");
    std::fs::write(&rules_path, rules).expect("rules");
    // The shipped scrape config, pointed at this run and scraping every
    // second: its `edge` relabelling is what is tested.
    let shipped = std::fs::read_to_string(dashboards().join("prometheus.yml")).expect("config");
    let edge_target = strip(cluster.edge_url());
    let config = shipped
        .replace("10s", "1s")
        .replace("  - alerts.yml", &format!("  - {}", rules_path.display()))
        .replace(
            "\"127.0.0.1:8080\"",
            &format!("\"{}\"", strip(cluster.origin_url())),
        )
        .replace(
            "[\"127.0.0.1:8081\", \"127.0.0.1:8082\"]",
            &format!("[\"{edge_target}\"]"),
        );
    assert!(
        config.contains(&edge_target),
        "the shipped config changed shape:\n{config}"
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("config");
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(
            std::fs::File::create(dir.path().join("prometheus.log")).expect("log"),
        ))
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus runs (apt-get install prometheus; .ci/run does)");
    let prom = EdgeClient::new(&format!("http://127.0.0.1:{port}").parse().expect("url"));

    let viewers = wait_for(
        "Prometheus to see the 3 viewers",
        Duration::from_secs(30),
        || async {
            let r = query(&prom, "treecast_edge_viewers{channel=\"demo\"}").await;
            r.first().map(|(_, v)| *v).filter(|v| *v == 3.0)
        },
    )
    .await;
    assert_eq!(viewers, 3.0);
    // Each edge's series carry its `edge` label.
    let labelled = format!("treecast_edge_viewers{{channel=\"demo\",edge=\"{edge_target}\"}}");
    assert_eq!(
        query(&prom, &labelled).await.first().map(|(_, v)| *v),
        Some(3.0),
        "{labelled}"
    );
    let egress = |q: &'static str| {
        let prom = prom.clone();
        async move { query(&prom, q).await.first().map(|(_, v)| *v) }
    };
    let first = wait_for("edge egress in Prometheus", Duration::from_secs(20), || {
        egress("sum(treecast_edge_egress_bytes_total)")
    })
    .await;
    wait_for("edge egress to grow", Duration::from_secs(20), || async {
        egress("sum(treecast_edge_egress_bytes_total)")
            .await
            .filter(|v| *v > first)
    })
    .await;
    for q in [
        "sum(rate(treecast_edge_peer_bytes_total{source=\"tree\"}[10s]))",
        "sum(rate(treecast_edge_viewer_watch_seconds_total{via=\"peer\"}[10s]))",
    ] {
        wait_for(q, Duration::from_secs(30), || async {
            egress(q).await.filter(|v| *v > 0.0)
        })
        .await;
    }
    for q in [
        "treecast_edge_origin_up",
        "sum(treecast_origin_publishers)",
        "sum(treecast_edge_tree_peers{channel=\"demo\"})",
    ] {
        let v = wait_for(q, Duration::from_secs(20), || egress(q)).await;
        assert!(v >= 1.0, "{q} = {v}");
    }
    // The alert rules load and evaluate.
    let rules = prom
        .get("/api/v1/rules", 1 << 20, Duration::from_secs(5))
        .await
        .expect("rules");
    let rules: serde_json::Value = serde_json::from_slice(&rules).expect("json");
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 6, "all alert rules loaded");
    // Healthy: once every rule has been evaluated over a stretch of the
    // run longer than their shortened `for:`, none is pending or firing.
    let healthy_from = tokio::time::Instant::now();
    wait_for(
        "ten seconds of rule evaluations",
        Duration::from_secs(20),
        || async { (healthy_from.elapsed() >= Duration::from_secs(10)).then_some(()) },
    )
    .await;
    let active = alerts(&prom).await;
    assert!(active.is_empty(), "alerts in a healthy run: {active:?}");

    // The encoder drops out for longer than any player's buffer: players
    // stall, peers see it, the edge counts it, the alert fires.
    cluster.stop_encoder().await;
    let firing = wait_for(
        "TreecastStallsRising to fire",
        Duration::from_secs(60),
        || async {
            alerts(&prom)
                .await
                .into_iter()
                .find(|(name, state)| name == "TreecastStallsRising" && state == "firing")
        },
    )
    .await;
    eprintln!("fired: {firing:?}");
    cluster.start_encoder().expect("encoder restarts");
    let _ = stop.send(true);
    let mut stalls = 0;
    for p in players {
        stalls += p.await.expect("player").playback.stalls;
    }
    assert!(stalls >= 1, "the players did stall");
    let _ = prometheus.kill().await;
    for mut p in peers {
        p.terminate().await;
    }
    cluster.shutdown().await;
}
