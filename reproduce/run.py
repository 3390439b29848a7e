"""Run a study: every step into ``<out>/steps/<id>/`` (resumable), one model load per model role, then the tables.

Each step calls one analysis's library function with the step's options (the same functions the commands call):

==================  =====================================================  ===========================================
analysis            function                                               step ``options`` (all optional)
==================  =====================================================  ===========================================
``perturb-input``   ``perturb.inputs.run_perturb_input``                   ``treatments``, ``max_matrix``, ``force_start``
``perturb-latent``  ``perturb.latents.run_perturb_latent``                 ``interventions``, ``mediation``,
                                                                           ``sigma_sweep``, ``force_latent``
``probe``           ``probe.behavioural.run_probe``                        ``labels``, ``derived`` (a data role
                                                                           whose file holds the derived questions,
                                                                           as ``probe --derived``; or ``same``)
``bench``           ``bench.runner.run_bench``                             ``benchmark``, ``variant``, ``scoring``,
                                                                           ``verify`` (false: no MD5 check),
                                                                           the judge options ``judge_model``,
                                                                           ``judge_url``, ``judge_key_env``,
                                                                           ``judge_protocol``, ``judge_cache``,
                                                                           ``judge_concurrency``, ``judge_profile``
``intervene``       ``imagine.intervene.run_intervene``                    ``corrupter``
==================  =====================================================  ===========================================

The options and their types are ``study.STEP_OPTIONS`` (checked when the study file is read). ``reproduce``'s
``--judge-*`` options (``run_study(judge=...)``) override the judge options of every ``bench`` step that generates
(a likelihood-scored step, V*'s official protocol, reads no reply and keeps its scoring), so the shipped study can be
judged like the paper (an LLM judge, Monet's protocol) without editing it.

A data role with a ``benchmark`` is first exported to latentcheck task JSONL with ``bench.export.export_tasks``
(except for ``bench`` steps, which read the benchmark's own file). A model or data role that is not bound (and has no
default) skips its steps with the reason, and the tables say which cells are missing and why; a step that fails is
recorded as failed (its message in the table) and the study goes on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from latentcheck.core.errors import EXIT_ERROR_RECORDS, EXIT_OK, LatentcheckError
from latentcheck.core.records import write_json_atomic
from latentcheck.core.runner import CommonOptions
from latentcheck.core.summaries import read_summary
from latentcheck.reproduce.study import JUDGE_OPTIONS, Step, Study
from latentcheck.reproduce.tables import STEP_FILE, StepState, TableResult, build_tables, markdown, read_step_state, \
    step_dir

RESULT_FILE = "reproduce.json"
TABLES_FILE = "tables.md"
SCHEMA = "latentcheck.reproduce/1"


@dataclass
class ReproduceResult:
    """What :func:`run_study` returns: the step states, the filled tables and where they were written."""

    study: Study
    out: str
    steps: dict[str, StepState]
    tables: list[TableResult]
    result_path: str
    tables_path: str
    report_path: str | None = None
    seconds: float = 0.0
    is_main: bool = True  # False in a data-parallel worker process (rank > 0): no tables, nothing written

    @property
    def exit_code(self) -> int:
        """The documented scheme (core/errors.py): 0 when every step that ran is clean (skipped steps are not
        failures); 3 when the study completed but a step failed (its message is in the tables) or wrote error
        records. Never 1, which means a bug."""
        bad = any(s.status == "failed" or (s.status == "done" and _has_errors((s.extra or {}).get("counts")))
                  for s in self.steps.values())
        return EXIT_ERROR_RECORDS if bad else EXIT_OK


def _has_errors(counts: Any) -> bool:
    """Whether a step's counts (possibly nested per stage, e.g. the probe's capture / behavioural) hold errors."""
    if not isinstance(counts, dict):
        return False
    if isinstance(counts.get("errors"), (int, float)) and not isinstance(counts["errors"], bool):
        return counts["errors"] > 0
    return any(_has_errors(v) for v in counts.values())


def _bindings(pairs: list[str] | dict[str, str] | None, what: str, known: dict) -> dict[str, str]:
    if isinstance(pairs, dict):
        out = dict(pairs)
    else:
        out = {}
        for p in pairs or []:
            role, sep, value = p.partition("=")
            if not sep or not role or not value:
                raise LatentcheckError(f"--{what} takes ROLE=VALUE, got {p!r}")
            out[role] = value
    unknown = sorted(set(out) - set(known))
    if unknown:
        raise LatentcheckError(f"--{what}: unknown role(s) {', '.join(unknown)}; the study declares "
                               f"{', '.join(known) or 'none'}")
    return out


def _data_file(study: Study, step: Step, data: dict[str, str], out: Path, limit: int | None) -> tuple[str, str | None]:
    """(path, benchmark) the step reads: the bound or default file; for non-bench steps a benchmark file is
    exported to task JSONL first."""
    role = study.data[step.data]
    src = data.get(step.data) or role.default
    if not src:
        raise _Skip(f"data role {step.data!r} is not bound (--data {step.data}=PATH)")
    if src.startswith("toy:"):
        from latentcheck.core.runner import data_path

        return data_path(CommonOptions(), src.split(":", 1)[1]), None
    if not Path(src).exists():
        raise _Skip(f"data file {src} for role {step.data!r} does not exist")
    if not role.benchmark or step.analysis == "bench":
        return src, role.benchmark or None
    from latentcheck.bench.export import export_tasks

    dest = out / "data" / f"{step.data}.jsonl"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        export_tasks(role.benchmark, src, dest, limit=None)
    return str(dest), None


class _Skip(Exception):
    pass


def _options(step: Step, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The step's options (validated against ``STEP_OPTIONS`` when the study was read), with ``overrides`` (the
    command line's, e.g. ``--judge-url``) on top for the keys this analysis takes."""
    from latentcheck.reproduce.study import STEP_OPTIONS

    bad = sorted(set(step.options) - set(STEP_OPTIONS[step.analysis]))
    if bad:  # a Study built in Python rather than read from a file
        raise LatentcheckError(f"step {step.id}: unknown option(s) {', '.join(bad)} for {step.analysis} "
                               f"(known: {', '.join(STEP_OPTIONS[step.analysis])})")
    extra = {k: v for k, v in (overrides or {}).items() if k in STEP_OPTIONS[step.analysis] and v is not None}
    return {**step.options, **extra}


