//! The agent's costs, read from `/proc/<pid>` over measured windows:
//!
//! - [`run`], the relay benchmark: what one peer costs to forward a stream
//!   to its children. The edge feeds exactly one peer (the relay); every
//!   other peer is leaf only, so it can only be the relay's child;
//! - [`idle`], the idle benchmark: what an agent with nothing playing
//!   costs, as started with no channel and again after a player played a
//!   channel and the agent left it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cluster::{Cluster, ClusterConfig, PeerOptions};

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// Children fed by the relay.
    pub children: usize,
    /// Measured window, seconds.
    pub window_s: f64,
    /// Stream bitrate received by the relay over the window, kb/s.
    pub stream_kbps: f64,
    /// Relay upload over the window, kb/s.
    pub upload_kbps: f64,
    /// Relay CPU (user + system) over the window, percent of one core.
    pub cpu_percent_of_core: f64,
    /// Relay resident memory at the end, MB.
    pub rss_mb: f64,
    /// Relay peak resident memory, MB.
    pub peak_rss_mb: f64,
}

fn proc_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn proc_kb(pid: u32, key: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .with_context(|| format!("{key} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("value")?
        .parse::<f64>()?)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs the benchmark.
pub async fn run(
    mut config: ClusterConfig,
    source: Option<PathBuf>,
    children: usize,
    window: Duration,
) -> anyhow::Result<RelayReport> {
    config.root_slots = 1;
    config.max_children = children.clamp(1, 255) as u8;
    config.promote_after_secs = 0;
    config.source = source;
    let mut cluster = Cluster::start(config).await?;
    cluster.wait_for_stream(3, Duration::from_secs(30)).await?;
    let relay = cluster.spawn_peer(PeerOptions::default()).await?;
    let mut kids = Vec::new();
    // Leaf-only children: the relay is the only parent they can have (it
    // gets its slots as the tracker measures its upload).
    for _ in 0..children {
        kids.push(
            cluster
                .spawn_peer(PeerOptions {
                    max_upload_kbps: Some(0),
                    ..PeerOptions::default()
                })
                .await?,
        );
    }
    // Settle: every child streaming from the relay.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = relay.status().await?;
        if s.children == children as i64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the relay did not get {children} children: it has {}",
                s.children
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let backfill bursts pass before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = relay.pid().context("relay pid")?;
    let s0 = relay.status().await?;
    let cpu0 = proc_cpu_ticks(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cpu1 = proc_cpu_ticks(pid)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let s1 = relay.status().await?;
    let kbps = |a: u64, b: u64| b.saturating_sub(a) as f64 * 8.0 / elapsed / 1000.0;
    let report = RelayReport {
        children: s1.children.max(0) as usize,
        window_s: elapsed,
        stream_kbps: kbps(s0.bytes_from_tree, s1.bytes_from_tree),
        upload_kbps: kbps(s0.bytes_uploaded, s1.bytes_uploaded),
        cpu_percent_of_core: (cpu1 - cpu0) as f64 / clock_ticks() / elapsed * 100.0,
        rss_mb: proc_kb(pid, "VmRSS:")? / 1024.0,
        peak_rss_mb: proc_kb(pid, "VmHWM:")? / 1024.0,
    };
    for mut k in kids {
        k.terminate().await;
    }
    let mut relay = relay;
    relay.terminate().await;
    cluster.shutdown().await;
    Ok(report)
}

/// What the viewer's agent costs while nothing plays.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Each measured window.
    pub windows: Vec<IdleWindow>,
    /// Media the player fetched in between, seconds.
    pub played_s: f64,
    /// The idle time the agent was given, seconds.
    pub idle_secs: f64,
}

/// One measured window of an idle agent.
#[derive(Debug, Clone, Serialize)]
pub struct IdleWindow {
    /// `never_played` (started with no channel, nothing asked) or
    /// `after_play` (a channel played, then left after the idle time).
    pub phase: String,
    /// Window, seconds.
    pub window_s: f64,
    /// Agent CPU (user + system) over the window, percent of one core.
    pub cpu_percent_of_core: f64,
    /// Channels joined during the window (0 expected).
    pub channels: usize,
    /// Bytes the agent uploaded to children during the window.
    pub uploaded_bytes: u64,
    /// Resident memory at the end, MB.
    pub rss_mb: f64,
}

/// The agent's CPU and memory while nothing plays: first as started
/// (no channel), then after a player has played a channel for `play` and
/// the agent left it.
pub async fn idle(
    mut config: ClusterConfig,
    window: Duration,
    play: Duration,
) -> anyhow::Result<IdleReport> {
    const IDLE_SECS: u64 = 5;
    config.promote_after_secs = 0;
    let mut cluster = Cluster::start(config).await?;
    cluster.wait_for_stream(3, Duration::from_secs(30)).await?;
    let agent = cluster
        .spawn_peer(PeerOptions {
            no_channel: true,
            args: vec!["--idle-secs".into(), IDLE_SECS.to_string()],
            ..PeerOptions::default()
        })
        .await?;
    let pid = agent.pid().context("agent pid")?;
    let client = agent.client();
    let status = || async {
        let b = client
            .get("/status", 1 << 20, Duration::from_secs(3))
            .await?;
        anyhow::Ok(serde_json::from_slice::<treecast_peer::status::AgentStatus>(&b)?)
    };
    let uploaded = |s: &treecast_peer::status::AgentStatus| {
        s.channels.iter().map(|c| c.bytes_uploaded).sum::<u64>()
    };
    let measure = |phase: &str| {
        let phase = phase.to_string();
        async move {
            let s0 = status().await?;
            let cpu0 = proc_cpu_ticks(pid)?;
            let t0 = Instant::now();
            tokio::time::sleep(window).await;
            let cpu1 = proc_cpu_ticks(pid)?;
            let elapsed = t0.elapsed().as_secs_f64();
            let s1 = status().await?;
            anyhow::Ok(IdleWindow {
                phase,
                window_s: elapsed,
                cpu_percent_of_core: (cpu1 - cpu0) as f64 / clock_ticks() / elapsed * 100.0,
                channels: s0.channels.len().max(s1.channels.len()),
                uploaded_bytes: uploaded(&s1).saturating_sub(uploaded(&s0)),
                rss_mb: proc_kb(pid, "VmRSS:")? / 1024.0,
            })
        }
    };
    let mut windows = vec![measure("never_played").await?];
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (progress, _) = tokio::sync::watch::channel(0);
    let channel = cluster.config().channel.clone();
    let player = tokio::spawn(crate::player::play(
        agent.client(),
        channel,
        Instant::now(),
        rx,
        progress,
    ));
    tokio::time::sleep(play).await;
    let _ = stop.send(true);
    let played = player.await.context("player")?;
    let deadline = Instant::now() + Duration::from_secs(IDLE_SECS + 15);
    while !status().await?.channels.is_empty() {
        if Instant::now() > deadline {
            bail!("the agent did not leave the channel after the player stopped");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    windows.push(measure("after_play").await?);
    let mut agent = agent;
    agent.terminate().await;
    cluster.shutdown().await;
    Ok(IdleReport {
        windows,
        played_s: played.media.as_secs_f64(),
        idle_secs: IDLE_SECS as f64,
    })
}
