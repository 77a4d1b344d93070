//! Segmenting throughput on one core: MPEG-TS bytes in, segment events out.
//!
//! Input: the file named by `TREECAST_BENCH_TS` (the `benches/segmenter-vs-ffmpeg.sh`
//! script makes a large one with ffmpeg and passes it), else the shipped sample
//! clip repeated to 64 MiB. Run with
//! `cargo bench -p treecast-benches --bench segmenter`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use treecast_origin::segmenter::{Event, Segmenter, SegmenterConfig};

fn input() -> Vec<u8> {
    if let Ok(path) = std::env::var("TREECAST_BENCH_TS") {
        return std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    }
    let sample = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../media/sample.ts"))
        .expect("media/sample.ts is shipped");
    let mut data = Vec::with_capacity(64 << 20);
    while data.len() + sample.len() <= 64 << 20 {
        data.extend_from_slice(&sample);
    }
    data
}

fn segment_all(data: &[u8]) -> (u64, u64) {
    let mut s = Segmenter::new(SegmenterConfig::learning(2.0, 12));
    let mut segments = 0;
    let mut bytes = 0;
    // 64 KiB reads, as a socket or file driver would hand them over.
    for chunk in data.chunks(64 * 1024) {
        s.handle_input(chunk);
        while let Some(e) = s.poll_event() {
            match e {
                Event::SegmentStart(_) => segments += 1,
                Event::Data(b) => bytes += b.len() as u64,
                _ => {}
            }
        }
    }
    s.handle_end_of_input();
    while s.poll_event().is_some() {}
    (segments, bytes)
}

fn bench(c: &mut Criterion) {
    let data = input();
    let (segments, out) = segment_all(&data);
    assert!(
        segments > 0 && out > data.len() as u64 / 2,
        "input did not segment"
    );
    let mut g = c.benchmark_group("segmenter");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("segment", |b| {
        b.iter(|| black_box(segment_all(black_box(&data))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
