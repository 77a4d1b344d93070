#!/usr/bin/env bash
# Segmenting throughput: treecast's segmenter (criterion, one core) against
# `ffmpeg -c copy -f hls` on the same large MPEG-TS file, in the same run.
#
#   bash benches/segmenter-vs-ffmpeg.sh [LOOPS]
#
# Makes target/bench-media/big.ts by looping the shipped sample LOOPS times
# (default 40, ~140 MB) with continuous timestamps, times ffmpeg writing HLS
# to a RAM-backed directory (best of 3), runs the criterion benchmark on the
# same file, and prints both figures and their ratio.
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

TREECAST_BENCH_TS="$PWD/$big" cargo bench -q -p treecast-benches --bench segmenter -- --noplot >/dev/null
est=target/criterion/segmenter/segment/new/estimates.json
mean_ns=$(python3 -c "import json,sys; print(json.load(open('$est'))['mean']['point_estimate'])")
treecast_mbs=$(echo "$bytes / $mean_ns * 1000" | bc -l)

printf 'input: %s (%d bytes)\n' "$big" "$bytes"
printf 'ffmpeg -c copy -f hls: %.0f MB/s (best of 3, %.3f s)\n' "$ffmpeg_mbs" "$best"
printf 'treecast segmenter:    %.0f MB/s (criterion mean, one core)\n' "$treecast_mbs"
printf 'ratio: %.1fx\n' "$(echo "$treecast_mbs / $ffmpeg_mbs" | bc -l)"
