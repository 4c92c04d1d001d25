#!/usr/bin/env bash
# The load benchmarks of epilogue, in one command:
#
#   bench/run.sh            full run: 3 runs of 8 s per case, 16-22 minutes
#   bench/run.sh --quick    1 run of 3 s per case, ~3-4 minutes
#
# Options: --quick, --no-python (skip the Python peers), --no-valgrind (skip
# the instruction counts), -h/--help. Environment: PEERS_DIR (the Python
# peers, default bench/peers/python), PYTHON (the
# interpreter that makes bench/.venv, default python3), BUSY_PCT and
# BUSY_RETRIES (a run during which other processes took more than BUSY_PCT %,
# default 10, of the server's CPU is run again, up to BUSY_RETRIES times,
# default 2, keeping the least disturbed attempt).
#
# What it does: builds epilogue-demo, bench-baseline and bench-plain in release, installs
# wrk (apt-get) and the Python peers (pip, bench/requirements.txt, into
# bench/.venv) if missing, pins every server to CPU 0 and every client to
# CPU 1, warms up, measures each case several times with the servers
# interleaved, and prints medians and ratios against the reference measured in
# the same run. Numbers: req/s and p50/p99 latency (wrk), server CPU time per
# request (utime+stime from /proc/PID/stat over the run / requests served),
# and user-space instructions per request (valgrind cachegrind: N then 6N
# sequential keep-alive requests in two runs of the server, each ended by
# SIGTERM; (I(6N) - I(N)) / 5N). See bench/README.md.
#
# Exits non-zero if a Rust server fails to start or exit cleanly, or a run
# errors (a non-2xx answer, a socket error, a missing outbox line). A Python
# peer that cannot be installed or started is reported and skipped.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
root=$(cd "$here/.." && pwd)

quick=0
python_peers=1
valgrind_counts=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-python) python_peers=0 ;;
    --no-valgrind) valgrind_counts=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if ((quick)); then
  secs=3 warm=1 reps=1 vg_n=500 mode=quick
else
  secs=8 warm=2 reps=3 vg_n=2000 mode=full
fi
conns_list=(1 64 256)
python_conns=64
delay_ms=100
# The isolation targets also hold for 1 s tasks and for blocking
# tasks: the demo alone with 1 s emails, and POST /response/list (an email,
# then a blocking write_in_file) with and without a thread sleep. 1 ms: the
# demo's 64 blocking threads then drain about 60 000 tasks a second, about
# what one core serves; longer sleeps fill the runner and get 503s.
long_delay_ms=1000
blocking_ms=1
# The burst: this many requests written at once (over burst_conns
# connections, pipelined), each with a 100 ms task, while /healthz is probed.
burst_n=10000
burst_conns=100
# The demo takes case 2's 1 s tasks without a 503: at 80 000 req/s, 80 000
# groups are asleep at once; room for about 3 times that.
demo_flags=(--max-running 262144 --max-pending 262144)

# A run during which other work took more than busy_pct % of the server's
# CPU is run again, up to busy_retries times (BUSY_PCT, BUSY_RETRIES).
busy_pct=${BUSY_PCT:-10}
busy_retries=${BUSY_RETRIES:-2}
peers_dir=${PEERS_DIR:-$here/peers/python}
python=${PYTHON:-python3}
venv=$here/.venv
body_lua=$here/body.lua
seqclient=$here/lib/seqclient.py
path=/response/single

log() { printf '%s\n' "$*" >&2; }
die() { log "run.sh: $*"; exit 1; }

