#!/usr/bin/env bash
# What uploads cost epilogue-demo in memory: its peak resident set (VmHWM)
# while N concurrent 10 MiB `POST /files` are sent, and while N uploads sit
# stalled one byte short of their end. The target (DEMO-CONTRACT.md,
# Self-protection): 50 concurrent 10 MiB uploads under 150 MiB resident.
#
#   bench/uploads.sh [N]     N defaults to 50; about 20 s after the build
#
# Both cases on one fresh server (release build, --workers 0, a temporary
# --data-dir), the stalled one second; every upload is on its own
# connection to 127.0.0.1. Prints the baseline RSS, the peak after the full
# uploads (and how many got 202), the RSS with the stalled ones open, and
# MET or MISSED.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/listening.sh
source "$here/lib/listening.sh"
root=$(cd "$here/.." && pwd)
n=${1:-50}
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "uploads.sh: N must be a positive integer, not '$n'" >&2; exit 2; }
python=${PYTHON:-python3}
limit_mib=150

(cd "$root" && cargo build --release -q -p epilogue-demo) >&2
target_dir=$(target_directory "$root")
work=$(mktemp -d -t epilogue-uploads.XXXXXX)
kill_server_on_exit "$work"

"$target_dir/release/epilogue-demo" --addr 127.0.0.1:0 --data-dir "$work/data" --workers 0 \
  >"$work/stdout" 2>"$work/stderr" &
pid=$!
port=$(listening_port "$work/stdout" "$pid") || { cat "$work/stderr" >&2; exit 1; }
addr=127.0.0.1:$port

rss() { awk -v f="$1" '$1 == f":" { print int($2 / 1024) }' "/proc/$pid/status"; }
base=$(rss VmRSS)

"$python" - "$addr" "$n" "$pid" <<'EOF'
import socket, sys, threading, time
host, port = sys.argv[1].rsplit(":", 1)
n, pid = int(sys.argv[2]), sys.argv[3]
SIZE = 10 * 1024 * 1024
CHUNK = b"x" * (256 * 1024)

def rss(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024

def upload(results, i, stall):
    s = socket.create_connection((host, int(port)), timeout=120)
    s.sendall(f"POST /files HTTP/1.1\r\nHost: bench\r\nContent-Length: {SIZE}\r\n\r\n".encode())
    left = SIZE - (1 if stall else 0)
    while left:
        chunk = CHUNK[: min(left, len(CHUNK))]
        s.sendall(chunk)
        left -= len(chunk)
    if stall:
        results[i] = s  # kept open, one byte short
        return
    answer = s.recv(4096).decode(errors="replace")
    results[i] = answer.split(" ", 2)[1] if answer.startswith("HTTP/1.1") else "?"
    s.close()

for stall in (False, True):
    results = [None] * n
    threads = [threading.Thread(target=upload, args=(results, i, stall)) for i in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
    if stall:
        time.sleep(1)  # let the server take what was sent
        print(f"stalled {n} uploads one byte short: RSS {rss('VmRSS')} MiB (peak so far {rss('VmHWM')} MiB)")
        for s in results: s.close()
    else:
        codes = {c: results.count(c) for c in set(results)}
        print(f"{n} concurrent 10 MiB uploads: statuses {codes}; peak RSS (VmHWM) {rss('VmHWM')} MiB")
EOF
peak=$(rss VmHWM)
echo "baseline RSS ${base} MiB; peak over both cases ${peak} MiB"
if ((peak < limit_mib)); then verdict=MET; else verdict=MISSED; fi
echo "target: peak < ${limit_mib} MiB with $n concurrent 10 MiB uploads: $verdict"
