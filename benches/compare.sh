#!/usr/bin/env bash
# Compare chunkgate with nginx and HAProxy on this machine, in one run.
#
#   benches/compare.sh           full comparison (3 rounds, idle runs at 2,000 and 9,000 streams)
#   benches/compare.sh --quick   one short round, idle run at 2,000 streams only (under a minute)
#
# Starts the measurement upstream (`chunkgate bench upstream`), chunkgate, nginx (one worker)
# and HAProxy (one thread) on their own 127.0.0.1 ports (configs in benches/compare/), plus the direct path to the upstream
# as the baseline for added delay. Each measure runs over the targets interleaved
# (direct nginx haproxy chunkgate, direct nginx ...) for every round; the idle-stream memory
# runs start each proxy afresh. Prints one markdown table of medians, with ratios to nginx.
#
# Needs: cargo, and nginx and haproxy (installed with apt-get if missing). Stops every process
# it started when it exits. A benchmark, not a test: never run it from CI.
#
# Environment: COMPARE_PORT_BASE (default 18100) picks the ports base..base+3;
# COMPARE_KEEP=1 keeps the work directory (configs, logs, raw results).
set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "compare.sh: unknown argument $arg (use --quick or nothing)" >&2
            exit 64
            ;;
    esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF_DIR="$ROOT/benches/compare"
BASE=${COMPARE_PORT_BASE:-18100}
P_UP=$BASE
P_CG=$((BASE + 1))
P_NGINX=$((BASE + 2))
P_HAPROXY=$((BASE + 3))

if ((QUICK)); then
    ROUNDS=1
    RPS_ARGS=(-c 50 --warmup 0.5 --duration 2)
    SSE_ARGS=(-c 100 --tokens 50 --gap-ms 10)
    UPLOAD_ARGS=(--mib 64)
    IDLE_SIZES=(2000)
    IDLE_ARGS=(--tokens 10 --gap-ms 200)
    IDLE_ROUNDS=1
else
    ROUNDS=3
    RPS_ARGS=(-c 50 --warmup 1 --duration 5)
    SSE_ARGS=(-c 200 --tokens 200 --gap-ms 10)
    UPLOAD_ARGS=(--mib 256)
    IDLE_SIZES=(2000 9000)
    IDLE_ARGS=(--tokens 20 --gap-ms 500)
    IDLE_ROUNDS=3
fi

