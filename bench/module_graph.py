#!/usr/bin/env python3
"""Module dependencies inside a crate: which top-level modules each module's code names
(`crate::x`, `super::x`), the cycles among them, and the longest files.
    python3 bench/module_graph.py crates/kiln-server crates/kiln-engine"""

import re
import sys
from pathlib import Path


def modules(src):
    """file -> top-level module name ('lib' for lib.rs/main.rs)."""
    out = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        top = rel.parts[0].removesuffix(".rs")
        out[f] = "lib" if top in ("lib", "main") else top
    return out


def edges(src):
    mods = modules(src)
    names = set(mods.values())
    graph = {m: set() for m in names}
    for f, m in mods.items():
        text = re.sub(r"#\[cfg\(test\)\]\s*mod tests \{.*", "", f.read_text(), flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        refs = set(re.findall(r"\bcrate::(\w+)", text))
        for block in re.findall(r"\buse crate::\{([^}]*)\}", text):
            refs |= set(re.findall(r"(\w+)", block.split("::")[0] if "::" not in block else block))
        for r in refs:
            target = r if r in names else "lib"
            if target != m:
                graph[m].add(target)
    return graph


def cycles(graph):
    found, index, low, stack, on, n = [], {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


for crate in sys.argv[1:] or ["crates/kiln-server", "crates/kiln-engine"]:
    src = Path(crate) / "src"
    graph = edges(src)
    # The crate root declares every module, so a module naming a root item closes a cycle too.
    graph["lib"] |= {m for m in graph if m != "lib"}
    found = cycles(graph)
    longest = sorted(((len(f.read_text().splitlines()), str(f)) for f in src.rglob("*.rs")), reverse=True)[:3]
    print(f"{crate}: {len(found)} module cycle(s){' ' + str(found) if found else ''}; "
          f"longest files: " + ", ".join(f"{p} ({n})" for n, p in longest))
