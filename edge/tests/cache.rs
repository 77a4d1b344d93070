//! The edge's cache against a real origin on loopback: single flight under
//! a crowd of concurrent misses, playlist freshness, and an origin that goes
//! away and comes back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, metric};
use http::StatusCode;
use treecast_edge::{EdgeConfig, EdgeHandle};
use treecast_origin::config::FileInput;
use treecast_origin::{OriginConfig, OriginHandle};

async fn looping_origin(
    data: &std::path::Path,
    listen: Option<std::net::SocketAddr>,
) -> OriginHandle {
    let mut config = OriginConfig {
        data_dir: data.to_owned(),
        ..OriginConfig::default()
    };
    config.listen = listen.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr"));
    config.file.push(FileInput {
        path: concat!(env!("CARGO_MANIFEST_DIR"), "/../media/sample.ts").into(),
        channel: "demo".into(),
    });
    OriginHandle::start(config).await.expect("origin starts")
}

async fn edge_for(origin: &OriginHandle, data: &std::path::Path) -> EdgeHandle {
    EdgeHandle::start(EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        quic_listen: "127.0.0.1:0".parse().expect("addr"),
        origin: format!("http://{}", origin.local_addr()),
        data_dir: data.join("edge"),
        ..EdgeConfig::default()
    })
    .await
    .expect("edge starts")
}

