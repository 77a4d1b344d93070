//! Helpers for the whole-network tests: a cluster whose peers are real
//! `treecast peer` processes, and waiting on what those processes report.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::time::{Duration, Instant};

use treecast::cluster::{Cluster, ClusterConfig, PeerProcess};
use treecast_peer::status::Status;

/// A temporary directory, kept (and its path printed) when the test fails
/// so the peers' logs can be read.
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    /// A new temporary directory.
    pub fn new() -> Self {
        Self(Some(
            tempfile::Builder::new()
                .prefix("treecast-test-")
                .tempdir()
                .expect("tempdir"),
        ))
    }

    /// The path.
    pub fn path(&self) -> &std::path::Path {
        self.0
            .as_ref()
            .map_or(std::path::Path::new("."), |d| d.path())
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("logs kept in {}", d.keep().display());
            }
        }
    }
}

/// What the browser tests drive: the player plugin's directory (with
/// playwright-core installed), Chromium's path (`$CHROMIUM` or Debian's),
/// and a directory for screenshots. Fails the test, never skips, when one
/// is missing (`.ci/run` installs them).
pub fn browser_tools() -> (std::path::PathBuf, String, std::path::PathBuf) {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let plugin = repo.join("player-plugin");
    assert!(
        plugin.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in player-plugin/ (.ci/run does) to install playwright-core"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: `apt-get install chromium` (.ci/run does)"
    );
    let artifacts = repo.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    (plugin, chromium, artifacts)
}

/// A cluster in a temporary directory (kept on failure for its logs).
pub async fn cluster(root_slots: u32, max_children: u8) -> (TestDir, Cluster) {
    cluster_with(root_slots, max_children, |_| {}).await
}

/// [`cluster`], with `tweak` applied to the configuration.
pub async fn cluster_with(
    root_slots: u32,
    max_children: u8,
    tweak: impl FnOnce(&mut ClusterConfig),
) -> (TestDir, Cluster) {
    let dir = TestDir::new();
    let mut config =
        ClusterConfig::new(dir.path().to_owned(), env!("CARGO_BIN_EXE_treecast").into());
    config.root_slots = root_slots;
    config.max_children = max_children;
    // Peers in these tests join one by one and must be able to take
    // children at once.
    config.promote_after_secs = 0;
    tweak(&mut config);
    let cluster = Cluster::start(config).await.expect("origin and edge start");
    cluster
        .wait_for_stream(3, Duration::from_secs(30))
        .await
        .expect("the origin cuts segments");
    (dir, cluster)
}

/// Polls `check` (another process's state, read over HTTP) until it gives
/// an answer, failing the test with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The peer's status once it streams from a parent.
pub async fn streaming(p: &PeerProcess) -> Status {
    wait_for(
        &format!("peer {} to stream from the tree", p.number),
        Duration::from_secs(30),
        || async {
            let s = p.status().await.ok()?;
            (s.connected && s.depth > 0).then_some(s)
        },
    )
    .await
}

/// Starts `n` default peers one after the other, each streaming from the
/// tree before the next joins (so the tracker places them in that order).
pub async fn spawn_streaming(cluster: &mut Cluster, n: usize) -> Vec<PeerProcess> {
    let mut peers = Vec::new();
    for _ in 0..n {
        let p = cluster
            .spawn_peer(treecast::cluster::PeerOptions::default())
            .await
            .expect("peer starts");
        streaming(&p).await;
        peers.push(p);
    }
    peers
}

/// A segment as the origin serves it.
pub async fn origin_segment(cluster: &Cluster, seq: u64) -> bytes::Bytes {
    cluster
        .origin_client()
        .get(
            &format!("/live/{}/{seq}.ts", cluster.config().channel),
            64 << 20,
            Duration::from_secs(10),
        )
        .await
        .expect("the origin still has the segment")
}

/// A value of the edge's `/metrics`, summed over the series whose line
/// starts with `prefix`; fails the test when there is no such series (a
/// renamed metric must not read as zero).
pub async fn edge_metric(cluster: &Cluster, prefix: &str) -> f64 {
    edge_metric_if_any(cluster, prefix)
        .await
        .unwrap_or_else(|| panic!("the edge exports no series {prefix}"))
}

/// The sum of the edge's series starting with `prefix`; `None` when it
/// exports none (a counter whose labels were never used).
pub async fn edge_metric_if_any(cluster: &Cluster, prefix: &str) -> Option<f64> {
    let text = cluster
        .edge_client()
        .get("/metrics", 8 << 20, Duration::from_secs(5))
        .await
        .expect("edge metrics");
    let values: Vec<f64> = String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unreadable metric line {l:?}"))
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Tree arrivals `(seq → at_ms)` in a status's recent list.
pub fn tree_arrivals(s: &Status) -> std::collections::BTreeMap<u64, u64> {
    s.recent
        .iter()
        .filter(|v| v.source == treecast_peer::shared::Source::Tree)
        .map(|v| (v.seq, v.at_ms))
        .collect()
}

/// Waits until `child` holds part of a segment from its parent, then
/// SIGKILLs that parent (taken out of `peers`: whichever peer it is at
/// that moment, as a loaded machine can have moved the child since the
/// test last looked), checks that it died and that the segment was still
/// incomplete at the child, and waits for the child to stream from
/// another parent. Returns the segment that was in flight and the child's
/// status on its new parent.
pub async fn kill_parent_mid_segment(
    child: &PeerProcess,
    peers: &mut Vec<PeerProcess>,
) -> (treecast_peer::status::Receiving, Status) {
    let mut ids = Vec::new();
    for p in peers.iter() {
        ids.push(p.status().await.expect("status").peer_id);
    }
    let (held, parent_id) = wait_for(
        "the child to hold part of a segment from a parent of ours",
        Duration::from_secs(10),
        || async {
            // The segment the origin is still cutting (after the last one
            // listed live): it cannot complete before the kill lands, as a
            // backfill segment finishing its transfer could.
            let s = child.status().await.ok()?;
            let live = s.live_last?;
            let parent = s.parent.as_ref()?.id;
            let held = s
                .receiving
                .iter()
                .find(|r| r.bytes > 0 && r.seq > live)
                .copied()?;
            ids.contains(&parent).then_some((held, parent))
        },
    )
    .await;
    let index = ids.iter().position(|&id| id == parent_id);
    let mut parent = peers.swap_remove(index.expect("the parent is one of ours"));
    parent.kill().await;
    assert!(
        parent.status().await.is_err(),
        "the parent (peer {parent_id}) still answers after SIGKILL"
    );
    let at_kill = child.status().await.expect("status");
    assert!(
        !at_kill.recent.iter().any(|v| v.seq == held.seq),
        "segment {} was still incomplete at the child when its parent died",
        held.seq
    );
    let after = wait_for(
        "the child to stream from a new parent",
        Duration::from_secs(10),
        || async {
            let s = child.status().await.ok()?;
            (s.connected && s.parent.as_ref()?.id != parent_id).then_some(s)
        },
    )
    .await;
    (held, after)
}

/// Waits until the player announcing on `played` has played segment
/// `seq`, recording the origin's digests meanwhile (so every segment it
/// played can be checked), then once more.
pub async fn play_through(
    cluster: &Cluster,
    digests: &mut treecast::swarm::OriginDigests,
    played: &mut tokio::sync::watch::Receiver<u64>,
    seq: u64,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while *played.borrow() < seq {
        digests.record(cluster).await;
        tokio::time::timeout_at(deadline, played.changed())
            .await
            .unwrap_or_else(|_| panic!("timed out: {what}"))
            .expect("player running");
    }
    digests.record(cluster).await;
}
