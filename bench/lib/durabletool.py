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
  idle RESULTS LABEL HOST:PORT WARM IDLE_S ROUNDS TIMEOUT OUTBOX
      WARM registers (each waited for), then ROUNDS times: IDLE_S seconds
      with nothing sent, one register, sent_at - 201 time of its task.
      Appends a record (kind commit, idle_s set).
  instr RESULTS LABEL N INSTR_N INSTR_6N WINDOW_S [INCL_N INCL_6N]
      Appends an instruction count record ((I(6N) - I(N)) / 5N), and with
      the two inclusive callgrind_annotate listings, the request path's
      (the inclusive cost of the connection's future and of the runner's
      lanes, see CONNECTIONS and LANES).
  wrk RESULTS LABEL CONNECTIONS ROUND WRK_OUTPUT
      Appends wrk's requests per second and latency percentiles; fails on
      a non-2xx answer or a socket error.
  cpu RESULTS LABEL TICKS N
      Appends the demo's worker processes' CPU time (clock ticks) for N tasks.
  direct RESULTS LABEL JSON_FILE
      Appends bench-river-direct's report (kind river or ceiling) under LABEL.
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
import re
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


# The request path in a callgrind_annotate --inclusive=yes listing: the
# inclusive instructions of the HTTP connection's future (hyper-util's
# `auto` connection, or hyper's HTTP/1 one where it is not inlined into it,
# polled by the connection's task: parsing, routing, the handler, the
# executing layer, writing the response) and of the runner's lanes (the
# in-memory task). The durable store's own work (River's client: fetches,
# elections, the scheduler, on tasks of their own and sqlx's SQLite threads)
# runs under neither. Function-level lines only (those ending with the
# object file). A connection is required; a route with no in-memory task has
# no lanes.
CONNECTIONS = (
    "<hyper_util::server::conn::auto::UpgradeableConnection<I,S,E> as core::future::future::Future>::poll [",
    "<hyper::server::conn::http1::UpgradeableConnection<I,S> as core::future::future::Future>::poll [",
)
LANES = "epilogue::runner::lanes::lane::{{closure}} ["


def roots(path):
    found = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            for root in CONNECTIONS + (LANES,):
                if root in line:
                    m = re.match(r"^\s*([\d,]+)\s", line)
                    if m:
                        found[root] = found.get(root, 0) + int(m.group(1).replace(",", ""))
    # The outermost connection future found: the other is inside it.
    connection = next((found[root] for root in CONNECTIONS if root in found), None)
    if connection is None:
        raise Failed(f"{path}: the request path's function {CONNECTIONS[0]!r} is not in the listing")
    return connection + found.get(LANES, 0)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


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
    # The middle 80 % of the runs: the rate once every process is running.
    lo, hi = (len(sent) - 1) // 10, (len(sent) - 1) * 9 // 10
    steady = (hi - lo) / (sent[hi] - sent[lo]) if sent[hi] > sent[lo] else None
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
        "tps_steady": steady,
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


def cmd_idle(results, label, hostport, warm, idle_s, rounds, timeout, outbox):
    conn = connect(hostport)

    def one():
        status, body = post(conn, "/durable/register")
        answered = time.time()
        if status != 201:
            raise Failed(f"idle: got {status} {body[:200]!r}")
        tid = json.loads(body)["task_id"]
        deadline = time.time() + timeout
        while True:
            lines = read_outboxes([outbox])
            if tid in lines:
                return (lines[tid][0] - answered) * 1000
            if time.time() > deadline:
                raise Failed(f"idle: task {tid} not run after {timeout} s")
            time.sleep(0.01)

    for _ in range(warm):
        one()
    delays = []
    for _ in range(rounds):
        # A fresh connection, as a client after a quiet minute would open.
        conn.close()
        time.sleep(idle_s)
        conn = connect(hostport)
        delays.append(one())
    conn.close()
    s = summary(delays)
    append(results, {"kind": "commit", "label": label, **s, "idle_s": idle_s, "before_201": sum(d < 0 for d in delays),
                     "values": delays})
    print(f"  {label}: after {idle_s:.0f} s idle, sent_at - 201: {', '.join(f'{d:.1f}' for d in delays)} ms", file=sys.stderr)


