"""The package's import graph: no circles, and core/ imports nothing above it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "cli", "perturb", "probe", "imagine", "bench", "audit", "toy", "reproduce")
ABOVE_CORE = ("latentcheck.cli", "latentcheck.perturb", "latentcheck.probe", "latentcheck.imagine",
              "latentcheck.bench", "latentcheck.audit", "latentcheck.toy", "latentcheck.reproduce",
              "latentcheck.api", "latentcheck.__main__")
TOP_MODULES = ("api", "__main__")  # the Python API and `python -m latentcheck`: above everything


def module_name(path: Path) -> str:
    parts = ("latentcheck",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def modules() -> dict[str, Path]:
    found = {"latentcheck": ROOT / "__init__.py"}
    found.update({f"latentcheck.{m}": ROOT / f"{m}.py" for m in TOP_MODULES})
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


# ------------------------------------------------------------------------------------- dependencies as used
IMPORT_TO_DIST = {"PIL": "pillow", "sklearn": "scikit-learn", "concept_erasure": "concept-erasure",
                  "huggingface_hub": "huggingface_hub"}
# imported, but deliberately not a dependency (each import sits in a try / except ImportError), and why
OPTIONAL_IMPORTS = {"click": "typer < 0.20 is built on it; newer typer vendors it (cli/app.py, cli/options.py)"}


def _declared() -> tuple[set[str], set[str]]:
    """(core dependencies, every optional extra's) of pyproject.toml, as distribution names."""
    import re
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(reqs):
        return {re.split(r"[<>=!;\[ ]", r, maxsplit=1)[0].strip().lower() for r in reqs}

    extras = set().union(*(names(v) for v in project["optional-dependencies"].values()))
    return names(project["dependencies"]), extras


def _third_party_imports() -> dict[str, set[str]]:
    import sys

    found: dict[str, set[str]] = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("latentcheck", "__future__"):
                    found.setdefault(top, set()).add(name)
    return found


def test_dependencies_are_declared_as_used():
    """Every third-party package the shipped modules import is declared in pyproject.toml (a core dependency or an
    optional extra), except the listed optional imports; every core dependency is imported somewhere (nothing
    declared and unused)."""
    core, extras = _declared()
    used = _third_party_imports()
    undeclared = sorted(m for m in used if IMPORT_TO_DIST.get(m, m).lower() not in core | extras
                        and m not in OPTIONAL_IMPORTS)
    assert undeclared == [], {m: sorted(used[m]) for m in undeclared}
    imported = {IMPORT_TO_DIST.get(m, m).lower() for m in used}
    unused = sorted(core - imported)
    assert unused == [], unused
