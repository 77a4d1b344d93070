//! `edge`: cache an origin and serve its HLS to peers and players.

use std::process::ExitCode;

use clap::Parser;
use treecast_edge::cli::{run, Cli};

fn main() -> ExitCode {
    treecast_proto::app::run_main(run(Cli::parse()))
}
