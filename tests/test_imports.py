"""The package's import graph: no circles, and core/ imports nothing above it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "cli", "perturb", "probe", "imagine", "bench", "audit", "toy", "reproduce")
ABOVE_CORE = ("latentcheck.cli", "latentcheck.perturb", "latentcheck.probe", "latentcheck.imagine",
              "latentcheck.bench", "latentcheck.audit", "latentcheck.toy", "latentcheck.reproduce")


def module_name(path: Path) -> str:
    parts = ("latentcheck",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def modules() -> dict[str, Path]:
    found = {"latentcheck": ROOT / "__init__.py"}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            found[module_name(p)] = p
    return found


def import_graph() -> dict[str, set[str]]:
    """Every import (module level AND inside functions) between latentcheck modules."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            for t in targets:
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_core_imports_nothing_above_it():
    bad = sorted(f"{m} -> {t}" for m, ts in import_graph().items() if m.startswith("latentcheck.core")
                 for t in ts if t.startswith(ABOVE_CORE))
    assert bad == []


def test_checker_detects_a_circle_and_a_layer_breach():
    """The checker itself: a planted circle and a core -> toy import are found."""
    g = {"latentcheck.core.a": {"latentcheck.toy.b"}, "latentcheck.toy.b": {"latentcheck.core.a"}}
    assert cycles(g) == [["latentcheck.core.a", "latentcheck.toy.b"]]
    assert cycles({"x": {"y"}, "y": set()}) == []
