"""Per-request cost by function, epilogue-demo against the tokio::spawn baseline.

Usage: callgrind_diff.py N OUT_DIR [TOP]

OUT_DIR holds, for each server S in (demo, spawn), the callgrind_annotate
listings S.N.{self,incl}.txt and S.6N.{self,incl}.txt of two runs serving N
and 6N requests. A function's cost per request is (Ir(6N) - Ir(N)) / 5N, so
start-up and shut-down cancel out. Prints each server's top functions by
exclusive (self) cost, then the functions whose cost differs most between the
two, exclusive and inclusive.

bench/group-profile.sh reuses it for one group of tasks through the runner
(its listings named demo.*) against tokio::spawn (spawn.*), with
CALLGRIND_UNIT=group and CALLGRIND_LABELS="epilogue::Runner|tokio::spawn".
"""
import os
import re
import sys

UNIT = os.environ.get("CALLGRIND_UNIT", "request")
LABEL = dict(zip(("demo", "spawn"), os.environ.get("CALLGRIND_LABELS", "epilogue-demo|axum + tokio::spawn").split("|")))

LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$")


def listing(path):
    costs = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m or "PROGRAM TOTALS" in line:
                continue
            name = short(m.group(2))
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def short(name):
    """file:function [object] -> function, with long generic arguments trimmed."""
    name = re.sub(r"\s+\[[^\]]*\]$", "", name)
    if ":" in name and not name.startswith("<"):
        file, _, fn = name.partition(":")
        if "/" in file or file.startswith("???") or file.endswith((".rs", ".c", ".S")):
            name = fn
    # Collapse generic arguments beyond one level, which make Rust names unreadable.
    out, depth = [], 0
    for ch in name:
        if ch == "<":
            depth += 1
            if depth == 2:
                out.append("<..")
        if depth < 2:
            out.append(ch)
        if ch == ">":
            depth = max(depth - 1, 0)
            if depth == 1:
                out.append(">")
    return "".join(out).replace("<..>", "<..>")


ALLOC = {"malloc", "_int_malloc", "free", "_int_free", "realloc", "_int_realloc", "calloc",
         "malloc_consolidate", "unlink_chunk.isra.0", "tcache_get", "__rustc::__rdl_alloc",
         "__rustc::__rdl_dealloc", "__rustc::__rdl_realloc", "__rust_alloc", "__rust_dealloc",
         "__rust_realloc", "alloc::alloc::exchange_malloc", "cfree"}


def category(name):
    """The crate (or libc part) a function's exclusive cost belongs to."""
    if name in ALLOC or "malloc" in name or name.endswith("_free"):
        return "allocator (malloc, free)"
    if re.match(r"__(memcpy|memmove|memset|memcmp|mempcpy)", name) or name.startswith(("memcpy", "memmove", "memset")):
        return "memcpy, memmove, memset"
    inner = re.match(r"core::ptr::drop_in_place<(.*)>$", name)
    if inner:
        return category(inner.group(1).lstrip("&")) + " (drops)"
    body = name.lstrip("<&").replace("mut ", "").replace("dyn ", "")
    first = re.match(r"([A-Za-z_][A-Za-z0-9_]*)", body)
    crate = first.group(1) if first else name
    as_trait = re.search(r" as ([A-Za-z_][A-Za-z0-9_]*)::", body)
    if (crate in {"F", "T", "S", "B", "L", "M", "Fut", "A"} or not re.match(r"[A-Za-z_][A-Za-z0-9_]*::", body)) and as_trait:
        crate = as_trait.group(1)
    if crate in {"core", "alloc", "std"}:
        return "core, alloc, std"
    if crate.startswith("_") or crate in {"__libc", "epoll_wait", "syscall", "write", "writev", "read", "recv", "send"}:
        return "libc, syscalls"
    return crate


def calls(path):
    """{(caller, callee): [calls, inclusive Ir]} from a callgrind output file."""
    names, edges = {}, {}
    fn = cfn = None
    pending = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                key, _, rest = line.rstrip("\n").partition("=")
                m = re.match(r"\((\d+)\)(?: (.*))?$", rest)
                if m:
                    if m.group(2) is not None:
                        names[m.group(1)] = short(m.group(2))
                    name = names.get(m.group(1), rest)
                else:
                    name = short(rest)
                if key == "fn":
                    fn = name
                else:
                    cfn = name
            elif line.startswith("calls="):
                pending = int(line[6:].split()[0])
            elif pending is not None:
                parts = line.split()
                ir = int(parts[-1]) if len(parts) >= 2 and parts[-1].lstrip("-").isdigit() else 0
                edge = edges.setdefault((fn, cfn), [0, 0])
                edge[0] += pending
                edge[1] += ir
                pending = None
    return edges


