#!/usr/bin/env bash
# Relay benchmark: CPU and memory of one peer forwarding a 4 Mb/s stream to
# 4 children (goal: <= 5% of one core, <= 50 MB RSS).
#
# Makes a 4 Mb/s copy of the shipped sample with ffmpeg (H.264 CBR-ish,
# 2 s GOP), then runs `treecast relay-bench` on it for 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ffmpeg -loglevel error -i media/sample.ts -c:v libx264 -preset veryfast \
  -b:v 4400k -minrate 4400k -maxrate 4400k -bufsize 2200k -g 60 -keyint_min 60 \
  -sc_threshold 0 -c:a copy -f mpegts "$work/4mbps.ts"
cargo build --release --locked --bin treecast
./target/release/treecast relay-bench --source "$work/4mbps.ts" --children 4 \
  --seconds "${SECONDS_WINDOW:-30}" --work-dir "$work/run"
