"""Studies as data: a study file declares which analyses run on which models and data, and which published table
cell each result is compared with.

A study is a TOML file (packaged ones live in ``reproduce/studies/``; ``latentcheck reproduce STUDY`` takes a packaged
name or a path)::

    [study]
    name = "paper-2602.22766"
    title = "Imagination Helps Visual Reasoning, But Not Yet in Latent Space"
    source = "arXiv 2602.22766 (ICML 2026)"

    [models.monet]                 # a model ROLE; bound on the command line with --model monet=PATH
    stands_for = "Monet-7B"        # what the paper ran (shown in the tables)
    profile = "monet"              # the profile the role uses unless --profile ROLE=NAME says otherwise
    default = ""                   # a model used when the role is not bound ("" = skip its cells)

    [data.vstar]                   # a data ROLE; bound with --data vstar=PATH
    benchmark = "vstar"            # read with bench's loader for this benchmark ("" = a latentcheck task file)
    default = ""                   # used when the role is not bound ("toy:test" = the toy world's test split)

    [[steps]]
    id = "t4a_vstar"               # unique; its output folder is <out>/steps/<id>
    analysis = "perturb-latent"    # perturb-input | perturb-latent | probe | bench | intervene
    model = "monet"
    data = "vstar"
    limit = 0                      # 0 = every sample (the paper's sizes are stated per step)
    options = { interventions = ["shared:source=mean"], mediation = [] }

    [[tables]]
    id = "table4a"
    title = "Table 4(a): Monet, all latents = one shared tensor"
    columns = ["V*", "HR-4K", "MME-RW-Lite"]
    unit = "percent"               # percent: run values x100, differences in points; "value": as they are
    [[tables.rows]]
    label = "Monet"
    cells = [{ step = "t4a_vstar", metric = "accuracy", paper = 82.7, provenance = "table" }, ...]

A cell names a step and a metric (``reproduce.metrics``: how a number is read from that step's summary) and the
paper's value with its provenance: ``table`` (exact, from a published table), ``figure`` (approximate, read off a
figure) or ``text`` (stated in prose). A cell without ``paper`` shows this run's value only; ``cells`` entries may be
``{}`` for an empty cell. Validation names the file, the section and the key of every problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentcheck.core.errors import LatentcheckError

STUDY_DIR = Path(__file__).parent / "studies"
ANALYSES = ("perturb-input", "perturb-latent", "probe", "bench", "intervene")

# The ``options`` a step may give, per analysis: key -> the TOML type(s) its value must have. ``bench``'s judge options
# are ``latentcheck bench``'s (--judge-model, --judge-url, ...; docs/bench.md) under the same names with ``_``.
JUDGE_OPTIONS: dict[str, tuple[type, ...]] = {
    "judge_model": (str,), "judge_url": (str,), "judge_key_env": (str,), "judge_protocol": (str,),
    "judge_cache": (str,), "judge_concurrency": (int,), "judge_profile": (str,)}
STEP_OPTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "perturb-input": {"treatments": (list,), "max_matrix": (int,), "force_start": (bool,)},
    "perturb-latent": {"interventions": (list,), "mediation": (list,), "sigma_sweep": (list,),
                       "force_latent": (bool,)},
    "probe": {"labels": (list,), "derived": (str,)},
    "bench": {"benchmark": (str,), "variant": (str,), "scoring": (str,), "verify": (bool,), **JUDGE_OPTIONS},
    "intervene": {"corrupter": (str,)},
}
PROVENANCE = ("table", "figure", "text")
UNITS = ("percent", "value")


@dataclass(frozen=True)
class ModelRole:
    name: str
    stands_for: str = ""
    profile: str | None = None
    default: str = ""


@dataclass(frozen=True)
class DataRole:
    name: str
    benchmark: str = ""
    default: str = ""
    description: str = ""


@dataclass(frozen=True)
class Step:
    id: str
    analysis: str
    model: str
    data: str
    limit: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Cell:
    step: str | None = None
    metric: str | None = None
    paper: float | None = None
    provenance: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Row:
    label: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Table:
    id: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    unit: str = "percent"
    note: str = ""


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    source: str
    path: str
    models: dict[str, ModelRole]
    data: dict[str, DataRole]
    steps: tuple[Step, ...]
    tables: tuple[Table, ...]
    description: str = ""

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)


def packaged_studies() -> list[str]:
    return sorted(p.stem for p in STUDY_DIR.glob("*.toml"))


def study_path(name_or_path: str) -> Path:
    """A packaged study's file, or a path to a user's study file."""
    p = Path(name_or_path).expanduser()
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise LatentcheckError(f"study file {p} does not exist")
        return p  # a folder, FIFO or device: load_study's reader names what it is
    q = STUDY_DIR / f"{name_or_path}.toml"
    if not q.is_file():
        raise LatentcheckError(f"unknown study {name_or_path!r}; packaged studies: {', '.join(packaged_studies())} "
                               "(or give a .toml path)")
    return q


class _Reader:
    """Reads one TOML table with exact keys and types; problems name file, section and key."""

    def __init__(self, path: Path, section: str, data: Any):
        self.path, self.section = path, section
        if not isinstance(data, dict):
            self.fail(None, f"expected a table, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def fail(self, key: str | None, msg: str):
        where = (f"[{self.section}]" if self.section else "top level") + (f" {key}" if key else "")
        raise LatentcheckError(f"study file {self.path}: {where}: {msg}")

    def get(self, key: str, typ: type | tuple[type, ...], default: Any = ..., choices: tuple | None = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                self.fail(key, "required key is missing")
            return default
        v = self.data[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            names = "/".join(t.__name__ for t in types)
            self.fail(key, f"expected {names}, got {type(v).__name__} {v!r}")
        if choices is not None and v not in choices:
            self.fail(key, f"must be one of {', '.join(map(str, choices))}, got {v!r}")
        return v

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            self.fail(extra[0], "unknown key")


def check_options(r: "_Reader", analysis: str, prefix: str = "") -> None:
    """Every key of ``r``'s table is an option ``analysis`` takes (:data:`STEP_OPTIONS`), with a value of its type;
    a problem names the file, the section and ``prefix + key``."""
    allowed = STEP_OPTIONS[analysis]
    for key, value in r.data.items():
        if key not in allowed:
            r.fail(prefix + key, f"unknown option for {analysis} (known: {', '.join(allowed)})")
        types = allowed[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            r.fail(prefix + key, f"expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__} "
                                 f"{value!r}")
        if key == "judge_concurrency" and value < 1:
            r.fail(prefix + key, f"must be >= 1, got {value}")


def load_study(name_or_path: str) -> Study:
    """Read and validate a study file (a packaged name or a path)."""
    from latentcheck.core.records import load_user_toml

    path = study_path(name_or_path)
    doc = load_user_toml(path, "study file")
    top = _Reader(path, "", doc)
    head = _Reader(path, "study", top.get("study", dict))
    name = head.get("name", str)
    title = head.get("title", str, "")
    source = head.get("source", str, "")
    description = head.get("description", str, "")
    head.done()

    models: dict[str, ModelRole] = {}
    for role, spec in top.get("models", dict, {}).items():
        r = _Reader(path, f"models.{role}", spec)
        models[role] = ModelRole(role, r.get("stands_for", str, ""), r.get("profile", str, None) or None,
                                 r.get("default", str, ""))
        r.done()
    data: dict[str, DataRole] = {}
    for role, spec in top.get("data", dict, {}).items():
        r = _Reader(path, f"data.{role}", spec)
        data[role] = DataRole(role, r.get("benchmark", str, ""), r.get("default", str, ""),
                              r.get("description", str, ""))
        r.done()

    steps: list[Step] = []
    for i, spec in enumerate(top.get("steps", list, [])):
        r = _Reader(path, f"steps[{i}]", spec)
        s = Step(r.get("id", str), r.get("analysis", str, choices=ANALYSES), r.get("model", str), r.get("data", str),
                 r.get("limit", int, 0), dict(r.get("options", dict, {})), r.get("description", str, ""))
        r.done()
        if s.model not in models:
            r.fail("model", f"unknown model role {s.model!r} (declared: {', '.join(models) or 'none'})")
        if s.data not in data:
            r.fail("data", f"unknown data role {s.data!r} (declared: {', '.join(data) or 'none'})")
        if s.limit < 0:
            r.fail("limit", f"must be >= 0, got {s.limit}")
        opts_reader = _Reader(path, f"steps[{i}] ({s.id})", s.options)
        check_options(opts_reader, s.analysis, "options.")
        derived = s.options.get("derived")
        if derived is not None and derived != "same" and derived not in data:
            opts_reader.fail("options.derived", f"names no data role {derived!r} (declared: {', '.join(data)}; or "
                                                "\"same\")")
        if any(s.id == o.id for o in steps):
            r.fail("id", f"duplicate step id {s.id!r}")
        steps.append(s)
    ids = {s.id for s in steps}

    from latentcheck.reproduce.metrics import check_metric

    tables: list[Table] = []
    for i, spec in enumerate(top.get("tables", list, [])):
        r = _Reader(path, f"tables[{i}]", spec)
        tid = r.get("id", str)
        columns = tuple(r.get("columns", list))
        unit = r.get("unit", str, "percent", choices=UNITS)
        rows = []
        for j, rspec in enumerate(r.get("rows", list)):
            rr = _Reader(path, f"tables.{tid}.rows[{j}]", rspec)
            label = rr.get("label", str)
            cells = []
            for k, cspec in enumerate(rr.get("cells", list)):
                cr = _Reader(path, f"tables.{tid}.rows[{j}].cells[{k}]", cspec)
                c = Cell(cr.get("step", str, None), cr.get("metric", str, None),
                         cr.get("paper", (int, float), None), cr.get("provenance", str, None, PROVENANCE),
                         cr.get("note", str, ""))
                cr.done()
                if (c.step is None) != (c.metric is None):
                    cr.fail("step" if c.step is None else "metric", "a cell names both a step and a metric, or neither")
                if c.step is not None and c.step not in ids:
                    cr.fail("step", f"unknown step {c.step!r}")
                if c.step is not None:
                    problem = check_metric(next(s for s in steps if s.id == c.step).analysis, c.metric)
                    if problem:
                        cr.fail("metric", problem)
                if c.paper is not None and c.provenance is None:
                    cr.fail("provenance", "a paper value needs its provenance (table, figure or text)")
                cells.append(Cell(c.step, c.metric, None if c.paper is None else float(c.paper), c.provenance,
                                  c.note))
            rr.done()
            if len(cells) != len(columns):
                rr.fail("cells", f"{len(cells)} cells for {len(columns)} columns")
            rows.append(Row(label, tuple(cells)))
        t = Table(tid, r.get("title", str, tid), columns, tuple(rows), unit, r.get("note", str, ""))
        r.done()
        if any(t.id == o.id for o in tables):
            r.fail("id", f"duplicate table id {t.id!r}")
        tables.append(t)
    top.done()
    return Study(name, title, source, str(path), models, data, tuple(steps), tuple(tables), description)
