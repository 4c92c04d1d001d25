#!/usr/bin/env bash
# Where one group of empty async tasks spends its instructions through
# epilogue's runner, against a tokio::spawn of the same work: the
# instruction-by-instruction account of benches/runner.rs's ratio.
#
#   bench/group-profile.sh [N] [TASKS]    N defaults to 10000, TASKS to 1
#
# Runs crates/epilogue/examples/group_cost.rs under callgrind with N, then
# 6N groups of TASKS tasks (batches of 100, spawned from inside the worker of
# a one-worker runtime), for each variant; per function,
# (Ir(6N) - Ir(N)) / 5N is its cost per group. Prints the totals, each
# variant's top functions, the calls into the allocator and memcpy by
# caller, the costs by crate and the largest differences (bench/lib/
# callgrind_diff.py). Takes about a minute; keeps the files in
# target/bench/group-profile-<time>/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
root=$(cd "$here/.." && pwd)
n=${1:-10000}
tasks=${2:-1}
command -v valgrind >/dev/null || { echo "group-profile.sh: valgrind is required" >&2; exit 1; }

(cd "$root" && cargo build --release -p epilogue --example group_cost) >&2
target_dir=$(target_directory "$root")
bin=$target_dir/release/examples/group_cost
out=$target_dir/bench/group-profile-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"

echo "callgrind: groups of $tasks async task(s), $n and $((6 * n)) groups" >&2
# The listings are named as bench/profile.sh's: demo (here, the runner) and spawn.
for variant in runner spawn; do
  key=$([[ $variant == runner ]] && echo demo || echo spawn)
  for label in N 6N; do
    groups=$([[ $label == N ]] && echo "$n" || echo $((6 * n)))
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$out/$key.$label.callgrind" \
      "$bin" "$variant" "$groups" "$tasks" 2>"$out/$key.$label.stderr"
    for kind in self incl; do
      callgrind_annotate --auto=no --threshold=100 --inclusive=$([[ $kind == incl ]] && echo yes || echo no) \
        "$out/$key.$label.callgrind" >"$out/$key.$label.$kind.txt" 2>/dev/null
    done
  done
done
CALLGRIND_UNIT=group CALLGRIND_LABELS="epilogue::Runner|tokio::spawn" \
  "${PYTHON:-python3}" "$here/lib/callgrind_diff.py" "$n" "$out" 30 | tee "$out/diff.txt"
echo "callgrind files and listings: $out" >&2
