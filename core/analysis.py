"""One analysis interface: what every analysis returns, how it ends, and how the audit finds it.

Every analysis (perturb-input, perturb-latent, probe, bench, caption-imagine run / intervene) has the same shape::

    settings -> tasks (core.tasks) -> core.runner.run_records(prepare_block / process_block)  # samples.jsonl
             -> summarise(records) -> finish(...)                                            # summary, figures
             -> AnalysisResult

- :class:`AnalysisResult` is the ONE result type: ``command``, ``summary`` (what summary.json holds), ``counts``
  (``ok`` / ``errors`` / ``errors_by_field`` of the samples file; analyses with several files nest theirs),
  ``errors`` and ``exit_code`` (0, or 3 when some records became error records; core/errors.py), ``figures`` (name -> PNG path),
  and the paths (``out_dir``, ``results_path`` = samples.jsonl, ``summary_path``). ``result["key"]`` reads the
  summary (so code written for the dict-returning analyses keeps working). The CLI renders any result's final line
  with :func:`latentcheck.cli.tables.result_line` (per-analysis tables stay in each command's module).
- :func:`finish` is the common tail of every analysis: write the summary atomically (with the summary schema
  version), attach the figures, build the result. :func:`not_main` is the result of a data-parallel worker (rank > 0,
  which writes no summary).
- :class:`Analysis` declares an analysis to the audit (registry :data:`ANALYSES`): its stage name and folder, the
  model kinds it applies to (a reason for the others), and ``run(context) -> AnalysisResult``. An analysis package
  registers its own entry (``register_analysis``) in the module that runs it, so adding an analysis to the audit is
  one module; the audit loops over the registry.
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
    """An analysis as the audit sees it. ``kinds``: model kind -> how it runs there (the run function, or a reason
    string when it does not apply); kinds not listed are skipped with ``default_reason``."""

    name: str
    folder: str
    command: str
    kinds: dict[str, Callable[[AnalysisContext], AnalysisResult] | str]
    default_reason: str = "nothing to analyse"
    description: str = ""

    def skip_reason(self, kind: str) -> str | None:
        """None when the analysis runs on a model of ``kind``, else why it is skipped."""
        how = self.kinds.get(kind, f"{kind} model: {self.default_reason}")
        return how if isinstance(how, str) else None

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        how = self.kinds.get(ctx.kind)
        if not callable(how):
            raise ValueError(f"{self.name} does not run on {ctx.kind} models")
        return how(ctx)


ANALYSES: Registry[Analysis] = Registry("analysis")


def register_analysis(analysis: Analysis) -> Analysis:
    """Add an analysis to the audit's registry (a taken name is an error)."""
    return ANALYSES.add(analysis.name, analysis)


__all__ = ["AnalysisResult", "finish", "not_main", "figures_dict", "Analysis", "AnalysisContext", "ANALYSES",
           "register_analysis", "SUMMARY_SCHEMA"]
