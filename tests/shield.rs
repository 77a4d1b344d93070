//! Two edges behind a real nginx shield (`dist/nginx/treecast-shield.conf`,
//! with `proxy_cache_lock`) in front of one origin: players following live
//! at both edges at once, and the origin serves each segment and each
//! signature once.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use treecast::shield::Nginx;
use treecast_edge::{EdgeConfig, EdgeHandle};
use treecast_origin::config::FileInput;
use treecast_origin::{OriginConfig, OriginHandle};

/// The value of one series in a Prometheus text exposition.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|v| v.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in the exposition:\n{text}"))
}

async fn fetch(url: &str) -> Option<Bytes> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(url).body(Empty::new()).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answer within 20 s")
        .ok()?;
    if resp.status() != StatusCode::OK {
        return None;
    }
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body within 20 s");
    body.ok().map(|b| b.to_bytes())
}

/// The sequence number after the last one `base`'s playlist lists: the
/// segment being cut now.
async fn live_seq(base: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no playlist within 20 s");
        if let Some(body) = fetch(&format!("{base}/live/demo/index.m3u8")).await {
            if let Ok(p) = m3u8_rs::parse_media_playlist_res(&body) {
                if !p.segments.is_empty() {
                    return p.media_sequence + p.segments.len() as u64;
                }
            }
        }
        // The origin's first segment takes 2 s of real-time input.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows live at `edge` as the tree's root does: asks for each segment
/// before it exists (the origin holds the request, then streams it).
async fn follow(edge: String, from: u64, count: u64) -> Vec<Bytes> {
    let mut got = Vec::new();
    for seq in from..from + count {
        let seg = fetch(&format!("{edge}/live/demo/{seq}.ts"))
            .await
            .unwrap_or_else(|| panic!("{edge} did not serve segment {seq}"));
        got.push(seg);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_the_origin_serves_each_segment_once_to_two_edges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = OriginConfig {
        data_dir: dir.path().join("origin"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..OriginConfig::default()
    };
    config.file.push(FileInput {
        path: concat!(env!("CARGO_MANIFEST_DIR"), "/media/sample.ts").into(),
        channel: "demo".into(),
    });
    let origin = OriginHandle::start(config).await.expect("origin starts");
    let o = format!("http://{}", origin.local_addr());
    let nginx = Nginx::start(&dir.path().join("nginx"), origin.local_addr())
        .await
        .expect("nginx starts");
    let shield = nginx.url();
    let key = String::from_utf8_lossy(&fetch(&format!("{o}/origin/key")).await.expect("key"))
        .trim()
        .to_owned();

    // One edge pins the origin's key, the other asks the shield for it.
    let mut edges = Vec::new();
    for (n, pinned) in [(1, Some(key)), (2, None)] {
        edges.push(
            EdgeHandle::start(EdgeConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                quic_listen: "127.0.0.1:0".parse().expect("addr"),
                origin: shield.clone(),
                origin_key: pinned,
                data_dir: dir.path().join(format!("edge{n}")),
                ..EdgeConfig::default()
            })
            .await
            .expect("edge starts"),
        );
    }
    let urls: Vec<String> = edges
        .iter()
        .map(|e| format!("http://{}", e.local_addr()))
        .collect();

    let from = live_seq(&shield).await;
    const COUNT: u64 = 4;
    let a = tokio::spawn(follow(urls[0].clone(), from, COUNT));
    let b = tokio::spawn(follow(urls[1].clone(), from, COUNT));
    let (a, b) = (a.await.expect("follower"), b.await.expect("follower"));
    assert_eq!(a, b, "the two edges served different bytes");
    for (i, seg) in a.iter().enumerate() {
        let seq = from + i as u64;
        assert_eq!(
            Some(seg.clone()),
            fetch(&format!("{o}/live/demo/{seq}.ts")).await,
            "segment {seq} differs from the origin's"
        );
    }

    // What the shield passed to the origin, from its access log.
    let fetched = nginx.origin_fetches().expect("access log");
    for seq in from..from + COUNT {
        for ext in ["ts", "sig"] {
            let uri = format!("/live/demo/{seq}.{ext}");
            assert_eq!(
                fetched.get(&uri).copied(),
                Some(1),
                "{uri}: passed to the origin {:?} times, not once\n{}",
                fetched.get(&uri),
                nginx.access_log().unwrap_or_default()
            );
        }
    }
    // The origin's own count: every segment and signature it served went
    // to the shield once (the checks above fetched from it directly too).
    let m = String::from_utf8_lossy(&fetch(&format!("{o}/metrics")).await.expect("metrics"))
        .into_owned();
    let served = |route: &str| {
        metric(
            &m,
            &format!(r#"treecast_origin_http_requests_total{{route="{route}",status="2xx"}}"#),
        )
    };
    let through_shield = |ext: &str| fetched.keys().filter(|u| u.ends_with(ext)).count() as f64;
    assert_eq!(served("segment"), through_shield(".ts") + COUNT as f64);
    assert_eq!(served("signature"), through_shield(".sig"));
    for e in edges {
        e.shutdown().await;
    }
    nginx.stop().await;
    origin.shutdown().await;
}
