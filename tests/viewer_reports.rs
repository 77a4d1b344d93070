//! Players' stall reports over real HTTP, to a peer and to the edge: what
//! is plausible is counted, what is not is refused with a reason, counted,
//! and changes no figure.

mod common;

use std::time::Duration;

use common::{cluster, edge_metric, spawn_streaming};
use serde_json::{json, Value};
use treecast_peer::edge_client::{EdgeClient, EdgeError};

const T: Duration = Duration::from_secs(5);

async fn post(client: &EdgeClient, path: &str, body: Value) -> Result<Value, EdgeError> {
    client.post_json(path, &body, T).await
}

fn refused(r: Result<Value, EdgeError>) -> u16 {
    match r {
        Err(EdgeError::Status { status, .. }) => status.as_u16(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn report(channel: &str, session: &str, stalls: u64, stall_ms: u64, watched_ms: u64) -> Value {
    json!({"channel": channel, "session": session, "stalls": stalls,
           "stall_ms": stall_ms, "watched_ms": watched_ms})
}

/// The series of `family` whose labels include `label` (a channel's
/// series also carry `channel`).
async fn peer_metric(client: &EdgeClient, family: &str, label: &str) -> f64 {
    let text = client.get("/metrics", 1 << 20, T).await.expect("metrics");
    String::from_utf8_lossy(&text)
        .lines()
        .find(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no series {family} with {label}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plausible_reports_count_and_the_rest_are_refused_and_counted() {
    let (_dir, mut cluster) = cluster(1, 2).await;
    let peers = spawn_streaming(&mut cluster, 1).await;
    let peer = peers[0].client();

    let good = post(
        &peer,
        "/player/report",
        report("demo", "s1", 1, 800, 10_000),
    )
    .await;
    assert_eq!(good.expect("accepted")["accepted"], true);
    let before = peers[0].status().await.expect("status").viewer.reported;
    assert_eq!((before.stalls, before.stall_ms), (1, 800));

    // A channel not joined here, more stall than watching, a minute of
    // watching in a moment, totals that shrink, a bad session id, a
    // malformed body.
    for (body, reason, code) in [
        (report("other", "s2", 0, 0, 1_000), "channel", 404),
        (report("demo", "s2", 1, 5_000, 1_000), "impossible", 422),
        (report("demo", "s1", 1, 800, 3_600_000), "too_fast", 422),
        (report("demo", "s1", 0, 800, 11_000), "shrank", 422),
        (report("demo", "no spaces!", 0, 0, 1_000), "session", 422),
        (
            json!({"channel": "demo", "stalls": "many"}),
            "malformed",
            400,
        ),
    ] {
        assert_eq!(
            refused(post(&peer, "/player/report", body).await),
            code,
            "{reason}"
        );
        let n = peer_metric(
            &peer,
            "treecast_peer_player_reports_refused_total",
            &format!("reason=\"{reason}\""),
        )
        .await;
        assert_eq!(n, 1.0, "refusal counted as {reason}");
    }
    let after = peers[0].status().await.expect("status").viewer.reported;
    assert_eq!(after, before, "no refused report changed the figures");

    // A player on the edge directly.
    let edge = cluster.edge_client();
    let direct = "treecast_edge_viewer_stalls_total{channel=\"demo\",via=\"direct\"}";
    let stalls_before = edge_metric(&cluster, direct).await;
    post(
        &edge,
        "/api/v1/player-report",
        report("demo", "e1", 2, 900, 8_000),
    )
    .await
    .expect("accepted at the edge");
    assert_eq!(edge_metric(&cluster, direct).await, stalls_before + 2.0);
    assert_eq!(
        refused(
            post(
                &edge,
                "/api/v1/player-report",
                report("nope", "e2", 0, 0, 1)
            )
            .await
        ),
        422,
        "a channel the edge does not carry"
    );
    assert_eq!(
        edge_metric(
            &cluster,
            "treecast_edge_player_reports_refused_total{reason=\"channel\"}"
        )
        .await,
        1.0
    );
    assert_eq!(edge_metric(&cluster, direct).await, stalls_before + 2.0);
    for p in peers {
        p.terminate_owned().await;
    }
    cluster.shutdown().await;
}
