"""HR-Bench 4K / 8K (DreamMr/HR-Bench): TSV or parquet loader, prompts, cycle-averaged scoring.

Columns: ``index, question, answer, category, A, B, C, D, cycle_category, image`` (base64). ``category`` is
``single`` (FSP) or ``cross`` (FCP). The TSVs are 1.93 / 4.63 GB: rows are streamed one at a time and the base64
image stays undecoded (a data URI in ``Task.image``) until ``Task.load_image``. Known MD5s (of the TSVs):
4K ``f6b041b03d49543494b8a56d2e35be65``, 8K ``274c9c7f89329b804a4723178a00219c``.

Scoring = cycle averaging (VLMEvalKit ``report_acc_hrbench`` / lmms-eval ``hrbench_aggregate_results``): group by
``cycle_category``, accuracy per group for ``all`` and each category, mean over groups. Not CircularEval.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Iterable, Iterator

from latentcheck.core.errors import RecordError
from latentcheck.core.tasks import LETTERS, BadRecord, Task, validate_record
from latentcheck.bench.generic import (TsvImageRefs, check_exists, image_field, iter_parquet_rows,
                                                 iter_tsv_rows, letter_columns, require, stream_tasks,
                                                 vlmevalkit_mcq_prompt)
from latentcheck.bench.scoring import accuracy, is_correct, required_field

HRBENCH_MD5 = {"hrbench4k": "f6b041b03d49543494b8a56d2e35be65", "hrbench8k": "274c9c7f89329b804a4723178a00219c"}
HRBENCH_COLUMNS = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]


def _convert(raw: dict[str, Any], where: str, base_dir: str | None, refs: TsvImageRefs | None) -> Task:
    index = require(raw, "index", where, (str, int))
    question = require(raw, "question", where)
    answer = require(raw, "answer", where)
    cycle = require(raw, "cycle_category", where, (str, int))
    options = letter_columns(raw, max_options=4)
    if len(options) < 2:
        raise RecordError(where, "A", "needs option columns A, B (C, D)")
    image = refs.image(raw, where) if refs is not None else image_field(raw.get("image"), where, "image")
    if image is None and raw.get("image_path"):
        image = str(raw["image_path"])
    if image is None:
        raise RecordError(where, "image", "missing or empty")
    category = raw.get("category")
    return validate_record({"id": str(index), "question": question, "image": image, "options": options,
                            "answer": str(answer).strip(), "category": str(category) if category else None,
                            "meta": {"cycle_category": str(cycle), "index": str(index)}},
                           where, base_dir=base_dir)


def load_hrbench(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
                 ) -> Iterator[Task | BadRecord]:
    """Stream HR-Bench rows from ``hr_bench_{4k,8k}.tsv`` or ``.parquet``."""
    p = check_exists(path)
    is_parquet = p.suffix == ".parquet"
    rows = iter_parquet_rows(p, HRBENCH_COLUMNS + ["image_path"]) if is_parquet else iter_tsv_rows(p)
    refs = None if is_parquet else TsvImageRefs(p)
    base_dir = str(p.resolve().parent)
    return stream_tasks(rows, lambda raw, where: _convert(raw, where, base_dir, refs), str(p), limit=limit,
                        strict=strict)


def prompt_official(task: Task) -> str:
    """DreamMr VLMEvalKit fork: generic MCQ prompt (``Question: ...\\nOptions:\\nA. ...``)."""
    return vlmevalkit_mcq_prompt(task.question, task.options)


def prompt_lmms_eval(task: Task) -> str:
    """lmms-eval ``hrbench_doc_to_text``: ``{question}\\nA. ...\\nD. ...\\nAnswer the option letter directly.``"""
    opts = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(task.options or []))
    return f"{task.question.strip()}\n{opts}Answer the option letter directly."


def cycle_group_of(result: dict[str, Any]) -> str:
    """The cycle group of a result (the official cycle average is the mean over these groups)."""
    return str(required_field(result, "cycle_category"))


def score_hrbench(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Cycle-averaged accuracy exactly as VLMEvalKit ``report_acc_hrbench`` (and the DreamMr fork) computes it.

    ``per_cycle[g]`` = accuracy in cycle group ``g`` for ``all`` and each category; ``average[t]`` = the sum of
    ``per_cycle[g][t]`` over the groups that contain ``t`` divided by the number of ALL groups (a category absent from
    a group thus weighs as 0 there, as in VLMEvalKit); ``accuracy`` = ``average["all"]``; ``plain_accuracy`` = micro
    accuracy over rows. On a partial run (groups of unequal size, or a category missing from a group) the number is
    not comparable to the full-set one: ``not_comparable`` says why.
    """
    rs = list(results)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rs:
        groups[cycle_group_of(r)].append(r)
    per_cycle: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    for g, grs in groups.items():
        scores: dict[str, list[bool]] = defaultdict(list)
        for r in grs:
            scores["all"].append(is_correct(r))
            if r.get("category") is not None:
                scores[str(r["category"])].append(is_correct(r))
        per_cycle[g] = {t: sum(v) / len(v) for t, v in scores.items()}
        counts[g] = {t: len(v) for t, v in scores.items()}
    types = sorted({t for d in per_cycle.values() for t in d}, key=lambda t: (t != "all", t))
    n_groups = len(per_cycle)
    average = {t: sum(d[t] for d in per_cycle.values() if t in d) / n_groups for t in types}
    reasons = []
    if len({tuple(sorted(c.items())) for c in counts.values()}) > 1:
        reasons.append("HR-Bench partial run: cycle groups differ in size or category mix "
                       f"({ {g: c for g, c in sorted(counts.items())} }); the cycle average is not comparable to the "
                       "full 800-row number")
    plain = accuracy(rs)
    return {"n": len(rs), "accuracy": average.get("all"), "average": average, "per_cycle": per_cycle,
            "n_per_cycle": {g: len(v) for g, v in groups.items()}, "plain_accuracy": plain["accuracy"],
            "not_comparable": reasons}


__all__ = ["load_hrbench", "prompt_official", "prompt_lmms_eval", "score_hrbench", "cycle_group_of", "HRBENCH_MD5"]
