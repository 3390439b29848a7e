"""One analysis interface: how every analysis is declared, the one driver that runs it, what it returns, and how
the audit finds it.

Every analysis (perturb-input, perturb-latent, probe, bench, caption-imagine run / intervene, the audit's mechanism
stage) is an :class:`AnalysisSpec` run by :func:`run_analysis`, the ONE copy of the skeleton::

    run_analysis(spec, opts, lm=None):
        spec.read_items(opts)                 -> data path, tasks (core.tasks; bad records kept as BadRecord)
        core.runner.load_for(opts)            -> the model (the one loader; skipped when ``lm`` is given)
        spec.setup(run)                       -> the model-dependent checks and the block functions
        for stage in spec.stages(run):        -> one RecordStage per record file, in order
            core.runner.run_records(...)      -> <out>[/<stage.folder>]/samples.jsonl (resume, error records,
                                                 progress, data-parallel shards)
            core.runner.load_records(...)     -> run.records[stage.name], in the canonical record order
        (a data-parallel worker stops here: not_main)
        spec.summarise(run)                   -> the summary (typed records of core/summaries.py, as dicts)
        spec.figures(run, summary)            -> the figures (name -> PNG path, or a list of paths)
        finish(...)                           -> summary.json, results.json, --log, AnalysisResult

- :class:`AnalysisSpec` is what an analysis writes: its ``command``, ``default_model``, and the hooks above (each
  with a default but ``stages`` and ``summarise``). A spec instance describes ONE run (its settings are the
  constructor's arguments; hooks may keep what they build on ``self``). ``stages`` is iterated lazily, so a later
  stage may be built from an earlier stage's records (probe: the derived questions need the captured latents).
- :class:`RecordStage` is one record file: its ``name`` (key of ``run.records`` / ``run.counts``), the block
  function(s) for ``run_records``, the items (default: the run's tasks), the provenance ``config`` added to the
  options, and the sub-folder of ``--out`` (default: ``--out`` itself).
- :class:`AnalysisRun` is the driver's state handed to every hook: options, model, data path, items, and per stage
  the records, counts and file path.
- :class:`AnalysisResult` is the ONE result type: ``command``, ``summary`` (what summary.json holds), ``counts``
  (``ok`` / ``errors`` / ``errors_by_field`` of the samples file; analyses with several files nest theirs),
  ``errors`` and ``exit_code`` (0, or 3 when some records became error records; core/errors.py), ``figures``
  (name -> PNG path), and the paths (``out_dir``, ``results_path`` = samples.jsonl, ``summary_path``,
  ``record_files``: every record stage's file).
  ``result["key"]`` reads the summary (so code written for the dict-returning analyses keeps working). The CLI
  renders any result's common part (final line, exit code) with :func:`latentcheck.cli.tables.render_result`
  (per-analysis tables stay in each command's module).
- :func:`finish` is the common tail (called by the driver): write the summary atomically (with the summary schema
  version), attach the figures, build the result. :func:`not_main` is the result of a data-parallel worker
  (rank > 0, which writes no summary).
- :class:`Analysis` declares an analysis to the audit (registry :data:`ANALYSES`): its stage name and folder, the
  model kinds it applies to (a reason for the others), and per kind ``spec(context) -> AnalysisSpec`` (the
  analysis with the audit's settings); :meth:`Analysis.run` runs that spec through :func:`run_analysis` on the
  audit's model. An analysis package registers its own entry (``register_analysis``), so adding an analysis to the
  audit is one module; the audit loops over the registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from latentcheck.core.registry import Registry
from latentcheck.core.summaries import SUMMARY_SCHEMA


def _count_errors(counts: Mapping[str, Any], key: str = "errors") -> int:
    """``counts[key]``, or the sum over nested counts (an analysis with several sample files)."""
    value = counts.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return sum(_count_errors(v, key) for v in counts.values() if isinstance(v, Mapping))


@dataclass
class AnalysisResult:
    """What every analysis returns (module docstring)."""

    command: str
    summary: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    out_dir: str | None = None
    results_path: str | None = None
    summary_path: str | None = None
    figures: dict[str, str] = field(default_factory=dict)
    lmms_path: str | None = None  # results.json: the same numbers in lmms-eval's shape (core/lmms.py)
    record_files: dict[str, str] = field(default_factory=dict)  # record stage -> its samples.jsonl (run_analysis)
    is_main: bool = True
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        """Error records written by this run (over every samples file of the analysis)."""
        return _count_errors(self.counts)

    @property
    def ok(self) -> int:
        """Records that completed (over every samples file of the analysis)."""
        return _count_errors(self.counts, "ok")

    @property
    def exit_code(self) -> int:
        """0, or EXIT_ERROR_RECORDS (3) when some records became error records (the run still completed)."""
        from latentcheck.core.errors import outcome_exit_code

        return outcome_exit_code(self.errors)

    @property
    def plots(self) -> list[str]:
        """The figure paths, in the order they were made."""
        return list(self.figures.values())

    def paths(self) -> dict[str, str]:
        """Every file the run wrote that a reader looks for: samples, summary and figures."""
        out = {k: v for k, v in (("samples", self.results_path), ("summary", self.summary_path),
                                 ("results", self.lmms_path)) if v}
        return {**out, **{f"figure:{k}": v for k, v in self.figures.items()}}

    def records(self) -> list[dict[str, Any]]:
        """The sample and error records of ``results_path`` (provenance dropped)."""
        from latentcheck.core.records import iter_results

        return list(iter_results(self.results_path)) if self.results_path else []

    def to_pandas(self):
        """The records as a tidy DataFrame: one row per sample and condition, plain column names
        (``key``, ``section``, ``condition``, ``correct``, ...; see core/export.py). Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("AnalysisResult.to_pandas() needs pandas (pip install 'latentcheck[api]')") from None
        from latentcheck.core.export import flat_rows

        return pd.DataFrame(flat_rows(self.records()))

    # read access to the summary, as for the analyses that used to return their summary dict
    _ATTRIBUTES = ("results_path", "summary_path", "is_main", "exit_code", "counts")

    def __getitem__(self, key: str) -> Any:
        if key in self.summary:
            return self.summary[key]
        if key in self._ATTRIBUTES:
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return key in self.summary or key in self._ATTRIBUTES

    def __iter__(self) -> Iterator[str]:
        return iter(self.summary)


