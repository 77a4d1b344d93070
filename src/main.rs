//! `treecast`: run the demo, the swarm harness, or one peer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use treecast::cluster::{current_exe, work_dir, ClusterConfig};
use treecast::failover::FailoverConfig;
use treecast::netlab::profile::{Profile, LINK_SEED};
use treecast::netlab::Lab;
use treecast::rng::Rng;
use treecast::swarm::{self, NetRun, SwarmConfig};

#[derive(Parser, Debug)]
#[command(
    name = "treecast",
    version,
    about = "treecast: live webcast CDN where the viewers carry the load"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Origin + edge + peers on loopback, looping the shipped sample clip.
    Demo(DemoArgs),
    /// Run the swarm harness and print its report.
    Swarm(SwarmArgs),
    /// Measure one peer relaying a stream to its children (CPU, memory).
    RelayBench(RelayArgs),
    /// Measure the viewer's agent with nothing playing: CPU, memory and
    /// upload, before and after a player used it (see benches/agent-idle.sh).
    AgentBench(AgentBenchArgs),
    /// Load an edge's tracker over HTTP: join an audience, then send
    /// heartbeats as fast as it answers (see benches/tracker-http.sh).
    TrackerLoad(TrackerLoadArgs),
    /// Simulate a whole live event around the real tracker core (no
    /// sockets; the same seed gives the same report; docs/sim.md).
    Sim(SimArgs),
    /// Run the viewer's agent, or manage it as a service (the same as the
    /// `peer` binary).
    Peer(Box<treecast_peer::cli::Cli>),
    /// Run an edge (the same as the `edge` binary).
    Edge(treecast_edge::cli::Cli),
    /// Several edges behind an nginx shield, one SIGKILLed mid-run: how its
    /// audience moves (docs/operations.md).
    Failover(FailoverArgs),
}

