//! The swarm harness: origin + edge + N peer processes on loopback, each
//! with a simulated player, for a given duration, with churn and faulty
//! peers; one JSON report at the end.
//!
//! - peers are started with their roles (leaf only, tampering) drawn from
//!   a seeded generator, so a run can be repeated;
//! - churn replaces a fraction of the peers per minute, some with SIGKILL,
//!   the rest with SIGTERM (a polite leave); the replacement has the same
//!   role;
//! - every two seconds each peer's `/status` is read: depth, bytes by
//!   source, fallbacks, corrupt segments, the last segments verified (with
//!   time and depth) and repair times;
//! - at the end the players' segments are checked against the origin's
//!   signed digests (`corrupt_served`), and the edge's egress is read from
//!   its `/metrics`.
//!
//! Lag by depth is measured against the earliest arrival of each segment
//! at a child of the edge (the edge's own delivery on loopback).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cluster::{Cluster, ClusterConfig, PeerOptions, PeerProcess};
use crate::player::{play, PlayerReport};
use crate::rng::Rng;

/// What to run.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The network.
    pub cluster: ClusterConfig,
    /// Peers alive at any time.
    pub peers: usize,
    /// Measured run length.
    pub duration: Duration,
    /// Fraction of the peers replaced per minute.
    pub churn_per_minute: f64,
    /// Fraction of the replaced peers killed with SIGKILL.
    pub kill_fraction: f64,
    /// Fraction of peers with zero upload (leaf only).
    pub zero_upload_fraction: f64,
    /// Fraction of peers that corrupt what they forward.
    pub corrupt_fraction: f64,
    /// Seed of the role and churn draws.
    pub seed: u64,
}

/// p50 and p95 of a set of values.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; zeros when empty.
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
            values[i]
        };
        Self {
            p50: rank(0.50),
            p95: rank(0.95),
        }
    }
}

/// The report; its keys are a stable interface for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Peers alive at any time.
    pub peers: usize,
    /// Measured duration, seconds.
    pub duration_s: f64,
    /// Stream bitrate, kb/s (from the segments the players fetched).
    pub stream_kbps: f64,
    /// Bytes the edge sent (tree pushes and HTTP) during the run.
    pub edge_egress_bytes: u64,
    /// Edge egress in copies of the stream.
    pub edge_streams: f64,
    /// Share of the peers' received bytes that came from other peers.
    pub offload_ratio: f64,
    /// Player stalls.
    pub stalls: u64,
    /// Time stalled over time watched.
    pub rebuffer_ratio: f64,
    /// Segments peers fetched from the edge because the tree was late.
    pub fallbacks: u64,
    /// Segments that failed verification at a peer.
    pub corrupt_detected: u64,
    /// Segments a player received that differ from the origin's (must be 0).
    pub corrupt_served: u64,
    /// Deepest depth seen.
    pub max_depth: u64,
    /// Segment arrival lag behind the edge, ms, by depth.
    pub lag_ms_by_depth: BTreeMap<u64, Percentiles>,
    /// Parent loss to new parent streaming, ms.
    pub repair_ms: Percentiles,
    /// Peer start to playback start (three segments in hand), ms.
    pub startup_ms: Percentiles,
    /// Peers started in all (initial and churn).
    pub peers_started: usize,
    /// Segments the players received in all.
    pub segments_played: u64,
    /// Played segments whose origin digest could not be read (expected 0).
    pub segments_unchecked: u64,
}

struct Running {
    process: PeerProcess,
    stop: watch::Sender<bool>,
    player: JoinHandle<PlayerReport>,
}

#[derive(Default)]
struct Collected {
    players: Vec<PlayerReport>,
    /// (peer, seq) → (arrival ms, depth), tree arrivals only.
    arrivals: HashMap<(usize, u64), (u64, u64)>,
    /// (peer, repairs) from the last status.
    repairs: HashMap<usize, Vec<u64>>,
    /// Totals of each peer's last status: tree, edge, fallbacks, corrupt.
    totals: HashMap<usize, [u64; 4]>,
    max_depth: u64,
    /// The origin's signed BLAKE3 (hex) of each segment, read while the
    /// origin still lists it.
    origin_digests: HashMap<u64, String>,
}