async fn next_seq(origin: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "origin cut no segment within 20 s"
        );
        let r = get(&format!("{origin}/api/channels/demo")).await;
        if r.status == StatusCode::OK {
            let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
            if v["segments_cut"].as_u64().unwrap_or(0) > 0 {
                return v["next_seq"].as_u64().expect("next_seq");
            }
        }
        // Wait for the origin's first segment: one segment's worth of
        // real-time input, observed through the API.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_misses_make_one_origin_fetch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = looping_origin(dir.path(), None).await;
    let edge = edge_for(&origin, dir.path()).await;
    let o = format!("http://{}", origin.local_addr());
    let e = format!("http://{}", edge.local_addr());

    // The segment after the one being cut now: cold at the edge, and not
    // even started at the origin when the crowd arrives (the origin holds a
    // request for its next segment until it starts), so every request is
    // streamed the body as the origin produces it.
    let seq = next_seq(&o).await;
    let url = Arc::new(format!("{e}/live/demo/{seq}.ts"));
    let mut crowd = Vec::new();
    for _ in 0..200 {
        let url = url.clone();
        crowd.push(tokio::spawn(async move { get(&url).await }));
    }
    let mut bodies = Vec::new();
    for r in crowd {
        let r = r.await.expect("task");
        assert_eq!(r.status, StatusCode::OK);
        bodies.push(r.body);
    }
    let from_origin = get(&format!("{o}/live/demo/{seq}.ts")).await.body;
    assert!(from_origin.len() > 100_000);
    assert!(
        bodies.iter().all(|b| *b == from_origin),
        "every client got the origin's bytes"
    );

    let om = String::from_utf8(get(&format!("{o}/metrics")).await.body.to_vec()).expect("utf-8");
    // 1 request from the edge, 1 from this test.
    assert_eq!(
        metric(
            &om,
            "treecast_origin_http_requests_total{route=\"segment\",status=\"2xx\"}"
        ),
        2.0
    );
    let em = String::from_utf8(get(&format!("{e}/metrics")).await.body.to_vec()).expect("utf-8");
    assert_eq!(
        metric(
            &em,
            "treecast_edge_origin_fetches_total{kind=\"segment\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &em,
            "treecast_edge_cache_requests_total{kind=\"segment\",result=\"miss\"}"
        ),
        1.0
    );
    let joined = metric(
        &em,
        "treecast_edge_cache_requests_total{kind=\"segment\",result=\"coalesced\"}",
    ) + metric(
        &em,
        "treecast_edge_cache_requests_total{kind=\"segment\",result=\"hit\"}",
    );
    assert_eq!(joined, 199.0);
    assert!(
        metric(&em, "treecast_edge_egress_bytes_total{path=\"http\"}")
            >= 200.0 * from_origin.len() as f64
    );
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playlist_is_never_older_than_half_a_target_duration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = looping_origin(dir.path(), None).await;
    let edge = edge_for(&origin, dir.path()).await;
    let o = format!("http://{}", origin.local_addr());
    let e = format!("http://{}", edge.local_addr());
    next_seq(&o).await;
    let last_listed = |body: &Bytes| -> u64 {
        let p = m3u8_rs::parse_media_playlist_res(body).expect("playlist");
        p.media_sequence + p.segments.len() as u64
    };
    // For ~7 s (3 new segments), compare each edge answer with what the
    // origin listed half a target duration (1.5 s) before the edge answered.
    let mut origin_seen: Vec<(Instant, u64)> = Vec::new();
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(7) {
        let r = get(&format!("{o}/live/demo/index.m3u8")).await;
        origin_seen.push((Instant::now(), last_listed(&r.body)));
        let asked = Instant::now();
        let r = get(&format!("{e}/live/demo/index.m3u8")).await;
        assert_eq!(r.status, StatusCode::OK);
        let edge_has = last_listed(&r.body);
        let limit = asked - Duration::from_millis(1500);
        if let Some(&(_, must)) = origin_seen.iter().rev().find(|(t, _)| *t <= limit) {
            assert!(
                edge_has >= must,
                "edge listed up to {edge_has}, origin had {must} 1.5 s earlier"
            );
            checks += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(checks > 20, "{checks} checks");
    edge.shutdown().await;
    origin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_restart_mid_stream_is_survived() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = looping_origin(dir.path(), None).await;
    let addr = origin.local_addr();
    let edge = edge_for(&origin, dir.path()).await;
    let o = format!("http://{addr}");
    let e = format!("http://{}", edge.local_addr());
    let seq = next_seq(&o).await - 1;
    let cached = get(&format!("{e}/live/demo/{seq}.ts")).await;
    assert_eq!(cached.status, StatusCode::OK);
    assert!(!get(&format!("{e}/live/demo/index.m3u8"))
        .await
        .headers
        .contains_key("x-treecast-stale"));

    origin.shutdown().await;
    // The edge keeps serving what it has: the cached segment, and the last
    // playlist (flagged stale); what it lacks is a clear gateway error.
    let again = get(&format!("{e}/live/demo/{seq}.ts")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, cached.body);
    let wait_stale = Instant::now();
    loop {
        let r = get(&format!("{e}/live/demo/index.m3u8")).await;
        assert_eq!(r.status, StatusCode::OK);
        if r.headers.contains_key("x-treecast-stale") {
            break;
        }
        assert!(
            wait_stale.elapsed() < Duration::from_secs(5),
            "playlist never went stale"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing = get(&format!("{e}/live/demo/{}.ts", seq + 50)).await;
    assert_eq!(missing.status, StatusCode::GATEWAY_TIMEOUT);
    let em = String::from_utf8(get(&format!("{e}/metrics")).await.body.to_vec()).expect("utf-8");
    assert_eq!(metric(&em, "treecast_edge_origin_up"), 0.0);

    // The origin comes back on the same address and resumes numbering.
    let origin = looping_origin(dir.path(), Some(addr)).await;
    let resumed = next_seq(&o).await;
    assert!(resumed > seq);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&format!("{e}/live/demo/index.m3u8")).await;
        let p = m3u8_rs::parse_media_playlist_res(&r.body).expect("playlist");
        if !r.headers.contains_key("x-treecast-stale") && p.segments.iter().any(|s| s.discontinuity)
        {
            break;
        }
        assert!(Instant::now() < deadline, "edge did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let em = String::from_utf8(get(&format!("{e}/metrics")).await.body.to_vec()).expect("utf-8");
    assert_eq!(metric(&em, "treecast_edge_origin_up"), 1.0);
    edge.shutdown().await;
    origin.shutdown().await;
}
