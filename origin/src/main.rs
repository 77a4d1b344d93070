//! `origin`: serve live HLS from an MPEG-TS feed, or push a feed to an origin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use treecast_origin::config::{FileInput, RtmpInput, SrtInput, UdpInput};
use treecast_origin::push_client::{run_push, PushConfig};
use treecast_origin::source::Input;
use treecast_origin::{OriginConfig, OriginHandle};
use treecast_proto::app::help_with_default;
use treecast_proto::ChannelName;

#[derive(Parser, Debug)]
#[command(
    name = "origin",
    version,
    about = "treecast origin: live MPEG-TS in, signed HLS out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the origin: accept publishers, cut and sign segments, serve HLS.
    Serve(ServeArgs),
    /// Push a file, stdin or a UDP feed to a running origin and show its health.
    Ingest(IngestArgs),
    /// Print the origin's public signing key (creating the key if needed).
    Key(KeyArgs),
}

#[derive(Parser, Debug)]
struct ServeArgs {
    /// TOML config file (see docs/origin.md); flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, help = help_with_default("HTTP listen address", &defaults().listen))]
    listen: Option<SocketAddr>,
    /// Data directory for the signing key and channel state.
    #[arg(long, help = help_with_default("Data directory for the signing key and channel state", &defaults().data_dir.display()))]
    data: Option<PathBuf>,
    /// Require this publish key from publishers.
    #[arg(long, env = "TREECAST_PUBLISH_KEY", hide_env_values = true)]
    publish_key: Option<String>,
    /// Accept RTMP publishers on this address (e.g. 0.0.0.0:1935): OBS's
    /// server rtmp://HOST:1935/live, stream key <channel>[?key=<publish key>].
    #[arg(long, value_name = "ADDR")]
    rtmp: Option<SocketAddr>,
    /// Accept SRT callers on this UDP address (e.g. 0.0.0.0:9000):
    /// srt://HOST:9000?streamid=<channel>, passphrase = the publish key.
    #[arg(long, value_name = "ADDR")]
    srt: Option<SocketAddr>,
    /// Receive MPEG-TS over UDP: ADDR=CHANNEL, e.g. 127.0.0.1:5000=demo. Repeatable.
    #[arg(long, value_name = "ADDR=CHANNEL")]
    udp: Vec<String>,
    /// Loop an MPEG-TS file into a channel in real time: PATH=CHANNEL, e.g.
    /// media/sample.ts=demo. Repeatable.
    #[arg(long, value_name = "PATH=CHANNEL")]
    file: Vec<String>,
    /// Seconds of media per segment (cut at the first keyframe after this).
    #[arg(long)]
    segment_seconds: Option<f64>,
    /// Fix EXT-X-TARGETDURATION to this many seconds (default: learned from
    /// each stream's first GOP, up to segments.max_target_duration).
    #[arg(long)]
    target_duration: Option<u64>,
}

