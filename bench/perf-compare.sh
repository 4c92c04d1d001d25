#!/usr/bin/env bash
# Where epilogue-demo's CPU per request goes under load, against the bare
# axum + tokio::spawn comparator (bench/baseline), symbol by symbol:
# what the instruction counts of bench/profile.sh, taken one request at a
# time, do not show (cache misses, system calls, batching under load).
#
#   bench/perf-compare.sh [CONNS] [SECS] [ROUNDS]   default: 64 8 2
#
# Each round runs both servers in turn on CPU 0 with run.sh's flags, warms
# up 2 s, then loads POST /response/single with `wrk -t1 -cCONNS` on CPU 1
# for SECS while `perf record -e cpu-clock` (no call graphs: they triple
# the cost) samples the server. Prints per round: req/s and CPU per request
# (/proc) of each, then, over all rounds, each symbol's CPU per request
# (its share of samples x the CPU per request measured under perf) for both
# and the difference, largest first, and the same by shared object. Needs
# perf and wrk (`apt-get install linux-perf wrk`).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
conns=${1:-64}
secs=${2:-8}
rounds=${3:-2}
for tool in perf wrk; do
  command -v "$tool" >/dev/null || { echo "perf-compare.sh: $tool is required" >&2; exit 1; }
done
(cd "$root" && cargo build --release -p epilogue-demo -p bench-baseline) >&2
target_dir=$(target_directory "$root")
work=$(mktemp -d -t epilogue-perf.XXXXXX)
kill_server_on_exit "$work"

printf 'round\tserver\treq/s\tcpu_us/req\n'
for round in $(seq "$rounds"); do
  for server in demo spawn; do
    case "$server" in
      demo) cmd=("$target_dir/release/epilogue-demo" --max-running 262144 --max-pending 262144) ;;
      spawn) cmd=("$target_dir/release/bench-baseline" --task spawn) ;;
    esac
    d=$work/$server.$round
    mkdir -p "$d/data"
    taskset -c 0 "${cmd[@]}" --addr 127.0.0.1:0 --data-dir "$d/data" >"$d/stdout" 2>"$d/stderr" &
    pid=$!
    port=$(listening_port "$d/stdout" "$pid") || { echo "perf-compare.sh: $server did not start" >&2; exit 1; }
    url=http://127.0.0.1:$port/response/single
    taskset -c 1 wrk -t1 -c"$conns" -d2s -s "$here/body.lua" "$url" >/dev/null
    perf record -q -e cpu-clock -p "$pid" -o "$d/perf.data" -- sleep "$((secs + 1))" 2>/dev/null &
    perf_pid=$!
    sleep 0.5
    s0=$(cpu_ticks "$pid") w0=$(date +%s.%N)
    taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" -s "$here/body.lua" "$url" >"$d/wrk.txt"
    s1=$(cpu_ticks "$pid") w1=$(date +%s.%N)
    wait "$perf_pid"
    kill -TERM "$pid"; wait "$pid" || true; pid=
    rps=$(awk '/Requests\/sec/ {print $2}' "$d/wrk.txt")
    python3 -c 'import sys; t, hz, rps, w0, w1 = map(float, sys.argv[1:]); print(f"{t / hz * 1e6 / (rps * (w1 - w0)):.2f}")' \
      "$((s1 - s0))" "$(getconf CLK_TCK)" "$rps" "$w0" "$w1" >"$d/cpu_us"
    printf '%s\t%s\t%s\t%s\n' "$round" "$server" "$rps" "$(cat "$d/cpu_us")"
    perf report -i "$d/perf.data" --no-children --sort dso,sym --stdio -q 2>/dev/null >"$d/symbols.txt"
  done
done
python3 - "$work" "$rounds" "$here/lib" <<'PY'
import glob, re, sys
from collections import defaultdict
work, rounds = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, sys.argv[3])
from callgrind_diff import category  # the crate a symbol belongs to
line = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*?)\s*$")
per = {s: defaultdict(float) for s in ("demo", "spawn")}
dso = {s: defaultdict(float) for s in ("demo", "spawn")}
cpu = {}
for s in per:
    runs = sorted(glob.glob(f"{work}/{s}.*"))
    cpu[s] = sum(float(open(f"{r}/cpu_us").read()) for r in runs) / len(runs)
    for r in runs:
        us = float(open(f"{r}/cpu_us").read())
        for l in open(f"{r}/symbols.txt"):
            m = line.match(l)
            if m:
                pct, obj, sym = float(m.group(1)), m.group(2), m.group(3)
                obj = "the server" if obj in ("epilogue-demo", "bench-baseline") else obj
                per[s][(obj, sym)] += pct / 100 * us / len(runs)
                dso[s][obj] += pct / 100 * us / len(runs)
print(f"\nCPU per request (mean of {rounds} rounds): epilogue-demo {cpu['demo']:.2f} us, "
      f"axum + tokio::spawn {cpu['spawn']:.2f} us ({cpu['demo'] / cpu['spawn']:.3f}x)")
print("\nby shared object, us per request (demo, spawn, difference):")
for k in sorted(set(dso["demo"]) | set(dso["spawn"]), key=lambda k: -abs(dso["demo"][k] - dso["spawn"][k]))[:8]:
    print(f"  {dso['demo'][k]:6.2f} {dso['spawn'][k]:6.2f} {dso['demo'][k] - dso['spawn'][k]:+6.2f}  {k}")
crates = {s: defaultdict(float) for s in per}
for s in per:
    for (obj, sym), us in per[s].items():
        crates[s][category(sym) if obj == "the server" else obj] += us
print("\nby crate (the server's own code) or shared object, us per request (demo, spawn, difference):")
for k in sorted(set(crates["demo"]) | set(crates["spawn"]), key=lambda k: -abs(crates["demo"][k] - crates["spawn"][k]))[:16]:
    print(f"  {crates['demo'][k]:6.2f} {crates['spawn'][k]:6.2f} {crates['demo'][k] - crates['spawn'][k]:+6.2f}  {k}")
print("\nlargest differences by symbol, us per request (demo, spawn, difference):")
keys = set(per["demo"]) | set(per["spawn"])
for k in sorted(keys, key=lambda k: -abs(per["demo"][k] - per["spawn"][k]))[:40]:
    d, s = per["demo"][k], per["spawn"][k]
    print(f"  {d:6.3f} {s:6.3f} {d - s:+6.3f}  {k[1][:110]} [{k[0]}]")
PY