impl Collected {
    fn absorb(&mut self, number: usize, s: &serde_json::Value) {
        let n = |k: &str| s.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        self.max_depth = self.max_depth.max(n("depth"));
        self.totals.insert(
            number,
            [
                n("bytes_from_tree"),
                n("bytes_from_edge"),
                n("fallbacks"),
                n("corrupt"),
            ],
        );
        if let Some(r) = s.get("repairs_ms").and_then(|r| r.as_array()) {
            self.repairs
                .insert(number, r.iter().filter_map(|v| v.as_u64()).collect());
        }
        for v in s
            .get("recent")
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
        {
            let g = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
            if v.get("source").and_then(|x| x.as_str()) != Some("tree") {
                continue;
            }
            if let (Some(seq), Some(at), Some(depth)) = (g("seq"), g("at_ms"), g("depth")) {
                self.arrivals.insert((number, seq), (at, depth));
            }
        }
    }
}

async fn start_one(cluster: &mut Cluster, options: PeerOptions) -> anyhow::Result<Running> {
    let process = cluster.spawn_peer(options).await?;
    let (stop, rx) = watch::channel(false);
    let player = tokio::spawn(play(
        process.client(),
        cluster.config().channel.clone(),
        process.started,
        rx,
        watch::channel(0).0,
    ));
    Ok(Running {
        process,
        stop,
        player,
    })
}

/// Takes a peer's last status and its player's report (stopping the
/// player); the process is left running for the caller to end.
async fn wrap_up(r: Running, collected: &mut Collected) -> PeerProcess {
    // Earlier polls are already absorbed; this only brings them up to date.
    if let Ok(s) = r.process.status().await {
        collected.absorb(r.process.number, &s);
    }
    let _ = r.stop.send(true);
    if let Ok(report) = r.player.await {
        log_stalls(r.process.number, r.process.started, &report);
        collected.players.push(report);
    }
    r.process
}

async fn finish(r: Running, kill: bool, collected: &mut Collected) {
    let mut process = wrap_up(r, collected).await;
    if kill {
        process.kill().await;
    } else {
        process.terminate().await;
    }
}

fn log_stalls(peer: usize, started: Instant, report: &PlayerReport) {
    for (at, length) in &report.playback.stall_log {
        warn!(
            peer,
            after_start_ms = at.duration_since(started).as_millis() as u64,
            stall_ms = length.as_millis() as u64,
            "player stalled"
        );
    }
}

fn roles(config: &SwarmConfig, rng: &mut Rng) -> PeerOptions {
    PeerOptions {
        max_upload_kbps: rng.chance(config.zero_upload_fraction).then_some(0),
        tamper_every: rng.chance(config.corrupt_fraction).then_some(1),
    }
}

