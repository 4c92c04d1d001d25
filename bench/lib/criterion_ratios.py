"""Prints each Runner::spawn time of `cargo bench -p epilogue --bench runner`
against tokio::spawn's, from criterion's estimates, with our target
(an async group through the runner at most 1.3x a raw tokio::spawn).

Usage: criterion_ratios.py [TARGET_DIR]   (default: target)
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target") / "criterion"


def median_ns(group, variant):
    path = root / group / variant / "new" / "estimates.json"
    try:
        return json.loads(path.read_text())["median"]["point_estimate"]
    except FileNotFoundError:
        return None


print(f"{'group':28} {'tokio::spawn':>13} {'TaskTracker':>12} {'Runner::spawn':>14} {'x spawn':>8}")
for kind in ("async", "blocking"):
    for tasks in (1, 10):
        group = f"group of {tasks} {kind} task(s)"
        spawn = median_ns(group, "tokio__spawn")
        tracker = median_ns(group, "TaskTracker__spawn")
        runner = median_ns(group, "epilogue__Runner__spawn")
        if spawn is None or runner is None:
            continue
        x = runner / spawn
        fmt = lambda ns: "-" if ns is None else (f"{ns / 1000:.2f} us" if ns >= 1000 else f"{ns:.0f} ns")  # noqa: E731
        verdict = ("met   " if x <= 1.3 else "MISSED") if kind == "async" else "      "
        print(f"{group:28} {fmt(spawn):>13} {fmt(tracker):>12} {fmt(runner):>14} {x:7.2f}x  {verdict}")
