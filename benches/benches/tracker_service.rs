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
//! A flood of bad requests is timed too, on the 100k audience (or the
//! largest below it): joins for channels the edge does not carry,
//! heartbeats for peers it does not know, each from a new address; and a
//! live heartbeat while another thread floods, against one without.
//!
//! `cargo bench -p treecast-benches --bench tracker_service`
//! (`TREECAST_BENCH_SIZES=10000,100000` to pick sizes.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Bad request `k` of a flood, from its own address (past the audience's):
/// a join for a channel that is not there (the service carries at most
/// `max_channels`: the first few are created, the rest refused), or
/// a heartbeat for a peer id never handed out.
fn flood_request(k: u64) -> (&'static str, Vec<u8>, SocketAddr) {
    let from = addr(0x0800_0000 + (k as u32 & 0x03ff_ffff));
    if k.is_multiple_of(2) {
        let body = format!(r#"{{"channel":"flood{k}","addr":"{from}"}}"#);
        ("join", body.into_bytes(), from)
    } else {
        ("heartbeat", heartbeat_body(u64::MAX - k), from)
    }
}

/// Times the live audience's heartbeats on `s` as `name`: peers in turn,
/// as their 2 s intervals come round.
fn live_heartbeats(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    s: &TrackerService,
    bodies: &[(Vec<u8>, SocketAddr)],
    n: u32,
) {
    let mut next = 0usize;
    g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
        b.iter(|| {
            let (body, from) = &bodies[next % bodies.len()];
            next = next.wrapping_add(7919);
            s.handle("heartbeat", body, *from, Now::current())
                .expect("heartbeat")
        })
    });
}

/// Times the flood on `s` (an audience with live heartbeat `bodies`).
fn flood(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    s: &TrackerService,
    bodies: &[(Vec<u8>, SocketAddr)],
    n: u32,
) {
    let before = rss();
    let mut k = 0u64;
    let mut accepted = 0u64;
    g.bench_with_input(BenchmarkId::new("flood_request", n), &n, |b, _| {
        b.iter(|| {
            let (endpoint, body, from) = flood_request(k);
            k += 1;
            // Refused, but for the first joins: a new channel is
            // created while fewer than `max_channels` exist.
            if s.handle(endpoint, &body, from, Now::current()).is_ok() {
                accepted += 1;
            }
        })
    });
    println!(
        "{n} peers: {k} flood requests ({accepted} accepted) grew the service by {:.1} MB",
        rss().saturating_sub(before) as f64 / 1e6
    );
    // A live heartbeat while another thread floods as fast as it can.
    let stop = AtomicBool::new(false);
    let flooded = std::thread::scope(|scope| {
        let flooder = scope.spawn(|| {
            let mut k = 1u64 << 40;
            while !stop.load(Ordering::Relaxed) {
                let (endpoint, body, from) = flood_request(k);
                k += 1;
                let _ = s.handle(endpoint, &body, from, Now::current());
            }
            k - (1u64 << 40)
        });
        live_heartbeats(g, "heartbeat_under_flood", s, bodies, n);
        stop.store(true, Ordering::Relaxed);
        flooder.join().unwrap_or(0)
    });
    println!("{n} peers: the flooding thread sent {flooded} bad requests meanwhile");
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
        live_heartbeats(&mut g, "heartbeat", &s, &bodies, n);
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
        let flood_at = sizes
            .iter()
            .copied()
            .filter(|&m| m <= 100_000)
            .max()
            .unwrap_or(n);
        if n == flood_at {
            flood(&mut g, &s, &bodies, n);
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
