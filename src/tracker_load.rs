//! A load generator for an edge's tracker over HTTP (`treecast
//! tracker-load`): keep-alive HTTP/1.1 clients, each from its own loopback
//! address, join an audience of peers through `POST /tracker/v1/join`, then
//! send heartbeats for them as fast as the edge answers for a while.
//!
//! What flows: JSON request bodies out over real TCP and hyper, answers
//! (assignments with signed tickets) in; the report counts joins and
//! heartbeats per second, their latency, and refusals by status.
//!
//! The edge under test should raise `tracker.rate_per_sec` (every client
//! here sends far more than a peer's one heartbeat per two seconds) and
//! `tracker.heartbeat_timeout_secs` (an audience of a million takes longer
//! to join than the default six seconds, and its heartbeats come round far
//! less often than real peers'). `benches/tracker-http.sh` does both.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The edge's HTTP address.
    pub edge: SocketAddr,
    /// Peers to join.
    pub peers: usize,
    /// Keep-alive connections, each from its own loopback address.
    pub clients: usize,
    /// How long heartbeats are sent for.
    pub duration: Duration,
    /// Channel joined.
    pub channel: String,
    /// The edge's process id, if it runs on this machine: its CPU time
    /// during the heartbeats is read from /proc, for a per-core figure.
    pub edge_pid: Option<u32>,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Latency {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// What the run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// Peers the tracker placed.
    pub peers_joined: usize,
    /// Seconds the joins took.
    pub join_s: f64,
    /// Joins per second.
    pub joins_per_s: f64,
    /// Join latency.
    pub join_latency_ms: Latency,
    /// Heartbeats answered 200.
    pub heartbeats: u64,
    /// Seconds heartbeats were sent for.
    pub heartbeat_s: f64,
    /// Heartbeats per second.
    pub heartbeats_per_s: f64,
    /// Heartbeat latency.
    pub heartbeat_latency_ms: Latency,
    /// CPU seconds the edge spent while the heartbeats ran (with
    /// `edge_pid`).
    pub edge_cpu_s: Option<f64>,
    /// Heartbeats per second of the edge's CPU: the per-core figure.
    pub heartbeats_per_edge_cpu_s: Option<f64>,
    /// Answers other than 200, by status.
    pub refused: BTreeMap<u16, u64>,
}

/// The `k`th client's own loopback address (127.1.x.y).
fn client_ip(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (k / 250) as u8, (k % 250 + 1) as u8))
}

async fn connect(edge: SocketAddr, k: usize) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(client_ip(k), 0))
        .with_context(|| format!("bind {}", client_ip(k)))?;
    let stream = socket
        .connect(edge)
        .await
        .with_context(|| format!("connect to the edge at {edge}"))?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// Posts `body` to `/tracker/v1/<endpoint>`; the status and answer body.