#[derive(Parser, Debug)]
struct IngestArgs {
    /// MPEG-TS file to push, or - for stdin. Omit with --udp.
    input: Option<String>,
    /// Base URL of the origin.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    origin: http::Uri,
    /// Channel to publish to.
    #[arg(long, default_value = "demo")]
    channel: ChannelName,
    /// Publish key, if the origin requires one.
    #[arg(long, env = "TREECAST_PUBLISH_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Repeat the file forever (the origin marks each restart as a discontinuity).
    #[arg(long = "loop")]
    looped: bool,
    /// Send at the stream's own pace, by its timestamps (like ffmpeg -re).
    #[arg(long)]
    realtime: bool,
    /// Relay MPEG-TS datagrams received on this address instead of a file.
    #[arg(long, value_name = "ADDR", conflicts_with = "input")]
    udp: Option<SocketAddr>,
    /// Don't print the status line.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Parser, Debug)]
struct KeyArgs {
    /// Data directory holding origin.key.
    #[arg(long, help = help_with_default("Data directory holding origin.key", &defaults().data_dir.display()))]
    data: Option<PathBuf>,
    /// Config file naming the data directory or key file.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

fn defaults() -> OriginConfig {
    OriginConfig::default()
}

fn main() -> ExitCode {
    treecast_proto::app::run_main(run(Cli::parse()))
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<OriginConfig> {
    Ok(match path {
        Some(p) => OriginConfig::from_file(p)?,
        None => OriginConfig::default(),
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
            let mut config = load_config(a.config.as_ref())?;
            if let Some(l) = a.listen {
                config.listen = l;
            }
            if let Some(d) = a.data {
                config.data_dir = d;
            }
            if a.publish_key.is_some() {
                config.publish.key = a.publish_key;
            }
            if let Some(s) = a.segment_seconds {
                config.segments.segment_seconds = s;
            }
            if let Some(t) = a.target_duration {
                config.segments.target_duration = Some(t);
            }
            if let Some(listen) = a.rtmp {
                config.rtmp = Some(RtmpInput { listen });
            }
            if let Some(listen) = a.srt {
                config.srt = Some(SrtInput::on(listen));
            }
            for u in &a.udp {
                let (addr, channel) = u
                    .split_once('=')
                    .with_context(|| format!("--udp {u}: expected ADDR=CHANNEL"))?;
                config.udp.push(UdpInput {
                    listen: addr
                        .parse()
                        .with_context(|| format!("--udp {u}: bad address"))?,
                    channel: channel.to_owned(),
                });
            }
            for f in &a.file {
                let (path, channel) = f
                    .rsplit_once('=')
                    .with_context(|| format!("--file {f}: expected PATH=CHANNEL"))?;
                config.file.push(FileInput {
                    path: PathBuf::from(path),
                    channel: channel.to_owned(),
                });
            }
            let looped: Vec<String> = config.file.iter().map(|f| f.channel.clone()).collect();
            let stop = treecast_proto::app::shutdown_listener()
                .context("listening for Ctrl-C and SIGTERM")?;
            let origin = OriginHandle::start(config).await?;
            eprintln!(
                "origin serving on http://{0}  (playlists at http://{0}/live/<channel>/index.m3u8, publish with PUT http://{0}/ingest/<channel>)\npublic key: {1}",
                origin.local_addr(),
                origin.public_key()
            );
            for f in &looped {
                eprintln!("play: http://{}/live/{}/index.m3u8", origin.local_addr(), f);
            }
            stop.await;
            eprintln!("shutting down");
            origin.shutdown().await;
            Ok(())
        }
        Command::Ingest(a) => {
            let input = match (a.input.as_deref(), a.udp) {
                (_, Some(addr)) => Input::Udp(addr),
                (Some("-"), None) => Input::Stdin,
                (Some(path), None) => Input::File(PathBuf::from(path)),
                (None, None) => anyhow::bail!("give an input file, - for stdin, or --udp ADDR"),
            };
            let config = PushConfig {
                input,
                origin: a.origin,
                channel: a.channel,
                key: a.key,
                looped: a.looped,
                realtime: a.realtime,
                status_every: (!a.quiet).then_some(Duration::from_secs(1)),
            };
            let (stop_tx, stop_rx) = watch::channel(false);
            tokio::spawn(async move {
                if treecast_proto::app::shutdown_signal().await.is_ok() {
                    let _ = stop_tx.send(true);
                }
            });
            let summary = run_push(config, stop_rx).await?;
            eprintln!(
                "done: sent {:.1} MB, origin cut {} segments, {} input problems seen",
                summary.bytes as f64 / 1e6,
                summary.segments,
                summary.local_problems
            );
            Ok(())
        }
        Command::Key(a) => {
            let mut config = load_config(a.config.as_ref())?;
            if let Some(d) = a.data {
                config.data_dir = d;
            }
            let path = config.signing_key_path();
            let (seed, created) = treecast_proto::keyfile::load_or_create(&path)?;
            let key = treecast_proto::OriginKey::from_seed(seed);
            if created {
                eprintln!("generated a new signing key in {}", path.display());
            }
            println!("{}", key.public());
            Ok(())
        }
    }
}
