#!/usr/bin/env bash
# Durable tasks of epilogue-demo (River, through epilogue-durable), against
# their performance targets: each is printed MET or MISSED, with its numbers,
# side by side, then the details.
#
#   bench/durable.sh            full run: about 9 minutes on 2 cores (after the build)
#   bench/durable.sh --quick    smaller counts, one round, no idle minute: about 2 minutes
#
# Options: --quick, --no-valgrind (skip 1a and target 4), --no-postgres (skip
# every PostgreSQL case), --throughput-only (case 2 alone: target 3),
# -h/--help. Environment: PYTHON (default python3),
# and the counts (full / quick): VG_N (callgrind N, 1000 / 100), LAT_N
# (latency requests, 2000 / 300), WRK_SECS and WRK_ROUNDS (wrk runs, 10 s x 3
# / 3 s x 1), TASKS (tasks per throughput run, 4000 / 2000), ROUNDS
# (throughput rounds, 3 / 1), CEIL_TASKS (the ceiling's rows, 20000 /
# 10000), FILL_CONC (16), K (pickup registers, 300 / 50), IDLE_S (the idle
# minute, 60 / 0 = skipped).
#
# The targets:
# 1. Shared commits (SQLite default store, --workers 0): 201s per second of
#    POST /durable/register with 16 wrk connections / with 1, >= 3x (aim
#    5x); p99 at 16 <= 10 ms.
# 2. Pickup (sent_at of the task's email - the client's time of the 201):
#    PostgreSQL worker process median <= 5 ms and p99 <= 25 ms at a trickle;
#    SQLite worker process p99 <= 100 ms; in-process worker p99 <= 10 ms on
#    both stores, and <= 10 ms after an idle minute (full run only).
# 3. Throughput: the demo's workers >= 0.9x River used directly (jobs that
#    send the demo's welcome email, 1 ms fetch cooldown: bench/river-direct), tasks/s, SQLite with
#    1 worker process, PostgreSQL with 1 and 2, at concurrency 16 and 100;
#    beside River at a 2 ms cooldown too (how much that setting weighs), and the store's
#    ceiling (a raw SQL claim-and-complete loop, 100 rows per statement).
# 4. The in-memory request path pays nothing for the durable tier:
#    instructions per request of POST /response/single, --workers 4 vs
#    --workers 0 (default store), within 1 %.
#
# The cases:
# 1a. Instructions per request under valgrind --tool=callgrind of
#     /response/single (--workers 0 and 4) and /durable/register (--workers
#     0: the enqueue, not the task): N then 6N sequential keep-alive requests
#     (lib/seqclient.py), (I(6N) - I(N)) / 5N as profile.sh counts them, with
#     collection on from 1 s after the server listens and for the same
#     window in both runs (work per second cancels out). Whole process, and
#     the request path alone (the connection's future and the runner's
#     lanes, inclusive); where the enqueue's extra goes, by crate. Target 4.
# 1b. Latency: median and p99 of the same sequential requests without
#     valgrind (lib/durabletool.py latency), SQLite default store.
# 1c. Shared commits: wrk -t1 -c1 and -c16 (body.lua) on POST
#     /durable/register, server on CPU 0, wrk on CPU 1. Target 1.
# 2.  Throughput: TASKS tasks stored by a --workers 0 service (FILL_CONC
#     requests at a time), then `epilogue-demo worker --workers C` processes
#     (own data dirs), timed until GET /durable/stats shows all succeeded;
#     against bench/river-direct's `river` (TASKS jobs doing the demo's email, the same
#     processes and C; 1 ms and 2 ms fetch cooldown) and `ceiling`; tasks/s
#     from the first to the last task run, and the worker processes' CPU
#     time per task. ROUNDS rounds, the order alternating; medians. Target 3.
# 3.  Pickup: K registers one at a time (0-20 ms random pause), and per task
#     its email's sent_at minus the client's time of the 201: SQLite and
#     PostgreSQL, in-process worker and worker process; then (full run) an
#     in-process worker after IDLE_S seconds with no request. Target 2.
#
# PostgreSQL: a throwaway cluster (initdb, pg_ctl; as the postgres user when
# run as root) on a free port of 127.0.0.1, one database per case, stopped
# and removed at exit. Everything listens on 127.0.0.1 only. Every process
# started here is stopped at exit, on failure too. Results (results.jsonl,
# the table, server logs, wrk outputs, callgrind files, raw delays) are kept
# in target/bench/durable-<time>/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
root=$(cd "$here/.." && pwd)

