"""The whole study in one call: is a model's latent imagination causally real?

``run_audit`` runs every analysis that applies to the model's kind, each into its own subfolder of the audit folder
(its own ``samples.jsonl`` + ``summary.json`` + ``plots/``), then judges the three links of the chain with the
verdict rules below and writes ``audit.json`` (and, via ``audit/report.py``, ``report.html``):

================  ===========================  ==================================  ===========================
stage             folder                        latent models                       text-imagination models
================  ===========================  ==================================  ===========================
perturb_input     perturb-input/                X -> Z (fed-back latents)           X -> Z (imagination states)
perturb_latent    perturb-latent/               Z -> Y (+ TE / NIE / NDE)           -
probe             probe/                        behavioural + trained probes        trained probes on the
                                                                                    imagination states
text_doz          text-doz/                     -                                   Z -> Y (text do(Z))
bench             bench/                        short generic bench                 short generic bench
================  ===========================  ==================================  ===========================

``run_zoo_audit`` audits several models (default: the toy zoo's latent model, text-imagination model and both
controls) into ``<out>/<model>/`` and adds a side-by-side comparison.

Verdict rules are DATA (``audit/verdicts.toml`` = :data:`DEFAULT_RULES`, overridable from a JSON/TOML file): every
threshold lives there and is copied into ``audit.json``. Each link gets a verdict with a status ``positive`` /
``negative`` / ``inconclusive`` / ``untestable``, the numbers and CIs it rests on, and the rule in words (the rules
themselves: ``audit/verdicts.py`` and docs/audit.md):

* X -> Z: the sensitivity ratio's CI against ``xz`` thresholds, with the verdict at a sweep of thresholds shown.
* Z -> Y (latent models) "causal": a Holm-significant drop beyond ``zy.min_effect`` under an on-distribution
  ablation (mean / resample) that does not degenerate, AND the NIE CI excludes 0; "not causal": every primary delta
  and the NIE equivalent to 0 (TOST within ``zy.equivalence_margin``), with minimum detectable effects; below the
  sample size equivalence needs: inconclusive. Text-imagination models: the text do(Z) delta, with a neutral-edit
  control.
* "encodes": the best latent site's probe has Wilson ``lo > chance + encodes.chance_margin`` and selectivity
  ``lo > encodes.control_margin``.
* overall "causally real" when X -> Z and Z -> Y are positive; "not causally real" when either is negative.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from latentcheck.audit.verdicts import (SCHEMA, STAGES, ZOO_AUDIT_MODELS, Verdict,
                                       bench_headline, comparison_row, judge, merge_rules,
                                       write_audit)
import latentcheck.audit.stages  # noqa: F401  (registers the built-in analyses)
from latentcheck.audit.mechanism import mechanism_row
from latentcheck.core.analysis import ANALYSES, AnalysisContext
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.runner import CommonOptions

# Default samples per stage (``--limit`` overrides every stage). Chosen so the default zoo audit (5 models) stays
# within 5 minutes on a 2-core CPU machine (measured: docs/audit.md).
DEFAULT_LIMITS = {"perturb_input": 100, "perturb_latent": 100, "probe": 100, "mechanism": 60, "text_doz": 100,
                  "bench": 100}  # mechanism: fewer samples (>= 52, what a +-5-point equivalence needs)
AUDIT_TREATMENTS = ("identity", "swap_image", "swap_question", "noise:std=0.2")
AUDIT_INTERVENTIONS = ("zero", "noise_replace", "shared:source=mean", "swap")
AUDIT_MEDIATION = ("image",)
# The zoo's models are tiny and dispatch-bound: one torch thread is as fast as two on an idle 2-core machine and
# far faster on a busy one (measured: docs/audit.md), so the zoo audit runs with one unless told otherwise.
ZOO_THREADS = 1


# ================================================================================================== running
def stage_order(names) -> list[str]:
    """The audit's stages in order: the built-in ones first (``STAGES``), then registered extras."""
    names = list(names)
    return [s for s in STAGES if s in names] + [s for s in names if s not in STAGES]


