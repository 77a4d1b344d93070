//! The tracker service as the edge's HTTP layer calls it: JSON request
//! bodies in, JSON-ready assignments with signed tickets out, the rate
//! limiter on (each peer from its own address; the limiter's work per
//! request is the same at any rate, and its rate is set high so that the
//! bench's own pace, far above a real peer's, is not refused).
//! Joins and heartbeats are timed on audiences of 10k, 100k and 1M peers in
//! one channel, and one ticket signature on its own; the setup prints the memory of the whole service per peer
//! (the tree, the address, stats and ticket maps, the limiter), from the
//! process's resident set before and after the audience joined.
//!
//! `cargo bench -p treecast-benches --bench tracker_service`
//! (`TREECAST_BENCH_SIZES=10000,100000` to pick sizes.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use treecast_edge::metrics::EdgeMetrics;
use treecast_edge::tracker::service::{Now, TrackerService, TrackerSettings};
use treecast_edge::tracker::TrackerConfig;
use treecast_proto::ticket::{SigningKey, TicketClaims};
use treecast_proto::ChannelName;

fn service() -> TrackerService {
    TrackerService::new(
        TrackerSettings {
            // Long enough that no ticket reaches half its life during the
            // bench (building a million peers takes about a minute): the
            // heartbeat figures are heartbeats that re-sign nothing, and
            // `sign_ticket` is what a re-signed ticket adds (see the README
            // for the steady state at the default 60 s).
            ticket_ttl: Duration::from_secs(3600),
            rate_per_sec: 1e6,
            ..TrackerSettings::loopback(TrackerConfig {
                // Heartbeats are not timed out while the bench runs, and
                // newcomers take their full six children at the next tick:
                // the bench builds its audience in seconds, not in the
                // minutes over which real peers earn their slots, and it
                // measures what requests cost, not how slots are earned.
                heartbeat_timeout: Duration::from_secs(3600),
                promote_after: Duration::ZERO,
                probation_slots: 6,
                ..TrackerConfig::default()
            })
        },
        SigningKey::from_bytes(&[3; 32]),
        EdgeMetrics::new().tracker,
    )
}

/// Peer `i`'s own address.
fn addr(i: u32) -> SocketAddr {
    SocketAddr::from((
        [
            10 + (i >> 24) as u8,
            (i >> 16) as u8,
            (i >> 8) as u8,
            i as u8,
        ],
        5000,
    ))
}

fn join_body(i: u32) -> Vec<u8> {
    format!(
        r#"{{"channel":"demo","addr":"{}","max_upload_kbps":20000}}"#,
        addr(i)
    )
    .into_bytes()
}

fn heartbeat_body(peer_id: u64) -> Vec<u8> {
    format!(
        r#"{{"channel":"demo","peer_id":{peer_id},"bytes_from_parent":1000000,"bytes_from_edge":0,"bytes_uploaded":2000000,"watched_ms":2000}}"#
    )
    .into_bytes()
}

/// Resident memory of this process, bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// An audience of `n`, and each peer's id.
fn audience(n: u32) -> (TrackerService, Vec<u64>) {
    let before = rss();
    let s = service();
    let started = Instant::now();
    let ids: Vec<u64> = (0..n)
        .map(|i| {
            let now = Now::current();
            if i % 1000 == 0 {
                s.tick(now.mono);
            }
            s.handle("join", &join_body(i), addr(i), now)
                .unwrap_or_else(|e| panic!("join {i}: {e}"))
                .peer_id
        })
        .collect();
    let took = started.elapsed();
    let bytes = rss().saturating_sub(before);
    println!(
        "{n} peers: joined in {:.2} s ({:.0} joins/s while the audience grew); service memory {:.0} MB, {} bytes per peer",
        took.as_secs_f64(),
        f64::from(n) / took.as_secs_f64(),
        bytes as f64 / 1e6,
        bytes / u64::from(n.max(1))
    );
    (s, ids)
}

fn bench(c: &mut Criterion) {
    let sizes: Vec<u32> = std::env::var("TREECAST_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);

    let mut g = c.benchmark_group("tracker_service");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    let claims = TicketClaims {
        channel: ChannelName::new("demo").expect("name"),
        child: 12345,
        parent: 678,
        expires: 1_900_000_000,
    };
    let key = SigningKey::from_bytes(&[3; 32]);
    g.bench_function("sign_ticket", |b| b.iter(|| claims.sign(&key)));

    for &n in &sizes {
        let (s, ids) = audience(n);
        let bodies: Vec<(Vec<u8>, SocketAddr)> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (heartbeat_body(id), addr(i as u32)))
            .collect();
        let mut next = 0usize;
        g.bench_with_input(BenchmarkId::new("heartbeat", n), &n, |b, _| {
            b.iter(|| {
                // Peers in turn, as their 2 s intervals come round.
                let (body, from) = &bodies[next % bodies.len()];
                next = next.wrapping_add(7919);
                s.handle("heartbeat", body, *from, Now::current())
                    .expect("heartbeat")
            })
        });
        // A join and the leave that keeps the audience at n.
        let mut k = n;
        g.bench_with_input(BenchmarkId::new("join_and_leave", n), &n, |b, _| {
            b.iter(|| {
                let from = addr(k);
                k = k.wrapping_add(1);
                let a = s
                    .handle("join", &join_body(k), from, Now::current())
                    .expect("join");
                let leave = format!(r#"{{"channel":"demo","peer_id":{}}}"#, a.peer_id);
                s.handle("leave", leave.as_bytes(), from, Now::current())
                    .expect("leave")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