quick=0 valgrind_counts=1 postgres=1 throughput_only=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-valgrind) valgrind_counts=0 ;;
    --no-postgres) postgres=0 ;;
    --throughput-only) throughput_only=1 valgrind_counts=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "durable.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
if ((quick)); then
  mode=quick vg_n=${VG_N:-100} lat_n=${LAT_N:-300} tasks=${TASKS:-2000} k=${K:-50}
  wrk_secs=${WRK_SECS:-3} wrk_rounds=${WRK_ROUNDS:-1} rounds=${ROUNDS:-1} ceil_tasks=${CEIL_TASKS:-10000} idle_s=${IDLE_S:-0}
else
  mode=full vg_n=${VG_N:-1000} lat_n=${LAT_N:-2000} tasks=${TASKS:-4000} k=${K:-300}
  wrk_secs=${WRK_SECS:-10} wrk_rounds=${WRK_ROUNDS:-3} rounds=${ROUNDS:-3} ceil_tasks=${CEIL_TASKS:-20000} idle_s=${IDLE_S:-60}
fi
fill_conc=${FILL_CONC:-16}
# The throughput cases' concurrency per worker process.
concurrencies=(16 100)
python=${PYTHON:-python3}
dtool=$here/lib/durabletool.py
# Every client and probe is bounded in time.
step_timeout=600
drain_timeout=300
commit_wait=60

log() { printf '%s\n' "$*" >&2; }
die() { log "durable.sh: $*"; exit 1; }
# The machine's PostgreSQL environment (PGHOST, PGDATA...) stays out of it.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^PG' || true)

# --- Everything started here is stopped by the trap ----------------------------
work=$(mktemp -d -t epilogue-durable.XXXXXX)
started=()
pg_dir= pg_bin= pg_port= runuser=
cleanup() {
  local pid
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n $pg_dir ]]; then
    if [[ -f $pg_dir/data/postmaster.pid ]]; then
      (cd "$pg_dir" && as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -w -t 30 stop -m immediate) >/dev/null 2>&1 || true
    fi
    # pg_ctl could not stop it: the postmaster's pid is the pid file's first line.
    if [[ -f $pg_dir/data/postmaster.pid ]]; then
      kill -QUIT "$(head -n 1 "$pg_dir/data/postmaster.pid")" 2>/dev/null || true
    fi
    [[ -n ${out:-} && -f $pg_dir/server.log ]] && cp "$pg_dir/server.log" "$out/logs/postgres.log" 2>/dev/null
    rm -rf "$pg_dir"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# --- Tools ---------------------------------------------------------------------
command -v "$python" >/dev/null || die "$python is required (the clients are Python)"
command -v taskset >/dev/null || die "taskset (util-linux) is required"
command -v timeout >/dev/null || die "timeout (coreutils) is required"
if ((valgrind_counts)) && ! command -v valgrind >/dev/null; then
  apt_install valgrind || die "valgrind is required for the instruction counts (or pass --no-valgrind)"
fi
command -v wrk >/dev/null || apt_install wrk || die "wrk is required (apt-get install wrk)"

# The directory of one PostgreSQL installation: initdb on PATH, or the newest
# /usr/lib/postgresql/*/bin.
find_pg_bin() {
  local d
  if command -v initdb >/dev/null; then
    d=$(dirname "$(readlink -f "$(command -v initdb)")")
    [[ -x $d/pg_ctl && -x $d/psql ]] && { echo "$d"; return 0; }
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x $d/initdb && -x $d/pg_ctl && -x $d/psql ]] && { echo "$d"; return 0; }
  done
  return 1
}
if ((postgres)); then
  pg_bin=$(find_pg_bin) || { apt_install postgresql && pg_bin=$(find_pg_bin); } ||
    die "PostgreSQL (initdb, pg_ctl, psql) is required (apt-get install postgresql), or pass --no-postgres"
  if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root, PostgreSQL needs a 'postgres' user to run as"
    runuser=$(command -v runuser) || die "runuser (util-linux) is required to run PostgreSQL as postgres"
  fi
