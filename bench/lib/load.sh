# Sourced by the load benchmarks (run.sh, actix.sh), after listening.sh:
# Rust servers started on one CPU and loaded by wrk pinned to another, each
# run measured (req/s, latency, CPU per request, how disturbed the run was)
# into a results.tsv that lib/report.py reads, and the instruction counts of
# cachegrind.
#
# The caller defines `log` and `die`, `server_cmd KEY DELAY_MS` (sets the array `cmd`:
# a server's command line without --addr and --data-dir; `under_valgrind` is
# 1 while count_instructions starts it), LABEL[KEY] and, for a route other
# than $path, KPATH[KEY]; and sets python, path, body_lua, secs, warm, reps,
# conns_list, results_dir and results before it measures.
# shellcheck shell=bash disable=SC2154,SC2034

me=${0##*/}
seqclient=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/seqclient.py

# load_init: a scratch directory and the servers' state, stopped and removed
# at exit; the CPUs of servers and clients.
load_init() {
  work=$(mktemp -d -t epilogue-bench.XXXXXX)
  started=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  declare -gA PID PORT DIR LABEL KPATH served
  n_servers=0
  failures=0
  under_valgrind=0
  # A run during which other work took more than busy_pct % of the server's
  # CPU is run again, up to busy_retries times (BUSY_PCT, BUSY_RETRIES).
  busy_pct=${BUSY_PCT:-10}
  busy_retries=${BUSY_RETRIES:-2}
  ncpu=$(nproc)
  if ((ncpu >= 2)); then
    server_cpu=0 client_cpu=1
  else
    log "$me: only $ncpu CPU: servers and clients share it, numbers mean little"
    server_cpu=0 client_cpu=0
  fi
  clk_tck=$(getconf CLK_TCK)
}

# Everything started here is stopped at exit.
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

# load_tools VALGRIND: wrk, taskset and curl (and valgrind when VALGRIND is
# 1), installed with apt-get when missing and possible; python.
load_tools() {
  command -v wrk >/dev/null || apt_install wrk || die "wrk is required and could not be installed (apt-get install wrk)"
  command -v taskset >/dev/null || die "taskset (util-linux) is required"
  command -v curl >/dev/null || apt_install curl || die "curl is required"
  if (($1)) && ! command -v valgrind >/dev/null; then
    apt_install valgrind || die "valgrind is required for the instruction counts (or pass --no-valgrind)"
  fi
  command -v "$python" >/dev/null || die "$python is required (the sequential client and the report are Python)"
}

# load_commit ROOT: sets commit (short hash, "unknown" outside git) and
# dirty (how many tracked files differ); read before the build, which takes
# the work tree as it is.
load_commit() {
  commit=$(cd "$1" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
  dirty=$(cd "$1" && git --no-optional-locks status --porcelain 2>/dev/null | grep -vc '^??' || true)
}

# load_meta: the machine, compiler, tools and commit, as meta records.
load_meta() {
  local cpu_model
  cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
  printf 'meta\tmachine\t%s CPUs, %s, %s\n' "$ncpu" "$cpu_model" "$(uname -sr)"
  printf 'meta\trustc\t%s\n' "$(rustc --version)"
  printf 'meta\ttools\t%s; %s; %s\n' "$(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)" \
    "$(valgrind --version 2>/dev/null || echo 'no valgrind')" "$("$python" --version 2>&1)"
  printf 'meta\tcommit\t%s%s\n' "$commit" "$( ((dirty > 0)) && echo " (+ uncommitted changes)" || true)"
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
    log "$me: ${LABEL[$key]} (${cmd[*]}) did not start; its stderr:"
    tail -n 20 "$dir/stderr" >&2 || true
    exit 1
  fi
  PORT[$key]=$port
}

# stop_server KEY [TIMEOUT_S]: SIGTERM, then wait; returns the exit status.
stop_server() {
  local key=$1 timeout=${2:-60} pid=${PID[$1]} rc=0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((timeout * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$me: ${LABEL[$key]} did not stop within ${timeout}s of SIGTERM: killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  forget "$pid"
  return "$rc"
}

fail() {
  log "$me: ERROR: $*"
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

# check_outbox KEY all|none: after SIGTERM, every 201 must have written its
# line (all), or no line was written (none: a server without a task). Not
# for a server that drops its tasks at exit, as a plain spawn does, with
# tasks still asleep.
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

# count_instructions KEY N DELAY_MS: sets REFS to the user-space instructions
# of a whole server run serving N sequential keep-alive requests, under
# cachegrind.
count_instructions() {
  local key=$1 n=$2 delay=$3
  REFS=0
  under_valgrind=1
  start_rust "$key" "$delay" valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null
  under_valgrind=0
  if ! taskset -c "$client_cpu" "$python" "$seqclient" "127.0.0.1:${PORT[$key]}" "$path" "$n"; then
    fail "the sequential client failed against ${LABEL[$key]} under valgrind"
  fi
  local rc=0
  stop_server "$key" 120 || rc=$?
  ((rc == 0)) || fail "${LABEL[$key]} under valgrind exited with status $rc"
  REFS=$(grep -E '== I +refs:' "${DIR[$key]}/stderr" | tail -n 1 | awk '{ gsub(",", "", $NF); print $NF }')
  [[ -n $REFS ]] || { fail "no instruction count from valgrind for ${LABEL[$key]}"; REFS=0; }
}

# count_points REPS N KEY:DELAY_MS...: each server's instructions for N then
# 6N requests, REPS times, as instr records.
count_points() {
  local reps=$1 n=$2 rep point key delay small large
  shift 2
  log "instructions: $* under cachegrind, $n and $((6 * n)) sequential requests, $reps time(s)"
  for ((rep = 1; rep <= reps; rep++)); do
    for point in "$@"; do
      key=${point%:*} delay=${point#*:}
      count_instructions "$key" "$n" "$delay"
      small=$REFS
      count_instructions "$key" $((6 * n)) "$delay"
      large=$REFS
      printf 'instr\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$rep" "$n" "$small" "$large" "$delay" >>"$results"
      log "  ${LABEL[$key]}, delay $delay ms: $small / $large instructions"
    done
  done
}
