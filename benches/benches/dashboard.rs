//! The dashboard API at 10,000 peers: building the snapshot the page polls
//! every two seconds (tracker walk, depth histogram, sites, the 300
//! shallowest peers) and encoding it as JSON.
//!
//! `cargo bench -p treecast-benches --bench dashboard`

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use treecast_edge::dashboard::{History, Pricing};
use treecast_edge::metrics::EdgeMetrics;
use treecast_edge::tracker::service::{Now, TrackerService, TrackerSettings};
use treecast_edge::tracker::TrackerConfig;
use treecast_proto::ticket::SigningKey;

const PEERS: u32 = 10_000;

fn swarm() -> (TrackerService, EdgeMetrics) {
    let metrics = EdgeMetrics::new();
    let tracker = TrackerService::new(
        TrackerSettings::loopback(TrackerConfig {
            promote_after: Duration::ZERO,
            ..TrackerConfig::default()
        }),
        SigningKey::from_bytes(&[3; 32]),
        metrics.tracker.clone(),
    );
    for i in 0..PEERS {
        // Spread over 40 /24 sites.
        let from = SocketAddr::from((
            [10, (i % 40) as u8, (i / 256 % 256) as u8, (i % 256) as u8],
            5000,
        ));
        let body = serde_json::json!({"channel": "demo", "addr": from.to_string()}).to_string();
        tracker
            .handle("join", body.as_bytes(), from, Now::current())
            .unwrap_or_else(|e| panic!("join {i}: {e}"));
    }
    (tracker, metrics)
}

fn bench(c: &mut Criterion) {
    let (tracker, metrics) = swarm();
    let history = History::default();
    for _ in 0..10 {
        history.sample(&tracker, &metrics);
    }
    let view = history.view(&tracker, &metrics, 2000, &Pricing::default(), 300);
    let json = serde_json::to_vec(&view).expect("json");
    println!(
        "{} peers: API answer {} bytes, {} peers listed, max depth {}",
        view.channels[0].tree.viewers,
        json.len(),
        view.channels[0].tree.peers.len(),
        view.channels[0].tree.max_depth
    );
    c.bench_function("dashboard api view + json, 10k peers", |b| {
        b.iter(|| {
            let v = history.view(&tracker, &metrics, 2000, &Pricing::default(), 300);
            serde_json::to_vec(&v).expect("json").len()
        })
    });
    c.bench_function("dashboard sample, 10k peers", |b| {
        b.iter(|| history.sample(&tracker, &metrics))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