fi
# as_pg CMD...: CMD as the user PostgreSQL runs as (postgres when we are root).
as_pg() {
  if [[ $(id -u) == 0 ]]; then
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$pg_dir" "$runuser" -u postgres -- "$@"
  else
    "$@"
  fi
}

cpus=$(nproc)
if ((cpus >= 2)); then server_cpu=0 client_cpu=1; else server_cpu=0 client_cpu=0; fi

# --- Build ---------------------------------------------------------------------
commit=$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(cd "$root" && git --no-optional-locks status --porcelain 2>/dev/null | grep -vc '^??' || true)
log "building epilogue-demo and bench-river-direct (release)"
# Two builds: the demo's binary is the one the other bench scripts build.
(cd "$root" && cargo build --release -p epilogue-demo && cargo build --release -p bench-river-direct) >&2
target_dir=$(target_directory "$root")
demo=$target_dir/release/epilogue-demo
rdirect=$target_dir/release/river-direct
out=$target_dir/bench/durable-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out/logs"
results=$out/results.jsonl
: >"$results"
began=$(date +%s)
meta() { "$python" "$dtool" meta "$results" "$1" "$2"; }
meta mode "$mode"
meta command "bench/durable.sh $*"
meta machine "$cpus CPUs ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), Linux $(uname -r), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
meta commit "$commit$( ((dirty)) && echo " + $dirty changed files")"
meta tools "$(rustc --version 2>/dev/null | cut -d' ' -f1-2), $("$python" --version 2>&1), $(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)$( ((valgrind_counts)) && echo ", $(valgrind --version)")$( ((postgres)) && echo ", PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}')")"
meta started "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta fill_conc "$fill_conc"
meta clk_tck "$(getconf CLK_TCK)"
meta wrk_plan "1 s warm-up then $wrk_secs s measured, $wrk_rounds round(s)"
failures=()
fail() { log "durable.sh: ERROR: $*"; failures+=("$*"); }

# --- Processes -----------------------------------------------------------------
n_procs=0
# start_demo NAME PREFIX... -- ARGS...: epilogue-demo (the service), with PREFIX
# (taskset, valgrind) before it; sets PID and PORT. Logs in $out/logs/NAME.*.
start_demo() {
  local name=$1 prefix=()
  shift
  while [[ $1 != -- ]]; do prefix+=("$1"); shift; done
  shift
  "${prefix[@]}" "$demo" --addr 127.0.0.1:0 "$@" >"$out/logs/$name.stdout" 2>"$out/logs/$name.stderr" &
  PID=$!
  started+=("$PID")
  PORT=$(listening_port "$out/logs/$name.stdout" "$PID") || {
    log "durable.sh: $name ($demo $*) did not start; its stderr:"
    tail -n 20 "$out/logs/$name.stderr" >&2 || true
    exit 1
  }
}
# start_worker NAME ARGS...: `epilogue-demo worker`; sets PID (no wait).
start_worker() {
  local name=$1
  shift
  "$demo" worker "$@" >"$out/logs/$name.stdout" 2>"$out/logs/$name.stderr" &
  PID=$!
  started+=("$PID")
}
# worker_ready NAME PID: waits up to 30 s for "worker ready".
worker_ready() {
  for _ in $(seq 600); do
    grep -q '^worker ready' "$out/logs/$1.stdout" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  log "durable.sh: $1 did not say 'worker ready'; its stderr:"
  tail -n 20 "$out/logs/$1.stderr" >&2 || true
  exit 1
}
# stop NAME PID: SIGTERM, waits up to 60 s; a non-zero exit is a failure.
stop() {
  local name=$1 pid=$2 rc=0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    fail "$name did not stop within 60 s of SIGTERM: killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  forget "$pid"
  ((rc == 0)) || fail "$name exited with status $rc (see $out/logs/$name.stderr)"
}
tool() { timeout "$step_timeout" "$python" "$dtool" "$@"; }
fresh() { # fresh NAME: a new empty directory under $work
  rm -rf "${work:?}/$1" && mkdir -p "$work/$1" && echo "$work/$1"
}