# --- Everything started here is stopped by the trap ----------------------------
work=$(mktemp -d -t epilogue-bench.XXXXXX)
started=()
cleanup() {
  local pid
  for pid in "${started[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${started[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# --- Tools ---------------------------------------------------------------------
command -v wrk >/dev/null || apt_install wrk || die "wrk is required and could not be installed (apt-get install wrk)"
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v curl >/dev/null || apt_install curl || die "curl is required"
if ((valgrind_counts)) && ! command -v valgrind >/dev/null; then
  apt_install valgrind || die "valgrind is required for the instruction counts (or pass --no-valgrind)"
fi
command -v "$python" >/dev/null || die "$python is required (the sequential client and the report are Python)"

ncpu=$(nproc)
if ((ncpu >= 2)); then
  server_cpu=0 client_cpu=1
else
  log "run.sh: only $ncpu CPU: servers and clients share it, numbers mean little"
  server_cpu=0 client_cpu=0
fi
clk_tck=$(getconf CLK_TCK)

# --- Build ---------------------------------------------------------------------
# The commit measured: read before the build, which takes the work tree as it is.
commit=$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(cd "$root" && git --no-optional-locks status --porcelain 2>/dev/null | grep -vc '^??' || true)
log "building epilogue-demo, bench-baseline and bench-plain (release)"
(cd "$root" && cargo build --release -p epilogue-demo -p bench-baseline) >&2
# On its own: built with the demo, it would share the demo's feature set.
(cd "$root" && cargo build --release -p bench-plain) >&2
target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
  "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
demo_bin=$target_dir/release/epilogue-demo
baseline_bin=$target_dir/release/bench-baseline
plain_bin=$target_dir/release/bench-plain
results_dir=$target_dir/bench/$(date +%Y%m%d-%H%M%S)-$mode
mkdir -p "$results_dir"
results=$results_dir/results.tsv
: >"$results"

# --- Python peers --------------------------------------------------------------
peers=(starlette fastapi lilya)
python_ok=0
if ((python_peers)); then
  if [[ ! -f $peers_dir/run.sh ]]; then
    log "run.sh: no Python peers at $peers_dir (set PEERS_DIR): case 3 skipped"
    for peer in "${peers[@]}"; do printf 'skip\t%s\tno peers directory at %s\n' "$peer" "$peers_dir" >>"$results"; done
  else
    stamp=$venv/.requirements
    if [[ ! -x $venv/bin/python ]] || ! cmp -s "$here/requirements.txt" "$stamp"; then
      log "installing the Python peers into $venv (pip, bench/requirements.txt)"
      if { [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"; } &&
        "$venv/bin/python" -m pip install -q -r "$here/requirements.txt" >&2; then
        cp "$here/requirements.txt" "$stamp"
      else
        log "run.sh: pip could not install bench/requirements.txt: trying each peer anyway"
      fi
    fi
    [[ -x $venv/bin/python ]] && python_ok=1
    if ((!python_ok)); then
      for peer in "${peers[@]}"; do printf 'skip\t%s\tno virtual environment (python -m venv failed)\n' "$peer" >>"$results"; done
    fi
  fi
fi

# --- Servers -------------------------------------------------------------------
declare -A PID PORT DIR LABEL KPATH
LABEL[demo]="epilogue-demo"
LABEL[plain]="plain axum::serve + tokio::spawn"
LABEL[spawn]="axum + tokio::spawn"
LABEL[none]="axum, no task"
LABEL[list]="epilogue-demo, /response/list"
LABEL[blocking]="epilogue-demo, /response/list, ${blocking_ms} ms blocking"
KPATH[list]=/response/list
KPATH[blocking]=/response/list
n_servers=0

server_cmd() { # server_cmd KEY DELAY_MS: the command line of a Rust server
  case "$1" in
    demo) cmd=("$demo_bin" "${demo_flags[@]}" --email-delay-ms "$2") ;;
    plain) cmd=("$plain_bin" --email-delay-ms "$2") ;;
    spawn) cmd=("$baseline_bin" --task spawn --email-delay-ms "$2") ;;
    none) cmd=("$baseline_bin" --task none --email-delay-ms "$2") ;;
    list) cmd=("$demo_bin" "${demo_flags[@]}" --email-delay-ms "$2") ;;
    blocking) cmd=("$demo_bin" "${demo_flags[@]}" --email-delay-ms "$2" --log-delay-ms "$blocking_ms") ;;
  esac
}

# start_rust KEY DELAY_MS [valgrind args...]: sets PID/PORT/DIR[KEY].
start_rust() {
  local key=$1 delay=$2
  shift 2
  n_servers=$((n_servers + 1))
  local dir=$work/server-$n_servers
  mkdir -p "$dir/data"
  server_cmd "$key" "$delay"
  taskset -c "$server_cpu" "$@" "${cmd[@]}" --addr 127.0.0.1:0 --data-dir "$dir/data" \
    >"$dir/stdout" 2>"$dir/stderr" &
  local pid=$!
  started+=("$pid")
  PID[$key]=$pid DIR[$key]=$dir PORT[$key]=
  local port
  if ! port=$(listening_port "$dir/stdout" "$pid"); then
    log "run.sh: ${LABEL[$key]} (${cmd[*]}) did not start; its stderr:"
    tail -n 20 "$dir/stderr" >&2 || true
    exit 1
  fi
  PORT[$key]=$port
}

