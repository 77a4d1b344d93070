//! Operator access: the dashboard and its API behind the configured
//! token, and `/metrics` moved to its own address.

mod common;

use common::{get, http};
use http::{Method, StatusCode};
use treecast_edge::{EdgeConfig, EdgeHandle};
use treecast_origin::config::OriginConfig;
use treecast_origin::OriginHandle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_needs_its_token_and_metrics_live_on_their_own_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = OriginHandle::start(OriginConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("origin"),
        ..OriginConfig::default()
    })
    .await
    .expect("origin");
    let edge = EdgeHandle::start(EdgeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        quic_listen: "127.0.0.1:0".parse().expect("addr"),
        origin: format!("http://{}", origin.local_addr()),
        data_dir: dir.path().join("edge"),
        dashboard_token: Some("s3cret".into()),
        metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..EdgeConfig::default()
    })
    .await
    .expect("edge");
    let e = format!("http://{}", edge.local_addr());
    for path in [
        "/dashboard",
        "/api/v1/dashboard",
        "/api/v1/dashboard?token=wrong",
    ] {
        assert_eq!(
            get(&format!("{e}{path}")).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let page = get(&format!("{e}/dashboard?token=s3cret")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.body).contains("/api/v1/dashboard"));
    let api = get(&format!("{e}/api/v1/dashboard?token=s3cret")).await;
    assert_eq!(api.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&api.body).expect("json");
    assert!(v["channels"].as_array().is_some_and(Vec::is_empty), "{v}");
    // Playback is never behind the token.
    assert_ne!(
        get(&format!("{e}/live/demo/index.m3u8")).await.status,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(
        get(&format!("{e}/metrics")).await.status,
        StatusCode::NOT_FOUND
    );
    let m = edge.metrics_addr().expect("metrics address");
    let metrics = get(&format!("http://{m}/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&metrics.body).contains("treecast_edge_origin_up"));
    assert_eq!(
        http(Method::GET, &format!("http://{m}/dashboard"), vec![])
            .await
            .status,
        StatusCode::NOT_FOUND,
        "only metrics on the metrics address"
    );
    edge.shutdown().await;
    origin.shutdown().await;
}
