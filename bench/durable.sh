#!/usr/bin/env bash
# Durable tasks of epilogue-demo: what an enqueue costs, how many tasks per
# second workers get through, and how long a stored task waits to start.
#
#   bench/durable.sh            full run: about 1.5 minutes on 2 cores (after the build)
#   bench/durable.sh --quick    smaller counts, under a minute
#
# Options: --quick, --no-valgrind (skip 1a), --no-postgres (skip every
# PostgreSQL case), -h/--help. Environment: PYTHON (default python3), and the
# counts: VG_N (callgrind N, full 1000 as profile.sh, quick 100), LAT_N (latency requests,
# 2000 / 300), TASKS (end-to-end tasks, 2000 / 200), FILL_CONC (16), K
# (commit-to-start requests, 300 / 50).
#
# 1a. Enqueue cost: user-space instructions per request of POST
#     /durable/register (--workers 0: the enqueue, not the task) and POST
#     /response/single, under valgrind --tool=callgrind: N then 6N sequential
#     keep-alive requests (lib/seqclient.py), (I(6N) - I(N)) / 5N, as
#     profile.sh does; plus where the difference goes, by crate.
# 1b. Latency: median and p99 of the same requests without valgrind
#     (lib/durabletool.py latency), SQLite default store.
# 2.  End to end: TASKS tasks stored by a --workers 0 service, FILL_CONC
#     requests at a time; then `epilogue-demo worker --workers 16` processes
#     (own data dirs), timed until GET /durable/stats shows all succeeded:
#     SQLite with 1 worker process, PostgreSQL with 1 and with 2.
# 3.  Commit to start: K registers one at a time (0-20 ms random pause), and
#     per task the email line's sent_at minus the client's time of the 201:
#     SQLite in-process worker, SQLite worker process, PostgreSQL worker
#     process, PostgreSQL in-process worker.
#
# PostgreSQL: a throwaway cluster (initdb, pg_ctl; as the postgres user when
# run as root) on a free port of 127.0.0.1, one database per case, stopped
# and removed at exit. Everything listens on 127.0.0.1 only. Every process
# started here is stopped at exit, on failure too. Results (results.jsonl,
# the table, server logs, callgrind files, raw delays) are kept in
# target/bench/durable-<time>/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
root=$(cd "$here/.." && pwd)

quick=0 valgrind_counts=1 postgres=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-valgrind) valgrind_counts=0 ;;
    --no-postgres) postgres=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "durable.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done
if ((quick)); then
  mode=quick vg_n=${VG_N:-100} lat_n=${LAT_N:-300} tasks=${TASKS:-200} k=${K:-50}
else
  mode=full vg_n=${VG_N:-1000} lat_n=${LAT_N:-2000} tasks=${TASKS:-2000} k=${K:-300}
fi
fill_conc=${FILL_CONC:-16}
worker_conc=16
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
log "building epilogue-demo (release)"
(cd "$root" && cargo build --release -p epilogue-demo) >&2
target_dir=$(target_directory "$root")
demo=$target_dir/release/epilogue-demo
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
meta tools "$(rustc --version 2>/dev/null | cut -d' ' -f1-2), $("$python" --version 2>&1)$( ((valgrind_counts)) && echo ", $(valgrind --version)")$( ((postgres)) && echo ", PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}')")"
meta started "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta fill_conc "$fill_conc"
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

