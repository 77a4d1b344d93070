//! A whole treecast network on loopback: the origin and the edge run in
//! this process, every peer is a child process (`<exe> peer ...`, the same
//! code as the `peer` binary) talking real QUIC and HTTP.
//!
//! - an encoder stand-in in this process pushes the shipped sample clip (or
//!   another file) to the origin over HTTP, looped and paced in real time,
//!   exactly as `origin ingest FILE --loop --realtime` does; it can be
//!   stopped and started again ([`Cluster::stop_encoder`]), the way a
//!   producer's encoder drops out, so players can be made to stall;
//! - the edge's tracker is configured for the run (root fan-out, children
//!   per peer, no per-address rate limit since every peer is 127.0.0.1);
//! - each peer is started, its "peer ready" line read for its proxy
//!   address, its logs written to `<work_dir>/peer-<n>.log`; it can be
//!   stopped politely (SIGTERM: it leaves the tree) or killed (SIGKILL).
//!   Every child process is killed when its handle is dropped.
//!
//! In the network lab ([`crate::netlab`]) the same runs inside the lab's
//! namespaces: this process in the harness namespace, each peer in its own
//! behind its link, started with `ip netns exec`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use treecast_edge::config::TrackerSection;
use treecast_edge::{EdgeConfig, EdgeHandle};
use treecast_origin::config::OriginConfig;
use treecast_origin::push_client::{run_push, PushConfig};
use treecast_origin::source::Input;
use treecast_origin::OriginHandle;
use treecast_peer::edge_client::EdgeClient;
use treecast_peer::status::Status;
use treecast_proto::ChannelName;

use crate::netlab::{dialer, PeerNet};

/// The sample clip shipped in the repository (16 s, H.264 + AAC), looped by
/// the origin.
pub const SAMPLE: &[u8] = include_bytes!("../media/sample.ts");

/// The shipped sample's bitrate on the wire (3,485,144 bytes in 16 s).
pub const SAMPLE_KBPS: u32 = 1_750;

/// How the network is set up.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Directory for the origin's and edge's state and the peers' logs.
    pub work_dir: PathBuf,
    /// Executable that runs a peer with `peer <flags>`.
    pub peer_exe: PathBuf,
    /// Channel name.
    pub channel: String,
    /// Origin HTTP address (port 0: any).
    pub origin_listen: SocketAddr,
    /// Edge HTTP address (port 0: any).
    pub edge_listen: SocketAddr,
    /// Edge QUIC address, where its root children connect (port 0: any).
    pub edge_quic_listen: SocketAddr,
    /// Peers the edge feeds itself.
    pub root_slots: u32,
    /// Most children of any peer.
    pub max_children: u8,
    /// Deepest a peer may sit.
    pub max_depth: u8,
    /// Seconds a newcomer stays a leaf.
    pub promote_after_secs: u64,
    /// Seconds the peers' local playlists trail live.
    pub buffer_secs: f64,
    /// MPEG-TS file the origin loops instead of the shipped sample.
    pub source: Option<PathBuf>,
    /// Token for the edge's dashboard and API.
    pub dashboard_token: Option<String>,
    /// Price of 1 GB of edge egress, for the dashboard's savings.
    pub price_per_gb: Option<f64>,
    /// The event's other edges, shown by the edge's dashboard.
    pub event_edges: Vec<String>,
    /// The stream's bitrate as the tracker counts slots (one child per
    /// this much upload a parent delivers).
    pub stream_kbps: u32,
}

impl ClusterConfig {
    /// Defaults for a run in `work_dir` with peers run by `peer_exe`.
    pub fn new(work_dir: PathBuf, peer_exe: PathBuf) -> Self {
        Self {
            work_dir,
            peer_exe,
            channel: "demo".into(),
            origin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            edge_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            edge_quic_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            root_slots: 2,
            max_children: 4,
            max_depth: 12,
            promote_after_secs: 10,
            buffer_secs: 2.0,
            source: None,
            dashboard_token: None,
            price_per_gb: None,
            event_edges: Vec::new(),
            stream_kbps: SAMPLE_KBPS,
        }
    }
}

