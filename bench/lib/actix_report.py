"""Prints the tables of bench/actix.sh from its results.tsv.

Usage: actix_report.py RESULTS_TSV

The records are run.sh's (see report.py), with the cases delay0 and
delay100, the servers demo (epilogue-demo-actix) and plain
(bench-plain-actix), and meta label_demo and label_plain. Every figure is
the median over the runs of the same point; every ratio is
epilogue-demo-actix / bench-plain-actix, or a server against itself,
measured in the same results file.
"""
import statistics
import sys

from report import fmt_int, load, median_point, ratio, table

KEYS = ("demo", "plain")


def main():
    meta, runs, instr, _, _ = load(sys.argv[1])
    point = {k: median_point(v) for k, v in runs.items()}
    labels = {key: meta.get(f"label_{key}", key) for key in KEYS}
    conns_seen = sorted({c for (_, _, c) in point})
    delays = sorted({int(case[5:]) for (case, _, _) in point})

    def get(delay, key, conns):
        return point.get((f"delay{delay}", key, conns))

    print("=" * 100)
    print(f"epilogue on actix-web ({meta.get('mode', '?')} run): POST /response/single,"
          f" {labels['demo']} against {labels['plain']}")
    for key in ("command", "machine", "rustc", "tools", "commit", "plan"):
        if key in meta:
            print(f"  {key + ':':9} {meta[key]}")
    print("  figures are medians over the runs of each point; x = the demo / the plain server, same delay and")
    print("  connections; others % = share of the server's CPU taken by anything else during the run (above a few %,")
    print("  that point's req/s and latency are not the server's own)")

    for delay in delays:
        print()
        print(f"Load, email delay {delay} ms")
        header = ["conns", "server", "req/s", "p50 us", "p99 us", "CPU us/req", "others %",
                  "req/s x", "p50 x", "p99 x", "CPU x"]
        rows = []
        for conns in conns_seen:
            plain = get(delay, "plain", conns)
            for key in KEYS:
                p = get(delay, key, conns)
                if p is None:
                    continue
                row = [str(conns), labels[key], fmt_int(p["rps"]), f"{p['p50']:.0f}", f"{p['p99']:.0f}",
                       f"{p['cpu']:.1f}", f"{p['others']:.0f}"]
                if key == "demo":
                    row += [ratio(p[m], plain and plain[m]) for m in ("rps", "p50", "p99", "cpu")]
                else:
                    row += [""] * 4
                if p["err"]:
                    row[1] += f" ({p['err']} errors)"
                rows.append(row)
        print(table(header, rows, sep_after={6}))

    isolated = len(delays) > 1
    if isolated:
        base, slow = delays[0], delays[-1]
        print()
        print(f"Isolation: each server's p99 with {slow} ms emails / its p99 with {base} ms; x = the demo's / the plain's")
        header = ["conns", "server", f"p99 us {base} ms", f"p99 us {slow} ms", "p99 x self", "x"]
        rows = []
        for conns in conns_seen:
            own = {}
            for key in KEYS:
                p0, p1 = get(base, key, conns), get(slow, key, conns)
                if p0 is None or p1 is None:
                    continue
                own[key] = p1["p99"] / p0["p99"] if p0["p99"] else None
                rows.append([str(conns), labels[key], f"{p0['p99']:.0f}", f"{p1['p99']:.0f}",
                             ratio(p1["p99"], p0["p99"]),
                             ratio(own.get("demo"), own.get("plain")) if key == "plain" else ""])
        print(table(header, rows))

    med = {key: statistics.median(v) for (key, delay), v in instr.items() if v and delay == 0}
    if med:
        print()
        print(f"Instructions per request: valgrind cachegrind, user space, (I(6N) - I(N)) / 5N with"
              f" N={meta.get('instr_n', '?')}, sequential keep-alive")
        header = ["", "server", "instr/req", "runs", "spread", "x"]
        rows = []
        for key in KEYS:
            if key not in med:
                continue
            v = instr[(key, 0)]
            spread = f"{(max(v) - min(v)) / med[key] * 100:.2f}%" if len(v) > 1 else "-"
            rows.append(["", labels[key], fmt_int(med[key]), str(len(v)), spread,
                         ratio(med[key], med.get("plain")) if key == "demo" else ""])
        print(table(header, rows))

    print()
    print(f"Ratios, {labels['demo']} / {labels['plain']}:")
    if "demo" in med and "plain" in med:
        print(f"  instructions per request                 {ratio(med['demo'], med['plain'])}")
    for conns in conns_seen:
        d, pl = get(0, "demo", conns), get(0, "plain", conns)
        if d and pl:
            print(f"  CPU per request, {conns:3} conns               {ratio(d['cpu'], pl['cpu'])}")
            print(f"  p99, {conns:3} conns                           {ratio(d['p99'], pl['p99'])}")
    if isolated:
        for conns in conns_seen:
            pairs = [(get(base, k, conns), get(slow, k, conns)) for k in KEYS]
            if all(p0 and p1 for p0, p1 in pairs):
                (d0, d1), (p0, p1) = pairs
                print(f"  p99 with {slow} ms emails / none, {conns:3} conns: {labels['demo']} {d1['p99'] / d0['p99']:.2f},"
                      f" {labels['plain']} {p1['p99'] / p0['p99']:.2f}; x {ratio(d1['p99'] / d0['p99'], p1['p99'] / p0['p99']).strip()}")
    print("=" * 100)


if __name__ == "__main__":
    main()