async fn edge_egress(cluster: &Cluster) -> anyhow::Result<u64> {
    let text = cluster
        .edge_client()
        .get("/metrics", 8 << 20, Duration::from_secs(5))
        .await?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with("treecast_edge_egress_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Runs the swarm and reports.
pub async fn run(config: SwarmConfig) -> anyhow::Result<Report> {
    let mut rng = Rng::new(config.seed);
    let mut cluster = Cluster::start(config.cluster.clone()).await?;
    cluster.wait_for_stream(3, Duration::from_secs(30)).await?;
    let egress_before = edge_egress(&cluster).await?;
    let t0 = Instant::now();
    let mut running: Vec<Running> = Vec::new();
    let mut started = 0;
    let mut digests = HashMap::new();
    for i in 0..config.peers {
        // Starting many peers takes a while: keep reading the origin's
        // digests meanwhile, so every segment played can be checked.
        if i % 10 == 0 {
            record_origin_digests(&cluster, &mut digests).await;
        }
        let options = roles(&config, &mut rng);
        running.push(start_one(&mut cluster, options).await?);
        started += 1;
    }
    info!(peers = config.peers, "all peers started");
    let mut collected = Collected {
        origin_digests: digests,
        ..Collected::default()
    };
    let churn_every = (config.churn_per_minute > 0.0 && config.peers > 0)
        .then(|| Duration::from_secs_f64(60.0 / (config.churn_per_minute * config.peers as f64)));
    // Churn starts once every peer is up.
    let mut next_churn = churn_every.map(|d| Instant::now() + d);
    let mut next_poll = t0;
    let end = t0 + config.duration;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_poll {
            for r in &running {
                if let Ok(s) = r.process.status().await {
                    collected.absorb(r.process.number, &s);
                }
            }
            record_origin_digests(&cluster, &mut collected.origin_digests).await;
            next_poll = now + Duration::from_secs(2);
        }
        if let (Some(at), Some(every)) = (next_churn, churn_every) {
            if now >= at && !running.is_empty() {
                let victim = running.swap_remove(rng.below(running.len()));
                let options = victim.process.options.clone();
                let kill = rng.chance(config.kill_fraction);
                info!(
                    peer = victim.process.number,
                    kill, "churn: replacing a peer"
                );
                finish(victim, kill, &mut collected).await;
                match start_one(&mut cluster, options).await {
                    Ok(r) => {
                        running.push(r);
                        started += 1;
                    }
                    Err(e) => warn!(error = %e, "churn: replacement peer failed to start"),
                }
                next_churn = Some(at + every);
            }
        }
        let wake = [Some(next_poll), next_churn, Some(end)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
        tokio::time::sleep_until(wake.into()).await;
    }
    let duration = t0.elapsed();
    let egress = edge_egress(&cluster).await?.saturating_sub(egress_before);
    // Stop every player at once, before any peer: players left running
    // while others are shut down would play past the run, beyond the
    // digests read.
    record_origin_digests(&cluster, &mut collected.origin_digests).await;
    for r in &running {
        let _ = r.stop.send(true);
    }
    // Peers leave together (each takes a few seconds to drain).
    let mut leaving = tokio::task::JoinSet::new();
    for r in running {
        let mut process = wrap_up(r, &mut collected).await;
        leaving.spawn(async move { process.terminate().await });
    }
    while leaving.join_next().await.is_some() {}
    let report = summarize(&config, collected, egress, duration, started);
    cluster.shutdown().await;
    Ok(report)
}

fn summarize(
    config: &SwarmConfig,
    c: Collected,
    egress: u64,
    duration: Duration,
    started: usize,
) -> Report {
    let (bytes, media) = c.players.iter().fold((0u64, Duration::ZERO), |(b, m), p| {
        (b + p.bytes, m + p.media)
    });
    let stream_kbps = if media.is_zero() {
        0.0
    } else {
        bytes as f64 * 8.0 / media.as_secs_f64() / 1000.0
    };
    let stream_bytes = stream_kbps * 1000.0 / 8.0 * duration.as_secs_f64();
    let received: u64 = c.totals.values().map(|t| t[0] + t[1]).sum();
    let offload = if received == 0 {
        0.0
    } else {
        (1.0 - egress as f64 / received as f64).max(0.0)
    };
    let stalls = c.players.iter().map(|p| p.playback.stalls).sum();
    let rebuffer: f64 = c
        .players
        .iter()
        .map(|p| p.playback.rebuffer.as_secs_f64())
        .sum();
    let watched: f64 = c.players.iter().map(|p| p.watched.as_secs_f64()).sum();
    let (corrupt_served, unchecked) = corrupt_served(&c.players, &c.origin_digests);
    if unchecked > 0 {
        warn!(
            unchecked,
            "segments played that the origin no longer listed when checked"
        );
    }
    // The edge's time for each segment: its earliest arrival at depth 1.
    let mut edge_time: HashMap<u64, u64> = HashMap::new();
    for (&(_, seq), &(at, depth)) in &c.arrivals {
        if depth == 1 {
            let e = edge_time.entry(seq).or_insert(at);
            *e = (*e).min(at);
        }
    }
    let mut lags: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for (&(_, seq), &(at, depth)) in &c.arrivals {
        if let (Some(&t), true) = (edge_time.get(&seq), depth > 0) {
            lags.entry(depth)
                .or_default()
                .push(at.saturating_sub(t) as f64);
        }
    }
    let mut repairs: Vec<f64> = c.repairs.values().flatten().map(|&v| v as f64).collect();
    let mut startups: Vec<f64> = c
        .players
        .iter()
        .filter_map(|p| p.startup)
        .map(|d| d.as_millis() as f64)
        .collect();
    Report {
        peers: config.peers,
        duration_s: duration.as_secs_f64(),
        stream_kbps,
        edge_egress_bytes: egress,
        edge_streams: if stream_bytes > 0.0 {
            egress as f64 / stream_bytes
        } else {
            0.0
        },
        offload_ratio: offload,
        stalls,
        rebuffer_ratio: if watched > 0.0 {
            rebuffer / watched
        } else {
            0.0
        },
        fallbacks: c.totals.values().map(|t| t[2]).sum(),
        corrupt_detected: c.totals.values().map(|t| t[3]).sum(),
        corrupt_served,
        max_depth: c.max_depth,
        lag_ms_by_depth: lags
            .into_iter()
            .map(|(d, mut v)| (d, Percentiles::of(&mut v)))
            .collect(),
        repair_ms: Percentiles::of(&mut repairs),
        startup_ms: Percentiles::of(&mut startups),
        peers_started: started,
        segments_played: c.players.iter().map(|p| p.segments.len() as u64).sum(),
        segments_unchecked: unchecked,
    }
}

/// Reads the origin's signed digest of every segment it lists that is not
/// recorded yet.
async fn record_origin_digests(cluster: &Cluster, digests: &mut HashMap<u64, String>) {
    let origin = cluster.origin_client();
    let channel = &cluster.config().channel;
    let Ok(b) = origin
        .get(
            &format!("/live/{channel}/index.m3u8"),
            1 << 20,
            Duration::from_secs(5),
        )
        .await
    else {
        return;
    };
    let Ok(m3u8_rs::Playlist::MediaPlaylist(p)) = m3u8_rs::parse_playlist_res(&b) else {
        return;
    };
    for seq in p.media_sequence..p.media_sequence + p.segments.len() as u64 {
        if digests.contains_key(&seq) {
            continue;
        }
        let digest = origin
            .get(
                &format!("/live/{channel}/{seq}.sig"),
                4096,
                Duration::from_secs(5),
            )
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("blake3")?.as_str().map(str::to_owned));
        if let Some(d) = digest {
            digests.insert(seq, d);
        }
    }
}

/// Segments players received whose digest differs from the origin's
/// signed record, and segments that could not be checked (none expected:
/// digests are read every two seconds while the origin lists them).
fn corrupt_served(players: &[PlayerReport], digests: &HashMap<u64, String>) -> (u64, u64) {
    let (mut bad, mut unchecked) = (0, 0);
    for p in players {
        for (seq, hash) in &p.segments {
            match digests.get(seq) {
                Some(d) if d == hash.to_hex().as_str() => {}
                Some(_) => bad += 1,
                None => unchecked += 1,
            }
        }
    }
    (bad, unchecked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            Percentiles::of(&mut v),
            Percentiles {
                p50: 50.0,
                p95: 95.0
            }
        );
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
        assert_eq!(
            Percentiles::of(&mut [7.0]),
            Percentiles { p50: 7.0, p95: 7.0 }
        );
    }
}