/// How one peer runs.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    /// `--max-upload` in kb/s (0: leaf only).
    pub max_upload_kbps: Option<u32>,
    /// Fault injection: corrupt every Nth segment forwarded.
    pub tamper_every: Option<u64>,
    /// The lab namespace and link it runs behind (`None`: loopback).
    pub net: Option<PeerNet>,
    /// Start it as the viewer's agent with no channel (players' requests
    /// join channels) instead of pre-joined to the cluster's channel.
    pub no_channel: bool,
    /// Its local proxy's address (`None`: any free loopback port).
    pub proxy_listen: Option<SocketAddr>,
    /// More `peer` flags.
    pub args: Vec<String>,
}

/// A running peer process.
#[derive(Debug)]
pub struct PeerProcess {
    /// Number in this cluster (also its log file's).
    pub number: usize,
    /// Its local proxy.
    pub proxy: SocketAddr,
    /// The channel it was started with (`--channel`; empty when it was
    /// started with none).
    pub channel: String,
    /// How it runs.
    pub options: PeerOptions,
    /// When it was started.
    pub started: Instant,
    child: Child,
    /// Held open: when this process ends, however it ends, the pipe
    /// closes and the peer (run with `--exit-with-stdin`) leaves and exits.
    _stdin: Option<tokio::process::ChildStdin>,
}

impl PeerProcess {
    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A client for its local proxy (from inside its namespace, in the lab).
    pub fn client(&self) -> EdgeClient {
        let base = format!("http://{}", self.proxy)
            .parse()
            .unwrap_or_else(|_| http_uri_fallback());
        match &self.options.net {
            Some(net) => EdgeClient::with_dialer(&base, dialer(net.netns.clone())),
            None => EdgeClient::new(&base),
        }
    }

    /// Where its channel's status is (`/status/<channel>`).
    pub fn status_path(&self) -> String {
        format!("/status/{}", self.channel)
    }

    /// Its channel's status.
    pub async fn status(&self) -> anyhow::Result<Status> {
        let b = self
            .client()
            .get(&self.status_path(), 1 << 20, Duration::from_secs(3))
            .await?;
        Ok(serde_json::from_slice(&b)?)
    }

    /// [`terminate`](Self::terminate), consuming the handle.
    pub async fn terminate_owned(mut self) {
        self.terminate().await;
    }

    /// SIGKILL: no goodbye, children must notice by themselves.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM: the peer leaves the tree; SIGKILL if it has not exited
    /// within five seconds.
    pub async fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        self.kill().await;
    }
}

fn http_uri_fallback() -> http::Uri {
    http::Uri::from_static("http://127.0.0.1:1")
}

/// The encoder stand-in pushing a file to the origin, looped and paced in
/// real time.
#[derive(Debug)]
pub struct Encoder {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Encoder {
    /// Starts pushing `source` to `channel` at the origin at `origin_url`.
    pub fn start(source: PathBuf, origin_url: &str, channel: &str) -> anyhow::Result<Self> {
        let push = PushConfig {
            input: Input::File(source),
            origin: origin_url.parse().context("origin URL")?,
            channel: ChannelName::new(channel)?,
            key: None,
            looped: true,
            realtime: true,
            status_every: None,
        };
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            match run_push(push, rx).await {
                Ok(_) => tracing::info!("encoder stopped"),
                Err(e) => tracing::warn!(error = %e, "encoder failed"),
            }
        });
        Ok(Self { stop, task })
    }

    /// Stops pushing: the origin cuts no more segments.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The network; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    origin: OriginHandle,
    edge: EdgeHandle,
    source: PathBuf,
    encoder: Option<Encoder>,
    /// Encoders of the channels added with [`Cluster::start_channel`].
    more_channels: Vec<Encoder>,
    next_peer: usize,
}

