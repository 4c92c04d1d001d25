#!/usr/bin/env bash
# The load benchmarks of epilogue, in one command:
#
#   bench/run.sh            full run: 3 runs of 8 s per case, 16-22 minutes
#   bench/run.sh --quick    1 run of 3 s per case, ~3-4 minutes
#
# Options: --quick, --no-python (skip the Python peers), --no-valgrind (skip
# the instruction counts), --no-actix (skip bench/actix.sh, which otherwise
# runs last with the same --quick and --no-valgrind), -h/--help. Environment: PEERS_DIR (the Python
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
# shellcheck source=lib/load.sh
source "$here/lib/load.sh"
root=$(cd "$here/.." && pwd)

quick=0
python_peers=1
valgrind_counts=1
actix=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-python) python_peers=0 ;;
    --no-valgrind) valgrind_counts=0 ;;
    --no-actix) actix=0 ;;
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

peers_dir=${PEERS_DIR:-$here/peers/python}
python=${PYTHON:-python3}
venv=$here/.venv
body_lua=$here/body.lua
path=/response/single

log() { printf '%s\n' "$*" >&2; }
die() { log "run.sh: $*"; exit 1; }

load_init
load_tools "$valgrind_counts"

# --- Build ---------------------------------------------------------------------
# The commit measured: read before the build, which takes the work tree as it is.
load_commit "$root"
log "building epilogue-demo, bench-baseline and bench-plain (release)"
(cd "$root" && cargo build --release -p epilogue-demo -p bench-baseline) >&2
# On its own: built with the demo, it would share the demo's feature set.
(cd "$root" && cargo build --release -p bench-plain) >&2
target_dir=$(target_directory "$root")
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
    demo)
      cmd=("$demo_bin" "${demo_flags[@]}" --email-delay-ms "$2")
      # The demo's durable worker polls its store four times a second: work
      # per second, which valgrind's slowness would count as work per request.
      if ((under_valgrind)); then cmd+=(--workers 0); fi
      ;;
    plain) cmd=("$plain_bin" --email-delay-ms "$2") ;;
    spawn) cmd=("$baseline_bin" --task spawn --email-delay-ms "$2") ;;
    none) cmd=("$baseline_bin" --task none --email-delay-ms "$2") ;;
    list) cmd=("$demo_bin" "${demo_flags[@]}" --email-delay-ms "$2") ;;
    blocking) cmd=("$demo_bin" "${demo_flags[@]}" --email-delay-ms "$2" --log-delay-ms "$blocking_ms") ;;
  esac
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

# --- Header --------------------------------------------------------------------
{
  printf 'meta\tcommand\tbench/run.sh %s\n' "$*"
  printf 'meta\tmode\t%s\n' "$mode"
  load_meta
  printf 'meta\tplan\t%s runs of %s s per point after a %s s warm-up; servers on CPU %s, wrk -t1 on CPU %s; instructions: N=%s\n' \
    "$reps" "$secs" "$warm" "$server_cpu" "$client_cpu" "$vg_n"
  printf 'meta\tinstr_n\t%s\n' "$vg_n"
} >>"$results"

# --- Cases 1 and 2: epilogue-demo vs bare axum ---------------------------------
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
if ((valgrind_counts)); then
  # The four servers without delay, then the three with a task with the
  # 100 ms one (the ceiling has no task to delay).
  count_points "$reps" "$vg_n" demo:0 plain:0 spawn:0 none:0 demo:$delay_ms plain:$delay_ms spawn:$delay_ms
fi

# --- Report --------------------------------------------------------------------
"$python" "$here/lib/report.py" "$results" | tee "$results_dir/report.txt"
log "raw results and wrk outputs: $results_dir"

# --- actix-web -----------------------------------------------------------------
if ((actix)); then
  log "== actix-web: epilogue-demo-actix against plain actix-web (bench/actix.sh)"
  actix_args=()
  if ((quick)); then actix_args+=(--quick); fi
  if ((!valgrind_counts)); then actix_args+=(--no-valgrind); fi
  "$here/actix.sh" "${actix_args[@]}" || failures=$((failures + 1))
fi

if ((failures > 0)); then
  log "run.sh: $failures error(s), see above"
  exit 1
fi
