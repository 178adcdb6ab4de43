"""House rules checked by the suite: ruff format + ruff check clean, the package's layers
(pyproject.toml [tool.importlinter]) kept, no import cycle between modules, and every
``# fmt: skip`` explained by a comment on the same line."""

import os
import re
import subprocess
import sys

import grimp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def run(*cmd):
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "toolkit")}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)


def test_ruff_format_and_check_are_clean():
    fmt = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert fmt.returncode == 0, f"run `ruff format .`:\n{fmt.stdout}{fmt.stderr}"
    lint = run(sys.executable, "-m", "ruff", "check", ".")
    assert lint.returncode == 0, f"run `ruff check .`:\n{lint.stdout}{lint.stderr}"


def test_layers_contract_holds():
    r = run(os.path.join(BIN, "lint-imports"), "--no-cache")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the module import graph (imports inside functions count too)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_strongly_connected_finds_a_planted_cycle():
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        g.add_module(m)
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.a")
    g.add_import(importer="p.c", imported="p.a")
    assert strongly_connected(g) == [["p.a", "p.b"]]


def test_no_import_cycles_between_modules():
    sys.path.insert(0, os.path.join(ROOT, "toolkit"))
    assert strongly_connected(grimp.build_graph("sitok")) == []


def test_every_fmt_skip_says_why():
    bare = []
    for base in ("toolkit", "recipes", "tests", "benchmarks", "tools"):
        for dirpath, _, names in os.walk(os.path.join(ROOT, base)):
            for n in names:
                if n.endswith(".py"):
                    path = os.path.join(dirpath, n)
                    with open(path, encoding="utf-8") as fh:
                        for i, line in enumerate(fh, 1):
                            if re.search(r"#\s*fmt:\s*(skip|off)\s*$", line):
                                bare.append(f"{os.path.relpath(path, ROOT)}:{i}")
    assert not bare, "a '# fmt: skip' needs a reason after it on the same line: " + ", ".join(bare)
