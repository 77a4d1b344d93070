//! Two edge processes behind a real nginx shield, 40 peers split over
//! them, and the busiest edge SIGKILLed mid-run: its peers are placed by
//! the other edge within 2 s, no player stalls, offload is back above 95%
//! within 10 s, and the origin served every segment and signature once.

mod common;

use std::time::Duration;

use treecast::failover::{run, FailoverConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_edge_moves_its_audience_to_the_other_without_a_stall() {
    let dir = common::TestDir::new();
    let config = FailoverConfig {
        kill_after: Duration::from_secs(12),
        after: Duration::from_secs(14),
        ..FailoverConfig::new(dir.path().to_owned(), env!("CARGO_BIN_EXE_treecast").into())
    };
    let r = run(config).await.expect("the run completes");
    let json = serde_json::to_string_pretty(&r).expect("json");
    eprintln!("{json}");
    assert_eq!(r.split_before.iter().sum::<usize>(), 40, "{json}");
    assert!(
        r.split_before.iter().all(|&n| n > 0),
        "the audience did not split over both edges: {json}"
    );
    // The kill happened: every peer of the killed edge moved.
    assert!(r.orphans > 0, "{json}");
    assert_eq!(
        r.replaced, r.orphans,
        "some peers were never placed again: {json}"
    );
    let killed = r
        .edges
        .iter()
        .position(|e| *e == r.killed_edge)
        .expect("killed edge");
    assert_eq!(
        r.split_after[killed], 0,
        "peers still on the dead edge: {json}"
    );
    assert_eq!(r.split_after.iter().sum::<usize>(), 40, "{json}");
    assert!(
        r.placement_ms.max <= 2000.0,
        "placement took over 2 s: {json}"
    );
    assert_eq!(r.stalls, 0, "{json}");
    assert_eq!(r.player_errors, 0, "{json}");
    let recovered = r.offload_95_after_s.expect("offload back above 95%");
    assert!(
        recovered <= 10.0,
        "offload above 95% only {recovered} s after the kill: {json}"
    );
    let shield = r.shield.expect("shield figures");
    assert!(shield.objects > 10, "{json}");
    assert_eq!(shield.max_origin_fetches, 1, "{json}");
    assert_eq!(shield.origin_served, shield.objects as u64, "{json}");
}
