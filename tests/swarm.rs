//! A small swarm with churn, end to end: real peer processes, simulated
//! players, the harness's report checked against what the tree promises.

use std::time::Duration;

use treecast::cluster::ClusterConfig;
use treecast::swarm::{self, SwarmConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_swarm_with_churn_plays_without_stalls_and_offloads_the_edge() {
    let dir = tempfile::Builder::new()
        .prefix("treecast-swarm-")
        .tempdir()
        .expect("tempdir");
    let peers = 12;
    let root_slots = 2;
    let mut cluster =
        ClusterConfig::new(dir.path().to_owned(), env!("CARGO_BIN_EXE_treecast").into());
    cluster.root_slots = root_slots;
    cluster.max_children = 3;
    let report = swarm::run(SwarmConfig {
        cluster,
        peers,
        duration: Duration::from_secs(40),
        // A replacement every 17 s (the first once all peers are up), half
        // of them by SIGKILL.
        churn_per_minute: 0.3,
        kill_fraction: 0.5,
        zero_upload_fraction: 0.2,
        corrupt_fraction: 0.0,
        seed: 7,
    })
    .await
    .expect("swarm runs");
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    assert_eq!(report.stalls, 0, "no player stalled");
    assert_eq!(report.corrupt_served, 0, "no player got altered bytes");
    assert_eq!(
        report.segments_unchecked, 0,
        "every segment played was checked against the origin's signed digest"
    );
    assert!(
        report.segments_played >= peers as u64 * 10,
        "players played"
    );
    assert!(report.peers_started > peers, "churn replaced peers");
    // The edge feeds `root_slots` copies through the tree; everything
    // else comes from peers. One more copy covers joins (each fills its
    // buffer), repairs and fallbacks.
    let floor = 1.0 - (root_slots as f64 + 1.0) / peers as f64;
    assert!(
        report.offload_ratio >= floor,
        "offload {} below the floor {floor} for {root_slots} root slots and {peers} peers",
        report.offload_ratio
    );
    assert!(
        report.edge_streams <= root_slots as f64 + 1.0,
        "edge sent {} streams",
        report.edge_streams
    );
}