# start_peer NAME: sets PID/PORT/DIR[NAME], or returns 1 (reported) when it does not start.
start_peer() {
  local name=$1
  n_servers=$((n_servers + 1))
  local dir=$work/server-$n_servers
  mkdir -p "$dir/data"
  local port
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  (cd "$peers_dir" && EPILOGUE_DATA_DIR=$dir/data EMAIL_DELAY_MS=0 PYTHONDONTWRITEBYTECODE=1 \
    exec taskset -c "$server_cpu" "$venv/bin/python" -m uvicorn "${name}_app:app" --host 127.0.0.1 \
    --port "$port" --workers 1 --loop uvloop --http httptools --log-level warning --no-access-log) \
    >"$dir/stdout" 2>"$dir/stderr" &
  local pid=$!
  started+=("$pid")
  PID[$name]=$pid DIR[$name]=$dir PORT[$name]=$port LABEL[$name]=$name
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || break
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then return 0; fi
    sleep 0.1
  done
  local why
  why=$(grep -v '^\s*$' "$dir/stderr" | tail -n 1 || true)
  log "run.sh: the $name peer did not start (${why:-no output}); its stderr:"
  tail -n 15 "$dir/stderr" >&2 || true
  printf 'skip\t%s\tdid not start: %s\n' "$name" "${why:-no output}" >>"$results"
  stop_server "$name" 5 || true
  return 1
}

