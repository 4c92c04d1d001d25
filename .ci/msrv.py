"""Checks the MSRV the workspace declares against what its dependencies need.

Only one toolchain can be installed on our machines, so each declared
`rust-version` is checked two ways: clippy's `incompatible_msrv` lint (in
`.ci/run`) catches our own use of newer standard-library APIs, and this script
checks that every package the library and the demos build with (normal and
build dependencies, all features, this platform) declares a `rust-version` no
newer than the crate's own. A dependency that declares none is listed, not failed.

The durable tier lives in a crate of its own (`epilogue-durable`, on River,
which needs Rust 1.95), so that `epilogue` keeps its older MSRV: each crate is
checked against its own `rust-version`. A crate may still name, in
`[package.metadata.msrv]`, dependencies that only some of its features bring
in and the newer version they need.
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def reachable(nodes, packages, root, skip=frozenset()):
    """The normal and build dependencies of `root`, not through the direct
    dependencies named in `skip`."""
    seen, stack = set(), [root]
    while stack:
        node = nodes[stack.pop()]
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if node["id"] == root and packages[dep["pkg"]]["name"] in skip:
                continue
            if kinds & {None, "build"} and dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                stack.append(dep["pkg"])
    return seen


def main():
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked",
         "--filter-platform", subprocess.run(["rustc", "-vV"], capture_output=True, text=True,
                                              check=True).stdout.split("host: ")[1].split()[0]],
        capture_output=True, text=True, check=True).stdout)
    packages = {p["id"]: p for p in meta["packages"]}
    members = [packages[m] for m in meta["workspace_members"]]
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    failures = []
    for member in members:
        if member["name"] not in ("epilogue", "epilogue-durable", "epilogue-demo", "epilogue-demo-actix"):
            continue
        msrv = member.get("rust_version")
        if not msrv:
            sys.exit(f"msrv: {member['name']} declares no rust-version")
        feature_msrv = (member.get("metadata") or {}).get("msrv") or {}
        later = set(feature_msrv.get("dependencies", []))
        plans = [(msrv, reachable(nodes, packages, member["id"], skip=later))]
        if later:
            plans.append((feature_msrv["rust-version"], reachable(nodes, packages, member["id"])))
        for declared, seen in plans:
            unknown = 0
            for pkg in sorted(seen, key=lambda i: packages[i]["name"]):
                p = packages[pkg]
                needs = p.get("rust_version")
                if needs is None:
                    unknown += 1
                elif version(needs) > version(declared):
                    failures.append(f"{member['name']} (rust-version {declared}): "
                                    f"{p['name']} {p['version']} needs {needs}")
            print(f"msrv: {member['name']} rust-version {declared}; {len(seen)} dependencies "
                  f"checked, {unknown} declare none")
    if failures:
        sys.exit("msrv: dependencies newer than the declared rust-version:\n  " + "\n  ".join(failures))


main()
