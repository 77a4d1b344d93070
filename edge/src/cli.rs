//! The `edge` command line, shared by the `edge` binary and `treecast edge`.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::{EdgeConfig, EdgeHandle};
use anyhow::Context;
use clap::{Parser, Subcommand};
use treecast_proto::app::help_with_default;

/// `edge` flags.
#[derive(Parser, Debug)]
#[command(
    name = "edge",
    version,
    about = "treecast edge: a coalescing cache of the origin"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the edge.
    Serve(ServeArgs),
}

#[derive(Parser, Debug)]
struct ServeArgs {
    /// TOML config file (see docs/edge.md); flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, help = help_with_default("HTTP listen address", &defaults().listen))]
    listen: Option<SocketAddr>,
    /// Base URL to pull from: the origin, another edge or an HTTP cache.
    #[arg(long, value_name = "URL", help = help_with_default("Base URL to pull from: the origin, another edge or an HTTP cache", &defaults().origin))]
    origin: Option<String>,
    /// The origin's public key (hex) to check segments with [default: asked from --origin].
    #[arg(long, value_name = "HEX")]
    origin_key: Option<String>,
    /// Directory for the ticket signing key.
    #[arg(long, help = help_with_default("Directory for the ticket signing key", &defaults().data_dir.display()))]
    data_dir: Option<PathBuf>,
    /// Byte budget of the segment cache in MiB.
    #[arg(long, help = help_with_default("Byte budget of the segment cache in MiB", &defaults().cache_max_mb))]
    cache_max_mb: Option<usize>,
    /// QUIC (UDP) address for the edge's direct children.
    #[arg(long, help = help_with_default("QUIC (UDP) address for the edge's direct children", &defaults().quic_listen))]
    quic_listen: Option<SocketAddr>,
}

fn defaults() -> EdgeConfig {
    EdgeConfig::default()
}

/// Runs the edge until Ctrl-C or SIGTERM, then drains and stops.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Command::Serve(a) = cli.command;
    let mut config = match &a.config {
        Some(p) => EdgeConfig::from_file(p)?,
        None => EdgeConfig::default(),
    };
    if let Some(l) = a.listen {
        config.listen = l;
    }
    if let Some(o) = a.origin {
        config.origin = o;
    }
    if a.origin_key.is_some() {
        config.origin_key = a.origin_key;
    }
    if let Some(d) = a.data_dir {
        config.data_dir = d;
    }
    if let Some(m) = a.cache_max_mb {
        config.cache_max_mb = m;
    }
    if let Some(q) = a.quic_listen {
        config.quic_listen = q;
    }
    let stop =
        treecast_proto::app::shutdown_listener().context("listening for Ctrl-C and SIGTERM")?;
    let edge = EdgeHandle::start(config).await?;
    eprintln!(
        "edge serving on http://{0}  (playlists at http://{0}/live/<channel>/index.m3u8, tracker at http://{0}/tracker/v1/, metrics at http://{0}/metrics); tree root on QUIC {1}",
        edge.local_addr(),
        edge.quic_addr()
    );
    stop.await;
    eprintln!("shutting down");
    edge.shutdown().await;
    Ok(())
}