# stop_server KEY [TIMEOUT_S]: SIGTERM, then wait; returns the exit status.
stop_server() {
  local key=$1 timeout=${2:-60} pid=${PID[$1]} rc=0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((timeout * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "run.sh: ${LABEL[$key]} did not stop within ${timeout}s of SIGTERM: killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  forget "$pid"
  return "$rc"
}

failures=0
fail() {
  log "run.sh: ERROR: $*"
  failures=$((failures + 1))
}

# run_wrk KEY CONNS SECS OUT: one wrk run against server KEY.
run_wrk() {
  taskset -c "$client_cpu" wrk -t1 -c"$2" -d"$3s" --timeout 10s --latency -s "$body_lua" \
    "http://127.0.0.1:${PORT[$1]}${KPATH[$1]:-$path}" >"$4" 2>&1
}

# measure_once CASE KEY CONNS OUT: one wrk run against KEY; sets PARSED to
# "rps p50 p99 cpu/req requests errors others steal" (tab-separated), or
# returns 1 (reported) when the run failed.
measure_once() {
  local case=$1 key=$2 conns=$3 out=$4 pid=${PID[$2]}
  PARSED=
  kill -0 "$pid" 2>/dev/null || { fail "${LABEL[$key]} is gone before $case c=$conns"; return 1; }
  local before after cpu_before cpu_after
  before=$(cpu_ticks "$pid")
  cpu_before=$(cpu_times "$server_cpu")
  if ! run_wrk "$key" "$conns" "$secs" "$out"; then
    fail "wrk failed against ${LABEL[$key]} ($case, $conns connections): $(tail -n 2 "$out" | tr '\n' ' ')"
    return 1
  fi
  # Let the tasks of the last responses (100 ms ones in case 2) finish
  # inside the window.
  sleep 0.3
  after=$(cpu_ticks "$pid")
  cpu_after=$(cpu_times "$server_cpu")
  # others: the share of the server's CPU taken by anything but the server
  # (another process, interrupts, the hypervisor's steal), over the window.
  PARSED=$(awk -v ticks=$((after - before)) -v tck="$clk_tck" -v cpu="$cpu_before $cpu_after" '
    function us(v) {
      if (v ~ /us$/) return v + 0
      if (v ~ /ms$/) return v * 1000
      if (v ~ /m$/) return v * 60e6
      if (v ~ /s$/) return v * 1e6
      return v + 0
    }
    / requests in / { req = $1 }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    /Non-2xx or 3xx responses:/ { bad += $NF }
    /Socket errors:/ { gsub(",", ""); bad += $4 + $6 + $8 + $10 }
    END {
      if (req == 0) { print "none"; exit }
      split(cpu, c, " ")
      total = c[5] - c[2]
      others = total > 0 ? (c[4] - c[1] - ticks) * 100 / total : 0
      if (others < 0) others = 0
      steal = total > 0 ? (c[6] - c[3]) * 100 / total : 0
      printf "%s\t%.1f\t%.1f\t%.2f\t%d\t%d\t%.1f\t%.1f\n", rps, p50, p99, ticks * 1e6 / tck / req, req, bad, others, steal
    }' "$out")
  if [[ $PARSED == none ]]; then
    fail "no request served by ${LABEL[$key]} ($case, $conns connections); wrk said: $(tr '\n' ' ' <"$out")"
    PARSED=
    return 1
  fi
  local bad
  bad=$(cut -f6 <<<"$PARSED")
  if ((bad > 0)); then
    fail "$bad errors (non-2xx or socket) from ${LABEL[$key]} ($case, $conns connections): see $out"
  fi
  served[$key]=$((${served[$key]:-0} + $(cut -f5 <<<"$PARSED")))
}

# measure CASE KEY CONNS REP: a measured run, appended to results.tsv. When
# something else took more than busy_pct % of the server's CPU during it (a
# build on the shared machine), it is run again, up to busy_retries times,
# and the least disturbed attempt is kept.
measure() {
  local case=$1 key=$2 conns=$3 rep=$4
  local out=$results_dir/wrk-$case-$key-c$conns-r$rep.txt
  local best= best_others= attempt others
  for ((attempt = 0; attempt <= busy_retries; attempt++)); do
    measure_once "$case" "$key" "$conns" "$out.try" || return 0
    others=$(cut -f7 <<<"$PARSED")
    if [[ -z $best ]] || awk -v a="$others" -v b="$best_others" 'BEGIN { exit !(a < b) }'; then
      best=$PARSED best_others=$others
      mv "$out.try" "$out"
    fi
    awk -v a="$best_others" -v b="$busy_pct" 'BEGIN { exit !(a > b) }' || break
    if ((attempt < busy_retries)); then
      log "    ${LABEL[$key]}, $conns connections: ${others}% of CPU $server_cpu went to other work; again"
    fi
  done
  rm -f "$out.try"
  printf 'load\t%s\t%s\t%s\t%s\t%s\n' "$case" "$key" "$conns" "$rep" "$best" >>"$results"
}

# warm KEY CONNS: an unmeasured run; its requests count for the outbox check.
warm() {
  local out=$results_dir/warm.txt
  run_wrk "$1" "$2" "$warm" "$out" || fail "warm-up failed against ${LABEL[$1]}: $(tail -n 2 "$out" | tr '\n' ' ')"
  local n
  n=$(awk '/ requests in / { print $1 }' "$out")
  served[$1]=$((${served[$1]:-0} + ${n:-0}))
  sleep 0.3
}

# check_outbox KEY: after SIGTERM, every 201 must have written its line (not
# for the baseline's 100 ms case: tokio::spawn drops the tasks still asleep).
check_outbox() {
  local key=$1 expect=$2 lines=0
  [[ -f ${DIR[$key]}/data/outbox.jsonl ]] && lines=$(wc -l <"${DIR[$key]}/data/outbox.jsonl")
  case "$expect" in
    all) ((lines >= ${served[$key]:-0})) ||
      fail "${LABEL[$key]}: ${served[$key]} requests answered but only $lines outbox lines" ;;
    none) ((lines == 0)) || fail "${LABEL[$key]}: $lines outbox lines, expected none" ;;
  esac
  log "  ${LABEL[$key]}: ${served[$key]:-0} requests counted by wrk, $lines outbox lines"
}

# rotate I LIST...: LIST rotated by I, so that no server always runs first.
rotate() {
  local i=$1
  shift
  local list=("$@") n=$#
  for ((j = 0; j < n; j++)); do printf '%s ' "${list[$(((i + j) % n))]}"; done
}

# --- Header --------------------------------------------------------------------
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
  printf 'meta\tcommand\tbench/run.sh %s\n' "$*"
  printf 'meta\tmode\t%s\n' "$mode"
  printf 'meta\tmachine\t%s CPUs, %s, %s\n' "$ncpu" "$cpu_model" "$(uname -sr)"
  printf 'meta\trustc\t%s\n' "$(rustc --version)"
  printf 'meta\ttools\t%s; %s; %s\n' "$(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)" \
    "$(valgrind --version 2>/dev/null || echo 'no valgrind')" "$("$python" --version 2>&1)"
  printf 'meta\tcommit\t%s%s\n' "$commit" "$( ((dirty > 0)) && echo " (+ uncommitted changes)" || true)"
  printf 'meta\tplan\t%s runs of %s s per point after a %s s warm-up; servers on CPU %s, wrk -t1 on CPU %s; instructions: N=%s\n' \
    "$reps" "$secs" "$warm" "$server_cpu" "$client_cpu" "$vg_n"
  printf 'meta\tinstr_n\t%s\n' "$vg_n"
} >>"$results"

