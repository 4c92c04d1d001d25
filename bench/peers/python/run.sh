#!/usr/bin/env bash
# Load the Python peers the way the Rust benchmark loads epilogue: one uvicorn worker (uvloop, httptools)
# pinned to CPU 0, wrk pinned to CPU 1, POST JSON, 64 connections.
# Usage: run.sh [PYTHON] [SECONDS]; prints "framework path req/s p50 p99" lines.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${1:-python3}
secs=${2:-10}
port=18090
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }
export EPILOGUE_DATA_DIR=$(mktemp -d)
trap 'rm -rf "$EPILOGUE_DATA_DIR"' EXIT
for app in starlette_app fastapi_app lilya_app ${EXTRA_APPS:-}; do
  (cd "$here" && exec taskset -c 0 "$py" -m uvicorn "$app:app" --port $port --workers 1 --loop uvloop \
      --http httptools --log-level warning --no-access-log) &
  pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  for path in /plain /response/single; do
    taskset -c 1 wrk -t1 -c64 -d3s -s "$here/../../body.lua" "http://127.0.0.1:$port$path" >/dev/null
    out=$(taskset -c 1 wrk -t1 -c64 -d"${secs}s" --latency -s "$here/../../body.lua" "http://127.0.0.1:$port$path")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errs=$(grep -E "Non-2xx|Socket errors" <<<"$out" | tr -s ' ' | tr '\n' ' ' || true)
    echo "${app%_app} $path $rps $p50 $p99 $errs"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
