"""Prints the tables of bench/run.sh from its results.tsv.

Usage: report.py RESULTS_TSV

Records (tab-separated):
  meta    KEY VALUE
  load    CASE SERVER CONNS REP RPS P50_US P99_US CPU_US_PER_REQ REQUESTS ERRORS OTHERS_PCT STEAL_PCT
  instr   SERVER REP N INSTR(N) INSTR(6N) DELAY_MS
  burst   SERVER REP IDLE_P99_US BURST_P99_US BURST_SECS TASK_PHASE_P99_US
  skip    SERVER REASON
Every figure printed is the median over the runs of the same point; every
ratio is against a reference measured in the same results file.
"""
import statistics
import sys
from collections import defaultdict

LABELS = {
    "demo": "epilogue-demo",
    "plain": "plain axum::serve + spawn",
    "spawn": "axum + tokio::spawn",
    "none": "axum, no task",
    "starlette": "Starlette",
    "fastapi": "FastAPI",
    "lilya": "Lilya",
    "list": "epilogue-demo, /response/list",
    "blocking": "  the same, blocking task",
}
RUST = ["demo", "plain", "spawn", "none"]
PEERS = ["starlette", "fastapi", "lilya"]


def load(path):
    meta, runs, instr, skips, bursts = {}, defaultdict(list), defaultdict(list), {}, defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if cols[0] == "meta":
                meta[cols[1]] = cols[2]
            elif cols[0] == "load":
                case, key, conns = cols[1], cols[2], int(cols[3])
                rps, p50, p99, cpu = map(float, cols[5:9])
                others = float(cols[11]) if len(cols) > 11 else 0.0
                runs[(case, key, conns)].append(
                    {"rps": rps, "p50": p50, "p99": p99, "cpu": cpu, "req": int(cols[9]), "err": int(cols[10]),
                     "others": others}
                )
            elif cols[0] == "instr":
                key, n, small, large = cols[1], int(cols[3]), int(cols[4]), int(cols[5])
                delay = int(cols[6]) if len(cols) > 6 else 0
                if small > 0 and large > 0:
                    instr[(key, delay)].append((large - small) / (5 * n))
            elif cols[0] == "burst":
                bursts[cols[1]].append({"idle": float(cols[3]), "burst": float(cols[4]), "secs": float(cols[5]),
                                        "tasks": float(cols[6])})
            elif cols[0] == "skip":
                skips[cols[1]] = cols[2]
    return meta, runs, instr, skips, bursts


def median_point(samples):
    if not samples:
        return None
    return {k: statistics.median(s[k] for s in samples) for k in ("rps", "p50", "p99", "cpu", "others")} | {
        "n": len(samples),
        "err": sum(s["err"] for s in samples),
    }


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "   -  "
    return f"{a / b:6.2f}"


def fmt_int(x):
    return f"{x:,.0f}"