def _perturb_input(lm, opts, step, benchmark, n_boot, plots, overrides):
    from latentcheck.perturb.inputs import run_perturb_input

    o = _options(step, overrides)
    return run_perturb_input(opts, o.get("treatments"), max_matrix=int(o.get("max_matrix", 100)),
                             force_start=bool(o.get("force_start", False)), n_boot=n_boot, plots=plots, lm=lm)


def _perturb_latent(lm, opts, step, benchmark, n_boot, plots, overrides):
    from latentcheck.perturb.latents import run_perturb_latent

    o = _options(step, overrides)
    return run_perturb_latent(opts, o.get("interventions"), mediation=o.get("mediation", ("image",)),
                              sigma_sweep=o.get("sigma_sweep"), force_latent=bool(o.get("force_latent", False)),
                              n_boot=n_boot, plots=plots, lm=lm)


def _probe(lm, opts, step, benchmark, n_boot, plots, overrides):
    from latentcheck.probe.behavioural import ProbeOptions, run_probe

    o = _options(step, overrides)
    return run_probe(opts, ProbeOptions(labels=o.get("labels"), derived=o.get("derived"), n_boot=n_boot), lm=lm)


def _bench(lm, opts, step, benchmark, n_boot, plots, overrides):
    from latentcheck.bench.runner import run_bench
    from latentcheck.core.backends import DEFAULT_KEY_ENV

    o = _options(step, overrides)
    if _scoring_mode(o.get("benchmark", benchmark), o.get("variant"), o.get("scoring"), lm) != "generate":
        # the command line's judge applies to the steps that generate (V*'s official likelihood ranking reads no
        # reply); a judge the study itself gives such a step stays, and bench says why it cannot be used
        o = {k: v for k, v in o.items() if k not in JUDGE_OPTIONS or k in step.options}
    cache = o.get("judge_cache")  # as `bench --judge-cache`: a file, 'none' = off, default the shared cache
    return run_bench(opts, o.get("benchmark", benchmark), variant=o.get("variant"), scoring=o.get("scoring"),
                     judge=o.get("judge_model"), judge_url=o.get("judge_url"),
                     judge_key_env=o.get("judge_key_env", DEFAULT_KEY_ENV), judge_protocol=o.get("judge_protocol"),
                     judge_cache=None if (cache or "").lower() == "none" else (cache or True),
                     judge_concurrency=int(o.get("judge_concurrency", 4)), judge_profile=o.get("judge_profile"),
                     verify=bool(o.get("verify", True)), n_boot=n_boot, lm=lm)