@dataclass
class AuditSettings:
    """What the audit runs besides the common options (recorded in audit.json)."""

    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    stages: list[str] = field(default_factory=lambda: stage_order(ANALYSES))  # every registered analysis
    treatments: list[str] = field(default_factory=lambda: list(AUDIT_TREATMENTS))
    interventions: list[str] = field(default_factory=lambda: list(AUDIT_INTERVENTIONS))
    mediation: list[str] = field(default_factory=lambda: list(AUDIT_MEDIATION))
    patch_layers: str | None = "each"  # span patched at each layer from the mediation's counterfactual run (mechanism)
    force_latent: bool = False
    probe_methods: list[str] = field(default_factory=lambda: ["linear"])
    probe_labels: list[str] | None = None
    # the behavioural probe's questions: "same" asks each source question again with only the fed vectors carrying
    # the image (known ground truth on the zoo: toy-vector must pass, toy-mediated must fail); None: derived questions
    probe_derived: str | None = "same"
    corrupt_model: str | None = None
    n_boot: int = 1000
    plots: bool = True
    report: bool = True
    threads: int | None = None  # torch intra-op threads during the audit (None: torch's default; zoo audit: 1)

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in ANALYSES]
        if bad:
            raise LatentcheckError(f"unknown audit stage(s) {', '.join(bad)}; valid: "
                                   f"{', '.join(stage_order(ANALYSES))}")
        if self.threads is not None and self.threads < 1:
            raise LatentcheckError(f"--threads must be >= 1, got {self.threads}")
        for k, v in self.limits.items():
            if k not in ANALYSES:
                raise LatentcheckError(f"unknown audit stage {k!r} in limits; valid: "
                                       f"{', '.join(stage_order(ANALYSES))}")
            if v is not None and v < 2:
                raise LatentcheckError(f"the {k} limit must be >= 2 (pairs and bootstraps need two samples), got {v}")

    def limit_for(self, stage: str, override: int | None) -> int | None:
        return override if override is not None else self.limits.get(stage)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StageOutcome:
    """How one stage went: ``done``, ``skipped`` (does not apply; reason) or ``failed`` (error message)."""

    stage: str
    status: str
    folder: str | None = None  # relative to the model's audit folder
    summary: str | None = None  # summary file, relative to the model's audit folder
    reason: str | None = None
    seconds: float = 0.0
    limit: int | None = None
    counts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AuditResult:
    """What ``run_audit`` returns: the model's entry of audit.json, its verdicts and where everything is."""

    model: str
    kind: str
    out: str
    stages: dict[str, StageOutcome]
    verdicts: dict[str, Verdict]
    entry: dict[str, Any]
    audit_path: str
    report_path: str | None = None
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        """Failed stages plus error records of the analyses."""
        n = sum(s.status == "failed" for s in self.stages.values())
        for s in self.stages.values():
            c = s.counts or {}
            n += int(c.get("errors", 0) or 0) if isinstance(c.get("errors", 0), (int, float)) else 0
        return n

    @property
    def exit_code(self) -> int:
        from latentcheck.core.errors import outcome_exit_code

        return outcome_exit_code(self.errors)

    def rows(self) -> list[dict[str, Any]]:
        """One row per judged link (``xz``, ``zy``, ``encodes``, ``overall``): model, kind, link, verdict, status and
        the one-line numbers (plain columns for a DataFrame)."""
        return [{"model": self.model, "kind": self.kind, "link": link, "verdict": v.verdict, "status": v.status,
                 "summary": v.summary} for link, v in self.verdicts.items()]

    def to_pandas(self):
        """:meth:`rows` as a DataFrame (needs pandas)."""
        return _frame(self.rows())


@dataclass
class ZooAuditResult:
    """What ``run_zoo_audit`` returns."""

    results: list[AuditResult]
    comparison: list[dict[str, Any]]
    out: str
    audit_path: str
    report_path: str | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return max((r.exit_code for r in self.results), default=0)

    def rows(self) -> list[dict[str, Any]]:
        """Every model's :meth:`AuditResult.rows`, in audit order."""
        return [row for r in self.results for row in r.rows()]

    def to_pandas(self):
        """:meth:`rows` as a DataFrame (one row per model and link; needs pandas)."""
        return _frame(self.rows())


def _frame(rows: list[dict[str, Any]]):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_pandas() needs pandas (pip install 'latentcheck[api]')") from None
    return pd.DataFrame(rows)


def data_chance(tasks) -> float | None:
    """Mean 1 / number of options over multiple-choice tasks (None when there are none)."""
    vals = [1.0 / len(t.options) for t in tasks if t.options]
    return sum(vals) / len(vals) if vals else None


def _rel(path: str | Path, root: Path) -> str:
    return str(Path(path).resolve().relative_to(root.resolve()))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Set torch's intra-op thread count for the block (None: leave it), restoring it afterwards."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def applicable(stage: str, kind: str) -> str | None:
    """None when ``stage`` applies to a model of ``kind``; else the reason it is skipped (the analysis says)."""
    return ANALYSES[stage].skip_reason(kind)


def _kind(lm) -> str:
    return lm.profile.kind