# === 1a. Enqueue cost, instructions ============================================
if ((valgrind_counts)); then
  log "1a. callgrind: /response/single and /durable/register (--workers 0), N=$vg_n and $((6 * vg_n))"
  mkdir -p "$out/callgrind"
  for route in single durable; do
    case $route in
      single) path=/response/single label=/response/single ;;
      durable) path=/durable/register label=/durable/register ;;
    esac
    declare -A count=()
    for size in N 6N; do
      n=$vg_n
      [[ $size == 6N ]] && n=$((6 * vg_n))
      dir=$(fresh "vg-$route-$size")
      cg=$out/callgrind/$route.$size.callgrind
      start_demo "vg-$route-$size" taskset -c "$server_cpu" valgrind --tool=callgrind --callgrind-out-file="$cg" \
        -- --data-dir "$dir" --workers 0
      taskset -c "$client_cpu" timeout "$step_timeout" "$python" "$here/lib/seqclient.py" "127.0.0.1:$PORT" "$path" "$n" ||
        fail "seqclient failed against $label under callgrind"
      stop "vg-$route-$size" "$PID"
      count[$size]=$(grep -E 'Collected' "$out/logs/vg-$route-$size.stderr" | awk '{print $NF}' | tail -n 1)
      [[ -n ${count[$size]} ]] || { fail "no instruction count for $label ($size)"; count[$size]=0; }
      callgrind_annotate --auto=no --threshold=100 --inclusive=no "$cg" >"$out/callgrind/$route.$size.self.txt" 2>/dev/null || true
    done
    tool instr "$results" "$label" "$vg_n" "${count[N]}" "${count[6N]}"
    unset count
  done
  tool callgrind "$results" "$out/callgrind" "$vg_n" || fail "callgrind breakdown failed"
fi

# === 1b. Latency ===============================================================
log "1b. latency: $lat_n sequential requests per route, no valgrind"
for route in /response/single /durable/register; do
  dir=$(fresh "lat")
  start_demo lat-"${route//\//_}" taskset -c "$server_cpu" -- --data-dir "$dir" --workers 0
  taskset -c "$client_cpu" timeout "$step_timeout" "$python" "$dtool" latency "$results" "$route" "127.0.0.1:$PORT" "$route" "$lat_n" ||
    fail "latency client failed against $route"
  stop lat-"${route//\//_}" "$PID"
done

# === 2. End to end =============================================================
# e2e LABEL STORE_URL WORKERS: pre-fill, then WORKERS worker processes.
e2e() {
  local label=$1 store=$2 workers=$3
  local name=e2e-${label//[^a-zA-Z0-9]/-}
  local dir
  dir=$(fresh "$name")
  log "2. $label: fill $tasks tasks, then $workers worker process(es) x --workers $worker_conc"
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
    start_worker "$name-w$i" --store "$store" --data-dir "$dir/w$i" --workers "$worker_conc"
    pids+=("$PID")
    outboxes+=("$dir/w$i/outbox.jsonl")
  done
  tool drain "$results" "$label" "127.0.0.1:$stats_port" "$tasks" "$t0" "$drain_timeout" "${outboxes[@]}" ||
    fail "$label: the tasks were not all run"
  for i in $(seq "$workers"); do
    worker_ready "$name-w$i" "${pids[i - 1]}"
    stop "$name-w$i" "${pids[i - 1]}"
  done
  stop "$name-stats" "$stats_pid"
}

if ((postgres)); then pg_start; fi

e2e "SQLite, 1 worker process" "sqlite://$(fresh e2e-sqlite-db)/tasks.db" 1
if ((postgres)); then
  e2e "PostgreSQL, 1 worker process" "$(pg_db e2e_1)" 1
  e2e "PostgreSQL, 2 worker processes" "$(pg_db e2e_2)" 2
fi

# === 3. Commit to start ========================================================
# commit LABEL STORE_URL in-process|worker
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
commit_case "SQLite, in-process worker (notify)" "sqlite://$(fresh commit-sqlite-a)/tasks.db" in-process
commit_case "SQLite, worker process (poll 250 ms)" "sqlite://$(fresh commit-sqlite-b)/tasks.db" worker
if ((postgres)); then
  commit_case "PostgreSQL, worker process" "$(pg_db commit_c)" worker
  commit_case "PostgreSQL, in-process worker" "$(pg_db commit_d)" in-process
fi

# === Table =====================================================================
meta took "$(($(date +%s) - began)) s after the build; load average at end $(cut -d' ' -f1-3 /proc/loadavg)"
warnings=$(cd "$out/logs" && grep -c -E ' (WARN|ERROR) ' -- *.stderr 2>/dev/null | grep -v ':0$' | tr '\n' ' ' || true)
[[ -z $warnings ]] || meta log_warnings "$warnings(file:count, in $out/logs)"
((${#failures[@]} == 0)) || meta failures "$(printf '%s; ' "${failures[@]}")"
"$python" "$dtool" table "$results" | tee "$out/table.txt"
log "results, logs and callgrind files: $out"
((${#failures[@]} == 0)) || exit 1
