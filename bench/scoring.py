"""Scoring from per-sample result dicts, shared by the benchmark modules.

A per-sample result is ``{"id", "category", "pred", "gold", "correct", "meta": {...}}`` (build it with
:func:`result_record`). Scorers look up benchmark fields (``cycle_category``, ``task``, ``sub_task`` ...) in
``meta`` first, then at the top level. Accuracies are fractions in [0, 1]; a missing or None ``correct`` counts as
wrong.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.extract import normalize_text
from latentcheck.core.tasks import Task


def field(result: dict[str, Any], key: str, default: Any = None) -> Any:
    """``result["meta"][key]``, else ``result[key]``, else ``default``."""
    meta = result.get("meta") or {}
    if key in meta and meta[key] is not None:
        return meta[key]
    return result.get(key, default)


def required_field(result: dict[str, Any], key: str) -> Any:
    value = field(result, key)
    if value is None:
        raise LatentcheckError(f"result {result.get('id', '?')!r} has no {key!r} (needed for scoring); "
                               "build results with Benchmark.record()")
    return value


def is_correct(result: dict[str, Any]) -> bool:
    return bool(result.get("correct"))


def accuracy(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``{"n", "correct", "accuracy"}`` (accuracy None when n = 0)."""
    rs = list(results)
    k = sum(is_correct(r) for r in rs)
    return {"n": len(rs), "correct": k, "accuracy": k / len(rs) if rs else None}


def group_by(results: Iterable[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    """Group results by a field (meta first); insertion order preserved."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[required_field(r, key)].append(r)
    return dict(groups)


def accuracy_by(results: Iterable[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {g: accuracy(rs) for g, rs in group_by(results, key).items()}


def score_accuracy(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Overall (micro) accuracy plus accuracy per ``category`` (results without a category are left out there)."""
    rs = list(results)
    out = accuracy(rs)
    with_cat = [r for r in rs if field(r, "category") is not None]
    out["per_category"] = accuracy_by(with_cat, "category") if with_cat else {}
    return out


def default_is_correct(task: Task, pred: str | None) -> bool:
    """MC: the predicted letter equals the gold letter. Open: normalised texts are equal."""
    if pred is None or task.answer is None:
        return False
    if task.options is not None:
        gold = task.answer_letter
        return gold is not None and pred.strip().upper() == gold
    return normalize_text(pred) == normalize_text(task.answer)


def result_record(task: Task, pred: str | None, correct: bool, meta_keys: Iterable[str] = (),
                  **extra: Any) -> dict[str, Any]:
    """The per-sample dict the scorers read; only the named (small) meta fields are copied, never images."""
    gold = task.answer_letter if task.options is not None else task.answer
    meta = {k: task.meta[k] for k in meta_keys if k in task.meta}
    return {"id": task.id, "category": task.category, "pred": pred, "gold": gold, "correct": bool(correct),
            "meta": meta, **extra}


__all__ = ["field", "required_field", "accuracy", "group_by", "accuracy_by", "score_accuracy", "default_is_correct",
           "result_record", "is_correct"]
