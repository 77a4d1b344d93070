//! The `peer` command line, shared by the `peer` binary and `treecast peer`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use crate::{PeerConfig, PeerHandle};
use treecast_proto::app::help_with_default;

/// `peer` flags.
#[derive(Parser, Debug)]
#[command(
    name = "peer",
    version,
    about = "treecast peer: receive a live channel through the viewer tree, relay it, and serve it to a local player"
)]
pub struct Cli {
    /// TOML config file (see docs/peer.md); flags override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Base URL of an edge; repeat for the event's other edges (the
    /// nearest is used, the others when it fails).
    #[arg(long, value_name = "URL", help = help_with_default("Base URL of an edge; repeat for the event's other edges (the nearest is used, the others when it fails)", &defaults().edge.join(" ")))]
    pub edge: Vec<String>,
    /// Channel to watch.
    #[arg(long, help = help_with_default("Channel to watch", &defaults().channel))]
    pub channel: Option<String>,
    /// Local proxy address for the player, loopback only.
    #[arg(long, help = help_with_default("Local proxy address for the player, loopback only", &defaults().proxy_listen))]
    pub proxy_listen: Option<SocketAddr>,
    /// QUIC (UDP) address for parent and children.
    #[arg(long, help = help_with_default("QUIC (UDP) address for parent and children", &defaults().quic_listen))]
    pub quic_listen: Option<SocketAddr>,
    /// QUIC address to give the tracker [default: the bound port on this host's address towards the edge].
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// Upload cap in kb/s over all children; 0 = leaf only [default: no cap].
    #[arg(long = "max-upload", value_name = "KBPS")]
    pub max_upload_kbps: Option<u32>,
    /// Seconds the local playlist trails live.
    #[arg(long, help = help_with_default("Seconds the local playlist trails live", &defaults().buffer_secs))]
    pub buffer_secs: Option<f64>,
    /// The origin's public key (hex) to pin [default: ask the edge].
    #[arg(long)]
    pub origin_key: Option<String>,
    /// Site label; peers on one site prefer each other.
    #[arg(long)]
    pub site: Option<String>,
    /// Viewer token, for channels that need one.
    #[arg(long, env = "TREECAST_TOKEN")]
    pub token: Option<String>,
    /// Fault injection for tests: corrupt every Nth segment forwarded.
    #[arg(long, hide = true)]
    pub tamper_every: Option<u64>,
    /// Leave the tree and exit when standard input closes (for a
    /// supervising process: the peer ends with it, even if it is killed).
    #[arg(long)]
    pub exit_with_stdin: bool,
}

fn defaults() -> PeerConfig {
    PeerConfig::default()
}

/// Resolves when standard input reaches its end (or fails).
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Runs a peer until Ctrl-C or SIGTERM, then leaves the tree.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = match &cli.config {
        Some(p) => PeerConfig::from_file(p)?,
        None => PeerConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => {$(
            if let Some(v) = cli.$field { config.$field = v; }
        )*};
    }
    macro_rules! set_opt {
        ($($field:ident),*) => {$(
            if cli.$field.is_some() { config.$field = cli.$field; }
        )*};
    }
    if !cli.edge.is_empty() {
        config.edge = cli.edge;
    }
    set!(channel, proxy_listen, quic_listen, buffer_secs);
    set_opt!(
        advertise,
        max_upload_kbps,
        origin_key,
        site,
        token,
        tamper_every
    );
    let peer = PeerHandle::start(config).await?;
    // Scripts (the demo, the swarm harness) read this line.
    println!(
        "peer ready: play {}  status http://{}/status  quic {}",
        peer.playlist_url(),
        peer.proxy_addr(),
        peer.quic_addr()
    );
    let watch_stdin = cli.exit_with_stdin;
    tokio::select! {
        r = treecast_proto::app::shutdown_signal() => r.context("waiting for Ctrl-C or SIGTERM")?,
        _ = stdin_closed(), if watch_stdin => eprintln!("standard input closed"),
    }
    eprintln!("leaving the tree");
    peer.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_states_the_config_defaults() {
        let help = Cli::command().render_help().to_string();
        let d = PeerConfig::default();
        for stated in [
            format!("[default: {}]", d.edge.join(" ")),
            format!("[default: {}]", d.proxy_listen),
            format!("[default: {}]", d.buffer_secs),
        ] {
            assert!(help.contains(&stated), "--help lacks {stated}:\n{help}");
        }
    }
}
