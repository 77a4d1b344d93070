#!/usr/bin/env bash
# The tracker through HTTP on loopback: a release `edge serve` (one channel,
# no origin needed: the tracker answers without one) under
# `treecast tracker-load`, which joins an audience of N peers from keep-alive
# clients on their own loopback addresses, then sends heartbeats as fast as
# the edge answers for 10 s. Prints one JSON report per size.
#
#   bash benches/tracker-http.sh [SIZES] [CLIENTS]     # default "10000 100000" 8
#
# The edge's tracker is set for a load test: the rate limit raised out of
# the way (each client sends thousands of requests a second), heartbeats
# never time out (an audience this size takes longer to join than 6 s, and
# its heartbeats come round less often than real peers'), newcomers
# promoted at once with six probation slots (a flash crowd beyond ~16,000
# otherwise waits for slots to be earned). Tickets live TICKET_TTL_SECS
# (default 3600): the generator reaches each peer about once per (peers /
# heartbeats per second) seconds, far less often than a real peer's 2 s, so
# at the default 60 s every heartbeat of a large audience would re-sign both
# tickets, where a real peer re-signs them once in 15 heartbeats. Set
# TICKET_TTL_SECS=60 to measure that worst case.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-"10000 100000"}
clients=${2:-8}
cargo build -q --release --locked -p treecast-edge -p treecast
work=$(mktemp -d)
edge_pid=""
trap '[ -n "$edge_pid" ] && kill "$edge_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
for n in $sizes; do
  port=$(free_port)
  quic=$(free_port)
  cat > "$work/edge.toml" <<TOML
listen = "127.0.0.1:$port"
quic_listen = "127.0.0.1:$quic"
data_dir = "$work/edge-data-$n"

[tracker]
rate_per_sec = 1000000
heartbeat_timeout_secs = 86400
ticket_ttl_secs = ${TICKET_TTL_SECS:-3600}
promote_after_secs = 0
probation_slots = 6
TOML
  target/release/edge serve --config "$work/edge.toml" >"$work/edge-$n.log" 2>&1 &
  edge_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/metrics" >/dev/null && break
    sleep 0.1
  done
  target/release/treecast tracker-load --edge "127.0.0.1:$port" --peers "$n" --clients "$clients" --seconds 10 --edge-pid "$edge_pid"
  rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$edge_pid/status")
  echo "edge resident memory with $n peers: $((rss_kb / 1024)) MB"
  kill "$edge_pid"; wait "$edge_pid" 2>/dev/null || true; edge_pid=""
done