def _scoring_mode(benchmark: str | None, variant: str | None, scoring: str | None, lm) -> str | None:
    """How a bench step is scored (``generate`` / ``likelihood``), as ``run_bench`` resolves it; None when that
    cannot be told here (bench then reports the problem itself)."""
    from dataclasses import replace

    from latentcheck.bench import get_benchmark
    from latentcheck.bench.runner import PROFILE_VARIANT, profile_variant, resolve_protocol

    try:
        bench = get_benchmark(benchmark or "generic")
        bench = replace(bench, variants={**bench.variants, PROFILE_VARIANT: profile_variant(lm)})
        return resolve_protocol(bench, variant, scoring)[1]
    except LatentcheckError:
        return None


def _intervene(lm, opts, step, benchmark, n_boot, plots, overrides):
    from latentcheck.imagine.intervene import run_intervene

    o = _options(step, overrides)
    return run_intervene(opts, corrupter=o.get("corrupter", "auto"), plots=plots, lm=lm)


RUNNERS: dict[str, Callable] = {"perturb-input": _perturb_input, "perturb-latent": _perturb_latent,
                                "probe": _probe, "bench": _bench, "intervene": _intervene}


def _finished_summary(folder: Path) -> str | None:
    """The step's summary: ``summary.json``; a bench folder from before the rename kept it in ``results.json``
    (read only when that file is not the lmms-eval-shaped one, core/lmms.py)."""
    if (folder / "summary.json").is_file():
        return str(folder / "summary.json")
    legacy = folder / "results.json"
    if legacy.is_file():
        try:
            data = json.loads(legacy.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and not {"results", "configs", "versions"} <= set(data):
            return str(legacy)
    return None


def _current(summary: str | None) -> bool:
    """True when the stored summary is readable in this version's summary schema (``--resume`` reruns a step whose
    summary has another schema: its samples are resumed, so only the summary is recomputed)."""
    try:
        read_summary(summary)
    except (LatentcheckError, TypeError):
        return False
    return True


def _summary_path(result: Any, folder: Path) -> str:
    path = getattr(result, "summary_path", None) or (result.get("summary_path") if isinstance(result, dict) else None)
    if path and Path(path).is_file():
        return str(path)
    found = _finished_summary(folder)
    if found is None:
        raise LatentcheckError(f"the analysis wrote no summary in {folder}")
    return found


def run_study(study: Study, opts: CommonOptions, models: list[str] | dict[str, str] | None = None,
              data: list[str] | dict[str, str] | None = None, profiles: list[str] | dict[str, str] | None = None,
              only: list[str] | None = None, n_boot: int = 1000, plots: bool = True, report: bool = True,
              progress: Callable[[str], None] | None = None,
              judge: dict[str, Any] | None = None) -> ReproduceResult:
    """Run ``study``'s steps into ``opts.out`` (``--resume`` keeps finished steps), write ``reproduce.json`` and
    ``tables.md`` (and ``report.html``), and return the result. ``models`` / ``data`` / ``profiles`` bind roles
    (``["monet=/ckpt/Monet-7B"]`` or a dict); ``only`` restricts the run to those step ids (the tables still read
    every step already in the folder). ``judge``: bench judge options (``study.JUDGE_OPTIONS`` keys, e.g.
    ``{"judge_model": "gpt-4o", "judge_url": URL}``) that override every ``bench`` step's own."""
    from latentcheck.core.runner import is_main_process, load_for

    t0 = time.perf_counter()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    judge = _judge_overrides(judge)
    mbind = _bindings(models, "model", study.models)
    dbind = _bindings(data, "data", study.data)
    pbind = _bindings(profiles, "profile", study.models)
    if only:
        unknown = sorted(set(only) - {s.id for s in study.steps})
        if unknown:
            raise LatentcheckError(f"--step: unknown step(s) {', '.join(unknown)}")
    states: dict[str, StepState] = {}
    say = progress or (lambda msg: None)
    # one model load per role: steps grouped by model role, in the study's order of first use
    roles: list[str] = []
    for s in study.steps:
        if s.model not in roles:
            roles.append(s.model)
    for role in roles:
        steps = [s for s in study.steps if s.model == role and (not only or s.id in only)]
        todo = []
        for s in steps:
            prev = read_step_state(out, s.id)
            if opts.resume and prev is not None and prev.status == "done" and _current(prev.summary):
                states[s.id] = prev
            elif opts.resume and prev is None and _current(_finished_summary(step_dir(out, s.id) / "run")):
                # the step's analysis was run by hand into its folder (e.g. data-parallel): adopt its summary
                states[s.id] = _record(out, StepState(s.id, "done", None,
                                                      _finished_summary(step_dir(out, s.id) / "run"),
                                                      extra={"adopted": True}))
            else:
                todo.append(s)
        if not todo:
            continue
        spec = study.models[role]
        model = mbind.get(role) or spec.default
        if not model:
            for s in todo:
                states[s.id] = _record(out, StepState(s.id, "skipped",
                                                      f"model role {role!r} ({spec.stands_for or role}) is not bound "
                                                      f"(--model {role}=PATH)"))
            continue
        lm = None
        try:
            if is_main_process():
                say(f"loading model {role} = {model}")
            lm = load_for(dataclasses.replace(opts, model=model, profile=pbind.get(role) or spec.profile))
        except LatentcheckError as e:
            for s in todo:
                states[s.id] = _record(out, StepState(s.id, "failed", f"model {model}: {e}"))
            continue
        for s in todo:
            if is_main_process():
                say(f"step {s.id}: {s.analysis} on {s.data} with {role}")
            states[s.id] = _run_step(study, s, lm, opts, dbind, out, n_boot, plots, judge)
        del lm
    for s in study.steps:  # steps not run now: whatever the folder holds
        if s.id not in states:
            prev = read_step_state(out, s.id)
            states[s.id] = prev or StepState(s.id, "skipped", "not selected (--step)")
    if not is_main_process():  # a data-parallel worker: its shares are merged by rank 0, which writes the tables
        return ReproduceResult(study, str(out), states, [], "", "", seconds=round(time.perf_counter() - t0, 2),
                               is_main=False)
    tables = build_tables(study, out)
    doc = {"schema": SCHEMA, "study": {"name": study.name, "title": study.title, "source": study.source,
                                       "file": study.path},
           "bindings": {"models": {r: mbind.get(r) or study.models[r].default or None for r in study.models},
                        "data": {r: dbind.get(r) or study.data[r].default or None for r in study.data}},
           "steps": {k: v.to_dict() for k, v in states.items()}, "tables": [t.to_dict() for t in tables],
           "timing": {"total_s": round(time.perf_counter() - t0, 2)}}
    result_path = write_json_atomic(out / RESULT_FILE, doc)
    tables_path = out / TABLES_FILE
    tables_path.write_text(markdown(tables, study), encoding="utf-8")
    res = ReproduceResult(study, str(out), states, tables, str(result_path), str(tables_path),
                          seconds=round(time.perf_counter() - t0, 2))
    if report:
        from latentcheck.reproduce.report import render_reproduce_report

        res.report_path = str(render_reproduce_report(res))
    return res


def _record(out: Path, state: StepState) -> StepState:
    """Write the step's state (rank 0 only: under data parallelism every process knows it, one writes it)."""
    from latentcheck.core.runner import is_main_process

    if is_main_process():
        write_json_atomic(step_dir(out, state.id) / STEP_FILE, state.to_dict())
    return state


@contextmanager
def _main_process_first():
    """Under data parallelism, rank 0 runs the block first (e.g. exporting a benchmark to task JSONL) and the other
    processes after it, so they find its files; a plain block in one process. Every process passes one barrier."""
    from latentcheck.core.runner import barrier, distributed, is_main_process

    if distributed()[1] == 1:
        yield
        return
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def _judge_overrides(judge: dict[str, Any] | None) -> dict[str, Any]:
    """The ``--judge-*`` overrides without unset entries, checked like a study step's options."""
    out = {k: v for k, v in (judge or {}).items() if v is not None}
    for k, v in out.items():
        flag = "--" + k.replace("_", "-")
        if k not in JUDGE_OPTIONS:
            raise LatentcheckError(f"unknown judge option {k!r} (known: {', '.join(JUDGE_OPTIONS)})")
        if isinstance(v, bool) or not isinstance(v, JUDGE_OPTIONS[k]):
            raise LatentcheckError(f"{flag}: expected {JUDGE_OPTIONS[k][0].__name__}, got {v!r}")
        if k == "judge_concurrency" and v < 1:
            raise LatentcheckError(f"{flag} must be >= 1, got {v}")
    return out


def _run_step(study: Study, step: Step, lm, opts: CommonOptions, dbind: dict[str, str], out: Path, n_boot: int,
              plots: bool, overrides: dict[str, Any] | None = None) -> StepState:
    """Run one step into ``<out>/steps/<id>/run``; ``overrides``: the command line's options for the analysis."""
    folder = step_dir(out, step.id)
    t = time.perf_counter()
    try:
        with _main_process_first():
            path, benchmark = _data_file(study, step, dbind, out, step.limit or None)
            derived = step.options.get("derived")
            if derived not in (None, "same"):  # a probe's derived questions: the file bound to that data role
                derived_file = _data_file(study, dataclasses.replace(step, data=derived), dbind, out, None)[0]
                overrides = {**(overrides or {}), "derived": derived_file}
    except _Skip as e:
        return _record(out, StepState(step.id, "skipped", str(e)))
    except LatentcheckError as e:
        return _record(out, StepState(step.id, "failed", f"data: {e}"))
    sopts = dataclasses.replace(opts, out=str(folder / "run"), data=path,
                                limit=opts.limit or step.limit or None, resume=opts.resume)
    try:
        result = RUNNERS[step.analysis](lm, sopts, step, benchmark, n_boot, plots, overrides)
        if not getattr(result, "is_main", True):  # a worker's share; rank 0 merges, summarises and records
            return StepState(step.id, "done", None, None, round(time.perf_counter() - t, 2))
        summary = _summary_path(result, folder / "run")
    except LatentcheckError as e:
        if opts.strict:
            raise
        return _record(out, StepState(step.id, "failed", str(e), seconds=round(time.perf_counter() - t, 2)))
    counts = getattr(result, "counts", None) or (result.get("counts") if isinstance(result, dict) else None) or {}
    return _record(out, StepState(step.id, "done", None, summary, round(time.perf_counter() - t, 2),
                                  {"counts": json.loads(json.dumps(counts, default=str)), "data": path}))
