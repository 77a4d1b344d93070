//! The failover run: one origin, optionally a real nginx shield in front of
//! it, several edge processes pulling through the shield, and peers given
//! every edge; mid-run the edge with the most peers is SIGKILLed, and the
//! run measures how its audience moves.
//!
//! - the origin and the encoder stand-in run in this process; each edge is
//!   a child process (`<exe> edge serve --config FILE`, the `edge` binary's
//!   code), so it can be killed the way a machine fails; peers are child
//!   processes given `--edge` once per edge, in the same order for all
//!   (the peers' own draw splits them), each with a simulated player;
//! - every 250 ms each peer's `/status` is read (the edge it uses, when
//!   that edge's tracker placed it, bytes from its parent and from the
//!   edge) and each live edge's egress from its `/metrics`;
//! - after `kill_after` the edge with the most peers gets SIGKILL, and the
//!   run goes on for `after`.
//!
//! What it reports ([`FailoverReport`]): the split before the kill; for
//! each peer of the killed edge, the time from the kill to the moment
//! another edge's tracker placed it (`edge_joined_ms` in its status); the
//! players' stalls over the whole run; offload (1 − edges' egress ÷ bytes
//! the peers received) per 2 s window around the kill and the time after
//! the kill from which it stays at or above 95%; and, with the shield, how
//! many times each segment and signature was passed to the origin.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use treecast_origin::config::OriginConfig;
use treecast_origin::OriginHandle;
use treecast_peer::edge_client::EdgeClient;
use treecast_peer::status::Status;

use crate::cluster::{spawn_peer, ClusterConfig, Encoder, PeerOptions, PeerProcess, SAMPLE};
use crate::player::{play, PlayerReport};
use crate::shield::Nginx;
use crate::swarm::Percentiles;

/// What to run.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// Directory for state and logs.
    pub work_dir: PathBuf,
    /// Executable that runs `edge serve` and `peer` (this one).
    pub exe: PathBuf,
    /// Peers.
    pub peers: usize,
    /// Edges (at least 2).
    pub edges: usize,
    /// Put a real nginx between the origin and the edges.
    pub shield: bool,
    /// Time after the last peer started before the kill.
    pub kill_after: Duration,
    /// Time measured after the kill.
    pub after: Duration,
    /// Peers each edge feeds itself.
    pub root_slots: u32,
    /// Most children of any peer.
    pub max_children: u8,
    /// Seconds a newcomer stays a leaf.
    pub promote_after_secs: u64,
    /// Seconds the peers' local playlists trail live.
    pub buffer_secs: f64,
}

impl FailoverConfig {
    /// The documented defaults (`treecast failover --help`) in `work_dir`.
    pub fn new(work_dir: PathBuf, exe: PathBuf) -> Self {
        Self {
            work_dir,
            exe,
            peers: 40,
            edges: 2,
            shield: true,
            kill_after: Duration::from_secs(20),
            after: Duration::from_secs(20),
            root_slots: 1,
            max_children: 4,
            promote_after_secs: 2,
            buffer_secs: 4.0,
        }
    }
}

/// Offload in one window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// End of the window, seconds after the kill (negative: before).
    pub t_s: f64,
    /// 1 − edges' egress ÷ bytes the peers received in the window.
    pub offload: f64,
}

/// The shield's count of what it passed to the origin.
#[derive(Debug, Clone, Serialize)]
pub struct ShieldFigures {
    /// Segments and signatures requested through the shield.
    pub objects: usize,
    /// The most times any one of them was passed to the origin.
    pub max_origin_fetches: usize,
    /// Segment and signature responses the origin sent (its `/metrics`).
    pub origin_served: u64,
}

/// What the run measured; see the module docs.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Peers.
    pub peers: usize,
    /// The edges' base URLs.
    pub edges: Vec<String>,
    /// Peers using each edge just before the kill.
    pub split_before: Vec<usize>,
    /// The edge killed (SIGKILL).
    pub killed_edge: String,
    /// Peers that used it.
    pub orphans: usize,
    /// Of those, peers another edge's tracker placed before the end.
    pub replaced: usize,
    /// Kill to placement by another edge, ms.
    pub placement_ms: Percentiles,
    /// Peers using each edge at the end.
    pub split_after: Vec<usize>,
    /// Stalls of all players over the whole run.
    pub stalls: u64,
    /// Time stalled, ms.
    pub stall_ms: u64,
    /// Stalls that ended after the kill.
    pub stalls_after_kill: u64,
    /// Players' failed requests.
    pub player_errors: u64,
    /// Offload over the 10 s before the kill.
    pub offload_before: f64,
    /// Offload per 2 s window, from 10 s before the kill to the end.
    pub offload_windows: Vec<Window>,
    /// Seconds after the kill from which every window is at or above 95%
    /// (`None`: it never stayed there).
    pub offload_95_after_s: Option<f64>,
    /// With the shield: what it passed to the origin.
    pub shield: Option<ShieldFigures>,
}