async fn post(
    send: &mut SendRequest<Full<Bytes>>,
    edge: SocketAddr,
    endpoint: &str,
    body: String,
) -> anyhow::Result<(u16, Bytes)> {
    send.ready().await?;
    let req = http::Request::post(format!("/tracker/v1/{endpoint}"))
        .header(http::header::HOST, edge.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = send.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// One client's share of the run: joins for peers `mine`, then heartbeats
/// for those it placed until `until`.
struct Share {
    joined: Vec<u64>,
    join_ms: Vec<f64>,
    heartbeats: u64,
    heartbeat_ms: Vec<f64>,
    refused: BTreeMap<u16, u64>,
}

async fn client(
    config: LoadConfig,
    k: usize,
    mine: std::ops::Range<usize>,
    joined_tx: tokio::sync::mpsc::Sender<()>,
    start_heartbeats: tokio::sync::watch::Receiver<Option<Instant>>,
) -> anyhow::Result<Share> {
    let mut send = connect(config.edge, k).await?;
    let mut share = Share {
        joined: Vec::with_capacity(mine.len()),
        join_ms: Vec::new(),
        heartbeats: 0,
        heartbeat_ms: Vec::new(),
        refused: BTreeMap::new(),
    };
    for i in mine {
        // Each peer names its own (unused) QUIC address.
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 2, (i >> 16) as u8, (i >> 8) as u8)),
            1024 + (i & 0xFF) as u16,
        );
        let body = format!(
            r#"{{"channel":"{}","addr":"{addr}","max_upload_kbps":20000}}"#,
            config.channel
        );
        let t = Instant::now();
        let (status, answer) = post(&mut send, config.edge, "join", body).await?;
        share.join_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if status != 200 {
            *share.refused.entry(status).or_default() += 1;
            continue;
        }
        let a: serde_json::Value = serde_json::from_slice(&answer)?;
        share.joined.push(
            a["peer_id"]
                .as_u64()
                .context("join answer without peer_id")?,
        );
    }
    // Tell the run this share is joined, and wait until every client's is.
    let _ = joined_tx.send(()).await;
    drop(joined_tx);
    let mut rx = start_heartbeats;
    let until = loop {
        if let Some(t) = *rx.borrow() {
            break t;
        }
        rx.changed().await?;
    };
    // A connection idle while the other clients joined may have been
    // closed by the edge (it closes connections idle 30 s): a fresh one.
    let mut send = connect(config.edge, k).await?;
    let mut n = 0usize;
    while Instant::now() < until && !share.joined.is_empty() {
        let id = share.joined[n % share.joined.len()];
        n = n.wrapping_add(7919);
        let body = format!(
            r#"{{"channel":"{}","peer_id":{id},"bytes_from_parent":500000,"bytes_uploaded":1000000,"watched_ms":2000}}"#,
            config.channel
        );
        let t = Instant::now();
        let (status, _) = post(&mut send, config.edge, "heartbeat", body).await?;
        if status == 200 {
            share.heartbeats += 1;
            // One latency sample in 16 keeps the memory small.
            if share.heartbeats % 16 == 0 {
                share.heartbeat_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        } else {
            *share.refused.entry(status).or_default() += 1;
        }
    }
    Ok(share)
}

/// Runs the load; see the module docs.
pub async fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(
        config.clients > 0 && config.clients <= 62_500,
        "--clients must be 1 to 62500"
    );
    let (start_tx, start_rx) = tokio::sync::watch::channel(None);
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel(config.clients);
    let started = Instant::now();
    let per = config.peers.div_ceil(config.clients);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..config.clients {
        let from = (k * per).min(config.peers);
        let to = ((k + 1) * per).min(config.peers);
        tasks.spawn(client(
            config.clone(),
            k,
            from..to,
            joined_tx.clone(),
            start_rx.clone(),
        ));
    }
    drop(joined_tx);
    // Every client says when its peers are joined (or it failed, closing
    // its sender); heartbeats start together after the last.
    let mut done = 0;
    while done < config.clients && joined_rx.recv().await.is_some() {
        done += 1;
    }
    let join_s = started.elapsed().as_secs_f64();
    let cpu_before = config.edge_pid.and_then(cpu_seconds);
    start_tx.send_replace(Some(Instant::now() + config.duration));
    let mut shares = Vec::new();
    let hb_started = Instant::now();
    while let Some(r) = tasks.join_next().await {
        shares.push(r.context("load client panicked")??);
    }
    let heartbeat_s = hb_started.elapsed().as_secs_f64();
    let edge_cpu_s = cpu_before
        .zip(config.edge_pid.and_then(cpu_seconds))
        .map(|(a, b)| b - a);
    let mut refused = BTreeMap::new();
    let mut join_ms = Vec::new();
    let mut heartbeat_ms = Vec::new();
    let mut heartbeats = 0;
    let mut joined = 0;
    for s in shares {
        joined += s.joined.len();
        heartbeats += s.heartbeats;
        join_ms.extend(s.join_ms);
        heartbeat_ms.extend(s.heartbeat_ms);
        for (k, v) in s.refused {
            *refused.entry(k).or_default() += v;
        }
    }
    Ok(LoadReport {
        peers_joined: joined,
        join_s,
        joins_per_s: config.peers as f64 / join_s.max(1e-9),
        join_latency_ms: Latency::of(join_ms),
        heartbeats,
        heartbeat_s,
        heartbeats_per_s: heartbeats as f64 / heartbeat_s.max(1e-9),
        heartbeat_latency_ms: Latency::of(heartbeat_ms),
        edge_cpu_s,
        heartbeats_per_edge_cpu_s: edge_cpu_s.map(|c| heartbeats as f64 / c.max(1e-9)),
        refused,
    })
}

/// User plus system CPU seconds of process `pid`, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks; 100 per second on every Linux this runs on.
    Some((utime + stime) / 100.0)
}