def table(header, rows, sep_after=None):
    """Right-aligned columns; the first two are left-aligned; a bar after column sep_after."""
    cols = list(zip(*([header] + rows)))
    widths = [max(len(c) for c in col) for col in cols]
    out = []
    for row in [header] + rows:
        cells = []
        for i, (cell, w) in enumerate(zip(row, widths)):
            cells.append(cell.ljust(w) if i < 2 else cell.rjust(w))
            if sep_after is not None and i in sep_after:
                cells.append("|")
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def main():
    meta, runs, instr, skips, bursts = load(sys.argv[1])
    point = {k: median_point(v) for k, v in runs.items()}
    get = lambda case, key, conns: point.get((case, key, conns))  # noqa: E731
    conns_seen = sorted({c for (case, _, c) in point if case.startswith("delay")})
    cases = sorted({case for (case, _, _) in point if case.startswith("delay")}, key=lambda c: int(c[5:]))
    reps = max((p["n"] for p in point.values()), default=0)

    print("=" * 100)
    print(f"epilogue load benchmarks ({meta.get('mode', '?')} run): POST /response/single")
    for key in ("command", "machine", "rustc", "tools", "commit", "plan"):
        if key in meta:
            print(f"  {key + ':':9} {meta[key]}")
    print("  figures are medians over the runs of each point; ratios (x) are against references of this run;")
    print("  others % = share of the server's CPU taken by anything else during the run (other processes, interrupts,")
    print("  steal): above a few %, the machine was busy and that point's req/s and latency are not the server's own")

    base = cases[0] if cases else None
    for case in cases:
        delay = int(case[5:])
        print()
        if case == base:
            print(f"Case 1: email delay {delay} ms; x = this / axum + tokio::spawn (the demo's own code) at the same"
                  " connections, x plain = this / plain axum::serve + tokio::spawn (bench/plain)")
        else:
            print(
                f"Case 2: email delay {delay} ms; x nodelay = this / the same server with delay {int(base[5:])} ms,"
                " x spawn = this / axum + tokio::spawn with this delay"
            )
        header = ["conns", "server", "req/s", "p50 us", "p99 us", "CPU us/req", "others %"]
        if case == base:
            header += ["req/s x", "p99 x", "CPU x", "req/s x plain", "p99 x plain", "CPU x plain"]
        else:
            header += ["req/s x nodelay", "p99 x nodelay", "req/s x spawn", "p99 x spawn", "CPU x spawn"]
        rows = []
        for conns in conns_seen:
            ref = get(case, "spawn", conns)
            plain = get(case, "plain", conns)
            for key in RUST:
                p = get(case, key, conns)
                if p is None:
                    continue
                row = [str(conns), LABELS[key], fmt_int(p["rps"]), f"{p['p50']:.0f}", f"{p['p99']:.0f}", f"{p['cpu']:.1f}",
                       f"{p['others']:.0f}"]
                if case == base:
                    row += [ratio(p["rps"], ref and ref["rps"]), ratio(p["p99"], ref and ref["p99"]),
                            ratio(p["cpu"], ref and ref["cpu"]), ratio(p["rps"], plain and plain["rps"]),
                            ratio(p["p99"], plain and plain["p99"]), ratio(p["cpu"], plain and plain["cpu"])]
                elif case != base:
                    nodelay = get(base, key, conns)
                    row += [
                        ratio(p["rps"], nodelay and nodelay["rps"]),
                        ratio(p["p99"], nodelay and nodelay["p99"]),
                        ratio(p["rps"], ref and ref["rps"]),
                        ratio(p["p99"], ref and ref["p99"]),
                        ratio(p["cpu"], ref and ref["cpu"]),
                    ]
                if p["err"]:
                    row[1] += f" ({p['err']} errors)"
                rows.append(row)
        print(table(header, rows, sep_after={6}))

    # Case 2b: blocking tasks, against the same route without the sleep.
    blocking_rows = []
    for conns in conns_seen:
        ref = get("blocking", "list", conns)
        for key in ("list", "blocking"):
            p = get("blocking", key, conns)
            if p is None:
                continue
            row = [str(conns), LABELS[key], fmt_int(p["rps"]), f"{p['p50']:.0f}", f"{p['p99']:.0f}", f"{p['cpu']:.1f}",
                   f"{p['others']:.0f}", ratio(p["rps"], ref and ref["rps"]), ratio(p["p99"], ref and ref["p99"])]
            if p["err"]:
                row[1] += f" ({p['err']} errors)"
            blocking_rows.append(row)
    if blocking_rows:
        print()
        print("Case 2b: blocking tasks, POST /response/list (an email, then write_in_file on the blocking pool);")
        print("        x = this / the same route without the thread sleep, interleaved with it")
        header = ["conns", "server", "req/s", "p50 us", "p99 us", "CPU us/req", "others %", "req/s x", "p99 x"]
        print(table(header, blocking_rows, sep_after={6}))

    # Case 2c: the burst.
    burst_point = {
        key: {k: statistics.median(b[k] for b in v) for k in ("idle", "burst", "secs", "tasks")}
        for key, v in bursts.items() if v
    }
    if burst_point:
        print()
        print(f"Case 2c: a burst, requests written at once, each with a 100 ms task; GET /healthz probed back to back on")
        print("        one connection: idle, over the whole burst (its requests served, then its tasks waking, until")
        print("        0.5 s after the last answer) and over its task phase alone (from the last answer to 0.5 s later)")
        header = ["", "server", "idle p99 us", "burst p99 us", "x idle", "task phase p99 us", "x idle", "answered in s"]
        rows = [["", LABELS[key], f"{b['idle']:.0f}", f"{b['burst']:.0f}", ratio(b["burst"], b["idle"]),
                 f"{b['tasks']:.0f}", ratio(b["tasks"], b["idle"]), f"{b['secs']:.2f}"]
                for key, b in sorted(burst_point.items(), key=lambda kb: RUST.index(kb[0]))]
        print(table(header, rows, sep_after={1}))

    # Case 3.
    demo_py = point.get(("python", "demo", 64)) or next(
        (p for (case, key, _), p in point.items() if case == "python" and key == "demo"), None
    )
    if demo_py or skips:
        print()
        print("Case 3: the Python peers (uvicorn, 1 worker, uvloop, httptools) and epilogue-demo, interleaved, 64 connections;")
        print("        epilogue x = epilogue-demo req/s / this req/s; CPU x = this CPU per request / epilogue-demo's")
        header = ["", "server", "req/s", "p50 us", "p99 us", "CPU us/req", "others %", "epilogue x", "CPU x"]
        rows = []
        for key in ["demo"] + PEERS:
            p = next((p for (case, k, _), p in point.items() if case == "python" and k == key), None)
            if p is None:
                continue
            row = ["", LABELS[key], fmt_int(p["rps"]), f"{p['p50']:.0f}", f"{p['p99']:.0f}", f"{p['cpu']:.1f}",
                   f"{p['others']:.0f}"]
            row += [ratio(demo_py and demo_py["rps"], p["rps"]), ratio(p["cpu"], demo_py and demo_py["cpu"])]
            if p["err"]:
                row[1] += f" ({p['err']} errors)"
            rows.append(row)
        if rows:
            print(table(header, rows, sep_after={6}))
        for key in PEERS:
            if key in skips:
                print(f"  {LABELS[key]}: SKIPPED, {skips[key]}")

    # Instructions.
    med = {k: statistics.median(v) for k, v in instr.items() if v}
    if med:
        print()
        n = meta.get("instr_n", "?")
        print(f"Instructions per request: valgrind cachegrind, user space, (I(6N) - I(N)) / 5N with N={n}, sequential keep-alive;")
        print("        x = this / the same delay's plain axum::serve + spawn, axum + tokio::spawn, or axum, no task (the")
        print("        no-task server is the same at any delay); the demo runs without durable workers (--workers 0)")
        header = ["delay", "server", "instr/req", "runs", "spread", "x plain", "x spawn", "x no task"]
        rows = []
        for key, delay in sorted(med, key=lambda kd: (kd[1], RUST.index(kd[0]) if kd[0] in RUST else 9)):
            v = instr[(key, delay)]
            spread = (max(v) - min(v)) / med[(key, delay)] * 100 if len(v) > 1 else 0.0
            rows.append(
                [
                    f"{delay} ms",
                    LABELS.get(key, key),
                    fmt_int(med[(key, delay)]),
                    str(len(v)),
                    f"{spread:.2f}%" if len(v) > 1 else "-",
                    ratio(med[(key, delay)], med.get(("plain", delay))),
                    ratio(med[(key, delay)], med.get(("spawn", delay))),
                    ratio(med[(key, delay)], med.get(("none", 0))),
                ]
            )
        print(table(header, rows, sep_after={4}))
        if all((k, 0) in med for k in ("demo", "spawn", "none")):
            task = med[("spawn", 0)] - med[("none", 0)]
            ours = med[("demo", 0)] - med[("spawn", 0)]
            total = med[("demo", 0)] - med[("none", 0)]
            print(
                f"  the task's whole cost over the ceiling (demo - no task): {fmt_int(total)} instr/req, of which"
                f"\n    the task's own work + tokio::spawn (spawn - no task): {fmt_int(task)}"
                f"\n    epilogue's extra over tokio::spawn (demo - spawn):     {fmt_int(ours)}"
                f" ({ours / med[('spawn', 0)] * 100:+.1f}% of a request)"
            )

    # Targets.
    lines = []

    def target(name, value, limit, better):
        if value is None:
            return
        ok = value <= limit if better == "<=" else value >= limit
        lines.append(f"  {'met   ' if ok else 'MISSED'}  {name}: {value:.2f} (target {better} {limit})")

    for (key, delay), value in sorted(med.items(), key=lambda kv: kv[0][1]):
        if key == "demo" and ("plain", delay) in med and delay == 0:
            target(f"instructions/request, epilogue / plain, delay {delay} ms", value / med[("plain", delay)], 0.92, "<=")
        if key == "demo" and ("spawn", delay) in med:
            target(f"instructions/request, epilogue / spawn, delay {delay} ms", value / med[("spawn", delay)], 1.00, "<=")
    if base:
        d, pl = get(base, "demo", 64), get(base, "plain", 64)
        if d and pl:
            target("CPU/request, epilogue / plain, 64 conns", d["cpu"] / pl["cpu"], 1.00, "<=")
            target("req/s, epilogue / plain, 64 conns", d["rps"] / pl["rps"], 1.0, ">=")
            target("p99, epilogue / plain, 64 conns", d["p99"] / pl["p99"], 1.1, "<=")
        for conns in conns_seen:
            d, s = get(base, "demo", conns), get(base, "spawn", conns)
            if d and s:
                target(f"CPU/request, epilogue / spawn, {conns} conns", d["cpu"] / s["cpu"], 1.03, "<=")
                target(f"req/s, epilogue / spawn, {conns} conns", d["rps"] / s["rps"], 1.0, ">=")
                target(f"p99, epilogue / spawn, {conns} conns", d["p99"] / s["p99"], 1.1, "<=")
        for case in cases[1:]:
            for conns in conns_seen:
                d, d0 = get(case, "demo", conns), get(base, "demo", conns)
                if d and d0:
                    target(f"req/s with {case[5:]} ms tasks / without, epilogue, {conns} conns", d["rps"] / d0["rps"], 0.95, ">=")
                    target(f"p99 with {case[5:]} ms tasks / without, epilogue, {conns} conns", d["p99"] / d0["p99"], 1.1, "<=")
    for conns in conns_seen:
        b, ref = get("blocking", "blocking", conns), get("blocking", "list", conns)
        if b and ref:
            target(f"req/s with blocking tasks / without, epilogue, {conns} conns", b["rps"] / ref["rps"], 0.95, ">=")
            target(f"p99 with blocking tasks / without, epilogue, {conns} conns", b["p99"] / ref["p99"], 1.1, "<=")
    if "demo" in burst_point:
        b = burst_point["demo"]
        target("/healthz p99 during a burst / idle, epilogue", b["burst"] / b["idle"], 2.0, "<=")
        target("/healthz p99 during a burst's task phase / idle, epilogue", b["tasks"] / b["idle"], 2.0, "<=")
        if "spawn" in burst_point:
            s_ = burst_point["spawn"]
            lines.append(f"          (axum + tokio::spawn: {s_['burst'] / s_['idle']:.2f} whole burst,"
                         f" {s_['tasks'] / s_['idle']:.2f} task phase)")
    if demo_py:
        for key in PEERS:
            p = next((p for (case, k, _), p in point.items() if case == "python" and k == key), None)
            if p:
                target(f"req/s, epilogue / {LABELS[key]}", demo_py["rps"] / p["rps"], 6.0, ">=")
    if lines:
        print()
        print(f"Targets (req/s, p99 and CPU move 10-20% between runs on a shared machine; {reps} run(s) per point):")
        print("\n".join(lines))
    print("=" * 100)


if __name__ == "__main__":
    main()
