"""`latentcheck bench compare A B`: paired per-sample comparison of two benchmark runs (matched by sample id).

Inputs: a run folder (its ``samples.jsonl``), a latentcheck results file (provenance line first), or a plain JSONL
with one ``{"id" (or "key"), "correct", "category"?}`` object per line (e.g. converted from another harness).
A condition other than ``baseline`` is read from the record's ``interventions[<label>]``.

Statistics (``core.summaries.AccuracyEffect``, A = reference = ``base``, B = compared = ``cond``): accuracies with
Wilson intervals, ``delta`` = acc(B) - acc(A) with Tango's score interval (``delta.p_value`` = exact McNemar), ``n01``
= A wrong & B right and ``n10`` = A right & B wrong, plus ``both_right`` / ``both_wrong``; overall and per category
(category from A, else B).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.records import read_results
from latentcheck.core.summaries import AccuracyEffect
from latentcheck.core.tasks import json_object


def resolve_samples_path(path: str | Path) -> Path:
    """A run folder -> its ``samples.jsonl``; a file -> itself."""
    p = Path(path)
    if p.is_dir():
        p = p / "samples.jsonl"
    if not p.is_file():
        raise LatentcheckError(f"no samples file at {p} (give a run folder or a samples.jsonl)")
    return p


def _first_object(p: Path) -> Any:
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    return None


def load_samples(path: str | Path) -> tuple[dict | None, list[dict]]:
    """(provenance or None, sample records) of a run folder, results file or plain JSONL (error records skipped)."""
    p = resolve_samples_path(path)
    first = _first_object(p)
    if isinstance(first, dict) and first.get("type") == "provenance":
        prov, records = read_results(p)
        return prov, [r for r in records if r.get("type", "sample") == "sample"]
    records = []
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = json_object(line, f"{p.name}:{lineno}")
            if obj.get("type", "sample") == "sample":
                obj.setdefault("_where", f"{p.name}:{lineno}")
                records.append(obj)
    if not records:
        raise LatentcheckError(f"{p} holds no sample records")
    return None, records


def outcomes(records: list[dict], condition: str = "baseline", source: str = "") -> dict[str, dict[str, Any]]:
    """``{id: {"correct": 0/1, "category": str|None, "pred": ...}}`` for one condition (records without it are
    skipped). Ids must be unique; ``correct`` must be a boolean or 0/1."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        where = r.get("_where") or f"{source} id={r.get('id', r.get('key'))}"
        rid = r.get("id", r.get("key"))
        if rid is None:
            raise RecordError(where, "id", "missing (needed to pair samples)")
        rid = str(rid)
        if condition == "baseline":
            o = r
        else:
            o = (r.get("interventions") or {}).get(condition)
            if o is None or "correct" not in o:
                continue
        c = o.get("correct")
        if c not in (True, False, 0, 1):
            raise RecordError(where, "correct" if condition == "baseline" else f"interventions.{condition}.correct",
                              f"must be true/false or 0/1, got {c!r}")
        if rid in out:
            raise RecordError(where, "id", f"duplicate id {rid!r}")
        out[rid] = {"correct": int(c), "category": r.get("category"), "pred": o.get("pred")}
    return out


def _effect(a: list[int], b: list[int], seed: int, n_boot: int) -> dict[str, Any]:
    """The AccuracyEffect of B vs A (``base`` = A, ``cond`` = B) plus the concordant counts."""
    return {**AccuracyEffect.paired(a, b, seed=seed, n_boot=n_boot).to_dict(),
            "both_right": int(sum(x == 1 and y == 1 for x, y in zip(a, b))),
            "both_wrong": int(sum(x == 0 and y == 0 for x, y in zip(a, b)))}


def compare_runs(a: str | Path, b: str | Path, condition_a: str = "baseline", condition_b: str = "baseline",
                 seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Paired comparison of run B against run A (see module docstring); returns a JSON-able dict."""
    _, ra = load_samples(a)
    _, rb = load_samples(b)
    oa = outcomes(ra, condition_a, str(a))
    ob = outcomes(rb, condition_b, str(b))
    ids = [i for i in oa if i in ob]
    if not ids:
        raise LatentcheckError(f"no sample id occurs in both runs ({len(oa)} in A, {len(ob)} in B)")
    ca = [oa[i]["correct"] for i in ids]
    cb = [ob[i]["correct"] for i in ids]
    cats: dict[str, list[str]] = {}
    for i in ids:
        cat = oa[i]["category"] if oa[i]["category"] is not None else ob[i]["category"]
        if cat is not None:
            cats.setdefault(str(cat), []).append(i)
    per_cat = {c: _effect([oa[i]["correct"] for i in v], [ob[i]["correct"] for i in v], seed, n_boot)
               for c, v in cats.items()}
    return {"a": str(a), "b": str(b), "condition_a": condition_a, "condition_b": condition_b,
            "n_a": len(oa), "n_b": len(ob), "n_paired": len(ids),
            "only_a": sorted(set(oa) - set(ob)), "only_b": sorted(set(ob) - set(oa)),
            "overall": _effect(ca, cb, seed, n_boot), "per_category": per_cat,
            "a_wrong_b_right": [i for i in ids if oa[i]["correct"] == 0 and ob[i]["correct"] == 1],
            "a_right_b_wrong": [i for i in ids if oa[i]["correct"] == 1 and ob[i]["correct"] == 0],
            "answer_changed": int(sum(oa[i]["pred"] != ob[i]["pred"] for i in ids)),
            "n_boot": n_boot, "seed": seed}


__all__ = ["compare_runs", "load_samples", "outcomes", "resolve_samples_path"]
