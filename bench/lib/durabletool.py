"""The clients, probes and table of bench/durable.sh (Python 3 standard library only).

Usage: durabletool.py COMMAND ARGS...

  latency RESULTS LABEL HOST:PORT PATH N
      N sequential POSTs (body of body.lua) on one keep-alive connection after
      N/10 unmeasured ones; the time of each, from the request's first byte to
      the response's last, with time.perf_counter(). Appends a record.
  fill RESULTS LABEL HOST:PORT N CONCURRENCY
      N POST /durable/register, at most CONCURRENCY in flight (one keep-alive
      connection per thread); every answer must be 201. Appends a record.
  drain RESULTS LABEL HOST:PORT N T0 TIMEOUT OUTBOX...
      Polls GET /durable/stats every 0.1 s until succeeded >= N (fails on a
      dead task or after TIMEOUT s). T0 is the wall clock (epoch seconds)
      when the workers were started. Then reads the OUTBOX files: their
      welcome lines must cover N task ids; the first and last sent_at give
      the rate while the workers ran. Appends a record.
  commit RESULTS LABEL HOST:PORT K TIMEOUT OUTBOX...
      K POST /durable/register one at a time, a random pause of 0-20 ms
      between; for each, the wall clock (time.time()) when its 201 was read
      whole. Then waits (up to TIMEOUT s) until every task id is in the
      OUTBOX files, and takes sent_at - 201 time per task. Appends a record
      and writes the raw values next to RESULTS.
  instr RESULTS LABEL N INSTR_N INSTR_6N
      Appends an instruction count record ((I(6N) - I(N)) / 5N).
  callgrind RESULTS OUT_DIR N
      The durable route's extra instructions per request over
      /response/single, by crate and by function, from the callgrind_annotate
      listings in OUT_DIR (durable.{N,6N}.self.txt, single.{N,6N}.self.txt).
  meta RESULTS KEY VALUE
  table RESULTS
      Prints the tables.

RESULTS is a JSON-lines file, one record per measurement.
"""
import datetime
import http.client
import json
import math
import os
import random
import statistics
import sys
import threading
import time

BODY = b'{"email":"bench@example.com","password":"s3cret"}'
HEADERS = {"Content-Type": "application/json"}


class Failed(Exception):
    pass


def connect(hostport, timeout=30):
    host, port = hostport.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def post(conn, path):
    """One POST with the benchmark's body; returns (status, body bytes)."""
    conn.putrequest("POST", path, skip_accept_encoding=True)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(BODY)))
    conn.endheaders(BODY)
    response = conn.getresponse()
    body = response.read()
    if response.will_close:
        conn.close()
    return response.status, body