def run_audit(opts: CommonOptions, settings: AuditSettings | None = None, rules: dict | None = None, lm=None,
              progress: Callable[[str], None] | None = None, render: bool | None = None,
              name: str | None = None) -> AuditResult:
    """Audit one model (module docstring): every applicable stage into ``opts.out/<stage folder>``, verdicts,
    ``audit.json`` and (``settings.report``) ``report.html``. ``progress(stage)`` is called before each stage and
    once at the end (``"done"``); without it a stage bar is drawn (quiet-aware). ``name``: the model's name in
    audit.json and the report (default: ``opts.model``); with it the checkpoint is ``model_path``."""
    from latentcheck.core.progress import progress_bar
    from latentcheck.core.runner import data_path, load_for, read_all_tasks
    from latentcheck.core.tasks import Task

    settings = settings or AuditSettings()
    rules = rules or merge_rules(None)
    _single_process()
    t0 = time.perf_counter()
    root = Path(opts.out)
    root.mkdir(parents=True, exist_ok=True)
    path = data_path(opts)
    if path != "-" and not Path(path).exists():
        raise LatentcheckError(f"--data {path}: no such file")
    if path == "-":
        raise LatentcheckError("the audit reads the task file once per stage; pass a file, not '-' (stdin)")
    lm = lm or load_for(opts)
    kind = _kind(lm)
    plan = stage_order([s for s in ANALYSES if s in settings.stages])
    short = name or Path(str(opts.model or lm.model_id)).name
    outcomes: dict[str, StageOutcome] = {}
    summaries: dict[str, dict | None] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch_threads(settings.threads))
        bar = None if progress is not None else \
            stack.enter_context(progress_bar(len(plan), f"audit {short}", quiet=opts.quiet))
        for stage in plan:
            if progress is not None:
                progress(stage)
            else:
                bar.set_description(f"audit {short}: {stage}")
            outcomes[stage], summaries[stage] = _run_stage(lm, stage, kind, settings, opts, root)
            if bar is not None:
                bar.advance()
    items = read_all_tasks(path, opts.limit or max(v for v in settings.limits.values() if v), False)
    chance = data_chance([t for t in items if isinstance(t, Task)])
    verdicts = judge(summaries, kind, rules, chance)
    entry = {"model": name or opts.model or lm.model_id,
             **({"model_path": opts.model or lm.model_id} if name else {}), "model_info": lm.describe(), "profile": lm.profile.name,
             "kind": kind, "data": str(path), "data_chance": chance, "folder": ".",
             "stages": {k: v.to_dict() for k, v in outcomes.items()},
             "verdicts": {k: v.to_dict() for k, v in verdicts.items()},
             "bench": bench_headline(summaries.get("bench")), "mechanism": mechanism_row(summaries),
             "seconds": round(time.perf_counter() - t0, 2)}
    audit = _audit_doc("single", [entry], rules, settings, opts)
    audit_path = write_audit(root, audit)
    if progress is not None:
        progress("done")
    result = AuditResult(entry["model"], kind, str(root), outcomes, verdicts, entry, str(audit_path),
                         seconds=entry["seconds"])
    if settings.report if render is None else render:
        from latentcheck.audit.report import render_report

        result.report_path = str(render_report(root))
    return result


def _run_stage(lm, stage: str, kind: str, settings: AuditSettings, opts: CommonOptions,
               root: Path) -> tuple[StageOutcome, dict | None]:
    """Run one registered analysis into its folder of the model's audit folder; a user-level error is recorded as a
    failed stage (``--strict`` raises it)."""
    analysis = ANALYSES[stage]
    reason = analysis.skip_reason(kind)
    limit = settings.limit_for(stage, opts.limit)
    if reason:
        return StageOutcome(stage, "skipped", reason=reason, limit=limit), None
    folder = root / analysis.folder
    if folder.exists() and not opts.resume and any(folder.iterdir()):
        if not opts.overwrite:
            raise LatentcheckError(f"{folder} already holds results of an earlier audit; pass --resume to continue "
                                   "it, or --overwrite to replace it")
        shutil.rmtree(folder)  # a fresh audit never mixes with an older run's files
    stage_opts = dataclasses.replace(opts, out=str(folder), limit=limit)
    t = time.perf_counter()
    try:
        res = analysis.run(AnalysisContext(lm=lm, opts=stage_opts, settings=settings, kind=kind, root=root))
    except LatentcheckError as e:
        if opts.strict:
            raise
        return StageOutcome(stage, "failed", analysis.folder, reason=str(e), limit=limit,
                            seconds=round(time.perf_counter() - t, 2)), None
    return StageOutcome(stage, "done", analysis.folder, _rel(res.summary_path, root), limit=limit,
                        seconds=round(time.perf_counter() - t, 2), counts=dict(res.counts)), res.summary


