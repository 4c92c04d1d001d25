#!/usr/bin/env bash
# Tokio runtime metrics of epilogue-demo under load, per request, for email
# delays of 0, 100 and 1000 ms (the last step of isolation: what the remaining
# req/s and p99 gap with sleeping tasks is made of).
#
#   bench/runtime-metrics.sh [CONNS] [SECS] [DELAYS...]   default: 256 8 0 100 1000
#
# Builds crates/demo/examples/runtime_metrics.rs (the demo's server plus a
# sampler printing RuntimeMetrics deltas once a second) with
# RUSTFLAGS="--cfg tokio_unstable" into $CARGO_TARGET_DIR (default
# /work/target-metrics, apart from the normal build), starts it on CPU 0 with
# bench/run.sh's flags, warms up 2 s, runs `wrk -t1` on CPU 1 for SECS, and
# prints per run: wrk's req/s, p50 and p99, the server's CPU per request
# (/proc) and others % (CPU 0 time not the server's: above a few %, rerun), and, over the whole seconds inside the
# wrk run, per request: worker polls, busy µs, parks, I/O-driver readies,
# local schedules, overflows, forced yields; and groups alive. Set PERF=1 to
# also record `perf record -g` (cpu-clock) of the server during the run
# (perf.data.DELAY in the scratch directory, which is kept then).
# SERVER_ENV="VAR=value ...": the server's extra environment only, e.g.
# SERVER_ENV=LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2.
# BLOCKING=1: POST /response/list (an email and a blocking write_in_file)
# with DELAYS as --log-delay-ms (the email without delay), as run.sh's
# blocking case. Context switches per request (every thread of the server,
# /proc) and the blocking pool's threads (tokio's, median over the run) are
# printed in every mode.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
conns=${1:-256}
secs=${2:-8}
shift $(($# > 2 ? 2 : $#))
delays=("$@")
((${#delays[@]})) || delays=(0 100 1000)
target=${CARGO_TARGET_DIR:-/work/target-metrics}
(cd "$root" && RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=$target \
  cargo build --release -p epilogue-demo --example runtime_metrics) >&2
bin=$target/release/examples/runtime_metrics
work=$(mktemp -d -t epilogue-rtm.XXXXXX)
pid=
cleanup() {
  if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  [[ ${PERF:-0} == 1 ]] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

printf 'delay_ms\treq/s\tp50_us\tp99_us\tcpu_us/req\tothers%%\tpolls/req\tbusy_us/req\tbusy%%\tparks/s\tio_ready/req\tlocal_sched/req\toverflows/s\tforced_yields/s\tnoops/s\talive_tasks\tswitches/req\tblocking_threads\n'
route=/response/single delay_flag=--email-delay-ms
if [[ ${BLOCKING:-0} == 1 ]]; then route=/response/list delay_flag=--log-delay-ms; fi
# Voluntary and involuntary context switches of every thread of the server.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n + 0}'; }

for delay in "${delays[@]}"; do
  d=$work/$delay
  mkdir -p "$d/data"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086 # SERVER_ENV: words, VAR=value each
  env ${SERVER_ENV:-} taskset -c 0 "$bin" --max-running 262144 --max-pending 262144 "$delay_flag" "$delay" \
    --addr 127.0.0.1:0 --data-dir "$d/data" >"$d/stdout" 2>"$d/metrics.tsv" &
  pid=$!
  port=$(listening_port "$d/stdout" "$pid") || { echo "server did not start" >&2; cat "$d/metrics.tsv" >&2; exit 1; }
  url=http://127.0.0.1:$port$route
  taskset -c 1 wrk -t1 -c"$conns" -d2s -s "$here/body.lua" "$url" >/dev/null
  sleep 1
  perf_pid=
  if [[ ${PERF:-0} == 1 ]]; then
    perf record -e cpu-clock -g -p "$pid" -o "$work/perf.data.$delay" -- sleep "$secs" 2>/dev/null &
    perf_pid=$!
  fi
  cpu0() { read -r busy _ < <(cpu_times 0) && echo "$busy"; }
  s0=$(cpu_ticks "$pid") c0=$(cpu0) x0=$(switches "$pid")
  w0=$(date +%s.%N)
  taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$here/body.lua" "$url" >"$d/wrk.txt"
  w1=$(date +%s.%N)
  s1=$(cpu_ticks "$pid") c1=$(cpu0) x1=$(switches "$pid")
  [[ -n $perf_pid ]] && wait "$perf_pid"
  sleep 1.2
  kill -TERM "$pid"; wait "$pid" || true; pid=
  python3 - "$d/metrics.tsv" "$d/wrk.txt" "$t0" "$w0" "$w1" "$delay" "$((s1 - s0))" "$((c1 - c0))" "$(getconf CLK_TCK)" "$((x1 - x0))" <<'PY'
import re, sys
tsv, wrk, t0, w0, w1, delay = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:6]), sys.argv[6]
server_ticks, cpu0_ticks, hz, switches = map(int, sys.argv[7:11])
text = open(wrk).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def us(v, unit):
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
p50 = us(*re.search(r"50%\s+([\d.]+)(us|ms|s)", text).groups())
p99 = us(*re.search(r"99%\s+([\d.]+)(us|ms|s)", text).groups())
lines = [l.rstrip("\n").split("\t") for l in open(tsv)]  # the demo logs there too
head = next(l for l in lines if l[0] == "t_s")
rows = [l for l in lines if len(l) == len(head) and re.fullmatch(r"[\d.]+", l[0])]
lo, hi = w0 - t0 + 1.0, w1 - t0  # whole seconds inside the wrk run
sel = [dict(zip(head, map(float, r))) for r in rows if lo <= float(r[0]) <= hi]
n = len(sel)
tot = {k: sum(r[k] for r in sel) for k in head}
secs = tot["wall_ms"] / 1e3
req = rps * secs
alive = sorted(r["alive"] for r in sel)[n // 2]
blocking = sorted(r.get("blocking_threads", 0) for r in sel)[n // 2]
wall = w1 - w0
cpu_us = server_ticks / hz * 1e6 / (rps * wall)
others = max(0.0, (cpu0_ticks - server_ticks) / hz / wall * 100)
print(f"{delay}\t{rps:,.0f}\t{p50:,.0f}\t{p99:,.0f}\t{cpu_us:.2f}\t{others:.0f}\t{tot['polls']/req:.3f}\t{tot['busy_ms']*1e3/req:.2f}\t"
      f"{tot['busy_ms']/tot['wall_ms']*100:.1f}\t{tot['parks']/secs:,.0f}\t{tot['io_ready']/req:.3f}\t"
      f"{tot['local_sched']/req:.3f}\t{tot['overflows']/secs:,.1f}\t{tot['forced_yields']/secs:,.0f}\t"
      f"{tot['noops']/secs:,.0f}\t{alive:,.0f}\t{switches/(rps*wall):.2f}\t{blocking:.0f}")
PY
done