/// An edge child process.
#[derive(Debug)]
struct EdgeProcess {
    url: String,
    child: Child,
}

impl EdgeProcess {
    async fn start(
        config: &FailoverConfig,
        n: usize,
        source: &str,
        origin_key: &str,
    ) -> anyhow::Result<Self> {
        let dir = config.work_dir.join(format!("edge-{n}"));
        std::fs::create_dir_all(&dir)?;
        let toml = format!(
            r#"listen = "127.0.0.1:0"
quic_listen = "127.0.0.1:0"
origin = "{source}"
origin_key = "{origin_key}"
data_dir = "{data}"

[tracker]
root_slots = {root}
max_children = {children}
promote_after_secs = {promote}
stream_kbps = {kbps}
# Every peer here is 127.0.0.1.
rate_per_sec = 1000000.0
"#,
            data = dir.display(),
            root = config.root_slots,
            children = config.max_children,
            promote = config.promote_after_secs,
            kbps = crate::cluster::SAMPLE_KBPS,
        );
        let conf = dir.join("edge.toml");
        std::fs::write(&conf, toml)?;
        let log_path = dir.join("edge.log");
        let mut log = tokio::fs::File::create(&log_path).await?;
        let mut child = Command::new(&config.exe)
            .args(["edge", "serve", "--config"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} edge serve", config.exe.display()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("edge stderr not captured"))?;
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await? {
                log.write_all(line.as_bytes()).await?;
                log.write_all(b"\n").await?;
                if let Some(rest) = line.strip_prefix("edge serving on ") {
                    if let Some(url) = rest.split_whitespace().next() {
                        return Ok(url.to_owned());
                    }
                }
            }
            Err(anyhow!("edge {n} exited; see {}", log_path.display()))
        })
        .await
        .map_err(|_| {
            anyhow!(
                "edge {n} not serving within 20 s; see {}",
                log_path.display()
            )
        })??;
        // Keep its log.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(line.as_bytes()).await;
                let _ = log.write_all(b"\n").await;
            }
        });
        Ok(Self { url, child })
    }

    async fn egress(&self) -> Option<u64> {
        let client = EdgeClient::new(&self.url.parse().ok()?);
        let text = client
            .get("/metrics", 8 << 20, Duration::from_secs(2))
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&text);
        Some(
            text.lines()
                .filter(|l| l.starts_with("treecast_edge_egress_bytes_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        )
    }
}

/// One reading of one peer.
#[derive(Debug, Clone)]
struct PeerSample {
    at: Instant,
    edge: String,
    joined_ms: u64,
    received: u64,
}

/// Waits until `url` serves a playlist listing two segments.
async fn wait_for_stream(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = EdgeClient::new(&url.parse()?);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(b) = client
            .get("/live/demo/index.m3u8", 1 << 20, Duration::from_secs(3))
            .await
        {
            if b.windows(7).filter(|w| w == b"#EXTINF").count() >= 2 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} served no stream within {timeout:?}");
        }
        // The origin cuts a segment every two seconds.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the scenario and reports.
pub async fn run(config: FailoverConfig) -> anyhow::Result<FailoverReport> {
    if config.edges < 2 {
        bail!("a failover run needs at least 2 edges");
    }
    if config.peers == 0 {
        bail!("a failover run needs peers");
    }
    std::fs::create_dir_all(&config.work_dir)
        .with_context(|| format!("creating {}", config.work_dir.display()))?;
    let sample = config.work_dir.join("sample.ts");
    std::fs::write(&sample, SAMPLE)?;
    let origin = OriginHandle::start(OriginConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: config.work_dir.join("origin"),
        ..OriginConfig::default()
    })
    .await
    .context("starting the origin")?;
    let origin_url = format!("http://{}", origin.local_addr());
    let encoder = Encoder::start(sample, &origin_url, "demo")?;
    let nginx = match config.shield {
        true => Some(Nginx::start(&config.work_dir.join("nginx"), origin.local_addr()).await?),
        false => None,
    };
    let source = nginx.as_ref().map_or(origin_url.clone(), Nginx::url);
    let key = origin.public_key().to_string();
    let mut edges = Vec::new();
    for n in 0..config.edges {
        edges.push(EdgeProcess::start(&config, n, &source, &key).await?);
    }
    let urls: Vec<String> = edges.iter().map(|e| e.url.clone()).collect();
    for u in &urls {
        wait_for_stream(u, Duration::from_secs(30)).await?;
    }

    let cluster = ClusterConfig {
        buffer_secs: config.buffer_secs,
        ..ClusterConfig::new(config.work_dir.clone(), config.exe.clone())
    };
    let (stop_players, stop_rx) = watch::channel(false);
    let mut peers: Vec<PeerProcess> = Vec::new();
    let mut players = Vec::new();
    for n in 0..config.peers {
        let p = spawn_peer(&cluster, &urls, n, PeerOptions::default()).await?;
        let (progress, _) = watch::channel(0);
        players.push(tokio::spawn(play(
            p.client(),
            "demo".into(),
            p.started,
            stop_rx.clone(),
            progress,
        )));
        peers.push(p);
    }

    let clients: Vec<(EdgeClient, String)> = peers
        .iter()
        .map(|p| (p.client(), p.status_path()))
        .collect();
    let mut samples: Vec<Vec<PeerSample>> = vec![Vec::new(); peers.len()];
    // Each live edge's egress counter per reading (`None`: dead or silent).
    let mut egress: Vec<(Instant, Vec<Option<u64>>)> = Vec::new();
    let mut alive = vec![true; edges.len()];
    let kill_at = Instant::now() + config.kill_after;
    let end = kill_at + config.after;
    let mut killed: Option<(usize, Instant, u64, Vec<usize>)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while Instant::now() < end {
        tick.tick().await;
        let reads = clients.iter().map(|(c, path)| async move {
            let b = c.get(path, 1 << 20, Duration::from_secs(2)).await.ok()?;
            serde_json::from_slice::<Status>(&b).ok()
        });
        let statuses = futures_util::future::join_all(reads).await;
        let at = Instant::now();
        for (i, s) in statuses.into_iter().enumerate() {
            if let Some(s) = s {
                samples[i].push(PeerSample {
                    at,
                    edge: s.edge,
                    joined_ms: s.edge_joined_ms,
                    received: s.bytes_from_tree + s.bytes_from_edge,
                });
            }
        }
        let mut counters = Vec::new();
        for (e, up) in edges.iter().zip(&alive) {
            counters.push(match up {
                true => e.egress().await,
                false => None,
            });
        }
        egress.push((at, counters));
        if killed.is_none() && at >= kill_at {
            let split = split(&samples, &urls);
            let victim = (0..split.len()).max_by_key(|&i| split[i]).unwrap_or(0);
            let kill_ms = unix_ms();
            edges[victim]
                .child
                .kill()
                .await
                .context("SIGKILL of an edge")?;
            alive[victim] = false;
            tracing::info!(edge = %urls[victim], "edge killed");
            killed = Some((victim, Instant::now(), kill_ms, split));
        }
    }
    let _ = stop_players.send(true);
    let mut reports: Vec<PlayerReport> = Vec::new();
    for p in players {
        if let Ok(r) = p.await {
            reports.push(r);
        }
    }
    let (victim, kill_instant, kill_ms, split_before) =
        killed.ok_or_else(|| anyhow!("the run ended before the kill"))?;

    // Placement of the killed edge's peers by another edge.
    let victim_url = &urls[victim];
    let mut placements = Vec::new();
    let mut orphans = 0;
    for s in &samples {
        let before = s.iter().rev().find(|x| x.at <= kill_instant);
        if before.is_none_or(|x| &x.edge != victim_url) {
            continue;
        }
        orphans += 1;
        if let Some(x) = s
            .iter()
            .find(|x| x.at > kill_instant && &x.edge != victim_url && x.joined_ms >= kill_ms)
        {
            placements.push(x.joined_ms.saturating_sub(kill_ms) as f64);
        }
    }

    // Offload per 2 s window: bytes the peers received against what the
    // live edges sent, both as differences between readings.
    let windows = offload_windows(&samples, &egress, kill_instant, Duration::from_secs(2));
    let offload_before = {
        let before: Vec<&Window> = windows.iter().filter(|w| w.t_s <= 0.0).collect();
        before.iter().map(|w| w.offload).sum::<f64>() / before.len().max(1) as f64
    };
    let offload_95_after_s = windows
        .iter()
        .enumerate()
        .filter(|(_, w)| w.t_s > 0.0)
        .find(|(i, _)| windows[*i..].iter().all(|w| w.offload >= 0.95))
        .map(|(_, w)| w.t_s);

    let peer_count = peers.len();
    let mut report = FailoverReport {
        peers: peer_count,
        edges: urls.clone(),
        split_before,
        killed_edge: victim_url.clone(),
        orphans,
        replaced: placements.len(),
        placement_ms: Percentiles::of(&mut placements),
        split_after: split(&samples, &urls),
        stalls: reports.iter().map(|r| r.playback.stalls).sum(),
        stall_ms: reports
            .iter()
            .map(|r| r.playback.rebuffer.as_millis() as u64)
            .sum(),
        stalls_after_kill: reports
            .iter()
            .flat_map(|r| &r.playback.stall_log)
            .filter(|(ended, _)| *ended >= kill_instant)
            .count() as u64,
        player_errors: reports.iter().map(|r| r.errors).sum(),
        offload_before,
        offload_windows: windows,
        offload_95_after_s,
        shield: None,
    };
    // All at once: each takes up to its drain time to leave.
    futures_util::future::join_all(peers.iter_mut().map(PeerProcess::terminate)).await;
    for mut e in edges {
        let _ = e.child.kill().await;
    }
    report.shield = match &nginx {
        Some(n) => Some(shield_figures(n, &origin_url).await?),
        None => None,
    };

    if let Some(n) = nginx {
        n.stop().await;
    }
    encoder.stop().await;
    origin.shutdown().await;
    Ok(report)
}