def _audit_doc(kind: str, models: list[dict], rules: dict, settings: AuditSettings, opts: CommonOptions,
               comparison: list[dict] | None = None, seconds: float | None = None) -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": kind, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "rules": rules, "settings": settings.to_dict(),
            "options": {k: v for k, v in opts.config().items() if k not in ("quiet",)},
            "models": models, "comparison": comparison if comparison is not None else
            [comparison_row(m) for m in models],
            "timing": {"total_s": round(seconds if seconds is not None else sum(m.get("seconds", 0) for m in models),
                                        2)}}


def model_folders(models: Sequence[str] | Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(name, model, folder)`` per model to audit side by side: a list names each model by itself (zoo names), a
    mapping is NAME -> checkpoint (``audit --model NAME=PATH``). Folder names are unique."""
    pairs = list(models.items()) if isinstance(models, Mapping) else [(str(m), str(m)) for m in models]
    names = [n for n, _ in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LatentcheckError(f"two models named {', '.join(dup)}: give each a name (--model NAME=PATH)")
    out, taken = [], set()
    for name, model in pairs:
        folder, n = _safe(name), 2
        while folder in taken:
            folder, n = f"{_safe(name)}-{n}", n + 1
        taken.add(folder)
        out.append((name, model, folder))
    return out


def run_zoo_audit(opts: CommonOptions, settings: AuditSettings | None = None, rules: dict | None = None,
                  models: Sequence[str] | Mapping[str, str] = ZOO_AUDIT_MODELS) -> ZooAuditResult:
    """Audit several models side by side: each into ``opts.out/<name>/`` (a complete single audit with its own
    audit.json and report.html), then ``opts.out/audit.json`` with the comparison and one report. ``models``: zoo
    names / checkpoint paths, or NAME -> checkpoint (any real models, :func:`model_folders`)."""
    from latentcheck.core.progress import progress_bar
    from latentcheck.core.runner import load_for

    settings = settings or AuditSettings(threads=ZOO_THREADS)
    rules = rules or merge_rules(None)
    t0 = time.perf_counter()
    root = Path(opts.out)
    root.mkdir(parents=True, exist_ok=True)
    results: list[AuditResult] = []
    plan = stage_order([s for s in ANALYSES if s in settings.stages])
    _single_process()
    chosen = model_folders(models)
    _check_models([m for _, m, _ in chosen])
    with progress_bar(len(chosen) * len(plan), f"audit: {len(chosen)} models", quiet=opts.quiet) as bar:
        for name, model, folder in chosen:
            o = dataclasses.replace(opts, model=model, out=str(root / folder))
            bar.set_description(f"audit {name}: loading")
            lm = load_for(o)

            def step(stage: str, _name=name) -> None:
                if stage != plan[0]:
                    bar.advance()
                if stage != "done":
                    bar.set_description(f"audit {_name}: {stage}")

            results.append(run_audit(o, settings, rules, lm=lm, progress=step,
                                     name=name if name != model else None))
            del lm
    entries = []
    for r in results:
        e = dict(r.entry)
        e["folder"] = _rel(r.out, root)
        e["stages"] = {k: dict(v) for k, v in e["stages"].items()}
        entries.append(e)
    comparison = [comparison_row(e) for e in entries]
    seconds = time.perf_counter() - t0
    kind = "zoo" if not isinstance(models, Mapping) and list(models) == list(ZOO_AUDIT_MODELS) else "side_by_side"
    audit = _audit_doc(kind, entries, rules, settings, dataclasses.replace(opts, model=None), comparison, seconds)
    path = write_audit(root, audit)
    res = ZooAuditResult(results, comparison, str(root), str(path), seconds=round(seconds, 2))
    if settings.report:
        from latentcheck.audit.report import render_report

        res.report_path = str(render_report(root))
    return res


def _single_process() -> None:
    from latentcheck.core.runner import distributed

    if distributed()[1] > 1:
        raise LatentcheckError("the audit runs in one process; for data parallelism launch the analyses themselves "
                               "(perturb-input, perturb-latent, probe, ...) with accelerate / torchrun")


def _check_models(models) -> None:
    """Fail before any work when a model cannot be found (e.g. the zoo is not built)."""
    from latentcheck.core.errors import ModelLoadError
    from latentcheck.core.loader import resolve_model_path

    if not models:
        raise LatentcheckError("no models to audit")
    missing = []
    for m in models:
        try:
            resolve_model_path(m)
        except ModelLoadError as e:
            missing.append(f"{m} ({e})")
    if missing:
        raise ModelLoadError("cannot audit: " + "; ".join(missing))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name) or "model"


__all__ = ["AuditResult", "AuditSettings", "DEFAULT_LIMITS", "StageOutcome", "ZooAuditResult", "applicable",
           "data_chance", "run_audit", "run_zoo_audit"]