def get_json(hostport, path):
    conn = connect(hostport, 10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise Failed(f"GET {path}: {response.status} {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def append(results, record):
    with open(results, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def pct(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    k = math.ceil(round(q * len(sorted_values), 9)) - 1
    return sorted_values[max(0, min(len(sorted_values) - 1, k))]


def summary(values):
    v = sorted(values)
    return {
        "n": len(v),
        "min": v[0],
        "median": statistics.median(v),
        "p90": pct(v, 0.90),
        "p99": pct(v, 0.99),
        "max": v[-1],
        "mean": statistics.fmean(v),
    }


def parse_time(text):
    # "2026-11-26T13:55:48.424485Z"
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_outboxes(paths):
    """{task_id: (sent_at epoch, attempt)} of the durable welcome lines (first attempt seen)."""
    lines = {}
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # being written
                rec = json.loads(line)
                tid = rec.get("task_id")
                if tid is None or rec.get("message") != "Welcome (durable).":
                    continue
                t = parse_time(rec["sent_at"])
                if tid not in lines or t < lines[tid][0]:
                    lines[tid] = (t, rec.get("attempt"))
    return lines


# --- commands ---------------------------------------------------------------------


def cmd_latency(results, label, hostport, path, n):
    conn = connect(hostport)
    times = []
    for i in range(n // 10 + n):
        start = time.perf_counter()
        status, body = post(conn, path)
        took = time.perf_counter() - start
        if not 200 <= status < 300:
            raise Failed(f"{path}: request {i + 1} got {status} {body[:200]!r}")
        if i >= n // 10:
            times.append(took * 1e6)
    conn.close()
    s = summary(times)
    append(results, {"kind": "latency", "label": label, "path": path, **s})
    print(f"  {label}: median {s['median']:.0f} us, p99 {s['p99']:.0f} us over {n} requests", file=sys.stderr)


def cmd_fill(results, label, hostport, n, concurrency):
    lock = threading.Lock()
    state = {"next": 0, "bad": None}

    def run():
        conn = connect(hostport, 60)
        while True:
            with lock:
                if state["next"] >= n or state["bad"]:
                    break
                state["next"] += 1
            status, body = post(conn, "/durable/register")
            if status != 201:
                with lock:
                    state["bad"] = state["bad"] or f"got {status} {body[:200]!r}"
        conn.close()

    start = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    if state["bad"]:
        raise Failed(f"fill: {state['bad']}")
    append(results, {"kind": "fill", "label": label, "n": n, "secs": took, "rps": n / took})
    print(f"  filled {n} tasks in {took:.1f} s ({n / took:,.0f} req/s, {concurrency} at a time)", file=sys.stderr)


def cmd_drain(results, label, hostport, n, t0, timeout, outboxes):
    deadline = time.time() + timeout
    polls = 0
    while True:
        stats = get_json(hostport, "/durable/stats")
        now = time.time()
        polls += 1
        if stats["dead"] > 0:
            raise Failed(f"drain: {stats['dead']} dead tasks: {stats}")
        if stats["succeeded"] >= n:
            break
        if now > deadline:
            raise Failed(f"drain: not done after {timeout} s: {stats}")
        time.sleep(0.05)
    lines = read_outboxes(outboxes)
    if len(lines) < n:
        raise Failed(f"drain: stats say {stats['succeeded']} succeeded but the outboxes have {len(lines)} task ids")
    sent = sorted(t for t, _ in lines.values())
    wall = now - t0
    span = sent[-1] - sent[0]
    per_box = {}
    for path in outboxes:
        per_box[os.path.basename(os.path.dirname(path))] = len(read_outboxes([path]))
    rec = {
        "kind": "drain",
        "label": label,
        "n": n,
        "wall_s": wall,
        "tps_wall": n / wall,
        "first_start_s": sent[0] - t0,
        "span_s": span,
        "tps_span": (n - 1) / span if span > 0 else None,
        "per_worker": per_box,
        "stats": stats,
    }
    append(results, rec)
    print(f"  {label}: {n} tasks in {wall:.2f} s from the workers' start ({n / wall:,.0f} tasks/s); "
          f"first email {rec['first_start_s']:.2f} s after the start, first to last {span:.2f} s; per worker {per_box}",
          file=sys.stderr)


def cmd_commit(results, label, hostport, k, timeout, outboxes):
    rng = random.Random(1)
    conn = connect(hostport)
    answered = {}
    sent_before = {}
    for i in range(k):
        time.sleep(rng.uniform(0, 0.020))
        before = time.time()
        status, body = post(conn, "/durable/register")
        after = time.time()
        if status != 201:
            raise Failed(f"commit: request {i + 1} got {status} {body[:200]!r}")
        tid = json.loads(body)["task_id"]
        answered[tid] = after
        sent_before[tid] = before
    conn.close()
    deadline = time.time() + timeout
    while True:
        lines = read_outboxes(outboxes)
        missing = [t for t in answered if t not in lines]
        if not missing:
            break
        if time.time() > deadline:
            raise Failed(f"commit: {len(missing)} of {k} tasks not run after {timeout} s")
        time.sleep(0.1)
    delays = {t: (lines[t][0] - answered[t]) * 1000 for t in answered}
    round_trip = [(answered[t] - sent_before[t]) * 1000 for t in answered]
    raw = os.path.join(os.path.dirname(results), f"commit-{label.replace(' ', '_').replace('/', '_')}.tsv")
    with open(raw, "w", encoding="utf-8") as f:
        f.write("task_id\trequest_sent\tanswer_201\tsent_at\tdelay_ms\n")
        for t in answered:
            f.write(f"{t}\t{sent_before[t]:.6f}\t{answered[t]:.6f}\t{lines[t][0]:.6f}\t{delays[t]:.3f}\n")
    s = summary(list(delays.values()))
    # Tasks found by one poll start together: clusters of sent_at (gaps under
    # 20 ms) and the median time between the starts of consecutive clusters.
    starts, last = [], None
    for t in sorted(lines[t][0] for t in answered):
        if last is None or t - last > 0.020:
            starts.append(t)
        last = t
    gaps = [(b - a) * 1000 for a, b in zip(starts, starts[1:])]
    before_201 = sum(1 for d in delays.values() if d < 0)
    append(results, {"kind": "commit", "label": label, **s, "before_201": before_201,
                     "request_ms_median": statistics.median(round_trip),
                     "clusters": len(starts), "cluster_gap_ms": statistics.median(gaps) if gaps else None})
    print(f"  {label}: sent_at - 201: median {s['median']:.1f} ms, p90 {s['p90']:.1f}, p99 {s['p99']:.1f}, "
          f"max {s['max']:.1f} ms ({before_201} started before the 201 was read)", file=sys.stderr)


def cmd_instr(results, label, n, small, large):
    per = (large - small) / (5 * n)
    append(results, {"kind": "instr", "label": label, "n": n, "small": small, "large": large, "per_req": per})
    print(f"  {label}: {per:,.0f} instructions per request", file=sys.stderr)


def cmd_callgrind(results, out_dir, n):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import callgrind_diff as cd

    cost = {r: cd.per_request(out_dir, r, "self", n) for r in ("durable", "single")}
    by_crate = {}
    for r in cost:
        for name, v in cost[r].items():
            by_crate.setdefault(cd.category(name), {"durable": 0.0, "single": 0.0})[r] += v
    crates = sorted(by_crate.items(), key=lambda kv: -(kv[1]["durable"] - kv[1]["single"]))
    diff = {k: cost["durable"].get(k, 0) - cost["single"].get(k, 0) for k in set(cost["durable"]) | set(cost["single"])}
    functions = sorted(diff.items(), key=lambda kv: -kv[1])[:15]
    append(results, {
        "kind": "callgrind",
        "crates": [[c, v["durable"], v["single"]] for c, v in crates if abs(v["durable"] - v["single"]) >= 200][:12],
        "functions": [[name, cost["durable"].get(name, 0), cost["single"].get(name, 0)] for name, _ in functions],
    })


# --- table --------------------------------------------------------------------------


def fmt(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def table(rows, right_from=1):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(w) if i < right_from else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  " + "  ".join(cells).rstrip())
    return "\n".join(out)


def cmd_table(results):
    meta, recs = {}, []
    with open(results, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "meta":
                meta[r["key"]] = r["value"]
            else:
                recs.append(r)
    kind = lambda k: [r for r in recs if r["kind"] == k]  # noqa: E731
    print("=" * 100)
    print(f"epilogue durable tasks benchmark ({meta.get('mode', '?')} run)")
    for key in ("command", "machine", "commit", "tools", "started", "took"):
        if key in meta:
            print(f"  {key + ':':9} {meta[key]}")

    instr = {r["label"]: r for r in kind("instr")}
    if instr:
        print()
        n = next(iter(instr.values()))["n"]
        print(f"1a. Enqueue cost: user-space instructions per request, valgrind --tool=callgrind, (I(6N) - I(N)) / 5N,")
        print(f"    N={n}, sequential keep-alive POSTs (lib/seqclient.py), server pinned to CPU 0; durable with --workers 0")
        print("    (the store's commit, not the task). Counts instructions only: SQLite's fsync per commit")
        print("    (synchronous=FULL) is a wait, not instructions; see the latency below for it.")
        rows = [["route", "instr/req", "x /response/single"]]
        base = instr.get("/response/single")
        for label, r in instr.items():
            rows.append([label, fmt(r["per_req"]), f"{r['per_req'] / base['per_req']:.2f}" if base else "-"])
        print(table(rows))
        if base and "/durable/register" in instr:
            d = instr["/durable/register"]["per_req"] - base["per_req"]
            print(f"    durable's extra: {d:,.0f} instructions per request")
    cg = kind("callgrind")
    if cg:
        c = cg[-1]
        print("    where the extra goes, exclusive instructions per request by crate (durable, single, difference):")
        for name, d, s in c["crates"]:
            print(f"      {d:9,.0f} {s:9,.0f} {d - s:+9,.0f}  {name}")
        print("    top functions by extra exclusive instructions per request (durable, single, difference):")
        for name, d, s in c["functions"][:10]:
            print(f"      {d:9,.0f} {s:9,.0f} {d - s:+9,.0f}  {name[:90]}")

    lat = kind("latency")
    if lat:
        print()
        n = lat[0]["n"]
        print(f"1b. Latency per request, no valgrind: {n} sequential keep-alive POSTs after {n // 10} unmeasured")
        print("    (lib/durabletool.py latency, request's first byte to response's last), server on CPU 0, client")
        print("    on CPU 1, SQLite default store (DATA_DIR/tasks.db, WAL, synchronous=FULL), --workers 0 for durable")
        rows = [["route", "median us", "p90 us", "p99 us", "max us", "mean us"]]
        for r in lat:
            rows.append([r["label"], fmt(r["median"]), fmt(r["p90"]), fmt(r["p99"]), fmt(r["max"]), fmt(r["mean"])])
        print(table(rows))
        by = {r["label"]: r for r in lat}
        if "/response/single" in by and "/durable/register" in by:
            a, b = by["/durable/register"], by["/response/single"]
            print(f"    durable - single: median {a['median'] - b['median']:+,.0f} us, p99 {a['p99'] - b['p99']:+,.0f} us")

    dr = kind("drain")
    if dr:
        print()
        n = dr[0]["n"]
        print(f"2. End to end: {n} durable tasks pre-filled by a --workers 0 service ({meta.get('fill_conc', '?')} requests")
        print("   at a time), then worker processes started (epilogue-demo worker --workers 16 each, own data dir);")
        print("   wall = from their start to GET /durable/stats (a --workers 0 service, polled every 0.05 s) showing")
        print("   all succeeded; span = first to last sent_at in the outboxes (the rate once running)")
        print("   fill = the pre-fill's enqueue rate, POST /durable/register, 201s per second at that concurrency")
        fills = {r["label"]: r for r in kind("fill")}
        rows = [["store, workers", "wall s", "tasks/s (wall)", "1st email s", "span s", "tasks/s (span)", "per worker",
                 "fill req/s"]]
        for r in dr:
            f = fills.get(r["label"])
            rows.append([r["label"], fmt(r["wall_s"], 2), fmt(r["tps_wall"]), fmt(r["first_start_s"], 2),
                         fmt(r["span_s"], 2), fmt(r["tps_span"]), " ".join(str(v) for v in r["per_worker"].values()),
                         fmt(f and f["rps"])])
        print(table(rows))

    cm = kind("commit")
    if cm:
        print()
        k = cm[0]["n"]
        print(f"3. Commit to start: {k} POST /durable/register one at a time, 0-20 ms random pause between;")
        print("   delay = the email line's sent_at (email delay 0) - the client's wall clock when the 201 was read")
        print("   (negative: the task started before the client had read its 201); ms. request ms = the register's")
        print("   median round trip; clusters = groups of tasks started together (sent_at gaps < 20 ms), gap = median")
        print("   time between the starts of consecutive clusters (for a polling worker: its actual poll cycle)")
        rows = [["setup", "min", "median", "p90", "p99", "max", "<0", "request ms", "clusters", "gap ms"]]
        for r in cm:
            rows.append([r["label"], fmt(r["min"], 1), fmt(r["median"], 1), fmt(r["p90"], 1), fmt(r["p99"], 1),
                         fmt(r["max"], 1), str(r["before_201"]), fmt(r["request_ms_median"], 2),
                         str(r.get("clusters", "-")), fmt(r.get("cluster_gap_ms"))])
        print(table(rows))
    if meta.get("log_warnings"):
        print()
        print(f"Warnings and errors in the servers' logs: {meta['log_warnings']}")
    if "failures" in meta:
        print()
        print(f"FAILURES: {meta['failures']}")
    print("=" * 100)


def main():
    cmd, a = sys.argv[1], sys.argv[2:]
    try:
        if cmd == "latency":
            cmd_latency(a[0], a[1], a[2], a[3], int(a[4]))
        elif cmd == "fill":
            cmd_fill(a[0], a[1], a[2], int(a[3]), int(a[4]))
        elif cmd == "drain":
            cmd_drain(a[0], a[1], a[2], int(a[3]), float(a[4]), float(a[5]), a[6:])
        elif cmd == "commit":
            cmd_commit(a[0], a[1], a[2], int(a[3]), float(a[4]), a[5:])
        elif cmd == "instr":
            cmd_instr(a[0], a[1], int(a[2]), int(a[3]), int(a[4]))
        elif cmd == "callgrind":
            cmd_callgrind(a[0], a[1], int(a[2]))
        elif cmd == "meta":
            append(a[0], {"kind": "meta", "key": a[1], "value": a[2]})
        elif cmd == "table":
            cmd_table(a[0])
        else:
            raise Failed(f"unknown command {cmd}")
    except (Failed, OSError, http.client.HTTPException, ValueError, KeyError) as e:
        print(f"durabletool {cmd}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