def figures_dict(figures: Mapping[str, str] | list[str] | None) -> dict[str, str]:
    """Figures as name -> path (a list of paths is named by file stem)."""
    if not figures:
        return {}
    if isinstance(figures, Mapping):
        return {str(k): str(v) for k, v in figures.items()}
    return {Path(p).stem: str(p) for p in figures}


def finish(command: str, out_dir: str | Path, summary: dict[str, Any], counts: Mapping[str, Any],
           results_path: str | None = None, figures: Mapping[str, str] | list[str] | None = None,
           name: str | None = "summary.json", started: float | None = None) -> AnalysisResult:
    """The common tail of every analysis: stamp ``summary`` with the summary schema (``"schema"``, added last when
    missing), write it to ``out_dir/name`` (atomically, through the one JSON serialisation) and the same numbers in
    lmms-eval's shape to ``out_dir/results.json`` (core/lmms.py), hand the run's config and final metrics to the
    active run logger (``--log``, core/tracking.py) and return the :class:`AnalysisResult`. ``name=None`` writes
    nothing."""
    from latentcheck.core import tracking
    from latentcheck.core.lmms import RESULTS_NAME, lmms_results, read_provenance
    from latentcheck.core.records import write_json_atomic

    if name == RESULTS_NAME:
        raise ValueError(f"{RESULTS_NAME} is the lmms-eval-shaped file; a summary goes to summary.json")
    summary.setdefault("schema", SUMMARY_SCHEMA)
    summary_path = lmms_path = None
    lmms = lmms_results(command, summary, counts, read_provenance(out_dir))
    if name is not None:
        summary_path = str(write_json_atomic(Path(out_dir) / name, summary))
        lmms_path = str(write_json_atomic(Path(out_dir) / RESULTS_NAME, lmms))
    tracking.log_results(lmms)
    return AnalysisResult(command=command, summary=summary, counts=dict(counts), out_dir=str(out_dir),
                          results_path=results_path, summary_path=summary_path, figures=figures_dict(figures),
                          seconds=round(time.perf_counter() - started, 3) if started is not None else 0.0,
                          lmms_path=lmms_path)