def is_allocation(name):
    """malloc and Rust's wrappers of it (not free: a call here is one allocation)."""
    return name in {"malloc", "realloc", "calloc", "posix_memalign", "alloc::alloc::exchange_malloc"} or bool(
        re.match(r"(__rustc::)?__(rust|rdl)_(alloc|alloc_zeroed|realloc)$", name)
    )


def call_report(out_dir, n, targets, title, top):
    per = {}
    for server in ("demo", "spawn"):
        small = calls(f"{out_dir}/{server}.N.callgrind")
        large = calls(f"{out_dir}/{server}.6N.callgrind")
        by_caller = {}
        for key in set(small) | set(large):
            caller, callee = key
            if targets(callee) and not targets(caller):
                c = (large.get(key, [0, 0])[0] - small.get(key, [0, 0])[0]) / (5 * n)
                i = (large.get(key, [0, 0])[1] - small.get(key, [0, 0])[1]) / (5 * n)
                slot = by_caller.setdefault(caller, [0.0, 0.0])
                slot[0] += c
                slot[1] += i
        per[server] = by_caller
    total = {s: sum(v[0] for v in per[s].values()) for s in per}
    print(f"\n{title}: {total['demo']:.1f} calls per {UNIT} in {LABEL['demo']}, {total['spawn']:.1f} in {LABEL['spawn']};"
          " callers with the largest differences (their calls, difference in calls and in instructions):")
    callers = set(per["demo"]) | set(per["spawn"])
    rows = sorted(callers, key=lambda c: -abs(per["demo"].get(c, [0, 0])[1] - per["spawn"].get(c, [0, 0])[1]))[:top]
    for c in rows:
        d, s = per["demo"].get(c, [0, 0]), per["spawn"].get(c, [0, 0])
        print(f"  {d[0]:6.2f} {s[0]:6.2f} {d[0] - s[0]:+6.2f} {d[1] - s[1]:+8,.0f}  {clip(c, 100)}")


def per_request(out_dir, server, kind, n):
    small = listing(f"{out_dir}/{server}.N.{kind}.txt")
    large = listing(f"{out_dir}/{server}.6N.{kind}.txt")
    return {k: (large.get(k, 0) - small.get(k, 0)) / (5 * n) for k in set(small) | set(large)}


def clip(name, width=110):
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    n, out_dir = int(sys.argv[1]), sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    cost = {(s, k): per_request(out_dir, s, k, n) for s in ("demo", "spawn") for k in ("self", "incl")}
    totals = {s: sum(cost[(s, "self")].values()) for s in ("demo", "spawn")}
    print(f"instructions per {UNIT} (callgrind, (Ir(6N) - Ir(N)) / 5N, N={n}):")
    print(f"  {LABEL['demo']} {totals['demo']:,.0f}   {LABEL['spawn']} {totals['spawn']:,.0f}"
          f"   difference {totals['demo'] - totals['spawn']:+,.0f} ({totals['demo'] / totals['spawn']:.3f}x)")
    for server, label in LABEL.items():
        print(f"\n{label}: top {top} functions by exclusive (self) instructions per {UNIT}")
        rows = sorted(cost[(server, "self")].items(), key=lambda kv: -kv[1])[:top]
        for name, v in rows:
            print(f"  {v:9,.0f}  {clip(name)}")
    call_report(out_dir, n, is_allocation, "allocations (calls into the allocator, by the first caller outside it)", top)
    call_report(out_dir, n, lambda f: bool(re.match(r"(__)?mem(cpy|move)", f)), "memcpy/memmove", top)
    by_crate = {}
    for server in ("demo", "spawn"):
        for name, v in cost[(server, "self")].items():
            by_crate.setdefault(category(name), {"demo": 0.0, "spawn": 0.0})[server] += v
    print(f"\nexclusive instructions per {UNIT} by crate ({LABEL['demo']}, {LABEL['spawn']}, difference):")
    for crate, v in sorted(by_crate.items(), key=lambda kv: -abs(kv[1]["demo"] - kv[1]["spawn"])):
        if max(abs(v["demo"]), abs(v["spawn"])) >= 20:
            print(f"  {v['demo']:9,.0f} {v['spawn']:9,.0f} {v['demo'] - v['spawn']:+9,.0f}  {crate}")
    for kind, what in (("self", "exclusive (self)"), ("incl", "inclusive (recursive frames, marked 'N, are counted again)")):
        d, s = cost[("demo", kind)], cost[("spawn", kind)]
        diff = {k: d.get(k, 0) - s.get(k, 0) for k in set(d) | set(s)}
        rows = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top]
        print(f"\nlargest differences in {what} instructions per {UNIT}, {LABEL['demo']} - {LABEL['spawn']}"
              " (the two, difference):")
        for name, v in rows:
            print(f"  {d.get(name, 0):9,.0f} {s.get(name, 0):9,.0f} {v:+9,.0f}  {clip(name)}")


if __name__ == "__main__":
    main()
