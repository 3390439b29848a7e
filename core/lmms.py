"""``results.json``: every analysis's numbers in the shape lmms-eval writes (``<date>_results.json``).

lmms-eval (``lmms_eval/evaluator.py`` + ``loggers/evaluation_tracker.py``) writes one aggregated file::

    {"results":  {TASK: {"alias": TASK, "METRIC,FILTER": value, "METRIC_stderr,FILTER": stderr | "N/A", ...}},
     "group_subtasks": {TASK: []}, "configs": {TASK: {...task config...}}, "versions": {TASK: version},
     "n-shot": {TASK: 0}, "higher_is_better": {TASK: {METRIC: bool | None}},
     "n-samples": {TASK: {"original": N, "effective": N}},
     "config": {"model": ..., "model_args": ..., "batch_size": ..., "device": ..., "limit": ...,
                "bootstrap_iters": ..., "random_seed": ...}, "git_hash": ..., "date": ...}

latentcheck writes the same keys beside ``summary.json`` (which stays the analysis's own, richer summary), so tools
that read lmms-eval results (leaderboards, notebooks, ``lmms_eval``'s table printer) read latentcheck runs too.

Mapping (built from the summary alone, so the numbers are the summary's, never recomputed):

- TASK: the benchmark name for ``bench`` (``vstar``, ``blink:Counting``), else the command (``perturb-latent``).
- One metric per interval in the summary, named by its path with ``/`` (``interventions/zero/delta_logp_gold``;
  a ``,`` in a key becomes ``;`` since lmms-eval splits ``METRIC,FILTER`` on it); FILTER is always ``none``:
  ``METRIC,none`` = the estimate, ``METRIC_lo,none`` / ``METRIC_hi,none`` = the interval,
  ``METRIC_stderr,none`` = ``"N/A"`` (latentcheck reports intervals, not standard errors; lmms-eval writes
  ``"N/A"`` when it has none). An interval is a typed record (``estimate``/``lo``/``hi``, core/summaries.py) or,
  until every summary is migrated, a v1 accuracy dict (``accuracy``/``lo``/``hi``) or paired row
  (``delta``/``delta_lo``/``delta_hi``, metric ``PATH/delta``).
- ``configs[TASK]``: the command, the run's options and model (from ``provenance.json`` when the run has one, else
  from the summary); ``versions[TASK]``: the summary schema.
- ``higher_is_better``: ``True`` for accuracies, ``None`` (no direction) for effects and rates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Mapping

FILTER = "none"
RESULTS_NAME = "results.json"
SKIPPED_KEYS = frozenset({"schema", "command", "timing", "model", "config", "provenance"})


def _name(path: list[str]) -> str:
    return "/".join(str(p).replace(",", ";") for p in path)


def _num(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def intervals(summary: Any, path: list[str] | None = None) -> Iterator[tuple[list[str], str, dict[str, Any]]]:
    """Every interval in ``summary``: ``(path, kind, {"estimate", "lo", "hi"})`` in document order. ``kind`` is
    ``record`` (typed record), ``accuracy`` (v1 accuracy dict) or ``delta`` (v1 paired row, path ends in
    ``delta``)."""
    path = path or []
    if isinstance(summary, Mapping):
        if "estimate" in summary and "lo" in summary and "hi" in summary and all(
                _num(summary[k]) for k in ("estimate", "lo", "hi")):
            yield path, "record", {k: summary[k] for k in ("estimate", "lo", "hi")}
            return
        if "accuracy" in summary and "lo" in summary and "hi" in summary and all(
                _num(summary[k]) for k in ("accuracy", "lo", "hi")):
            yield path, "accuracy", {"estimate": summary["accuracy"], "lo": summary["lo"], "hi": summary["hi"]}
        if "delta" in summary and "delta_lo" in summary and "delta_hi" in summary and all(
                _num(summary[k]) for k in ("delta", "delta_lo", "delta_hi")):
            yield path + ["delta"], "delta", {"estimate": summary["delta"], "lo": summary["delta_lo"],
                                               "hi": summary["delta_hi"]}
        for k, v in summary.items():
            if not path and k in SKIPPED_KEYS:
                continue
            if isinstance(v, (Mapping, list, tuple)):
                yield from intervals(v, path + [str(k)])
    elif isinstance(summary, (list, tuple)):
        for i, v in enumerate(summary):
            if isinstance(v, (Mapping, list, tuple)):
                yield from intervals(v, path + [str(i)])


def task_name(command: str, summary: Mapping[str, Any]) -> str:
    """lmms-eval's TASK: the benchmark for bench (with its subtasks), else the command."""
    bench = summary.get("benchmark")
    if command == "bench" and isinstance(bench, str):
        subtasks = summary.get("subtasks")
        return bench + (":" + ",".join(map(str, subtasks)) if subtasks else "")
    return command


