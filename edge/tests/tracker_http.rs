//! The tracker over real HTTP: joins get a parent, a backup and tickets that
//! verify with the edge's key; heartbeats, reports and leaves act on the
//! tree; malformed, oversized, unauthorised and flooding requests are
//! refused and change nothing; an uplink test is measured from the bytes
//! as they arrive, and one that falls short keeps children away.

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

/// POSTs an uplink test to `query` from `source` (an address on
/// loopback): `chunks` chunks of `chunk` bytes, `every` apart. The answer.
async fn uplink_test(
    edge: std::net::SocketAddr,
    query: &str,
    source: std::net::IpAddr,
    (chunks, chunk, every): (usize, usize, std::time::Duration),
) -> (StatusCode, Bytes) {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::new(source, 0))
        .expect("bind");
    let stream = socket.connect(edge).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    let conn = tokio::spawn(conn);
    let paced = futures_util::stream::unfold(0, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        let data = Frame::data(Bytes::from(vec![0u8; chunk]));
        Some((Ok::<_, std::convert::Infallible>(data), i + 1))
    });
    let req = http::Request::post(format!(
        "http://{edge}{}?{query}",
        treecast_proto::tracker::UPLINK_TEST_PATH
    ))
    .body(StreamBody::new(paced))
    .expect("request");
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), send.send_request(req))
        .await
        .expect("an answer within 10 s")
        .expect("answer");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    conn.abort();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uplink_test_is_measured_and_one_that_falls_short_takes_no_children() {
    use std::time::Duration;
    let (edge, base, _dir) = edge(1000.0).await;
    let addr = edge.local_addr();
    let here: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    let mut ids = Vec::new();
    for port in [5001, 5002] {
        let (status, body) = post(&base, "join", join_body("demo", port)).await;
        assert_eq!(status, StatusCode::OK);
        ids.push(
            serde_json::from_slice::<Assignment>(&body)
                .expect("assignment")
                .peer_id,
        );
    }
    let (weak, strong) = (ids[0], ids[1]);
    // `weak` sends 1 Mb/s (12.5 KB every 100 ms) for longer than the
    // edge reads: measured at about that, answered before its body ends.
    let slow = (25, 12_500, Duration::from_millis(100));
    let (status, body) =
        uplink_test(addr, &format!("channel=demo&peer_id={weak}"), here, slow).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let measured: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let kbps = measured["kbps"].as_u64().expect("kbps");
    assert!(
        (600..=1_250).contains(&kbps),
        "1 Mb/s measured as {kbps} kb/s"
    );
    // `strong` sends its 4 Mb/s test (two 2 Mb/s slots) at once.
    let fast = (8, 62_500, Duration::ZERO);
    let query = format!("channel=demo&peer_id={strong}");
    let (status, body) = uplink_test(addr, &query, here, fast).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let measured: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(measured["bytes"], 500_000);
    // Two root slots, both taken, nobody promoted yet: the newcomers go
    // under `strong`, the one whose test passed, though `weak` is older;
    // `weak` feeds nobody.
    for port in 5003..5007 {
        let (status, body) = post(&base, "join", join_body("demo", port)).await;
        assert_eq!(status, StatusCode::OK);
        let a: Assignment = serde_json::from_slice(&body).expect("assignment");
        let parent = a.parent.expect("placed").id;
        assert_ne!(parent, weak, "a 1 Mb/s uplink takes no 2 Mb/s child");
        if port < 5005 {
            assert_eq!(parent, strong, "{port}");
        }
    }
    let view = common::get(&format!("{base}/api/v1/dashboard")).await;
    let view: serde_json::Value = serde_json::from_slice(&view.body).expect("dashboard json");
    let row = view["channels"][0]["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .find(|p| p["id"] == weak)
        .cloned()
        .expect("weak listed");
    assert_eq!(row["uplink_test_kbps"], kbps, "{row}");
    assert_eq!(row["slots"], 0, "{row}");

    // Refused: from another address than the peer's, an unknown peer, no
    // peer id, a bad channel; none changes what was measured.
    let other: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let tiny = (1, 1_000, Duration::ZERO);
    for (query, source, want) in [
        (
            format!("channel=demo&peer_id={weak}"),
            other,
            StatusCode::FORBIDDEN,
        ),
        (
            "channel=demo&peer_id=77".to_owned(),
            here,
            StatusCode::NOT_FOUND,
        ),
        ("channel=demo".to_owned(), here, StatusCode::BAD_REQUEST),
        (
            format!("channel=Bad%20Name&peer_id={weak}"),
            here,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body) = uplink_test(addr, &query, source, tiny).await;
        assert_eq!(status, want, "{query}: {}", String::from_utf8_lossy(&body));
    }
    let metrics = String::from_utf8(common::get(&format!("{base}/metrics")).await.body.to_vec())
        .expect("utf-8");
    assert_eq!(
        common::metric(&metrics, "treecast_edge_tracker_uplink_test_kbps_count"),
        2.0
    );
    edge.shutdown().await;
}