# --- PostgreSQL ----------------------------------------------------------------
pg_start() {
  pg_dir=$(mktemp -d /tmp/epilogue-durable-pg.XXXXXX)
  chmod 700 "$pg_dir"
  [[ $(id -u) == 0 ]] && chown postgres:postgres "$pg_dir"
  log "starting a throwaway PostgreSQL ($pg_bin) in $pg_dir"
  (cd "$pg_dir" && as_pg "$pg_bin/initdb" -D "$pg_dir/data" --auth=trust --username=postgres \
    --encoding=UTF8 --locale=C) >"$out/logs/postgres-initdb.log" 2>&1 ||
    { tail -n 20 "$out/logs/postgres-initdb.log" >&2; die "initdb failed"; }
  cat >>"$pg_dir/data/postgresql.conf" <<EOF

# bench/durable.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$pg_dir'
fsync = on
synchronous_commit = on
shared_buffers = 128MB
max_connections = 100
logging_collector = off
EOF
  local attempt
  for attempt in 1 2; do
    pg_port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if (cd "$pg_dir" && as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -w -t 60 -l "$pg_dir/server.log" \
      -o "-p $pg_port" start) >>"$out/logs/postgres-initdb.log" 2>&1; then
      return 0
    fi
    log "durable.sh: pg_ctl start on port $pg_port failed (attempt $attempt)"
    tail -n 10 "$pg_dir/server.log" >&2 || true
  done
  die "PostgreSQL did not start"
}
# pg_db NAME: creates database NAME, prints its URL.
pg_db() {
  "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
    -c "create database $1" >&2
  echo "postgres://postgres@127.0.0.1:$pg_port/$1"
}

# === 1a. Instructions per request ==============================================
# vg_run NAME N WINDOW PATH ARGS...: the demo (ARGS) under callgrind, collecting
# from 1 s after it listens; N sequential requests to PATH; collection stops
# WINDOW s after it started (0: 0.5 s after the requests). Sets VG_INSTR and
# VG_WINDOW; listings NAME.{self,incl}.txt in $out/callgrind.
vg_run() {
  local name=$1 n=$2 window=$3 path=$4
  shift 4
  local dir cg=$out/callgrind/$name.callgrind t0 now
  dir=$(fresh "vg-$name")
  start_demo "vg-$name" taskset -c "$server_cpu" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$cg" \
    -- --data-dir "$dir" "$@"
  sleep 1
  callgrind_control --instr=on "$PID" >/dev/null 2>&1
  t0=$(date +%s.%N)
  taskset -c "$client_cpu" timeout "$step_timeout" "$python" "$here/lib/seqclient.py" "127.0.0.1:$PORT" "$path" "$n" ||
    fail "seqclient failed against $path ($*) under callgrind"
  now=$(date +%s.%N)
  local rest
  rest=$(awk -v w="$window" -v a="$t0" -v b="$now" 'BEGIN { r = (w > 0) ? w - (b - a) : 0.5; printf "%.3f", (r > 0 ? r : 0) }')
  sleep "$rest"
  callgrind_control --instr=off "$PID" >/dev/null 2>&1
  VG_WINDOW=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
  stop "vg-$name" "$PID"
  VG_INSTR=$(grep -E 'Collected' "$out/logs/vg-$name.stderr" | awk '{print $NF}' | tail -n 1)
  [[ -n $VG_INSTR ]] || { fail "no instruction count for $path ($*)"; VG_INSTR=0; }
  callgrind_annotate --auto=no --threshold=100 --inclusive=no "$cg" >"$out/callgrind/$name.self.txt" 2>/dev/null || true
  callgrind_annotate --auto=no --threshold=100 --inclusive=yes "$cg" >"$out/callgrind/$name.incl.txt" 2>/dev/null || true
}
# vg_case KEY LABEL PATH ARGS...: 6N requests, then N in the same window.
vg_case() {
  local key=$1 label=$2 path=$3
  shift 3
  local large window
  log "1a. callgrind: $label, N=$vg_n and $((6 * vg_n))"
  vg_run "$key.6N" "$((6 * vg_n))" 0 "$path" "$@"
  large=$VG_INSTR window=$VG_WINDOW
  vg_run "$key.N" "$vg_n" "$window" "$path" "$@"
  tool instr "$results" "$label" "$vg_n" "$VG_INSTR" "$large" "$window" \
    "$out/callgrind/$key.N.incl.txt" "$out/callgrind/$key.6N.incl.txt" || fail "no instruction count for $label"
}
if ((valgrind_counts)); then
  mkdir -p "$out/callgrind"
  vg_case single "/response/single" /response/single --workers 0
  vg_case single-w4 "/response/single, --workers 4" /response/single --workers 4
  vg_case durable "/durable/register" /durable/register --workers 0
  tool callgrind "$results" "$out/callgrind" "$vg_n" || fail "callgrind breakdown failed"