impl Cluster {
    /// Starts the origin (looping the sample) and the edge.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.work_dir)
            .with_context(|| format!("creating {}", config.work_dir.display()))?;
        let sample = match &config.source {
            Some(path) => path.clone(),
            None => {
                let path = config.work_dir.join("sample.ts");
                std::fs::write(&path, SAMPLE)
                    .with_context(|| format!("writing {}", path.display()))?;
                path
            }
        };
        let origin = OriginHandle::start(OriginConfig {
            listen: config.origin_listen,
            data_dir: config.work_dir.join("origin"),
            ..OriginConfig::default()
        })
        .await
        .context("starting the origin")?;
        let edge = EdgeHandle::start(EdgeConfig {
            listen: config.edge_listen,
            quic_listen: config.edge_quic_listen,
            origin: format!("http://{}", origin.local_addr()),
            data_dir: config.work_dir.join("edge"),
            dashboard_token: config.dashboard_token.clone(),
            price_per_gb: config.price_per_gb,
            event_edges: config.event_edges.clone(),
            tracker: TrackerSection {
                root_slots: config.root_slots,
                max_children: config.max_children,
                max_depth: config.max_depth,
                promote_after_secs: config.promote_after_secs,
                stream_kbps: config.stream_kbps,
                // Every peer here is 127.0.0.1.
                rate_per_sec: 1e6,
                ..TrackerSection::default()
            },
            ..EdgeConfig::default()
        })
        .await
        .context("starting the edge")?;
        let mut cluster = Self {
            config,
            origin,
            edge,
            source: sample,
            encoder: None,
            more_channels: Vec::new(),
            next_peer: 0,
        };
        cluster.start_encoder()?;
        Ok(cluster)
    }

    /// Starts pushing the source to the origin (again): after a stop, the
    /// origin marks a discontinuity.
    pub fn start_encoder(&mut self) -> anyhow::Result<()> {
        if self.encoder.is_none() {
            let origin = self.origin_url();
            self.encoder = Some(Encoder::start(
                self.source.clone(),
                &origin,
                &self.config.channel,
            )?);
        }
        Ok(())
    }

    /// Stops the encoder, as a producer's encoder dropping out: the origin
    /// cuts no more segments until [`start_encoder`](Self::start_encoder).
    pub async fn stop_encoder(&mut self) {
        if let Some(e) = self.encoder.take() {
            e.stop().await;
        }
    }

    /// The setup.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The origin's base URL.
    pub fn origin_url(&self) -> String {
        format!("http://{}", self.origin.local_addr())
    }

    /// The edge's base URL.
    pub fn edge_url(&self) -> String {
        format!("http://{}", self.edge.local_addr())
    }

    /// A client for the edge.
    pub fn edge_client(&self) -> EdgeClient {
        EdgeClient::new(
            &self
                .edge_url()
                .parse()
                .unwrap_or_else(|_| http_uri_fallback()),
        )
    }

    /// A client for the origin.
    pub fn origin_client(&self) -> EdgeClient {
        EdgeClient::new(
            &self
                .origin_url()
                .parse()
                .unwrap_or_else(|_| http_uri_fallback()),
        )
    }

    /// Starts another channel, `channel`, fed the same source by an
    /// encoder of its own, and waits until the edge lists three segments
    /// of it.
    pub async fn start_channel(&mut self, channel: &str) -> anyhow::Result<()> {
        let origin = self.origin_url();
        self.more_channels
            .push(Encoder::start(self.source.clone(), &origin, channel)?);
        self.wait_for_channel(channel, 3, Duration::from_secs(30))
            .await
    }

    /// Waits until the edge serves a playlist listing `segments` segments.
    pub async fn wait_for_stream(&self, segments: usize, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_channel(&self.config.channel, segments, timeout)
            .await
    }

    /// Waits until the edge serves a playlist of `channel` listing
    /// `segments` segments.
    pub async fn wait_for_channel(
        &self,
        channel: &str,
        segments: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let client = self.edge_client();
        let path = format!("/live/{channel}/index.m3u8");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(b) = client.get(&path, 1 << 20, Duration::from_secs(3)).await {
                if b.windows(7).filter(|w| w == b"#EXTINF").count() >= segments {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("channel {channel} did not start within {timeout:?}");
            }
            // The origin cuts a segment every two seconds; look again soon.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts a peer and waits for its "peer ready" line.
    pub async fn spawn_peer(&mut self, options: PeerOptions) -> anyhow::Result<PeerProcess> {
        let number = self.next_peer;
        self.next_peer += 1;
        spawn_peer(&self.config, &[self.edge_url()], number, options).await
    }

    /// Stops the encoders, the edge and the origin.
    pub async fn shutdown(mut self) {
        self.stop_encoder().await;
        for e in std::mem::take(&mut self.more_channels) {
            e.stop().await;
        }
        self.edge.shutdown().await;
        self.origin.shutdown().await;
    }
}

/// How much lower than this process the peers it starts are scheduled
/// (`nice -n`; see [`spawn_peer`]).
const PEER_NICENESS: &str = "10";

/// Starts peer number `number` given `edges` and waits for its "peer
/// ready" line.
pub async fn spawn_peer(
    config: &ClusterConfig,
    edges: &[String],
    number: usize,
    options: PeerOptions,
) -> anyhow::Result<PeerProcess> {
    let log_path = config.work_dir.join(format!("peer-{number}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    // Peers stand for viewers' own machines; the origin, the edge, the
    // lab's link emulator and the players run in this process and stand
    // for servers and screens with CPUs of their own. Sharing one
    // machine, the peers yield to them: starved by a hundred peers, the
    // edge answered heartbeats late, evicted live peers, and fed their
    // orphaned children over HTTP, which starved it further (the
    // 100-peer lab collapsed that way, twice a run). For the same reason
    // each peer runs one runtime thread: one per core in every peer made
    // a hundred processes wake each other's idle threads (a tenth of the
    // lab's CPU went to task switches). `nice` and `ip netns exec` both
    // exec what follows: the pid is the peer's.
    let mut cmd = Command::new("nice");
    cmd.args(["-n", PEER_NICENESS]);
    let quic = match &options.net {
        Some(net) => {
            cmd.args(["ip", "netns", "exec", &net.netns]);
            format!("{}:0", net.wan)
        }
        None => "127.0.0.1:0".to_string(),
    };
    cmd.arg(&config.peer_exe);
    cmd.arg("peer");
    for e in edges {
        cmd.args(["--edge", e]);
    }
    if !options.no_channel {
        cmd.args(["--channel", &config.channel]);
    }
    let proxy = options
        .proxy_listen
        .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
    cmd.args(&options.args)
        .args(["--proxy-listen", &proxy])
        .args(["--quic-listen", &quic])
        .args(["--buffer-secs", &config.buffer_secs.to_string()])
        .arg("--exit-with-stdin");
    if let Some(k) = options.max_upload_kbps {
        cmd.args(["--max-upload", &k.to_string()]);
    }
    if let Some(n) = options.tamper_every {
        cmd.args(["--tamper-every", &n.to_string()]);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .stdin(Stdio::piped())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("TOKIO_WORKER_THREADS", "1")
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", config.peer_exe.display()))?;
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("peer stdout not captured"))?;
    let mut lines = BufReader::new(stdout).lines();
    let proxy = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(proxy) = ready_line_proxy(&line) {
                return Ok(proxy);
            }
        }
        Err(anyhow!(
            "peer {number} exited before it was ready; see {}",
            log_path.display()
        ))
    })
    .await
    .map_err(|_| {
        anyhow!(
            "peer {number} not ready within 30 s; see {}",
            log_path.display()
        )
    })??;
    // Keep reading so the peer never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(PeerProcess {
        number,
        proxy,
        channel: if options.no_channel {
            String::new()
        } else {
            config.channel.clone()
        },
        options,
        started,
        child,
        _stdin: stdin,
    })
}

/// The proxy address in a peer's "peer ready: ... status http://ADDR/status" line.
fn ready_line_proxy(line: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix("peer ready:")?;
    let status = rest.split_whitespace().find(|w| w.ends_with("/status"))?;
    status
        .trim_start_matches("http://")
        .trim_end_matches("/status")
        .parse()
        .ok()
}

/// The executable to run peers with when none is given: this one.
pub fn current_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding this executable to run peers with")
}

/// A fresh work directory under `base`, named by the time.
pub fn work_dir(base: &Path, prefix: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    base.join(format!("{prefix}-{stamp}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_names_the_proxy() {
        let line = "peer ready: play http://127.0.0.1:4000/live/demo/index.m3u8  status http://127.0.0.1:4000/status  quic 127.0.0.1:5000";
        assert_eq!(
            ready_line_proxy(line),
            Some("127.0.0.1:4000".parse().expect("addr"))
        );
        assert_eq!(ready_line_proxy("something else"), None);
    }
}