def _total(counts: Mapping[str, Any], key: str) -> int | None:
    v = counts.get(key)
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    nested = [_total(c, key) for c in counts.values() if isinstance(c, Mapping)]
    nested = [n for n in nested if n is not None]
    return sum(nested) if nested else None


def _is_accuracy(path: list[str], kind: str) -> bool:
    """Accuracies (and a benchmark's official ``scores``, a Score record) are higher-is-better."""
    return kind == "accuracy" or any("accuracy" in str(p) or str(p) in ("scores", "scores_rule") for p in path[-1:])


def lmms_results(command: str, summary: Mapping[str, Any], counts: Mapping[str, Any] | None = None,
                 provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The lmms-eval-shaped dict of one analysis run (module docstring)."""
    from latentcheck.core import __version__

    task = task_name(command, summary)
    prov = dict(provenance or {})
    options = dict(prov.get("config") or summary.get("config") or {})
    model = prov.get("model") or summary.get("model") or {}
    metrics: dict[str, Any] = {"alias": task}
    higher: dict[str, bool | None] = {}
    for path, kind, iv in intervals(summary):
        name = _name(path)
        metrics[f"{name},{FILTER}"] = iv["estimate"]
        metrics[f"{name}_stderr,{FILTER}"] = "N/A"
        metrics[f"{name}_lo,{FILTER}"] = iv["lo"]
        metrics[f"{name}_hi,{FILTER}"] = iv["hi"]
        higher[name] = True if _is_accuracy(path, kind) else None
    counts = counts or {}
    ok, errors = _total(counts, "ok"), _total(counts, "errors")
    original = ok + (errors or 0) if ok is not None else _total(counts, "total")
    model = model if isinstance(model, Mapping) else {}
    where = model.get("path") or model.get("id")
    model_args = ",".join(a for a in (f"pretrained={where}" if where else "",
                                      f"profile={model['profile']}" if model.get("profile") else "") if a)
    return {
        "results": {task: metrics},
        "group_subtasks": {task: []},
        "configs": {task: {"task": task, "command": command, "dataset_path": options.get("data"),
                           "options": options, "model": model}},
        "versions": {task: summary.get("schema")},
        "n-shot": {task: 0},
        "higher_is_better": {task: higher},
        "n-samples": {task: {"original": original, "effective": ok if ok is not None else original}},
        "config": {"model": "latentcheck", "model_args": model_args,
                   "batch_size": options.get("batch_size"), "device": options.get("device"),
                   "limit": options.get("limit"), "bootstrap_iters": summary.get("n_boot", options.get("n_boot")),
                   "random_seed": options.get("seed")},
        "git_hash": None,
        "date": time.time(),
        "latentcheck_version": __version__,
    }


def read_provenance(out_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``provenance.json`` (core/export.py), or None when the run has none."""
    import json

    p = Path(out_dir) / "provenance.json"
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, ValueError):
        return None


__all__ = ["RESULTS_NAME", "lmms_results", "intervals", "task_name", "read_provenance", "FILTER"]