fi

# === 1b. Latency ===============================================================
if ((!throughput_only)); then
log "1b. latency: $lat_n sequential requests per route, no valgrind"
for route in /response/single /durable/register; do
  dir=$(fresh "lat")
  start_demo lat-"${route//\//_}" taskset -c "$server_cpu" -- --data-dir "$dir" --workers 0
  taskset -c "$client_cpu" timeout "$step_timeout" "$python" "$dtool" latency "$results" "$route" "127.0.0.1:$PORT" "$route" "$lat_n" ||
    fail "latency client failed against $route"
  stop lat-"${route//\//_}" "$PID"
done

# === 1c. Shared commits ========================================================
log "1c. shared commits: wrk on POST /durable/register, 1 and 16 connections, $wrk_rounds x $wrk_secs s"
for round in $(seq "$wrk_rounds"); do
  for conns in 1 16; do
    name=wrk-c$conns-r$round
    dir=$(fresh "$name")
    start_demo "$name" taskset -c "$server_cpu" -- --data-dir "$dir" --workers 0
    url=http://127.0.0.1:$PORT/durable/register
    taskset -c "$client_cpu" timeout 60 wrk -t1 -c"$conns" -d1s --timeout 10s -s "$here/body.lua" "$url" >"$out/logs/$name.warm.txt" 2>&1 ||
      fail "wrk warm-up failed ($conns connections)"
    if taskset -c "$client_cpu" timeout $((wrk_secs + 60)) wrk -t1 -c"$conns" -d"${wrk_secs}s" --timeout 10s --latency \
      -s "$here/body.lua" "$url" >"$out/logs/$name.txt" 2>&1; then
      tool wrk "$results" /durable/register "$conns" "$round" "$out/logs/$name.txt" || fail "wrk run $name: see $out/logs/$name.txt"
    else
      fail "wrk failed ($conns connections): $(tail -n 2 "$out/logs/$name.txt" | tr '\n' ' ')"
    fi
    stop "$name" "$PID"
  done
done

fi # !throughput_only