/// `treecast failover` flags; unset ones take [`FailoverConfig::new`]'s
/// defaults.
#[derive(Parser, Debug)]
struct FailoverArgs {
    /// Peers (each with a simulated player) [default: 40].
    #[arg(long)]
    peers: Option<usize>,
    /// Edge processes, at least 2 [default: 2].
    #[arg(long)]
    edges: Option<usize>,
    /// Pull straight from the origin instead of through an nginx shield.
    #[arg(long)]
    no_shield: bool,
    /// Seconds after the last peer started before the busiest edge is killed [default: 20].
    #[arg(long)]
    kill_after: Option<f64>,
    /// Seconds measured after the kill [default: 20].
    #[arg(long)]
    after: Option<f64>,
    /// Peers each edge feeds itself [default: 1].
    #[arg(long)]
    root_slots: Option<u32>,
    /// Directory for state and logs [default: a new one under the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(Parser, Debug)]
struct TrackerLoadArgs {
    /// The edge's HTTP address.
    #[arg(long)]
    edge: SocketAddr,
    /// Peers to join.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Keep-alive connections, each from its own 127.1.x.y address.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of heartbeats after the joins.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Channel joined.
    #[arg(long, default_value = "load")]
    channel: String,
    /// The edge's pid, to report the edge's CPU time (a per-core figure).
    #[arg(long)]
    edge_pid: Option<u32>,
}

#[derive(Parser, Debug)]
struct SimArgs {
    /// Audience: viewers the event brings in (with --churn: viewers kept).
    #[arg(long, default_value_t = 100_000)]
    viewers: usize,
    /// Simulated minutes (with --churn: measured after everyone joined).
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,
    /// Seed of every draw: the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Links from a network profile (lan, residential, mobile-heavy, or a
    /// TOML file: docs/netlab.md) [default: loopback, unlimited upload].
    #[arg(long, value_name = "PROFILE")]
    net: Option<String>,
    /// Replace this fraction of the audience per minute, as
    /// `treecast swarm --churn` does, instead of the live event's
    /// sessions (flash crowd, Weibull sessions, mass departure).
    #[arg(long, value_name = "FRACTION_PER_MINUTE")]
    churn: Option<f64>,
    /// With --churn: milliseconds between the initial joins (the swarm
    /// harness starts one peer process after another).
    #[arg(long, default_value_t = 150)]
    join_every_ms: u64,
    /// Joins in the first minute [default: half the audience].
    #[arg(long)]
    flash: Option<usize>,
    /// Mean session, minutes (Weibull, shape --session-shape).
    #[arg(long, default_value_t = 20.0)]
    session_minutes: f64,
    /// Weibull shape of session lengths (below 1: heavy-tailed).
    #[arg(long, default_value_t = 0.5)]
    session_shape: f64,
    /// Stream bitrate, kb/s (the tracker's stream_kbps too).
    #[arg(long, default_value_t = 2_500)]
    stream_kbps: u32,
    /// Segment length, seconds.
    #[arg(long, default_value_t = 2.0)]
    segment_secs: f64,
    /// Peers the edge feeds itself.
    #[arg(long, default_value_t = 4)]
    root_slots: u32,
    /// Most children of any peer.
    #[arg(long, default_value_t = 6)]
    max_children: u8,
    /// Children a promoted peer may take before it proves its upload.
    #[arg(long, default_value_t = 2)]
    probation_slots: u8,
    /// Fraction of viewers with no upload.
    #[arg(long, default_value_t = 0.1)]
    leaf_only_fraction: f64,
    /// Fraction of viewers that corrupt what they forward.
    #[arg(long, default_value_t = 0.02)]
    corrupt_fraction: f64,
    /// Fraction of departures that vanish (SIGKILL) instead of leaving.
    #[arg(long, default_value_t = 0.5)]
    kill_fraction: f64,
    /// Write the JSON report to FILE and its plot to FILE with `.svg`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print the whole JSON report (with the timeline) to stdout instead
    /// of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Parser, Debug)]
struct DemoArgs {
    /// Number of peers.
    #[arg(long, default_value_t = 4)]
    peers: usize,
    /// Edge HTTP address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    edge_listen: std::net::SocketAddr,
    /// Origin HTTP address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    origin_listen: std::net::SocketAddr,
    /// Peers the edge feeds itself.
    #[arg(long, default_value_t = 2)]
    root_slots: u32,
    /// Directory for state and logs [default: a new one under the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[derive(Parser, Debug)]
struct SwarmArgs {
    /// Peers alive at any time.
    #[arg(long, default_value_t = 20)]
    peers: usize,
    /// Measured run length in seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Fraction of the peers replaced per minute (0.2: a fifth each minute).
    #[arg(long, default_value_t = 0.0, value_name = "FRACTION_PER_MINUTE")]
    churn: f64,
    /// Fraction of the replaced peers killed with SIGKILL instead of leaving.
    #[arg(long, default_value_t = 0.0)]
    kill_fraction: f64,
    /// Fraction of peers with zero upload (leaf only).
    #[arg(long, default_value_t = 0.0)]
    zero_upload_fraction: f64,
    /// Fraction of peers that corrupt every segment they forward.
    #[arg(long, default_value_t = 0.0)]
    corrupt_fraction: f64,
    /// The first N peers to join corrupt what they forward (they sit
    /// shallow and get children: the worst case for the tree).
    #[arg(long, default_value_t = 0, value_name = "N")]
    corrupt_first: usize,
    /// Churn's SIGKILLs pick a peer that has children when there is one.
    #[arg(long)]
    kill_parents: bool,
    /// Stop the encoder AT seconds into the run for SECS seconds, so every
    /// player stalls (checks that the stall figures see it).
    #[arg(long, value_name = "AT:SECS", value_parser = parse_gap)]
    encoder_gap: Option<(Duration, Duration)>,
    /// Peers the edge feeds itself.
    #[arg(long, default_value_t = 2)]
    root_slots: u32,
    /// Most children of any peer.
    #[arg(long, default_value_t = 4)]
    max_children: u8,
    /// Seed for roles, churn and the lab's links.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How far behind live the peers' local playlists end, seconds: the
    /// slack the tree's lateness has before a player could wait (the
    /// agent's own default is 4).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    buffer_secs: f64,
    /// Seconds after the last peer started before the measured window
    /// opens (egress, offload and fallbacks count after it; stalls from
    /// each player's start).
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    warmup: f64,
    /// Print only the JSON report.
    #[arg(long)]
    json: bool,
    /// Directory for state and peer logs [default: a new one under the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Run every peer in its own network namespace behind an emulated link
    /// drawn from PROFILE: a shipped profile (lan, residential,
    /// mobile-heavy) or the path of a TOML file (docs/netlab.md). Needs
    /// root. Without it the peers run on loopback.
    #[arg(long, value_name = "PROFILE")]
    net: Option<String>,
    /// MPEG-TS file the origin loops [default: the shipped sample, 1.75 Mb/s].
    #[arg(long, value_name = "FILE")]
    source: Option<PathBuf>,
    /// The stream's bitrate, kb/s, for the tracker's slots (one child per
    /// this much upload delivered) and the lab's physical limit; set it
    /// with --source [default: the shipped sample's].
    #[arg(long, value_name = "KBPS")]
    stream_kbps: Option<u32>,
}

#[derive(Parser, Debug)]
struct RelayArgs {
    /// MPEG-TS file for the origin to loop [default: the shipped sample].
    #[arg(long)]
    source: Option<PathBuf>,
    /// Children of the relay.
    #[arg(long, default_value_t = 4)]
    children: usize,
    /// Measured window in seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Directory for state and peer logs [default: a new one under the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// `treecast agent-bench` flags.
#[derive(Parser, Debug)]
struct AgentBenchArgs {
    /// Each measured window, seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// How long a player plays a channel between the two windows, seconds.
    #[arg(long, default_value_t = 20.0)]
    play_seconds: f64,
    /// Directory for state and peer logs [default: a new one under the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn parse_gap(s: &str) -> Result<(Duration, Duration), String> {
    let (at, len) = s
        .split_once(':')
        .ok_or_else(|| format!("expected AT:SECS, got {s:?}"))?;
    let secs = |v: &str| {
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{v:?} is not a number of seconds"))
    };
    Ok((secs(at)?, secs(len)?))
}

fn fraction(name: &str, v: f64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&v) {
        anyhow::bail!("--{name} must be between 0 and 1, got {v}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The lab's namespaces must exist, and this thread be inside the
    // harness's, before the runtime starts its threads: a thread is born
    // in the network namespace of the thread that starts it.
    let lab = match &cli.command {
        Command::Swarm(a) => match a.net.as_deref().map(|p| open_lab(p, a)).transpose() {
            Ok(lab) => lab,
            Err(e) => {
                eprintln!("error: {}", treecast_proto::app::describe(&e));
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let net = lab.as_ref().map(|(lab, profile)| NetRun {
        profile: profile.clone(),
        router: lab.router(),
        edge: lab.edge(),
        slots: lab.peers().to_vec(),
        sites: lab.sites().to_vec(),
        lateness: lab.lateness(),
    });
    // The demo's terminal shows its own progress and URLs; the roles' log
    // lines go to a file in its work directory.
    let mut cli = cli;
    let log = match &mut cli.command {
        Command::Demo(a) => {
            let dir = a
                .work_dir
                .get_or_insert_with(|| work_dir(&std::env::temp_dir(), "treecast-demo"));
            Some(dir.join("demo.log"))
        }
        _ => None,
    };
    let code = treecast_proto::app::run_main_logging_to(log.as_deref(), run(cli, net));
    // After the runtime, and with it every peer process, is gone.
    drop(lab);
    code
}

/// Builds the network lab for a swarm run and enters it.
fn open_lab(profile: &str, a: &SwarmArgs) -> anyhow::Result<(Lab, String)> {
    let profile = Profile::load(profile)?;
    let places = profile
        .places(a.peers, &mut Rng::new(a.seed ^ LINK_SEED))
        .map_err(anyhow::Error::msg)?;
    let lab = Lab::create(profile.edge, places, profile.sites.clone(), a.seed)?;
    lab.enter()?;
    Ok((lab, profile.name))
}

async fn run(cli: Cli, net: Option<NetRun>) -> anyhow::Result<()> {
    match cli.command {
        Command::Peer(p) => treecast_peer::cli::run(*p).await,
        Command::Edge(e) => treecast_edge::cli::run(e).await,
        Command::Sim(a) => sim(a),
        Command::Failover(a) => {
            let dir = a
                .work_dir
                .unwrap_or_else(|| work_dir(&std::env::temp_dir(), "treecast-failover"));
            let mut config = FailoverConfig::new(dir.clone(), current_exe()?);
            let secs = |v: f64| {
                (v.is_finite() && v > 0.0)
                    .then(|| Duration::from_secs_f64(v))
                    .ok_or_else(|| anyhow::anyhow!("{v} is not a positive number of seconds"))
            };
            config.peers = a.peers.unwrap_or(config.peers);
            config.edges = a.edges.unwrap_or(config.edges);
            config.shield = !a.no_shield;
            if let Some(k) = a.kill_after {
                config.kill_after = secs(k)?;
            }
            if let Some(k) = a.after {
                config.after = secs(k)?;
            }
            config.root_slots = a.root_slots.unwrap_or(config.root_slots);
            let report = tokio::select! {
                r = treecast::failover::run(config) => r?,
                r = treecast_proto::app::shutdown_signal() => {
                    r?;
                    anyhow::bail!("interrupted; the failover run was stopped");
                }
            };
            eprintln!("failover run finished; logs in {}", dir.display());
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::TrackerLoad(a) => {
            let report = treecast::tracker_load::run(treecast::tracker_load::LoadConfig {
                edge: a.edge,
                peers: a.peers,
                clients: a.clients,
                duration: Duration::from_secs_f64(a.seconds),
                channel: a.channel,
                edge_pid: a.edge_pid,
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::RelayBench(a) => {
            let dir = a
                .work_dir
                .unwrap_or_else(|| work_dir(&std::env::temp_dir(), "treecast-relay"));
            let config = ClusterConfig::new(dir, current_exe()?);
            let report = treecast::relay_bench::run(
                config,
                a.source,
                a.children,
                Duration::from_secs_f64(a.seconds),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::AgentBench(a) => {
            let dir = a
                .work_dir
                .unwrap_or_else(|| work_dir(&std::env::temp_dir(), "treecast-agent"));
            let config = ClusterConfig::new(dir, current_exe()?);
            let report = treecast::relay_bench::idle(
                config,
                Duration::from_secs_f64(a.seconds),
                Duration::from_secs_f64(a.play_seconds),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Demo(a) => {
            let dir = a
                .work_dir
                .unwrap_or_else(|| work_dir(&std::env::temp_dir(), "treecast-demo"));
            let mut config = ClusterConfig::new(dir, current_exe()?);
            config.edge_listen = a.edge_listen;
            config.origin_listen = a.origin_listen;
            config.root_slots = a.root_slots;
            // Installed before the demo prints where to play and watch.
            let stop = treecast_proto::app::shutdown_listener()
                .map_err(|e| anyhow::anyhow!("listening for Ctrl-C and SIGTERM: {e}"))?;
            treecast::demo::run(config, a.peers, stop).await
        }
        Command::Swarm(a) => {
            fraction("kill-fraction", a.kill_fraction)?;
            fraction("zero-upload-fraction", a.zero_upload_fraction)?;
            fraction("corrupt-fraction", a.corrupt_fraction)?;
            if !(a.churn >= 0.0 && a.duration > 0.0 && a.peers > 0) {
                anyhow::bail!("--peers and --duration must be positive and --churn not negative");
            }
            let dir = a
                .work_dir
                .unwrap_or_else(|| work_dir(&std::env::temp_dir(), "treecast-swarm"));
            let mut cluster = ClusterConfig::new(dir.clone(), current_exe()?);
            if !(a.buffer_secs >= 0.0 && a.buffer_secs <= 60.0) {
                anyhow::bail!("--buffer-secs must be between 0 and 60");
            }
            cluster.root_slots = a.root_slots;
            cluster.max_children = a.max_children;
            cluster.buffer_secs = a.buffer_secs;
            cluster.source = a.source;
            if let Some(k) = a.stream_kbps.filter(|&k| k > 0) {
                cluster.stream_kbps = k;
            }
            if net.is_some() {
                let edge = SocketAddr::new(treecast::netlab::EDGE_IP.into(), 0);
                cluster.edge_listen = edge;
                cluster.edge_quic_listen = edge;
            }
            let swarm = swarm::run(SwarmConfig {
                cluster,
                peers: a.peers,
                duration: Duration::from_secs_f64(a.duration),
                churn_per_minute: a.churn,
                kill_fraction: a.kill_fraction,
                zero_upload_fraction: a.zero_upload_fraction,
                corrupt_fraction: a.corrupt_fraction,
                corrupt_first: a.corrupt_first,
                kill_parents: a.kill_parents,
                encoder_gap: a.encoder_gap,
                seed: a.seed,
                warmup: Duration::from_secs_f64(a.warmup.max(0.0)),
                net,
            });
            // Ctrl-C or SIGTERM: stop the peers (dropping the run kills
            // them) and let `main` remove the lab.
            let report = tokio::select! {
                r = swarm => r?,
                r = treecast_proto::app::shutdown_signal() => {
                    r?;
                    anyhow::bail!("interrupted; the swarm run was stopped");
                }
            };
            let json = serde_json::to_string_pretty(&report)?;
            if !a.json {
                eprintln!("swarm finished; peer logs in {}", dir.display());
            }
            println!("{json}");
            Ok(())
        }
    }
}

fn sim(a: SimArgs) -> anyhow::Result<()> {
    use treecast::sim::{self, Sessions, SimConfig};
    let profile = a.net.as_deref().map(Profile::load).transpose()?;
    if !(a.minutes.is_finite() && a.segment_secs.is_finite()) {
        anyhow::bail!("--minutes and --segment-secs must be numbers");
    }
    let mut c = SimConfig::event(a.viewers, a.minutes, a.seed, profile);
    c.tracker.stream_kbps = a.stream_kbps;
    c.tracker.root_slots = a.root_slots;
    c.tracker.max_children = a.max_children;
    c.tracker.probation_slots = a.probation_slots;
    c.segment_ms = (a.segment_secs * 1000.0) as u64;
    c.leaf_only_fraction = a.leaf_only_fraction;
    c.corrupt_fraction = a.corrupt_fraction;
    c.kill_fraction = a.kill_fraction;
    match (&mut c.sessions, a.churn) {
        (sessions, Some(per_minute)) => {
            *sessions = Sessions::Churn {
                join_every_ms: a.join_every_ms,
                per_minute,
            }
        }
        (
            Sessions::Event {
                flash,
                shape,
                mean_ms,
                ..
            },
            None,
        ) => {
            *flash = a.flash.unwrap_or(*flash).min(a.viewers);
            *shape = a.session_shape;
            *mean_ms = a.session_minutes * 60_000.0;
        }
        (Sessions::Churn { .. }, None) => {}
    }
    c.validate().map_err(anyhow::Error::msg)?;
    let started = std::time::Instant::now();
    let report = sim::run(&c);
    let wall = started.elapsed();
    eprintln!(
        "simulated {:.1} min of {} viewers in {:.2} s ({:.0}x real time, {} events)",
        c.total_ms() as f64 / 60_000.0,
        a.viewers,
        wall.as_secs_f64(),
        sim::speed(&c, wall),
        report.events
    );
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &a.out {
        std::fs::write(path, &json)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        let svg = path.with_extension("svg");
        std::fs::write(&svg, sim::plot::svg(&report))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", svg.display()))?;
        eprintln!("report in {}, plot in {}", path.display(), svg.display());
    }
    if a.json {
        println!("{json}");
    } else {
        let mut summary = serde_json::to_value(&report)?;
        if let Some(m) = summary.as_object_mut() {
            m.remove("timeline");
        }
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}