# run_case CASE DELAY_MS KEY...: starts the servers KEY... with tasks of
# DELAY_MS, measures each at every connection count (interleaved), stops them.
run_case() {
  local case=$1 delay=$2
  shift 2
  local keys=("$@") key conns rep rc
  log "case $case: starting ${keys[*]}"
  served=()
  for key in "${keys[@]}"; do start_rust "$key" "$delay"; done
  for conns in "${conns_list[@]}"; do
    log "  $conns connections: warm-up, then $reps x $secs s per server"
    for key in "${keys[@]}"; do warm "$key" "$conns"; done
    for ((rep = 1; rep <= reps; rep++)); do
      for key in $(rotate $((rep - 1)) "${keys[@]}"); do measure "$case" "$key" "$conns" "$rep"; done
    done
  done
  for key in "${keys[@]}"; do
    rc=0
    stop_server "$key" 60 || rc=$?
    ((rc == 0)) || fail "${LABEL[$key]} exited with status $rc on SIGTERM; its stderr ends with: $(tail -n 3 "${DIR[$key]}/stderr" | tr '\n' ' ')"
  done
}

# --- Cases 1 and 2: epilogue-demo vs bare axum ---------------------------------
declare -A served
for delay in 0 "$delay_ms"; do
  run_case "delay$delay" "$delay" demo plain spawn none
  check_outbox demo all
  if ((delay == 0)); then
    check_outbox plain all
    check_outbox spawn all
  fi
  check_outbox none none
done

# --- Case 2b: 1 s tasks; blocking tasks ----------------------------------------
# Against case 1's epilogue-demo for the 1 s tasks; the blocking server
# against the same route without the sleep, interleaved with it.
run_case "delay$long_delay_ms" "$long_delay_ms" demo
check_outbox demo all
run_case blocking 0 list blocking
check_outbox list all
check_outbox blocking all

# --- Case 2c: a burst ---------------------------------------------------------
# burst KEY REP: GET /healthz probed back to back on one connection
# (lib/probe.py, on the client CPU), idle for 1 s, then while burst_n
# requests are written at once (lib/memtool.py: burst_conns connections,
# all pipelined), each with a 100 ms task. Records the probe's p99 idle,
# over the whole burst (its requests being served, then its tasks waking
# 100 ms later: [start, answered + 0.5 s]), and over its task phase alone
# ([answered, answered + 0.5 s]).
burst() {
  local key=$1 rep=$2 out=$results_dir/burst-$1-r$2 addr=127.0.0.1:${PORT[$1]}
  taskset -c "$client_cpu" "$python" "$here/lib/probe.py" run "$addr" 1 "$out-idle.txt"
  taskset -c "$client_cpu" "$python" "$here/lib/probe.py" run "$addr" 1.5 "$out-during.txt" &
  local prober=$! started answered rc=0
  sleep 0.3
  started=$(date +%s.%N)
  taskset -c "$client_cpu" "$python" "$here/lib/memtool.py" load "$addr" "$path" \
    "$burst_n" "$burst_conns" $((burst_n / burst_conns)) 60 >"$out-load.txt" 2>&1 || rc=$?
  answered=$(date +%s.%N)
  wait "$prober" || rc=$?
  ((rc == 0)) || fail "the burst against ${LABEL[$key]} failed: $(tail -n 2 "$out-load.txt" | tr '\n' ' ')"
  served[$key]=$((${served[$key]:-0} + burst_n))
  local after idle whole tasks
  after=$(awk -v a="$answered" 'BEGIN { printf "%.6f", a + 0.5 }')
  idle=$("$python" "$here/lib/probe.py" p99 "$out-idle.txt" | cut -d' ' -f1)
  whole=$("$python" "$here/lib/probe.py" p99 "$out-during.txt" "$started" "$after" | cut -d' ' -f1)
  tasks=$("$python" "$here/lib/probe.py" p99 "$out-during.txt" "$answered" "$after" | cut -d' ' -f1)
  printf 'burst\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$rep" "$idle" "$whole" \
    "$(awk -v a="$started" -v b="$answered" 'BEGIN { printf "%.3f", b - a }')" "$tasks" >>"$results"
  sleep 0.5
}
log "case burst: $burst_n requests at once with ${delay_ms} ms tasks, /healthz probed"
served=()
for key in demo spawn; do start_rust "$key" "$delay_ms"; done
for ((rep = 1; rep <= reps; rep++)); do
  for key in $(rotate $((rep - 1)) demo spawn); do burst "$key" "$rep"; done
