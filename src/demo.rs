//! The one-command demo: an origin looping the shipped sample, an edge, and
//! a handful of peers as real processes on loopback, with progress shown
//! while the tree forms and the URLs to open once the stream flows.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cluster::{Cluster, ClusterConfig, PeerOptions, PeerProcess};

/// Starts everything, prints the URLs, runs until `stop` resolves, then
/// shuts everything down (peers leave the tree first).
pub async fn run(
    config: ClusterConfig,
    peers: usize,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    eprintln!("[1/4] starting the origin (looping the sample clip) and the edge ...");
    let mut cluster = Cluster::start(config).await?;
    eprintln!(
        "      origin {}  edge {}",
        cluster.origin_url(),
        cluster.edge_url()
    );
    eprintln!("[2/4] waiting for the first segments ...");
    cluster.wait_for_stream(3, Duration::from_secs(30)).await?;
    eprintln!("[3/4] starting {peers} peers ...");
    let mut running: Vec<PeerProcess> = Vec::new();
    for _ in 0..peers {
        let p = cluster.spawn_peer(PeerOptions::default()).await?;
        eprintln!("      peer {} up, local proxy {}", p.number, p.proxy);
        running.push(p);
    }
    eprintln!("[4/4] waiting for every peer to stream from the tree ...");
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut placed = vec![false; running.len()];
    while placed.iter().any(|p| !p) {
        for (i, p) in running.iter().enumerate() {
            if placed[i] {
                continue;
            }
            if let Ok(s) = p.status().await {
                if s.connected && s.playlist_last.is_some() {
                    placed[i] = true;
                    let parent = s
                        .parent
                        .map_or_else(|| "nobody".to_owned(), |n| format!("{} {}", n.kind, n.id));
                    eprintln!(
                        "      peer {} streaming at depth {} from {parent}",
                        p.number, s.depth
                    );
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "peers did not all start streaming within 45 s; logs are in {}",
                cluster.config().work_dir.display()
            );
        }
        // Peers are separate processes: look at their status again shortly.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let channel = &cluster.config().channel;
    let first = &running[0];
    println!();
    println!("treecast demo is running: 1 origin, 1 edge, {peers} peers.");
    println!();
    println!("  play through peer 0 (VLC, mpv, ffplay):");
    println!(
        "      ffplay http://{}/live/{channel}/index.m3u8",
        first.proxy
    );
    for p in running.iter().skip(1) {
        println!(
            "      peer {}: http://{}/live/{channel}/index.m3u8",
            p.number, p.proxy
        );
    }
    println!(
        "  watch in a browser: http://{}/player/?channel={channel}",
        first.proxy
    );
    println!("  peer 0 status:     http://{}/status", first.proxy);
    println!(
        "  straight from the edge: {}/live/{channel}/index.m3u8",
        cluster.edge_url()
    );
    println!("  operator dashboard: {}/dashboard", cluster.edge_url());
    println!("  edge metrics:      {}/metrics", cluster.edge_url());
    println!("  origin channels:   {}/api/channels", cluster.origin_url());
    println!(
        "  logs:              {} (origin and edge: demo.log; peers: peer-<n>.log)",
        cluster.config().work_dir.display()
    );
    println!();
    println!("Ctrl-C stops everything.");
    stop.await;
    eprintln!("stopping: peers leave the tree ...");
    for mut p in running {
        p.terminate().await;
    }
    cluster.shutdown().await;
    eprintln!("stopped.");
    Ok(())
}
