#!/usr/bin/env bash
# User-space instructions the proxy spends per streamed event and per small request, counted
# by callgrind (repeatable on a noisy machine: instructions, not seconds).
#
#   cargo build --release && benches/instructions.sh [BINARY]
#
# KEEP=1 keeps the callgrind files (for callgrind_annotate). SERVE_ARGS adds arguments to
# `serve` (for example SERVE_ARGS=--no-access-log, to see what the access log costs).
#
# The proxy runs under callgrind with `serve --workers 1` at default settings; the counters are
# zeroed after a warm-up, then the measured load runs: 20 streams x 200 tokens (5 ms apart) for the
# event figure, 2 s of small POSTs over 10 connections for the request figure. Only 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/chunkgate}
up_port=19171
px_port=19172
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "callgrind files kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

"$bin" bench upstream --listen 127.0.0.1:$up_port --exit-after 600 >/dev/null 2>&1 &
pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  "$bin" serve --workers 1 --listen 127.0.0.1:$px_port --upstream http://127.0.0.1:$up_port \
  ${SERVE_ARGS:-} >"$work/proxy.log" 2>&1 &
vg=$!
pids+=($vg)
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$px_port) 2>/dev/null && break
  sleep 0.2
done
target=http://127.0.0.1:$px_port

count() { # label, events, command...
  local label=$1 events=$2
  shift 2
  callgrind_control -z "$vg" >/dev/null 2>&1
  "$@" >/dev/null
  callgrind_control -d "$label" "$vg" >/dev/null 2>&1
  sleep 1
  local f
  f=$(ls -t "$work"/cg.* | head -1)
  local ir
  ir=$(grep -m1 '^summary:' "$f" | awk '{print $2}')
  awk -v ir="$ir" -v n="$events" -v l="$label" \
    'BEGIN { printf "%-8s %12d instructions / %d = %.0f per unit\n", l, ir, n, ir / n }'
}

# Warm-up: connections, pools and allocator caches in their steady state.
"$bin" bench sse --target "$target" -c 20 --tokens 50 --gap-ms 5 >/dev/null
"$bin" bench rps --target "$target" -c 10 --duration 1 --warmup 0 >/dev/null

count event 4000 "$bin" bench sse --target "$target" -c 20 --tokens 200 --gap-ms 5
# The request figure divides by the requests the load tool reports.
callgrind_control -z "$vg" >/dev/null 2>&1
reqs=$("$bin" bench rps --target "$target" -c 10 --duration 2 --warmup 0 --json \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("requests") or d["ok"])')
callgrind_control -d request "$vg" >/dev/null 2>&1
sleep 1
f=$(ls -t "$work"/cg.* | head -1)
ir=$(grep -m1 '^summary:' "$f" | awk '{print $2}')
awk -v ir="$ir" -v n="$reqs" 'BEGIN { printf "request  %12d instructions / %d = %.0f per unit\n", ir, n, ir / n }'
