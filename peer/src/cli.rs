//! The `peer` command line, shared by the `peer` binary and `treecast peer`:
//! `peer [FLAGS]` runs the agent; `peer install | uninstall | status`
//! manage it as a user service ([`crate::install`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::{install, PeerConfig, PeerHandle};
use treecast_proto::app::help_with_default;

/// `peer` command line.
#[derive(Parser, Debug)]
#[command(
    name = "peer",
    version,
    about = "treecast peer: the viewer's agent. Plays any channel of its edges for local players (joining its viewer tree while a player asks), relays it to other viewers, and verifies every segment",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Manage the agent as a service instead of running it.
    #[command(subcommand)]
    pub command: Option<Cmd>,
    /// How to run the agent.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Managing the agent.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Set the agent up as a user service that starts at login (a systemd
    /// user unit on Linux) and start it. The agent's flags follow `--`:
    /// `peer install -- --edge https://edge.example.com`.
    Install {
        /// Write the unit only; do not ask systemd to enable or start it.
        #[arg(long)]
        no_start: bool,
        /// Where the unit goes [default: $XDG_CONFIG_HOME/systemd/user or ~/.config/systemd/user].
        #[arg(long)]
        unit_dir: Option<PathBuf>,
        /// The agent's flags, as `peer` takes them.
        #[arg(last = true)]
        flags: Vec<String>,
    },
    /// Stop the user service and remove it.
    Uninstall {
        /// Remove the unit only; do not ask systemd to stop it.
        #[arg(long)]
        no_stop: bool,
        /// Where the unit is [default: as for install].
        #[arg(long)]
        unit_dir: Option<PathBuf>,
    },
    /// Show the running agent: its port, edges and the channels playing.
    Status {
        /// The agent's proxy address [default: the first agent answering on 127.0.0.1:8090-8099].
        #[arg(long)]
        proxy: Option<SocketAddr>,
    },
}

/// `peer` flags: how the agent runs.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// TOML config file (see docs/peer.md); flags override it.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Base URL of an edge; repeat for the event's other edges (the
    /// nearest is used, the others when it fails).
    #[arg(long, value_name = "URL", help = help_with_default("Base URL of an edge; repeat for the event's other edges (the nearest is used, the others when it fails)", &defaults().edge.join(" ")))]
    pub edge: Vec<String>,
    /// A channel to join at start and keep; repeat for more [default:
    /// none: a player asking for a channel joins it].
    #[arg(long, value_name = "NAME")]
    pub channel: Vec<String>,
    /// Local proxy address for the player, loopback only (the next free
    /// port up to 8099 when the default is taken).
    #[arg(long, help = help_with_default("Local proxy address for the player, loopback only; the next free port up to 8099 when the default is taken", &defaults().proxy_listen))]
    pub proxy_listen: Option<SocketAddr>,
    /// Seconds after the last player request before a channel is left.
    #[arg(long, help = help_with_default("Seconds after the last player request before a channel is left", &defaults().idle_secs))]
    pub idle_secs: Option<f64>,
    /// Most channels joined at once.
    #[arg(long, help = help_with_default("Most channels joined at once", &defaults().max_channels))]
    pub max_channels: Option<usize>,
    /// A web page origin allowed to use the agent (https://host[:port]); repeat for more.
    #[arg(long = "page-origin", value_name = "ORIGIN")]
    pub page_origins: Vec<String>,
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

/// Runs the command: the agent until Ctrl-C or SIGTERM (then it leaves
/// every tree), or a service command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => run_agent(cli.run).await,
        Some(Cmd::Install {
            no_start,
            unit_dir,
            flags,
        }) => {
            // Refuse now what the service would refuse at every start.
            let args =
                Cli::try_parse_from(std::iter::once("peer".to_string()).chain(flags.clone()))
                    .map_err(|e| anyhow::anyhow!("the agent's flags after `--`: {e}"))?;
            if args.command.is_some() {
                bail!("the flags after `--` are the agent's, not a command");
            }
            config_of(args.run)?.validate()?;
            let dir = match unit_dir {
                Some(d) => d,
                None => install::unit_dir()?,
            };
            let path = install::install(&dir, &flags, !no_start)?;
            println!("installed {}", path.display());
            if no_start {
                println!("start it with: systemctl --user daemon-reload && systemctl --user enable --now {}", install::UNIT);
            } else {
                println!("started; it starts at every login (`peer status` shows it)");
            }
            Ok(())
        }
        Some(Cmd::Uninstall { no_stop, unit_dir }) => {
            let dir = match unit_dir {
                Some(d) => d,
                None => install::unit_dir()?,
            };
            if install::uninstall(&dir, !no_stop)? {
                println!("removed {}", dir.join(install::UNIT).display());
            } else {
                println!(
                    "no {} in {}: nothing to remove",
                    install::UNIT,
                    dir.display()
                );
            }
            Ok(())
        }
        Some(Cmd::Status { proxy }) => {
            let found = match proxy {
                Some(addr) => install::ask_agent(addr).await.map(|s| (addr, s)),
                None => install::find_agent().await,
            };
            match found {
                Some((addr, s)) => {
                    print!("{}", install::describe(addr, &s));
                    Ok(())
                }
                None => match proxy {
                    Some(addr) => bail!("no treecast peer answers at {addr}"),
                    None => bail!(
                        "no treecast peer answers on 127.0.0.1 ports {}–{}",
                        crate::config::PROXY_PORTS.start(),
                        crate::config::PROXY_PORTS.end()
                    ),
                },
            }
        }
    }
}

/// The configuration the flags describe: the file's, overridden.
fn config_of(cli: RunArgs) -> anyhow::Result<PeerConfig> {
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
    if !cli.channel.is_empty() {
        config.channel = cli.channel;
    }
    if !cli.page_origins.is_empty() {
        config.page_origins = cli.page_origins;
    }
    set!(
        proxy_listen,
        quic_listen,
        buffer_secs,
        idle_secs,
        max_channels
    );
    set_opt!(
        advertise,
        max_upload_kbps,
        origin_key,
        site,
        token,
        tamper_every
    );
    Ok(config)
}

async fn run_agent(cli: RunArgs) -> anyhow::Result<()> {
    let watch_stdin = cli.exit_with_stdin;
    let config = config_of(cli)?;
    let stop =
        treecast_proto::app::shutdown_listener().context("listening for Ctrl-C and SIGTERM")?;
    let peer = PeerHandle::start(config).await?;
    // Scripts (the demo, the harnesses) read this line.
    let mut ready = String::from("peer ready:");
    for channel in peer.channels() {
        ready.push_str(&format!(" play {}", peer.playlist_url(&channel)));
    }
    println!(
        "{ready}  status http://{}/status  quic {}",
        peer.proxy_addr(),
        peer.quic_addr()
    );
    tokio::select! {
        () = stop => {}
        _ = stdin_closed(), if watch_stdin => eprintln!("standard input closed"),
    }
    eprintln!("leaving every channel's tree");
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
            format!("[default: {}]", d.idle_secs),
            format!("[default: {}]", d.max_channels),
        ] {
            assert!(help.contains(&stated), "--help lacks {stated}:\n{help}");
        }
    }
}