def not_main(command: str, out_dir: str | Path, results_path: str | None, counts: Mapping[str, Any]) -> AnalysisResult:
    """The result of a data-parallel worker process (rank > 0): its shard's counts, no summary."""
    return AnalysisResult(command=command, counts=dict(counts), out_dir=str(out_dir), results_path=results_path,
                          is_main=False)


# ------------------------------------------------------------------------------------------------- the one driver

@dataclass
class RecordStage:
    """One record file of an analysis (module docstring): what ``core.runner.run_records`` runs for it.

    ``name`` keys ``run.records`` / ``run.counts`` / ``run.paths``; ``process_block`` (and ``prepare_block``,
    ``prefetch``, ``block_size``, ``on_fresh_start``: see ``run_records``) computes the records; ``items`` are the
    tasks it runs over (default: the run's items); ``config`` is added to the options in the provenance;
    ``command`` is the provenance command (default: the analysis's); ``folder`` is a sub-folder of ``--out`` for
    this file (default: ``--out`` itself)."""

    name: str
    process_block: Callable[[Any], Any]
    items: list | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    command: str | None = None
    folder: str | None = None
    description: str | None = None
    prepare_block: Callable[[list], Any] | None = None
    prefetch: bool = True
    block_size: int | None = None
    on_fresh_start: Callable[[], None] | None = None


@dataclass
class AnalysisRun:
    """The driver's state, handed to every hook of an :class:`AnalysisSpec`: the options, the model, the data path
    and items, and per record stage (by name, in the order they ran) its records (main process only; canonical
    record order), counts and file."""

    opts: Any
    lm: Any
    data: str
    items: list
    records: dict[str, list[dict]] = field(default_factory=dict)
    counts: dict[str, dict[str, Any]] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    is_main: bool = True
    started: float = field(default_factory=time.perf_counter)

    @property
    def out(self) -> Path:
        return Path(self.opts.out)

    @property
    def tasks(self) -> list:
        """The valid tasks of ``items`` (bad records left out), in file order."""
        from latentcheck.core.tasks import Task

        return [t for t in self.items if isinstance(t, Task)]


class AnalysisSpec:
    """One analysis run, declared (module docstring). Subclasses set ``command`` (and ``default_model``) and
    implement ``stages`` and ``summarise``; the other hooks have defaults."""

    command: str = ""
    default_model: str = "toy-latent"
    results_stage: str | None = "samples"  # the stage whose file is the result's ``results_path`` (None: none)

    def read_items(self, opts) -> tuple[str, list]:
        """The data path and its items (before the model is loaded): ``--data`` or the default data's test split,
        read with ``--limit`` / ``--strict``."""
        from latentcheck.core.runner import data_path, read_all_tasks

        path = data_path(opts)
        return path, read_all_tasks(path, opts.limit, opts.strict)

    def setup(self, run: AnalysisRun) -> None:
        """After the model is loaded: check it and build what the block functions need."""

    def stages(self, run: AnalysisRun) -> Iterator[RecordStage] | list[RecordStage]:
        """The record files, in order (iterated lazily: a stage may read the records of the ones before it)."""
        raise NotImplementedError

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        """The summary (main process only) from ``run.records``."""
        raise NotImplementedError

    def figures(self, run: AnalysisRun, summary: dict[str, Any]) -> Mapping[str, str] | list[str] | None:
        """The figures made from the summary (name -> path, or paths); called last, before the summary is
        written."""
        return None

    def counts(self, run: AnalysisRun) -> dict[str, Any]:
        """The result's counts: the one stage's counts as they are, else ``errors`` (total) and each stage's
        counts under its name."""
        if len(run.counts) == 1 and self.results_stage in run.counts:
            return dict(run.counts[self.results_stage])
        return {"errors": _count_errors({"stages": run.counts}), **run.counts}


