#![allow(unsafe_code)] // the counting allocator below; nothing else
//! The tracker core on one core: joins and heartbeats per second, and the
//! memory each peer costs, at up to a million peers.
//!
//! Peers join on a simulated clock at 100k joins/s (a fifth of them
//! leaf-only), each promoted peer taking up to 4 children (an office LAN or
//! fibre uplink at 2-4 Mb/s streams; residential uplinks earn fewer slots
//! through measured upload), with the tracker's tick
//! (`handle_timeout`: expiry, promotion, orphans) run every simulated
//! second, the way the edge's driver does, after every peer's heartbeat for
//! that second (so `join_1m` times 1M joins plus ~5M heartbeats and 10
//! ticks: a conservative joins-per-second figure). Memory is counted by a counting
//! allocator around the whole tracker.
//! Run with `cargo bench -p treecast-benches --bench tracker`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use treecast_edge::tracker::{Heartbeat, JoinRequest, PeerId, Tracker, TrackerConfig};

struct Counting;
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        ALLOCATED.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new, Ordering::Relaxed);
        ALLOCATED.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` was allocated by `System` with `l`.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const JOIN_STEP: Duration = Duration::from_micros(10);

fn fill(n: usize) -> (Tracker, Vec<PeerId>, Instant) {
    let mut t = Tracker::new(TrackerConfig {
        probation_slots: 4,
        ..TrackerConfig::default()
    });
    let start = Instant::now();
    let mut now = start;
    let mut next_tick = start + Duration::from_secs(1);
    let mut ids = Vec::with_capacity(n);
    for k in 0..n {
        let req = JoinRequest {
            site: (k % 64) as u32,
            max_upload_kbps: if k % 5 == 0 { Some(0) } else { None },
            resume_parent: None,
            ..JoinRequest::default()
        };
        if let Ok(a) = t.handle_join(req, now) {
            ids.push(a.id);
        }
        now += JOIN_STEP;
        if now >= next_tick {
            // Every peer heartbeats once a simulated second, reporting a
            // second of a 2 Mb/s stream from its parent, then the tick runs.
            for id in &ids {
                let _ = t.handle_heartbeat(
                    *id,
                    Heartbeat {
                        bytes_from_parent: 250_000,
                        bytes_from_edge: 0,
                    },
                    now,
                );
            }
            t.handle_timeout(now);
            next_tick += Duration::from_secs(1);
        }
    }
    (t, ids, now)
}

fn bench(c: &mut Criterion) {
    for n in [100_000usize, 1_000_000] {
        let before = ALLOCATED.load(Ordering::Relaxed);
        let (t, ids, _) = fill(n);
        let bytes = ALLOCATED.load(Ordering::Relaxed) - before - ids.capacity() * 8;
        eprintln!(
            "tracker: {} peers placed of {n}, max depth {}, {:.1} MB, {:.0} bytes/peer",
            t.len(),
            t.max_depth_in_use(),
            bytes as f64 / 1e6,
            bytes as f64 / t.len() as f64
        );
        drop(t);
    }

    let mut g = c.benchmark_group("tracker");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1_000_000));
    g.bench_function("join_1m", |b| b.iter(|| black_box(fill(1_000_000)).0.len()));

    let (mut t, ids, now) = fill(1_000_000);
    let mut now = now;
    g.bench_function("heartbeat_1m", |b| {
        b.iter_batched(
            || {
                now += Duration::from_secs(1);
                now
            },
            |at| {
                for id in &ids {
                    let _ = black_box(t.handle_heartbeat(
                        *id,
                        Heartbeat {
                            bytes_from_parent: 250_000,
                            bytes_from_edge: 0,
                        },
                        at,
                    ));
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
