#!/usr/bin/env bash
# Segmenting throughput against `ffmpeg -c copy -f hls` on the same large
# MPEG-TS file, in the same run, two ways:
#
# - end to end: `origin ingest FILE` pushing over HTTP into a running
#   release `origin serve`, timed until it exits, which is when the origin
#   has answered the upload: every segment cut, hashed, signed and stored
#   (in memory, where the origin keeps segments; its data directory on
#   /dev/shm). ffmpeg writes its HLS to /dev/shm, RAM too. Best of 3 each.
# - the segmenter core alone (criterion, one core, in memory, no hashing,
#   signing or output).
#
#   bash benches/segmenter-vs-ffmpeg.sh [LOOPS]
#
# Makes target/bench-media/big.ts by looping the shipped sample LOOPS times
# (default 40, ~140 MB) with continuous timestamps.
set -euo pipefail
cd "$(dirname "$0")/.."
loops=${1:-40}
command -v ffmpeg >/dev/null || { echo "ffmpeg is required (apt-get install ffmpeg)" >&2; exit 1; }

mkdir -p target/bench-media
big=target/bench-media/big.ts
if [ ! -s "$big" ] || [ "$(cat target/bench-media/loops 2>/dev/null)" != "$loops" ]; then
  ffmpeg -hide_banner -loglevel error -y -stream_loop "$loops" -i media/sample.ts -c copy -f mpegts "$big"
  echo "$loops" > target/bench-media/loops
fi
bytes=$(stat -c %s "$big")

out=$(mktemp -d /dev/shm/treecast-hls.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$out"' EXIT
best=""
for _ in 1 2 3; do
  rm -f "$out"/*
  start=$(date +%s.%N)
  ffmpeg -hide_banner -loglevel error -threads 1 -i "$big" -c copy -f hls -hls_time 2 -hls_list_size 0 \
    -hls_segment_filename "$out/%d.ts" "$out/index.m3u8"
  end=$(date +%s.%N)
  t=$(echo "$end - $start" | bc -l)
  if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
done
ffmpeg_mbs=$(echo "$bytes / $best / 1000000" | bc -l)

# End to end through a running origin.
cargo build -q --release -p treecast-origin
data=$(mktemp -d /dev/shm/treecast-origin.XXXXXX 2>/dev/null || mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '[segments]\nwindow_segments = 1000\n' > "$data/origin.toml"
target/release/origin serve --config "$data/origin.toml" --listen "127.0.0.1:$port" --data "$data" \
  >"$data/origin.log" 2>&1 &
origin_pid=$!
trap 'kill "$origin_pid" 2>/dev/null; wait "$origin_pid" 2>/dev/null || true; rm -rf "$out" "$data"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/api/channels" >/dev/null && break
  sleep 0.1
done
e2e_best=""
for n in 1 2 3; do
  start=$(date +%s.%N)
  target/release/origin ingest --quiet --origin "http://127.0.0.1:$port" --channel "e2e$n" "$big"
  end=$(date +%s.%N)
  t=$(echo "$end - $start" | bc -l)
  if [ -z "$e2e_best" ] || [ "$(echo "$t < $e2e_best" | bc -l)" = 1 ]; then e2e_best=$t; fi
done
segments=$(curl -s "http://127.0.0.1:$port/api/channels/e2e1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["segments_cut"])')
e2e_mbs=$(echo "$bytes / $e2e_best / 1000000" | bc -l)

TREECAST_BENCH_TS="$PWD/$big" cargo bench -q -p treecast-benches --bench segmenter -- --noplot >/dev/null
est=target/criterion/segmenter/segment/new/estimates.json
mean_ns=$(python3 -c "import json,sys; print(json.load(open('$est'))['mean']['point_estimate'])")
treecast_mbs=$(echo "$bytes / $mean_ns * 1000" | bc -l)

printf 'input: %s (%d bytes)\n' "$big" "$bytes"
printf 'ffmpeg -c copy -f hls:        %.0f MB/s (best of 3, %.3f s)\n' "$ffmpeg_mbs" "$best"
printf 'origin ingest -> origin serve: %.0f MB/s (best of 3, %.3f s, %s segments signed)\n' "$e2e_mbs" "$e2e_best" "$segments"
printf 'end to end ratio: %.2fx ffmpeg\n' "$(echo "$e2e_mbs / $ffmpeg_mbs" | bc -l)"
printf 'segmenter core:               %.0f MB/s (criterion mean, one core)\n' "$treecast_mbs"
printf 'core ratio: %.1fx ffmpeg\n' "$(echo "$treecast_mbs / $ffmpeg_mbs" | bc -l)"