log() { printf '[compare %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# --- descriptors: as many as the hard limit allows (9,000 streams need ~18,000 in a proxy).
HARD=$(ulimit -Hn)
if [[ $HARD == unlimited ]]; then HARD=65536; fi
ulimit -n "$HARD"
log "open-file limit: $(ulimit -n)"
if (($(ulimit -n) < 19000)); then
    log "the limit is too low for 9,000 idle streams; the large idle run is skipped"
    IDLE_SIZES=(2000)
fi

# --- tools
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    pkgs=()
    for m in "${missing[@]}"; do
        if [[ $m == nginx ]] && apt-cache show nginx-light >/dev/null 2>&1; then
            pkgs+=(nginx-light)
        else
            pkgs+=("$m")
        fi
    done
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin
NGINX=$(command -v nginx)
HAPROXY=$(command -v haproxy)

log "building (cargo build --release)"
(cd "$ROOT" && cargo build --release --quiet)
BIN="$ROOT/target/release/chunkgate"

WORK=$(mktemp -d /tmp/chunkgate-compare.XXXXXX)
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

# --- process bookkeeping: every PID we start, stopped on exit.
declare -A PID_OF=()
cleanup() {
    local name pid
    for name in "${!PID_OF[@]}"; do
        pid=${PID_OF[$name]}
        kill "$pid" 2>/dev/null || true
    done
    for name in "${!PID_OF[@]}"; do
        wait "${PID_OF[$name]}" 2>/dev/null || true
    done
    if [[ ${COMPARE_KEEP:-0} == 1 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # port timeout_s
    local i
    for ((i = 0; i < $2 * 20; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

stop() { # name
    local pid=${PID_OF[$1]:-}
    [[ -n $pid ]] || return 0
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PID_OF[$1]"
}

render() { # template output prefix listen_port
    sed -e "s|@PREFIX@|$3|g" -e "s|@LISTEN_PORT@|$4|g" -e "s|@UPSTREAM_PORT@|$P_UP|g" "$1" >"$2"
}

start_upstream() {
    "$BIN" bench upstream --listen "127.0.0.1:$P_UP" --exit-after 3600 >"$WORK/upstream.log" 2>&1 &
    PID_OF[upstream]=$!
    wait_port "$P_UP" 5 || { log "bench upstream did not start:"; cat "$WORK/upstream.log" >&2; exit 1; }
}

# Each start_<target> sets MEASURE_PID[<target>] to the process doing the proxying.
declare -A MEASURE_PID=()

start_chunkgate() {
    render "$CONF_DIR/chunkgate.toml" "$WORK/chunkgate.toml" "$WORK" "$P_CG"
    # One runtime thread, like nginx's one worker and HAProxy's one thread.
    "$BIN" serve --workers 1 --config "$WORK/chunkgate.toml" >"$WORK/chunkgate.log" 2>&1 &
    PID_OF[chunkgate]=$!
    if ! wait_port "$P_CG" 5; then
        stop chunkgate
        # The flags alone (default pool of 1,024 upstream connections, which caps the idle runs).
        "$BIN" serve --workers 1 --listen "127.0.0.1:$P_CG" --upstream "http://127.0.0.1:$P_UP" --no-access-log \
            >>"$WORK/chunkgate.log" 2>&1 &
        PID_OF[chunkgate]=$!
        if ! wait_port "$P_CG" 5; then
            stop chunkgate
            return 1
        fi
        log "chunkgate started from flags; its config file was refused:"
        sed 's/^/    /' "$WORK/chunkgate.log" >&2
    fi
    MEASURE_PID[chunkgate]=${PID_OF[chunkgate]}
}

start_nginx() {
    local prefix="$WORK/nginx"
    mkdir -p "$prefix"
    render "$CONF_DIR/nginx.conf" "$prefix/nginx.conf" "$prefix" "$P_NGINX"
    "$NGINX" -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/error.log" >"$prefix/stdout.log" 2>&1 &
    PID_OF[nginx]=$!
    if ! wait_port "$P_NGINX" 5; then
        log "nginx did not start:"
        cat "$prefix/error.log" "$prefix/stdout.log" >&2 || true
        exit 1
    fi
    # The master only supervises; the single worker does the proxying.
    local worker="" i
    for ((i = 0; i < 100; i++)); do
        worker=$(pgrep -P "${PID_OF[nginx]}" | head -n1 || true)
        [[ -n $worker ]] && break
        sleep 0.05
    done
    [[ -n $worker ]] || { log "no nginx worker process"; exit 1; }
    MEASURE_PID[nginx]=$worker
}

start_haproxy() {
    render "$CONF_DIR/haproxy.cfg" "$WORK/haproxy.cfg" "$WORK" "$P_HAPROXY"
    "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    PID_OF[haproxy]=$!
    if ! wait_port "$P_HAPROXY" 5; then
        log "haproxy did not start:"
        cat "$WORK/haproxy.log" >&2
        exit 1
    fi
    MEASURE_PID[haproxy]=${PID_OF[haproxy]}
}

declare -A URL=(
    [direct]="http://127.0.0.1:$P_UP"
    [chunkgate]="http://127.0.0.1:$P_CG"
    [nginx]="http://127.0.0.1:$P_NGINX"
    [haproxy]="http://127.0.0.1:$P_HAPROXY"
)

start_upstream
start_nginx
start_haproxy
TARGETS=(direct nginx haproxy)
PROXIES=(nginx haproxy)
if start_chunkgate; then
    TARGETS+=(chunkgate)
    PROXIES+=(chunkgate)
else
    log "chunkgate serve did not start; its column is left out:"
    sed 's/^/    /' "$WORK/chunkgate.log" >&2 || true
fi
log "targets: ${TARGETS[*]} (upstream :$P_UP, chunkgate :$P_CG, nginx :$P_NGINX, haproxy :$P_HAPROXY)"

# One load run; its JSON report is appended to the results. A run that fails is logged and
# left out of the medians rather than stopping the comparison.
bench() { # target mode args...
    local target=$1 mode=$2
    shift 2
    local pid_args=()
    if [[ $target != direct ]]; then pid_args=(--pid "${MEASURE_PID[$target]}"); fi
    local out
    if out=$("$BIN" bench "$mode" --target "${URL[$target]}" --tag "$target" --json "${pid_args[@]}" "$@" 2>>"$WORK/bench.err"); then
        :
    else
        log "$mode against $target reported failures (exit $?)"
    fi
    if [[ -n $out ]]; then printf '%s\n' "$out" >>"$RESULTS"; fi
}

for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS: rps, sse, upload"
    for t in "${TARGETS[@]}"; do bench "$t" rps "${RPS_ARGS[@]}"; done
    for t in "${TARGETS[@]}"; do bench "$t" sse "${SSE_ARGS[@]}"; done
    for t in "${TARGETS[@]}"; do bench "$t" upload "${UPLOAD_ARGS[@]}"; done
done

# Memory per open stream: each proxy starts afresh, so memory freed by an earlier run and kept
# by its allocator cannot hide what the streams cost.
for ((round = 1; round <= IDLE_ROUNDS; round++)); do
    for size in "${IDLE_SIZES[@]}"; do
        log "round $round/$IDLE_ROUNDS: $size idle streams"
        for t in "${PROXIES[@]}"; do
            stop "$t"
            "start_$t" || { log "$t did not restart"; exit 1; }
            bench "$t" idle -c "$size" "${IDLE_ARGS[@]}"
        done
    done
done

mkdir -p "$ROOT/target/compare"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
cp "$RESULTS" "$ROOT/target/compare/results-$STAMP.jsonl"

mode_name=full
((QUICK)) && mode_name=quick
ORDER=$(IFS=,; echo "${TARGETS[*]}")
echo
echo "chunkgate vs nginx vs HAProxy ($mode_name), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) cores, $(uname -r), $("$NGINX" -v 2>&1 | sed 's/.*: //'), HAProxy $("$HAPROXY" -v | head -n1 | awk '{print $3}')"
echo "command: benches/compare.sh${1:+ $1}; raw results: target/compare/results-$STAMP.jsonl"
echo
"$BIN" bench table --order "$ORDER" "$RESULTS"
if [[ -s $WORK/bench.err ]]; then
    echo
    echo "load tool messages:"
    sort "$WORK/bench.err" | uniq -c | head -n 20
fi
