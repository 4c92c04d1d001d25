"""Checks the MSRV the workspace declares against what its dependencies need.

Only one toolchain can be installed on our machines, so the declared
`rust-version` is checked two ways: clippy's `incompatible_msrv` lint (in
`.ci/run`) catches our own use of newer standard-library APIs, and this script
checks that every package the library and the demo build with (normal and
build dependencies, all features, this platform) declares a `rust-version` no
newer than ours. A dependency that declares none is listed, not failed.
"""
import json
import subprocess
import sys


def version(text):
    return tuple(int(part) for part in text.split("."))


def main():
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked",
         "--filter-platform", subprocess.run(["rustc", "-vV"], capture_output=True, text=True,
                                              check=True).stdout.split("host: ")[1].split()[0]],
        capture_output=True, text=True, check=True).stdout)
    packages = {p["id"]: p for p in meta["packages"]}
    members = [packages[m] for m in meta["workspace_members"]]
    declared = {p["name"]: p.get("rust_version") for p in members}
    msrv = declared["epilogue"]
    if not msrv:
        sys.exit("msrv: epilogue declares no rust-version")
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    roots = [p["id"] for p in members if p["name"] in ("epilogue", "epilogue-demo")]
    seen, stack = set(), list(roots)
    while stack:
        node = nodes[stack.pop()]
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if kinds & {None, "build"} and dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                stack.append(dep["pkg"])
    newer, unknown = [], []
    for pkg in sorted(seen, key=lambda i: packages[i]["name"]):
        p = packages[pkg]
        needs = p.get("rust_version")
        if needs is None:
            unknown.append(p["name"])
        elif version(needs) > version(msrv):
            newer.append(f"{p['name']} {p['version']} needs {needs}")
    print(f"msrv: rust-version {msrv}; {len(seen)} dependencies checked, "
          f"{len(unknown)} declare none")
    if newer:
        sys.exit("msrv: dependencies newer than the declared rust-version:\n  " + "\n  ".join(newer))


main()
