"""The client and probes of bench/memory.sh (python3 stdlib only).

Usage:
  memtool.py load HOST:PORT PATH N [CONNS] [DEPTH] [TIMEOUT_S]
      Sends N POST requests with the body {"email":"a@b.c","password":"x"}
      over CONNS (32) keep-alive HTTP/1.1 connections, each with up to DEPTH
      (8) requests in flight (pipelined), and waits for every answer. Exits
      non-zero, naming the first one, unless every answer is 201; and when it
      has not finished within TIMEOUT_S (300) seconds.
  memtool.py stats HOST:PORT
      Prints GET /stats as one line of JSON.
  memtool.py drained HOST:PORT TIMEOUT_S
      Polls GET /stats until running == 0, pending == 0 and
      groups_admitted == 0; fails after TIMEOUT_S seconds.
  memtool.py rss PID
      Prints "VmRSS VmHWM" of PID, in KiB, from /proc/PID/status.
  memtool.py table FILE
      Prints the table of the rows bench/memory.sh wrote to FILE.
"""
import asyncio
import http.client
import json
import sys
import time

BODY = b'{"email":"a@b.c","password":"x"}'


def request_bytes(host: str, path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


class Failed(Exception):
    pass


async def connection(host, port, request, counter, depth, done):
    """One keep-alive connection: takes requests from the shared counter, up
    to `depth` in flight, and checks each answer in order."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        in_flight = 0
        while True:
            # Fill the pipeline from the shared budget.
            batch = min(depth - in_flight, counter[0])
            if batch > 0:
                counter[0] -= batch
                in_flight += batch
                writer.write(request * batch)
                await writer.drain()
            if in_flight == 0:
                return
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, _, rest = head.partition(b"\r\n")
            parts = status_line.split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise Failed(f"not an HTTP/1.x answer: {status_line[:80]!r}")
            length = None
            closing = False
            for line in rest.split(b"\r\n"):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    raise Failed(f"unexpected transfer-encoding {value.strip()!r}")
                elif name == b"connection" and value.strip().lower() == b"close":
                    closing = True
            if length is None:
                raise Failed("an answer without content-length")
            body = await reader.readexactly(length) if length else b""
            status = int(parts[1])
            if status != 201:
                raise Failed(
                    f"answer {done[0] + 1}: {status} {body[:200].decode(errors='replace')}"
                )
            in_flight -= 1
            done[0] += 1
            if closing:
                raise Failed("the server closed a keep-alive connection")
    finally:
        writer.close()


async def load(hostport, path, n, conns, depth, timeout):
    host, port = hostport.rsplit(":", 1)
    request = request_bytes(hostport, path)
    counter, done = [n], [0]
    tasks = [
        asyncio.ensure_future(connection(host, int(port), request, counter, depth, done))
        for _ in range(min(conns, max(n, 1)))
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    except asyncio.TimeoutError:
        raise Failed(f"{done[0]} of {n} answered after {timeout} s: timed out") from None
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if done[0] != n:
        raise Failed(f"{done[0]} of {n} answered")


def get_stats(hostport):
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/stats")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise Failed(f"GET /stats: {response.status}")
        return json.loads(body)
    finally:
        conn.close()


def rss(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def table(path):
    # Rows: route phase n base_rss limit_rss limit_hwm after_rss after_hwm admitted_at_limit
    rows = [line.split("\t") for line in open(path).read().splitlines() if line]
    head = ("route", "phase", "N", "baseline", "at limit", "after drain",
            "peak (HWM)", "admitted", "bytes/group")
    out = [head]
    for route, phase, n, base, limit, limit_hwm, after, after_hwm, admitted in rows:
        n, base, limit = int(n), int(base), int(limit)
        hwm = max(int(limit_hwm), int(after_hwm) if after_hwm != "-" else 0)
        out.append((
            route, phase, f"{n:,}",
            f"{base / 1024:.1f} MiB", f"{limit / 1024:.1f} MiB",
            f"{int(after) / 1024:.1f} MiB" if after != "-" else "-",
            f"{hwm / 1024:.1f} MiB",
            f"{int(admitted):,}",
            f"{(limit - base) * 1024 / n:,.0f}",
        ))
    widths = [max(len(r[i]) for r in out) for i in range(len(head))]
    for i, r in enumerate(out):
        cells = [c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))]
        print("  ".join(cells).rstrip())


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    try:
        if cmd == "load":
            hostport, path, n = args[0], args[1], int(args[2])
            conns = int(args[3]) if len(args) > 3 else 32
            depth = int(args[4]) if len(args) > 4 else 8
            timeout = float(args[5]) if len(args) > 5 else 300
            start = time.monotonic()
            asyncio.run(load(hostport, path, n, conns, depth, timeout))
            took = time.monotonic() - start
            print(f"  {n} x 201 in {took:.1f} s ({n / took:,.0f} req/s)", file=sys.stderr)
        elif cmd == "stats":
            print(json.dumps(get_stats(args[0])))
        elif cmd == "drained":
            hostport, timeout = args[0], float(args[1])
            deadline = time.monotonic() + timeout
            while True:
                s = get_stats(hostport)
                if s["running"] == 0 and s["pending"] == 0 and s["groups_admitted"] == 0:
                    return 0
                if time.monotonic() > deadline:
                    raise Failed(
                        f"not drained after {timeout} s: running {s['running']}, "
                        f"pending {s['pending']}, groups_admitted {s['groups_admitted']}"
                    )
                time.sleep(0.5)
        elif cmd == "rss":
            print(*rss(args[0]))
        elif cmd == "table":
            table(args[0])
        else:
            raise Failed(f"unknown command {cmd}")
    except (Failed, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        print(f"memtool {cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
