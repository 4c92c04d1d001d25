#!/usr/bin/env bash
# What a waiting task group costs in memory: the resident set (VmRSS) of
# epilogue-demo before and after N accepted requests whose tasks have not run
# yet, and after they have all run.
#
#   bench/memory.sh [N]     N defaults to 100000; about 3 minutes on 2 cores
#
# For each of POST /response/single (one async task) and POST /response/list
# (an async task, then a blocking one; --log-delay-ms 0), two servers, each
# with a fresh --data-dir, started one after the other:
#
#   queued:   --max-running 1 --max-pending N+100 --email-delay-ms 30000.
#             One group runs (it sleeps 30 s), every other one waits for its
#             permit. 100 warm-up requests, then the baseline (their groups
#             stay queued: 100 x 30 s is too long to drain), then N requests,
#             all answered 201, then "at limit". Killed without draining.
#   sleeping: --max-running N --max-pending N --email-delay-ms 20000.
#             Every group runs at once and sleeps 20 s in its task. 100
#             warm-up requests, drained, then the baseline, then N requests,
#             all answered 201, then "at limit" (none has woken yet if the
#             requests took under 20 s), then, once /stats says running == 0,
#             pending == 0 and groups_admitted == 0, "after drain"; then
#             SIGTERM, which must end it with status 0.
#
# RSS is VmRSS of /proc/PID/status; "peak (HWM)" is VmHWM, the largest RSS of
# the process's life. bytes/group = (at limit - baseline) / N. glibc keeps
# some freed memory in its arenas, so "after drain" need not come back to the
# baseline. "admitted" is /stats groups_admitted at the limit (N + 100 queued,
# N sleeping). Requests: bench/lib/memtool.py, CONNS (32) keep-alive HTTP/1.1
# connections to 127.0.0.1 with DEPTH (8) pipelined requests each.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
root=$(cd "$here/.." && pwd)
n=${1:-100000}
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "memory.sh: N must be a positive integer, not '$n'" >&2; exit 2; }
python=${PYTHON:-python3}
conns=${CONNS:-32} depth=${DEPTH:-8}
warmup=100
queued_delay_ms=30000 sleeping_delay_ms=20000
tool=("$python" "$here/lib/memtool.py")

(cd "$root" && cargo build --release -p epilogue-demo) >&2
target_dir=$(target_directory "$root")
demo=$target_dir/release/epilogue-demo
work=$(mktemp -d -t epilogue-memory.XXXXXX)
kill_server_on_exit "$work"

port=
start_demo() { # start_demo ARGS...: a fresh data directory, port in $port
  rm -rf "$work/data" && mkdir -p "$work/data"
  "$demo" --addr 127.0.0.1:0 --data-dir "$work/data" "$@" >"$work/stdout" 2>"$work/stderr" &
  pid=$!
  port=$(listening_port "$work/stdout" "$pid") || {
    echo "memory.sh: epilogue-demo did not start:" >&2
    tail -n 20 "$work/stderr" >&2
    exit 1
  }
}
rss() { "${tool[@]}" rss "$pid"; } # "VmRSS VmHWM" in KiB
load() { # load PATH COUNT
  "${tool[@]}" load "127.0.0.1:$port" "$1" "$2" "$conns" "$depth" 300 || {
    echo "memory.sh: the load on $1 failed; the server's last lines:" >&2
    tail -n 5 "$work/stderr" >&2
    exit 1
  }
}
admitted() { "${tool[@]}" stats "127.0.0.1:$port" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["groups_admitted"])'; }
drained() { # drained TIMEOUT_S
  "${tool[@]}" drained "127.0.0.1:$port" "$1" || { echo "memory.sh: the groups did not drain" >&2; exit 1; }
}
check_admitted() { # check_admitted GOT WANT
  local got=$1 want=$2
  # Groups are admitted before they are answered: all of them must be there.
  if ((got < want * 99 / 100 || got > want)); then
    echo "memory.sh: /stats groups_admitted is $got, expected $want" >&2
    exit 1
  fi
}

queued() { # queued ROUTE EXTRA_ARGS...
  local route=$1 base limit hwm got
  shift
  echo "$route, queued: max-running 1, tasks of ${queued_delay_ms} ms" >&2
  start_demo --max-running 1 --max-pending $((n + warmup)) --email-delay-ms "$queued_delay_ms" "$@"
  load "$route" "$warmup"
  sleep 1
  read -r base _ < <(rss)
  load "$route" "$n"
  sleep 1
  got=$(admitted)
  read -r limit hwm < <(rss)
  check_admitted "$got" $((n + warmup))
  kill -KILL "$pid"; wait "$pid" 2>/dev/null || true; pid=
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$route" "queued" "$n" "$base" "$limit" "$hwm" - - "$got" >>"$work/rows.tsv"
}

sleeping() { # sleeping ROUTE EXTRA_ARGS...
  local route=$1 base limit hwm after after_hwm got started took rc=0
  shift
  local cap=$((n > warmup ? n : warmup))
  echo "$route, sleeping: max-running $cap, tasks of ${sleeping_delay_ms} ms" >&2
  start_demo --max-running "$cap" --max-pending "$cap" --email-delay-ms "$sleeping_delay_ms" "$@"
  load "$route" "$warmup"
  drained $((sleeping_delay_ms / 1000 + 30))
  sleep 1
  read -r base _ < <(rss)
  started=$SECONDS
  load "$route" "$n"
  read -r limit hwm < <(rss)
  got=$(admitted)
  took=$((SECONDS - started))
  if ((took * 1000 >= sleeping_delay_ms)); then
    echo "memory.sh: the requests took ${took} s, longer than the tasks' sleep: the first groups had finished before the last were answered" >&2
  fi
  check_admitted "$got" "$n"
  drained $((sleeping_delay_ms / 1000 + 180))
  sleep 2
  read -r after after_hwm < <(rss)
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  pid=
  ((rc == 0)) || { echo "memory.sh: epilogue-demo exited with status $rc on SIGTERM" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$route" "sleeping" "$n" "$base" "$limit" "$hwm" "$after" "$after_hwm" "$got" >>"$work/rows.tsv"
}

: >"$work/rows.tsv"
for route in /response/single /response/list; do
  extra=()
  [[ $route == /response/list ]] && extra=(--log-delay-ms 0)
  queued "$route" "${extra[@]}"
  sleeping "$route" "${extra[@]}"
done

echo
echo "epilogue-demo RSS, N = $n; $(nproc) CPUs, Linux $(uname -r), epilogue at $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
"${tool[@]}" table "$work/rows.tsv"