def run_analysis(spec: AnalysisSpec, opts, lm=None) -> AnalysisResult:
    """Run one analysis (module docstring): items, model (``lm``: an already loaded one), every record stage
    through ``core.runner.run_records`` (resume, error records, data-parallel shards), the records reloaded in the
    canonical record order, then on the main process the summary, the figures and :func:`finish`. A data-parallel
    worker returns :func:`not_main` with its shards' counts."""
    import dataclasses

    from latentcheck.core.runner import load_for, load_records, run_records

    started = time.perf_counter()
    data, items = spec.read_items(opts)
    if lm is None:
        lm = load_for(opts, default=spec.default_model)
    run = AnalysisRun(opts=opts, lm=lm, data=str(data), items=items, started=started)
    spec.setup(run)
    for stage in spec.stages(run):
        stage_opts = opts if stage.folder is None else dataclasses.replace(opts, out=str(run.out / stage.folder))
        res = run_records(stage.command or spec.command, stage_opts, {**stage_opts.config(), **stage.config},
                          lm.describe(), items if stage.items is None else stage.items, stage.process_block,
                          block_size=stage.block_size, description=stage.description or spec.command,
                          prepare_block=stage.prepare_block, prefetch=stage.prefetch,
                          on_fresh_start=stage.on_fresh_start)
        run.counts[stage.name], run.paths[stage.name] = res.counts, res.results_path
        run.is_main = run.is_main and res.is_main
        run.records[stage.name] = load_records(res.results_path) if res.is_main else []
    results_path = run.paths.get(spec.results_stage) if spec.results_stage else None
    if not run.is_main:
        result = not_main(spec.command, opts.out, results_path, spec.counts(run))
    else:
        summary = spec.summarise(run)
        figures = spec.figures(run, summary)
        result = finish(spec.command, opts.out, summary, spec.counts(run), results_path, figures, started=started)
    result.record_files = dict(run.paths)
    return result


# ------------------------------------------------------------------------------------------------- the audit's view

@dataclass
class AnalysisContext:
    """What an analysis gets when the audit runs it: the loaded model, the stage's options (its own ``out`` folder
    and limit), the audit settings (``n_boot``, ``plots``, ``force_latent``, per-analysis choices), the model kind
    and the model's audit folder (earlier stages' outputs live there)."""

    lm: Any
    opts: Any
    settings: Any
    kind: str
    root: Path


@dataclass(frozen=True)
class Analysis:
    """An analysis as the audit sees it. ``kinds``: model kind -> how it runs there (``spec(context) ->
    AnalysisSpec``: the analysis with the audit's settings, run by :func:`run_analysis` on the audit's model), or a
    reason string when it does not apply; kinds not listed are skipped with ``default_reason``."""

    name: str
    folder: str
    command: str
    kinds: dict[str, Callable[[AnalysisContext], AnalysisSpec] | str]
    default_reason: str = "nothing to analyse"
    description: str = ""

    def skip_reason(self, kind: str) -> str | None:
        """None when the analysis runs on a model of ``kind``, else why it is skipped."""
        how = self.kinds.get(kind, f"{kind} model: {self.default_reason}")
        return how if isinstance(how, str) else None

    def spec(self, ctx: AnalysisContext) -> AnalysisSpec:
        """The analysis with the audit's settings for a model of ``ctx.kind``."""
        how = self.kinds.get(ctx.kind)
        if not callable(how):
            raise ValueError(f"{self.name} does not run on {ctx.kind} models")
        return how(ctx)

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        """Run it through the one driver, on the audit's model, into ``ctx.opts.out``."""
        return run_analysis(self.spec(ctx), ctx.opts, lm=ctx.lm)


ANALYSES: Registry[Analysis] = Registry("analysis")


def register_analysis(analysis: Analysis) -> Analysis:
    """Add an analysis to the audit's registry (a taken name is an error)."""
    return ANALYSES.add(analysis.name, analysis)


__all__ = ["AnalysisResult", "finish", "not_main", "figures_dict", "AnalysisSpec", "RecordStage", "AnalysisRun",
           "run_analysis", "Analysis", "AnalysisContext", "ANALYSES", "register_analysis", "SUMMARY_SCHEMA"]