/// The shield's fetches against what the origin served, read once nothing
/// asks the shield any more. nginx logs a request when it ends, and it
/// finishes a fill whose edge went away (`proxy_ignore_client_abort`): the
/// segment being cut when the edges stopped is counted by the origin at
/// once but logged by nginx only when the origin completes it. So the two
/// are read until nginx has logged as many fetches as the origin answered,
/// for at most `SETTLE` (a few segments); past that the figures stand as
/// read, and a difference shows in the report.
async fn shield_figures(nginx: &Nginx, origin_url: &str) -> anyhow::Result<ShieldFigures> {
    const SETTLE: Duration = Duration::from_secs(10);
    let client = EdgeClient::new(&origin_url.parse()?);
    let deadline = Instant::now() + SETTLE;
    loop {
        let fetched = nginx.origin_fetches()?;
        let text = client
            .get("/metrics", 8 << 20, Duration::from_secs(3))
            .await?;
        let served = origin_objects_served(&String::from_utf8_lossy(&text));
        let figures = ShieldFigures {
            objects: fetched.len(),
            max_origin_fetches: fetched.values().copied().max().unwrap_or(0),
            origin_served: served,
        };
        let logged: u64 = fetched.values().map(|&n| n as u64).sum();
        if logged >= served || Instant::now() >= deadline {
            return Ok(figures);
        }
        // nginx writes its log line when the origin ends the response;
        // there is no event to wait on but the file growing.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Segment and signature responses with a 2xx status in the origin's
/// `/metrics` text.
fn origin_objects_served(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("treecast_origin_http_requests_total{")
                && l.contains("status=\"2xx\"")
                && (l.contains("route=\"segment\"") || l.contains("route=\"signature\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Peers per edge in their last readings.
fn split(samples: &[Vec<PeerSample>], urls: &[String]) -> Vec<usize> {
    let mut out = vec![0; urls.len()];
    for s in samples {
        if let Some(last) = s.last() {
            if let Some(i) = urls.iter().position(|u| *u == last.edge) {
                out[i] += 1;
            }
        }
    }
    out
}

/// Offload in consecutive windows of `width` ending at multiples of
/// `width` from `kill`, from 10 s before it: each window's bytes received
/// (every peer's growth between readings in it) against the edges' egress
/// growth in it (each edge between two readings it answered).
fn offload_windows(
    samples: &[Vec<PeerSample>],
    egress: &[(Instant, Vec<Option<u64>>)],
    kill: Instant,
    width: Duration,
) -> Vec<Window> {
    let slot = |at: Instant| -> i64 {
        let d = if at >= kill {
            at.duration_since(kill).as_secs_f64()
        } else {
            -kill.duration_since(at).as_secs_f64()
        };
        (d / width.as_secs_f64()).ceil() as i64
    };
    let mut received: BTreeMap<i64, u64> = BTreeMap::new();
    for s in samples {
        for w in s.windows(2) {
            *received.entry(slot(w[1].at)).or_default() +=
                w[1].received.saturating_sub(w[0].received);
        }
    }
    let mut sent: BTreeMap<i64, u64> = BTreeMap::new();
    for w in egress.windows(2) {
        let grown: u64 = w[0]
            .1
            .iter()
            .zip(&w[1].1)
            .filter_map(|(a, b)| Some(b.as_ref()?.saturating_sub(*a.as_ref()?)))
            .sum();
        *sent.entry(slot(w[1].0)).or_default() += grown;
    }
    let first = -(10.0 / width.as_secs_f64()).ceil() as i64 + 1;
    received
        .iter()
        .filter(|(k, v)| **k >= first && **v > 0)
        // The killed edge's egress between its last reading and its death
        // is unknown: the window holding the kill is left out.
        .filter(|(k, _)| **k != 0)
        .map(|(k, v)| Window {
            t_s: *k as f64 * width.as_secs_f64(),
            offload: (1.0 - *sent.get(k).unwrap_or(&0) as f64 / *v as f64).max(0.0),
        })
        .collect()
}
