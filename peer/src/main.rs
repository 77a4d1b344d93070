//! `peer`: watch a treecast channel, relaying it to other viewers.

use std::process::ExitCode;

use clap::Parser;
use treecast_peer::cli::{run, Cli};

fn main() -> ExitCode {
    treecast_proto::app::run_main(run(Cli::parse()))
}
