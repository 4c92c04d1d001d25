#!/usr/bin/env bash
# epilogue on actix-web against what actix users write today, side by side:
# epilogue-demo-actix against bench-plain-actix (the same routes in plain
# actix-web, tasks fired with actix_web::rt::spawn), on POST /response/single.
#
#   bench/actix.sh            3 runs of 8 s per point, about 8 minutes after the build
#   bench/actix.sh --quick    1 run of 3 s per point, about 2 minutes
#
# Options: --quick, --no-valgrind (skip the instruction counts), -h/--help.
# Environment: DEMO_BIN (a binary measured in place of epilogue-demo-actix,
# which is then not built; e.g. bench-plain-actix's own, to try the script
# out: the check that every 201 of the 100 ms case wrote its email is then
# skipped, a plain spawn drops its sleeping tasks at exit), PYTHON, BUSY_PCT
# and BUSY_RETRIES (as run.sh's).
#
# What it does, as run.sh does it (bench/lib/load.sh): builds both in release,
# each on its own so that neither takes the other's features; installs wrk
# and valgrind (apt-get) if missing; pins the servers to CPU 0 and wrk to
# CPU 1; at 1, 64 and 256 connections, with emails of 0 then 100 ms
# (--email-delay-ms), warms up and measures, the two servers interleaved:
# req/s and p50/p99 (wrk), CPU time per request (/proc/PID/stat); then the
# user-space instructions per request (valgrind cachegrind, N then 6N
# sequential keep-alive requests, (I(6N) - I(N)) / 5N). Prints medians and
# the ratios epilogue-demo-actix / bench-plain-actix, and each server's p99
# with 100 ms tasks against its p99 without.
#
# Exits non-zero if a server fails to start or to exit 0 on SIGTERM, or a
# run errors (a non-2xx answer, a socket error, a missing outbox line).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
# shellcheck source=lib/load.sh
source "$here/lib/load.sh"
root=$(cd "$here/.." && pwd)

quick=0
valgrind_counts=1
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --no-valgrind) valgrind_counts=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "actix.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if ((quick)); then
  secs=3 warm=1 reps=1 vg_n=500 mode=quick
else
  secs=8 warm=2 reps=3 vg_n=2000 mode=full
fi
conns_list=(1 64 256)
delay_ms=100
# No 503 however many 100 ms emails sleep at once (about rate x 0.1 s);
# bench-plain-actix accepts the flags and ignores them.
limits=(--max-running 262144 --max-pending 262144)
python=${PYTHON:-python3}
body_lua=$here/body.lua
path=/response/single

log() { printf '%s\n' "$*" >&2; }
die() { log "actix.sh: $*"; exit 1; }

load_init
load_tools "$valgrind_counts"

load_commit "$root"
log "building bench-plain-actix and epilogue-demo-actix (release)"
(cd "$root" && cargo build --release -p bench-plain-actix) >&2
target_dir=$(target_directory "$root")
plain_bin=$target_dir/release/bench-plain-actix
if [[ -n ${DEMO_BIN:-} ]]; then
  demo_bin=$DEMO_BIN
  LABEL[demo]="$(basename "$demo_bin") (DEMO_BIN)"
  log "actix.sh: measuring $demo_bin in place of epilogue-demo-actix"
else
  (cd "$root" && cargo build --release -p epilogue-demo-actix) >&2
  demo_bin=$target_dir/release/epilogue-demo-actix
  LABEL[demo]=epilogue-demo-actix
fi
LABEL[plain]=bench-plain-actix
results_dir=$target_dir/bench/actix-$(date +%Y%m%d-%H%M%S)-$mode
mkdir -p "$results_dir"
results=$results_dir/results.tsv
: >"$results"

server_cmd() { # server_cmd KEY DELAY_MS: the command line of a server
  case "$1" in
    demo) cmd=("$demo_bin" "${limits[@]}" --email-delay-ms "$2") ;;
    plain) cmd=("$plain_bin" "${limits[@]}" --email-delay-ms "$2") ;;
  esac
}

{
  printf 'meta\tcommand\tbench/actix.sh %s\n' "$*"
  printf 'meta\tmode\t%s\n' "$mode"
  load_meta
  printf 'meta\tplan\t%s runs of %s s per point after a %s s warm-up; servers on CPU %s, wrk -t1 on CPU %s; instructions: N=%s\n' \
    "$reps" "$secs" "$warm" "$server_cpu" "$client_cpu" "$vg_n"
  printf 'meta\tinstr_n\t%s\n' "$vg_n"
  printf 'meta\tlabel_demo\t%s\n' "${LABEL[demo]}"
  printf 'meta\tlabel_plain\t%s\n' "${LABEL[plain]}"
} >>"$results"

for delay in 0 "$delay_ms"; do
  run_case "delay$delay" "$delay" demo plain
  if ((delay == 0)); then
    check_outbox demo all
    check_outbox plain all
  elif [[ -z ${DEMO_BIN:-} ]]; then
    # epilogue drains on SIGTERM; a plain spawn drops what still sleeps.
    check_outbox demo all
  fi
done

if ((valgrind_counts)); then
  count_points "$reps" "$vg_n" demo:0 plain:0
fi

"$python" "$here/lib/actix_report.py" "$results" | tee "$results_dir/report.txt"
log "raw results and wrk outputs: $results_dir"
if ((failures > 0)); then
  log "actix.sh: $failures error(s), see above"
  exit 1
fi
