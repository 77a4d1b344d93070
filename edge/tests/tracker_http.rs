//! The tracker over real HTTP: joins get a parent, a backup and tickets that
//! verify with the edge's key; heartbeats, reports and leaves act on the
//! tree; malformed, oversized, unauthorised and flooding requests are
//! refused and change nothing.

mod common;

use bytes::Bytes;
use http::{Method, StatusCode};
use treecast_edge::config::TrackerSection;
use treecast_edge::tracker::wire::Assignment;
use treecast_edge::{EdgeConfig, EdgeHandle};
use treecast_proto::ticket::{self, VerifyingKey};
use treecast_proto::ChannelName;

async fn post(base: &str, endpoint: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
    let r = common::http(Method::POST, &format!("{base}/tracker/v1/{endpoint}"), body).await;
    (r.status, r.body)
}

async fn edge(rate: f64) -> (EdgeHandle, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tracker = TrackerSection {
        root_slots: 2,
        rate_per_sec: rate,
        ..TrackerSection::default()
    };
    tracker
        .viewer_tokens
        .insert("private".into(), "letmein".into());
    let e = EdgeHandle::start(EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        quic_listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_owned(),
        tracker,
        ..EdgeConfig::default()
    })
    .await
    .expect("edge starts");
    let base = format!("http://{}", e.local_addr());
    (e, base, dir)
}

fn join_body(channel: &str, port: u16) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"channel": channel, "addr": format!("127.0.0.1:{port}")}),
    )
    .expect("json")
}

fn key_of(a: &Assignment) -> VerifyingKey {
    let mut k = [0u8; 32];
    hex::decode_to_slice(&a.ticket_key, &mut k).expect("hex key");
    VerifyingKey::from_bytes(&k).expect("key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_heartbeats_leaves_and_tickets() {
    let (edge, base, _dir) = edge(1000.0).await;
    let demo = ChannelName::new("demo").expect("name");
    let mut peers = Vec::new();
    for port in 5001..5005 {
        let (status, body) = post(&base, "join", join_body("demo", port)).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        peers.push(serde_json::from_slice::<Assignment>(&body).expect("assignment"));
    }
    // Two edge slots: the first two hang off the edge, the next two below
    // a peer (promoted early, since nobody else has room).
    assert_eq!(peers[0].parent.as_ref().expect("parent").kind, "edge");
    assert_eq!(peers[1].depth, 1);
    let third = peers[2].parent.as_ref().expect("parent");
    assert_eq!(third.kind, "peer");
    assert_eq!(peers[2].depth, 2);
    assert!(
        third.addr.is_some(),
        "a peer parent comes with its QUIC address"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let key = key_of(&peers[2]);
    ticket::verify(&third.ticket, &key, &demo, peers[2].peer_id, third.id, now)
        .expect("ticket verifies");
    assert!(
        ticket::verify(&third.ticket, &key, &demo, peers[3].peer_id, third.id, now).is_err(),
        "not transferable"
    );

    let hb = serde_json::json!({"channel": "demo", "peer_id": peers[2].peer_id, "bytes_from_parent": 1000});
    let (status, _) = post(&base, "heartbeat", serde_json::to_vec(&hb).expect("json")).await;
    assert_eq!(status, StatusCode::OK);

    // The parent of peer 2 leaves: peer 2 is re-placed at the next heartbeat.
    let parent_id = third.id;
    let leave = serde_json::json!({"channel": "demo", "peer_id": parent_id});
    assert_eq!(
        post(&base, "leave", serde_json::to_vec(&leave).expect("json"))
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = post(&base, "heartbeat", serde_json::to_vec(&hb).expect("json")).await;
    assert_eq!(status, StatusCode::OK);
    let moved: Assignment = serde_json::from_slice(&body).expect("assignment");
    assert_ne!(moved.parent.as_ref().expect("parent").id, parent_id);
    let gone = serde_json::json!({"channel": "demo", "peer_id": parent_id, "bytes_from_parent": 0});
    assert_eq!(
        post(&base, "heartbeat", serde_json::to_vec(&gone).expect("json"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Malformed and oversized requests are refused.
    for (endpoint, body, want) in [
        ("join", b"{not json".to_vec(), StatusCode::BAD_REQUEST),
        (
            "join",
            br#"{"channel":"demo","addr":"127.0.0.1:1","extra":1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "join",
            br#"{"channel":"Bad Name","addr":"127.0.0.1:1"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        ("join", vec![b' '; 20_000], StatusCode::PAYLOAD_TOO_LARGE),
        ("teleport", b"{}".to_vec(), StatusCode::NOT_FOUND),
        ("join", join_body("private", 9), StatusCode::UNAUTHORIZED),
    ] {
        assert_eq!(post(&base, endpoint, body).await.0, want, "{endpoint}");
    }
    let with_token = br#"{"channel":"private","addr":"127.0.0.1:9","token":"letmein"}"#.to_vec();
    assert_eq!(post(&base, "join", with_token).await.0, StatusCode::OK);

    let metrics = String::from_utf8(common::get(&format!("{base}/metrics")).await.body.to_vec())
        .expect("utf-8");
    assert!(
        metrics.contains("treecast_edge_viewers{channel=\"demo\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "treecast_edge_tracker_requests_total{endpoint=\"join\",outcome=\"bad_request\"} 3"
    ));
    assert!(metrics.contains("treecast_edge_tree_repairs_total{channel=\"demo\"}"));
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_rate_limited() {
    let (edge, base, _dir) = edge(5.0).await;
    let mut limited = 0;
    let mut placed = 0;
    for port in 0..40u16 {
        match post(&base, "join", join_body("demo", 6000 + port)).await.0 {
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            StatusCode::OK => placed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // A burst of twice the rate gets through, the rest is refused.
    assert!(limited >= 25, "{limited} limited");
    assert!((10..=15).contains(&placed), "{placed} placed");
    edge.shutdown().await;
}