# === 2. Throughput =============================================================
# store_url KIND NAME: a new, empty store.
store_url() {
  case $1 in
    sqlite) echo "sqlite://$(fresh "$2")/tasks.db" ;;
    postgres) pg_db "${2//-/_}" ;;
  esac
}
# e2e LABEL STORE_URL PROCESSES CONCURRENCY: the demo: pre-fill, then worker processes.
e2e() {
  local label=$1 store=$2 workers=$3 conc=$4
  local name=e2e-${label//[^a-zA-Z0-9]/-}-r$round
  local dir
  dir=$(fresh "$name")
  log "2. $label (round $round): demo, fill $tasks tasks, then $workers worker process(es) x --workers $conc"
  start_demo "$name-fill" -- --data-dir "$dir/fill" --store "$store" --workers 0
  tool fill "$results" "$label" "127.0.0.1:$PORT" "$tasks" "$fill_conc" || { fail "fill failed ($label)"; stop "$name-fill" "$PID"; return; }
  stop "$name-fill" "$PID"
  start_demo "$name-stats" -- --data-dir "$dir/stats" --store "$store" --workers 0
  local stats_pid=$PID stats_port=$PORT
  local before
  before=$("$python" -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen(sys.argv[1], timeout=10))["queued"])' \
    "http://127.0.0.1:$stats_port/durable/stats")
  ((before == tasks)) || fail "$label: $before tasks queued before the workers, expected $tasks"
  local t0 pids=() outboxes=() i
  t0=$(date +%s.%N)
  for i in $(seq "$workers"); do
    start_worker "$name-w$i" --store "$store" --data-dir "$dir/w$i" --workers "$conc" --email-delay-ms 0
    pids+=("$PID")
    outboxes+=("$dir/w$i/outbox.jsonl")
  done
  tool drain "$results" "$label" "127.0.0.1:$stats_port" "$tasks" "$t0" "$drain_timeout" "${outboxes[@]}" ||
    fail "$label: the tasks were not all run"
  # The worker processes' CPU time (start-up included, as River's own count).
  local ticks=0 pid
  for pid in "${pids[@]}"; do ticks=$((ticks + $(cpu_ticks "$pid"))); done
  tool cpu "$results" "$label" "$ticks" "$tasks"
  for i in $(seq "$workers"); do
    worker_ready "$name-w$i" "${pids[i - 1]}"
    stop "$name-w$i" "${pids[i - 1]}"
  done
  stop "$name-stats" "$stats_pid"
}
# direct LABEL STORE_URL PROCESSES CONCURRENCY COOLDOWN_MS: River used directly.
direct() {
  local label=$1 store=$2 workers=$3 conc=$4 cooldown=$5
  local name=river-${label//[^a-zA-Z0-9]/-}-cd$cooldown-r$round
  log "2. $label (round $round): River directly, $tasks jobs, $workers process(es) x $conc workers, ${cooldown} ms cooldown"
  if timeout "$step_timeout" "$rdirect" river --store "$store" --tasks "$tasks" --concurrency "$conc" --processes "$workers" \
    --fetch-cooldown-ms "$cooldown" --timeout-s "$drain_timeout" >"$out/logs/$name.json" 2>"$out/logs/$name.stderr"; then
    tool direct "$results" "$label" "$out/logs/$name.json" || fail "$label: river-direct's report"
  else
    fail "$label: river-direct failed: $(tail -n 3 "$out/logs/$name.stderr" | tr '\n' ' ')"
  fi
}
# ceiling LABEL STORE_URL: the raw claim-and-complete loop.
ceiling() {
  local label=$1 store=$2 name=ceiling-${1//[^a-zA-Z0-9]/-}
  log "2. $label: the store's ceiling, $ceil_tasks rows"
  if timeout "$step_timeout" "$rdirect" ceiling --store "$store" --tasks "$ceil_tasks" \
    >"$out/logs/$name.json" 2>"$out/logs/$name.stderr"; then
    tool direct "$results" "$label" "$out/logs/$name.json" || fail "$label: the ceiling's report"
  else
    fail "$label: river-direct ceiling failed: $(tail -n 3 "$out/logs/$name.stderr" | tr '\n' ' ')"
  fi
}

if ((postgres)); then pg_start; fi

cases=()
for conc in "${concurrencies[@]}"; do cases+=("sqlite SQLite 1 $conc"); done
if ((postgres)); then
  for procs in 1 2; do
    for conc in "${concurrencies[@]}"; do cases+=("postgres PostgreSQL $procs $conc"); done
  done
fi
for round in $(seq "$rounds"); do
  i=0
  for c in "${cases[@]}"; do
    read -r kind store_name procs conc <<<"$c"
    i=$((i + 1))
    plural=
    ((procs == 1)) || plural=es
    label="$store_name, $procs process$plural, concurrency $conc"
    # The order alternates between rounds: neither side always goes first.
    # River at a 2 ms cooldown too, to tell how much that setting weighs
    # (epilogue-durable sets 1 ms, River's least).
    if (((round + i) % 2 == 0)); then
      e2e "$label" "$(store_url "$kind" "demo-r$round-c$i")" "$procs" "$conc"
      direct "$label" "$(store_url "$kind" "river-r$round-c$i")" "$procs" "$conc" 1
      direct "$label" "$(store_url "$kind" "river2-r$round-c$i")" "$procs" "$conc" 2
    else
      direct "$label" "$(store_url "$kind" "river2-r$round-c$i")" "$procs" "$conc" 2
      direct "$label" "$(store_url "$kind" "river-r$round-c$i")" "$procs" "$conc" 1
      e2e "$label" "$(store_url "$kind" "demo-r$round-c$i")" "$procs" "$conc"
    fi
  done
done
ceiling SQLite "$(store_url sqlite ceiling-sqlite)"
if ((postgres)); then ceiling PostgreSQL "$(store_url postgres ceiling-pg)"; fi

# === 3. Pickup =================================================================
if ((!throughput_only)); then
# commit_case LABEL STORE_URL in-process|worker
commit_case() {
  local label=$1 store=$2 where=$3
  local name=commit-${label//[^a-zA-Z0-9]/-}
  local dir outbox wpid=
  dir=$(fresh "$name")
  log "3. $label: $k registers one at a time"
  if [[ $where == in-process ]]; then
    start_demo "$name-svc" -- --data-dir "$dir/svc" --store "$store"
    outbox=$dir/svc/outbox.jsonl
  else
    start_worker "$name-w" --store "$store" --data-dir "$dir/w"
    wpid=$PID
    worker_ready "$name-w" "$wpid"
    start_demo "$name-svc" -- --data-dir "$dir/svc" --store "$store" --workers 0
    outbox=$dir/w/outbox.jsonl
  fi
  local svc=$PID
  tool commit "$results" "$label" "127.0.0.1:$PORT" "$k" "$commit_wait" "$outbox" ||
    fail "$label: commit-to-start client failed"
  stop "$name-svc" "$svc"
  [[ -z $wpid ]] || stop "$name-w" "$wpid"
}
commit_case "SQLite, in-process worker" "$(store_url sqlite commit-sqlite-a)" in-process
commit_case "SQLite, worker process" "$(store_url sqlite commit-sqlite-b)" worker
if ((postgres)); then
  commit_case "PostgreSQL, worker process" "$(store_url postgres commit-c)" worker
  commit_case "PostgreSQL, in-process worker" "$(store_url postgres commit-d)" in-process
fi

# After an idle minute: both stores at once, their registers 5 s apart.
if ((idle_s > 0)); then
  idle_cases=("SQLite sqlite")
  ((postgres)) && idle_cases+=("PostgreSQL postgres")
  idle_pids=() idle_svcs=() offset=0
  for c in "${idle_cases[@]}"; do
    read -r store_name kind <<<"$c"
    label="$store_name, in-process worker, after an idle minute"
    name=idle-$kind
    dir=$(fresh "$name")
    start_demo "$name-svc" -- --data-dir "$dir/svc" --store "$(store_url "$kind" "idle-$kind-db")"
    idle_svcs+=("$name-svc:$PID")
    log "3. $label: 3 registers, then $idle_s s idle, then one"
    tool idle "$results" "$label" "127.0.0.1:$PORT" 3 "$((idle_s + offset))" 1 "$commit_wait" "$dir/svc/outbox.jsonl" &
    idle_pids+=("$!")
    started+=("$!")
    offset=$((offset + 5))
  done
  for pid in "${idle_pids[@]}"; do
    wait "$pid" || fail "the idle-minute client failed (see above)"
    forget "$pid"
  done
  for svc in "${idle_svcs[@]}"; do stop "${svc%%:*}" "${svc##*:}"; done
fi

fi # !throughput_only

# === Table =====================================================================
meta took "$(($(date +%s) - began)) s after the build; load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
warnings=$(cd "$out/logs" && grep -c -E ' (WARN|ERROR) ' -- *.stderr 2>/dev/null | grep -v ':0$' | tr '\n' ' ' || true)
[[ -z $warnings ]] || meta log_warnings "$warnings(file:count, in $out/logs)"
((${#failures[@]} == 0)) || meta failures "$(printf '%s; ' "${failures[@]}")"
"$python" "$dtool" table "$results" | tee "$out/table.txt"
log "results, logs and callgrind files: $out"
((${#failures[@]} == 0)) || exit 1
