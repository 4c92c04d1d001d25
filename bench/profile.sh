#!/usr/bin/env bash
# Where epilogue-demo spends its instructions per request, against an
# axum + tokio::spawn comparator, under callgrind.
#
#   bench/profile.sh [N] [spawn|plain]
#
# N defaults to 1000 (about a minute). The comparator: `spawn` (default),
# bench/baseline, which shares the demo's input and task code, so that the
# difference is epilogue's; or `plain`, bench/plain, the route as a user
# writes it with axum::serve and nothing of ours.
#
# Each server serves N, then (in a second run) 6N sequential keep-alive
# requests of POST /response/single under `valgrind --tool=callgrind`, and is
# stopped by SIGTERM. Per function, (Ir(6N) - Ir(N)) / 5N is its cost per
# request. Prints each server's top functions and the largest differences,
# exclusive and inclusive; keeps the callgrind files and listings in
# target/bench/profile-<time>/ for callgrind_annotate or kcachegrind.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
root=$(cd "$here/.." && pwd)
n=${1:-1000}
against=${2:-spawn}
case "$against" in spawn | plain) ;; *) echo "profile.sh: the comparator is spawn or plain, not $against" >&2; exit 2 ;; esac
python=${PYTHON:-python3}
command -v valgrind >/dev/null || { echo "profile.sh: valgrind is required" >&2; exit 1; }
cpus=$(nproc)
server_cpu=0 client_cpu=$((cpus >= 2 ? 1 : 0))

(cd "$root" && cargo build --release -p epilogue-demo -p bench-baseline) >&2
# On its own: built with the demo, it would share the demo's feature set.
(cd "$root" && cargo build --release -p bench-plain) >&2
target_dir=$(target_directory "$root")
out=$target_dir/bench/profile-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
work=$(mktemp -d -t epilogue-profile.XXXXXX)
kill_server_on_exit "$work"

profile() { # profile SERVER LABEL REQUESTS
  local server=$1 label=$2 requests=$3 cmd
  case "$server" in
    # No durable worker: it polls its store every 250 ms, work per second
    # that callgrind's slowness would count as work per request.
    demo) cmd=("$target_dir/release/epilogue-demo" --workers 0) ;;
    spawn) cmd=("$target_dir/release/bench-baseline" --task spawn) ;;
    plain) cmd=("$target_dir/release/bench-plain") ;;
  esac
  rm -rf "$work/data" && mkdir -p "$work/data"
  # Collection starts once the server listens: start-up work whose length
  # depends on time (quanta's clock calibration, for the demo's metrics)
  # would not cancel out between the two runs.
  taskset -c "$server_cpu" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/$server.$label.callgrind" \
    "${cmd[@]}" --addr 127.0.0.1:0 --data-dir "$work/data" >"$work/stdout" 2>"$out/$server.$label.stderr" &
  pid=$!
  local port
  port=$(listening_port "$work/stdout" "$pid") ||
    { echo "profile.sh: $server did not start under callgrind" >&2; exit 1; }
  callgrind_control --instr=on "$pid" >/dev/null
  taskset -c "$client_cpu" "$python" "$here/lib/seqclient.py" "127.0.0.1:$port" /response/single "$requests"
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  pid=
  ((rc == 0)) || { echo "profile.sh: $server exited with status $rc" >&2; exit 1; }
  for kind in self incl; do
    callgrind_annotate --auto=no --threshold=100 --inclusive=$([[ $kind == incl ]] && echo yes || echo no) \
      "$out/$server.$label.callgrind" >"$out/$server.$label.$kind.txt" 2>/dev/null
  done
  echo "  $server, $requests requests: $(grep -E 'Collected' "$out/$server.$label.stderr" | awk '{print $NF}') instructions" >&2
}

echo "callgrind: epilogue-demo and bench-$against, $n and $((6 * n)) requests" >&2
for server in demo "$against"; do
  profile "$server" N "$n"
  profile "$server" 6N $((6 * n))
done
if [[ $against == plain ]]; then
  # callgrind_diff.py reads the comparator's listings as spawn.*.
  for f in "$out"/plain.*; do mv "$f" "$out/spawn.${f#"$out"/plain.}"; done
  export CALLGRIND_LABELS="epilogue-demo|bench-plain"
fi
"$python" "$here/lib/callgrind_diff.py" "$n" "$out" 30 | tee "$out/diff.txt"
echo "callgrind files and listings: $out" >&2