done
for key in demo spawn; do
  rc=0
  stop_server "$key" 60 || rc=$?
  ((rc == 0)) || fail "${LABEL[$key]} exited with status $rc on SIGTERM"
done
check_outbox demo all

# --- Case 3: the Python peers, interleaved with epilogue-demo ------------------
if ((python_peers && python_ok)); then
  log "case python: epilogue-demo and ${peers[*]} at $python_conns connections"
  served=()
  start_rust demo 0
  keys=(demo)
  for peer in "${peers[@]}"; do
    if start_peer "$peer"; then keys+=("$peer"); fi
  done
  for key in "${keys[@]}"; do warm "$key" "$python_conns"; done
  # Python needs a longer warm-up than Rust: one more pass on the peers.
  for key in "${keys[@]:1}"; do warm "$key" "$python_conns"; done
  for ((rep = 1; rep <= reps; rep++)); do
    for key in $(rotate $((rep - 1)) "${keys[@]}"); do measure python "$key" "$python_conns" "$rep"; done
  done
  for key in "${keys[@]}"; do
    rc=0
    stop_server "$key" 60 || rc=$?
    # uvicorn re-raises SIGTERM once it has shut down: 143 is its clean exit.
    if ((rc != 0)); then
      if [[ $key == demo ]]; then
        fail "epilogue-demo exited with status $rc on SIGTERM"
      elif ((rc != 143)); then
        log "  $key exited with status $rc on SIGTERM"
      fi
    fi
  done
  check_outbox demo all
  for key in "${keys[@]:1}"; do check_outbox "$key" all; done
fi

# --- Instructions per request --------------------------------------------------
# count_instructions KEY N DELAY_MS: sets REFS to the user-space instructions
# of a whole server run serving N sequential keep-alive requests, under
# cachegrind.
count_instructions() {
  local key=$1 n=$2 delay=$3
  REFS=0
  # The demo's durable worker polls its store four times a second: work
  # per second, which valgrind's slowness would count as work per request.
  local saved=("${demo_flags[@]}")
  [[ $key == demo ]] && demo_flags+=(--workers 0)
  start_rust "$key" "$delay" valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null
  demo_flags=("${saved[@]}")
  if ! taskset -c "$client_cpu" "$python" "$seqclient" "127.0.0.1:${PORT[$key]}" "$path" "$n"; then
    fail "the sequential client failed against ${LABEL[$key]} under valgrind"
  fi
  local rc=0
  stop_server "$key" 120 || rc=$?
  ((rc == 0)) || fail "${LABEL[$key]} under valgrind exited with status $rc"
  REFS=$(grep -E '== I +refs:' "${DIR[$key]}/stderr" | tail -n 1 | awk '{ gsub(",", "", $NF); print $NF }')
  [[ -n $REFS ]] || { fail "no instruction count from valgrind for ${LABEL[$key]}"; REFS=0; }
}

if ((valgrind_counts)); then
  # The four servers without delay, then the three with a task with the
  # 100 ms one (the ceiling has no task to delay).
  points=(demo:0 plain:0 spawn:0 none:0 demo:$delay_ms plain:$delay_ms spawn:$delay_ms)
  log "instructions: ${points[*]} under cachegrind, $vg_n and $((6 * vg_n)) sequential requests, $reps time(s)"
  for ((rep = 1; rep <= reps; rep++)); do
    for point in "${points[@]}"; do
      key=${point%:*} delay=${point#*:}
      count_instructions "$key" "$vg_n" "$delay"
      small=$REFS
      count_instructions "$key" $((6 * vg_n)) "$delay"
      large=$REFS
      printf 'instr\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$rep" "$vg_n" "$small" "$large" "$delay" >>"$results"
      log "  ${LABEL[$key]}, delay $delay ms: $small / $large instructions"
    done
  done
fi

# --- Report --------------------------------------------------------------------
"$python" "$here/lib/report.py" "$results" | tee "$results_dir/report.txt"
log "raw results and wrk outputs: $results_dir"
if ((failures > 0)); then
  log "run.sh: $failures error(s), see above"
  exit 1
fi
