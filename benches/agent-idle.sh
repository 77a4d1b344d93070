#!/usr/bin/env bash
# Idle agent benchmark: CPU, memory and upload of the viewer's agent while
# nothing plays (goal: under 1% of one core, nothing uploaded), measured
# twice: as started with no channel, and after a player played a channel
# for 20 s and the agent left it (idle time 5 s). Origin, edge and player
# run in the harness process; the agent is its own process, read from
# /proc over each window.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin treecast
./target/release/treecast agent-bench --seconds "${SECONDS_WINDOW:-60}" --play-seconds 20