def cmd_instr(results, label, n, small, large, window, incl):
    per = (large - small) / (5 * n)
    rec = {"kind": "instr", "label": label, "n": n, "small": small, "large": large, "per_req": per, "window_s": window}
    if incl:
        rs, rl = roots(incl[0]), roots(incl[1])
        rec.update({"path_small": rs, "path_large": rl, "path_per_req": (rl - rs) / (5 * n)})
    append(results, rec)
    path = f", request path {rec['path_per_req']:,.0f}" if incl else ""
    print(f"  {label}: {per:,.0f} instructions per request (whole process){path}", file=sys.stderr)


def cmd_wrk(results, label, conns, round_, path):
    text = open(path, encoding="utf-8").read()
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def ms(value):
        m = re.match(r"([\d.]+)(us|ms|s)$", value)
        if not m:
            raise Failed(f"wrk: cannot read the latency {value!r} in {path}")
        return float(m.group(1)) * unit[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not rps:
        raise Failed(f"wrk: no Requests/sec in {path}: {text[-300:]!r}")
    pcts = {int(p): ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M)}
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    rec = {"kind": "wrk", "label": label, "conns": conns, "round": round_, "rps": float(rps.group(1)),
           "p50_ms": pcts.get(50), "p90_ms": pcts.get(90), "p99_ms": pcts.get(99),
           "requests": int(total.group(1)) if total else None,
           "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else None}
    append(results, rec)
    print(f"  {label}, {conns} connection(s): {rec['rps']:,.0f} req/s, p50 {fmt(rec['p50_ms'], 2)} ms, "
          f"p99 {fmt(rec['p99_ms'], 2)} ms", file=sys.stderr)
    if rec["non2xx"] or rec["socket_errors"]:
        raise Failed(f"wrk: {rec['non2xx']} non-2xx answers, socket errors: {rec['socket_errors']}")


def cmd_direct(results, label, path):
    with open(path, encoding="utf-8") as f:
        rec = json.loads(f.read())
    rec["label"] = label
    append(results, rec)
    if rec["kind"] == "ceiling":
        print(f"  {label}: raw claim+complete loop, {rec['tasks']} rows, {rec['batch']} per statement: "
              f"{rec['tps']:,.0f} tasks/s", file=sys.stderr)
    else:
        print(f"  {label}: River directly: {rec['tasks']} jobs in {rec['wall_s']:.2f} s from the start "
              f"({rec['tps_wall']:,.0f} tasks/s); first to last run {rec['span_s']:.2f} s "
              f"({fmt(rec['tps_span'])} tasks/s); per process {rec['per_process']}", file=sys.stderr)


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


# The targets: (section, what, record label, statistic, limit in ms).
PICKUP = [
    ("PostgreSQL, worker process", "median", 5.0),
    ("PostgreSQL, worker process", "p99", 25.0),
    ("SQLite, worker process", "p99", 100.0),
    ("SQLite, in-process worker", "p99", 10.0),
    ("PostgreSQL, in-process worker", "p99", 10.0),
    ("SQLite, in-process worker, after an idle minute", "max", 10.0),
    ("PostgreSQL, in-process worker, after an idle minute", "max", 10.0),
]
THROUGHPUT_MIN = 0.9
SHARED_MIN, SHARED_AIM, SHARED_P99_MS = 3.0, 5.0, 10.0
INSTR_WITHIN = 0.01


def verdict(ok):
    return "-" if ok is None else ("MET" if ok else "MISSED")


def load(results):
    meta, recs = {}, []
    with open(results, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["kind"] == "meta":
                meta[r["key"]] = r["value"]
            else:
                recs.append(r)
    return meta, recs


def by_label(recs):
    """{label: [records]} in the order the labels first appear."""
    out = {}
    for r in recs:
        out.setdefault(r["label"], []).append(r)
    return out


def med(recs, key):
    return median([r.get(key) for r in recs])


def cmd_table(results):
    meta, recs = load(results)
    kind = lambda k: [r for r in recs if r["kind"] == k]  # noqa: E731
    print("=" * 110)
    print(f"epilogue durable tasks benchmark ({meta.get('mode', '?')} run)")
    for key in ("command", "machine", "commit", "tools", "started", "took"):
        if key in meta:
            print(f"  {key + ':':9} {meta[key]}")

    # --- the targets, side by side ---------------------------------------------------
    print()
    print("Targets (medians over the rounds where there are several; details below)")
    rows = [["target", "measured", "wanted", "verdict"]]

    wrk = by_label(kind("wrk"))
    w = wrk.get("/durable/register", [])
    one = [r for r in w if r["conns"] == 1]
    many = [r for r in w if r["conns"] == 16]
    if one and many:
        a, b = med(one, "rps"), med(many, "rps")
        ratio = b / a
        rows.append(["1. shared commits: 201/s at 16 clients / at 1 (SQLite, --workers 0)",
                     f"{b:,.0f} / {a:,.0f} = {ratio:.2f}x", f">= {SHARED_MIN:.0f}x (aim {SHARED_AIM:.0f}x)",
                     verdict(ratio >= SHARED_MIN) + (" (aim met)" if ratio >= SHARED_AIM else "")])
        p99 = med(many, "p99_ms")
        rows.append(["   p99 latency at 16 clients", f"{p99:.2f} ms", f"<= {SHARED_P99_MS:.0f} ms",
                     verdict(p99 <= SHARED_P99_MS)])
    else:
        rows.append(["1. shared commits", "not run", "", "-"])

    commits = {r["label"]: r for r in kind("commit")}
    for i, (label, stat, limit) in enumerate(PICKUP):
        name = ("2. pickup: " if i == 0 else "   ") + f"{label}, {stat if stat != 'max' else 'delay'}"
        r = commits.get(label)
        if r is None:
            rows.append([name, "not run", f"<= {limit:.0f} ms", "-"])
        else:
            rows.append([name, f"{r[stat]:.1f} ms", f"<= {limit:.0f} ms", verdict(r[stat] <= limit)])

    drains = by_label(kind("drain"))
    rivers = by_label([r for r in kind("river") if r.get("fetch_cooldown_ms") == 1])
    rivers2 = by_label([r for r in kind("river") if r.get("fetch_cooldown_ms") == 2])
    ceilings = by_label(kind("ceiling"))
    first = True
    for label, ds in drains.items():
        rs = rivers.get(label)
        name = ("3. throughput, demo / River directly: " if first else "   ") + label
        first = False
        demo = med(ds, "tps_span")
        direct = med(rs, "tps_span") if rs else None
        direct2 = med(rivers2.get(label, []), "tps_span")
        ceiling = med(ceilings.get(label.split(",")[0], []), "tps")
        notes = ([f"2 ms: {demo / direct2:.2f}x"] if demo and direct2 else []) + \
            ([f"ceiling {ceiling:,.0f}"] if ceiling else [])
        if demo is None or direct is None:
            rows.append([name, "not measured", f">= {THROUGHPUT_MIN}x", "-"])
            continue
        ratio = demo / direct
        rows.append([name, f"{demo:,.0f} / {direct:,.0f} = {ratio:.2f}x" + (f" ({'; '.join(notes)})" if notes else ""),
                     f">= {THROUGHPUT_MIN}x", verdict(ratio >= THROUGHPUT_MIN)])
    if first:
        rows.append(["3. throughput", "not run", "", "-"])

    instr = {r["label"]: r for r in kind("instr")}
    w0, w4 = instr.get("/response/single"), instr.get("/response/single, --workers 4")
    if w0 and w4 and "path_per_req" in w0 and "path_per_req" in w4:
        d = w4["path_per_req"] / w0["path_per_req"] - 1
        rows.append(["4. /response/single instr/request, --workers 4 vs 0: request path",
                     f"{w4['path_per_req']:,.0f} vs {w0['path_per_req']:,.0f} ({d:+.2%})",
                     f"within {INSTR_WITHIN:.0%}", verdict(abs(d) <= INSTR_WITHIN)])
        # Not a verdict: River's timers (fetch polls, the scheduler, the
        # elector, the rescuer) tick a few times more or fewer in one
        # window than in the other, hundreds of thousands of instructions
        # each; full runs gave +3.05 %, -2.17 % and +1.02 %.
        d = w4["per_req"] / w0["per_req"] - 1
        rows.append(["   whole process, River's own timers included (information)",
                     f"{w4['per_req']:,.0f} vs {w0['per_req']:,.0f} ({d:+.2%})",
                     "", "-"])
    else:
        rows.append(["4. /response/single instructions, --workers 4 vs 0", "not run", "", "-"])
    print(table(rows, right_from=4))

    # --- 1a ---------------------------------------------------------------------------
    if instr:
        print()
        n = next(iter(instr.values()))["n"]
        print("1a. Instructions per request, valgrind --tool=callgrind, (I(6N) - I(N)) / 5N, N={}, sequential".format(n))
        print("    keep-alive POSTs (lib/seqclient.py), server pinned to CPU 0; collection from 1 s after the server")
        print("    listens, for the same window in both runs (the 6N run's requests + 0.5 s), so that work per second")
        print("    cancels out. whole = every instruction of the process; request path = inclusive instructions of")
        print("    the connection's future (hyper-util's) and of the runner's lanes (the in-memory task), without River's")
        print("    own tasks and threads (target 4; not for /durable/register, whose commit runs on the store's own")
        print("    task). Instructions only: SQLite's fsync per commit is a wait (see 1b).")
        rows = [["route, flags", "whole", "request path", "x /response/single (whole)", "window s"]]
        base = instr.get("/response/single")
        for label, r in instr.items():
            flags = label if "--workers" in label else label + ", --workers 0"
            # The enqueue's commit runs on the store's own task: its request
            # path is not the route's cost.
            path = None if label == "/durable/register" else r.get("path_per_req")
            rows.append([flags, fmt(r["per_req"]), fmt(path),
                         f"{r['per_req'] / base['per_req']:.2f}" if base else "-", fmt(r.get("window_s"), 1)])
        print(table(rows))
        if base and "/durable/register" in instr:
            d = instr["/durable/register"]["per_req"] - base["per_req"]
            print(f"    the enqueue's extra (/durable/register - /response/single): {d:,.0f} instructions per request")
    cg = kind("callgrind")
    if cg:
        c = cg[-1]
        print("    where the enqueue's extra goes, exclusive instructions per request by crate (durable, single, difference):")
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
        print("    on CPU 1, SQLite default store (DATA_DIR/tasks.db, WAL, synchronous=FULL), --workers 0")
        rows = [["route", "median us", "p90 us", "p99 us", "max us", "mean us"]]
        for r in lat:
            rows.append([r["label"], fmt(r["median"]), fmt(r["p90"]), fmt(r["p99"]), fmt(r["max"]), fmt(r["mean"])])
        print(table(rows))
        by = {r["label"]: r for r in lat}
        if "/response/single" in by and "/durable/register" in by:
            a, b = by["/durable/register"], by["/response/single"]
            print(f"    durable - single: median {a['median'] - b['median']:+,.0f} us, p99 {a['p99'] - b['p99']:+,.0f} us")

    if w:
        print()
        print(f"1c. Shared commits: POST /durable/register under wrk -t1 (body.lua), server (--workers 0, SQLite")
        print(f"    default store) on CPU 0, wrk on CPU 1, a fresh data dir per run, {meta.get('wrk_plan', '')}")
        rows = [["clients", "round", "req/s", "p50 ms", "p90 ms", "p99 ms", "requests"]]
        for r in sorted(w, key=lambda r: (r["conns"], r.get("round", 0))):
            rows.append([str(r["conns"]), str(r.get("round", 1)), fmt(r["rps"]), fmt(r["p50_ms"], 2),
                         fmt(r["p90_ms"], 2), fmt(r["p99_ms"], 2), fmt(r["requests"])])
        print(table(rows))

    if drains:
        print()
        n = kind("drain")[0]["n"]
        print(f"2. Throughput, tasks/s: {n} tasks. demo = stored by a --workers 0 service ({meta.get('fill_conc', '?')} requests")
        print("   at a time), then `epilogue-demo worker --workers C` processes (own data dirs, --email-delay-ms 0;")
        print("   epilogue-durable's fetch cooldown is 1 ms). River = bench/river-direct: the same count of jobs")
        print("   that send the demo's welcome email (one JSON line appended to a file, as the demo's task does),")
        print("   inserted with insert_many, then worker processes, each a River client with C workers and a")
        print("   fetch cooldown of 1 ms (the target's comparator) or 2 ms. Rates over the span, first to last task")
        print("   run (the outboxes' sent_at; the jobs' own clock): (n - 1) / span; steady = the middle 80 % of the")
        print("   runs; wall = from starting the processes until the store shows all completed (demo: GET")
        print("   /durable/stats every 50 ms; River: a count every 20 ms). ceiling = one connection claiming 100")
        print("   rows per UPDATE ... RETURNING and completing them in another statement.")
        print("   Medians of the rounds.")
        tck = float(meta.get("clk_tck", 100))
        cpus = by_label(kind("cpu"))

        def cpu_ms(recs, ticks, n):  # CPU ms per 1000 tasks
            return median([r[ticks] / tck * 1e6 / r[n] for r in recs if r.get(ticks) is not None])

        rows = [["store, processes, C", "rounds", "demo", "River 1 ms", "demo/River", "River 2 ms",
                 "demo/River 2 ms", "demo steady", "River steady", "demo wall", "River wall", "CPU demo", "CPU River",
                 "ceiling"]]
        for label, ds in drains.items():
            rs, r2 = rivers.get(label, []), rivers2.get(label, [])
            demo, direct, direct2 = med(ds, "tps_span"), med(rs, "tps_span"), med(r2, "tps_span")
            rows.append([label, str(len(ds)), fmt(demo), fmt(direct),
                         f"{demo / direct:.2f}" if demo and direct else "-", fmt(direct2),
                         f"{demo / direct2:.2f}" if demo and direct2 else "-",
                         fmt(med(ds, "tps_steady")), fmt(med(rs, "tps_steady")),
                         fmt(med(ds, "tps_wall")), fmt(med(rs, "tps_wall")),
                         fmt(cpu_ms(cpus.get(label, []), "ticks", "n")), fmt(cpu_ms(rs, "cpu_ticks", "tasks")),
                         fmt(med(ceilings.get(label.split(",")[0], []), "tps"))])
        print(table(rows))
        print("   CPU = the worker processes' user + system CPU ms per 1000 tasks (start-up included; River 1 ms)")
        print("   every round, span tasks/s (demo / River 1 ms / River 2 ms):")
        for label, ds in drains.items():
            rs, r2 = rivers.get(label, []), rivers2.get(label, [])
            print(f"     {label}: " + ", ".join(
                f"{fmt(d.get('tps_span'))} / {fmt(r.get('tps_span'))} / {fmt(q.get('tps_span'))}"
                for d, r, q in zip(ds, rs, r2)))
        fills = kind("fill")
        if fills:
            print(f"   fill (the demo's pre-fill, POST /durable/register, {meta.get('fill_conc', '?')} clients, Python): "
                  f"median {med(fills, 'rps'):,.0f} req/s")

    cm = kind("commit")
    if cm:
        print()
        k = cm[0]["n"]
        print(f"3. Pickup (commit to start): {k} POST /durable/register one at a time, 0-20 ms random pause between;")
        print("   delay = the email line's sent_at (email delay 0) - the client's wall clock when the 201 was read")
        print("   (negative: the task started before the client had read its 201); ms. request ms = the register's")
        print("   median round trip; clusters = groups of tasks started together (sent_at gaps < 20 ms), gap = median")
        print("   time between the starts of consecutive clusters. 'after an idle minute': a few registers, then")
        print("   60 s with no request, then one register on a new connection (its delay alone)")
        rows = [["setup", "n", "min", "median", "p90", "p99", "max", "<0", "request ms", "clusters", "gap ms"]]
        for r in cm:
            rows.append([r["label"], str(r["n"]), fmt(r["min"], 1), fmt(r["median"], 1), fmt(r["p90"], 1),
                         fmt(r["p99"], 1), fmt(r["max"], 1), str(r["before_201"]), fmt(r.get("request_ms_median"), 2),
                         str(r.get("clusters", "-")), fmt(r.get("cluster_gap_ms"))])
        print(table(rows))
    if meta.get("log_warnings"):
        print()
        print(f"Warnings and errors in the servers' logs: {meta['log_warnings']}")
    if "failures" in meta:
        print()
        print(f"FAILURES: {meta['failures']}")
    print("=" * 110)


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
        elif cmd == "idle":
            cmd_idle(a[0], a[1], a[2], int(a[3]), float(a[4]), int(a[5]), float(a[6]), a[7])
        elif cmd == "instr":
            cmd_instr(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5]), a[6:8])
        elif cmd == "wrk":
            cmd_wrk(a[0], a[1], int(a[2]), int(a[3]), a[4])
        elif cmd == "cpu":
            append(a[0], {"kind": "cpu", "label": a[1], "ticks": int(a[2]), "n": int(a[3])})
        elif cmd == "direct":
            cmd_direct(a[0], a[1], a[2])
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
