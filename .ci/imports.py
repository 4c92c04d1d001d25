#!/usr/bin/env python3
"""The module import graph of a crate's src/ (every module a file), and its
cycles: `imports.py SRC [-g]` prints the cycles (and with -g the graph), and
exits 1 if there is one.

An edge a -> b: a names an item of module b (crate::, super::, self:: or a
declared child's name). A parent declaring `mod child;` is not an edge by
itself; lib.rs's re-exports are the crate's face, not a dependency."""
import os, re, sys
src = sys.argv[1]
mods = {}
for dp, _, fs in os.walk(src):
    for f in fs:
        if not f.endswith('.rs'): continue
        p = os.path.join(dp, f)
        parts = os.path.relpath(p, src)[:-3].split('/')
        if parts[-1] in ('mod', 'lib', 'main'): parts = parts[:-1]
        mods['::'.join(parts) or 'crate'] = p
def key(parts): return '::'.join(parts) or 'crate'
def strip(s):
    i = s.find('#[cfg(test)]\nmod tests')
    s = s if i < 0 else s[:i]
    s = re.sub(r'//[^\n]*', '', s)
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', s)
    return s
edges = {m: set() for m in mods}
for m, p in mods.items():
    cur = [] if m == 'crate' else m.split('::')
    is_dir = p.endswith(('mod.rs', 'lib.rs', 'main.rs'))
    s = strip(open(p).read())
    s_nomod = re.sub(r'\b(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*;', '', s)
    children = re.findall(r'\bmod\s+(\w+)\s*;', s)
    # expand `use x::{a, b::c}` groups crudely: we only need the first segment after a module path
    refs = []
    for head, rest in re.findall(r'\b(crate|super|self)((?:::\w+)+)', s_nomod):
        segs = rest.strip(':').split('::')
        if head == 'crate': base = []
        elif head == 'self': base = cur
        else: base = cur[:-1]
        refs.append(base + segs)
    for c in children:
        for rest in re.findall(r'(?<![\w:])' + c + r'((?:::\w+)+)', s_nomod):
            refs.append(cur + [c] + rest.strip(':').split('::'))
    # `use super::{a, b}` / `use crate::x::{Y, z::W}`
    for head, path, group in re.findall(r'\b(crate|super|self)((?:::\w+)*)::\{([^{}]*)\}', s_nomod):
        if head == 'crate': base = []
        elif head == 'self': base = cur
        else: base = cur[:-1]
        base = base + path.strip(':').split('::') if path else base
        for item in group.split(','):
            item = item.strip().split(' as ')[0]
            if item: refs.append(base + item.split('::'))
    for full in refs:
        for k in range(len(full), -1, -1):
            cand = key(full[:k])
            if cand in mods:
                if cand != m: edges[m].add(cand)
                break
idx = {}; low = {}; st = []; on = set(); sccs = []; c = [0]
sys.setrecursionlimit(10000)
def dfs(v):
    idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
    for w in edges[v]:
        if w not in idx: dfs(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = st.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
for v in sorted(mods):
    if v not in idx: dfs(v)
if '-g' in sys.argv:
    for m in sorted(edges):
        print(f"  {m} -> {', '.join(sorted(edges[m])) or '-'}")
cyc = [s for s in sccs if len(s) > 1]
print(f"{src}: {len(mods)} modules, cycles: {len(cyc)}")
for s in cyc: print("  ", sorted(s))
sys.exit(1 if cyc else 0)
