"""BLINK (BLINK-Benchmark/BLINK): parquet loader per sub-task, prompts, per-subtask + macro scoring.

One parquet per sub-task and split (HF layout ``{Subtask}/{split}-00000-of-00001.parquet``) with ``idx``,
``question``, ``sub_task``, ``image_1`` ... ``image_4`` (``{"bytes", "path"}`` structs or None), ``choices`` (list),
``answer`` (``"(A)"``; hidden in ``test``), ``prompt`` (the full model text), ``explanation``.

Multi-image: ``Task.image`` holds ``image_1``; ``meta["images"]`` holds ALL present images in order (``image_1``
first, the same string object, so no extra memory), each a base64 data URI that ``decode_image`` reads;
``meta["n_images"]`` counts them. ``category`` = ``sub_task``.

Official total = unweighted mean of the per-subtask accuracies (``eval/evaluate.py``); the official matcher is
GPT-3.5 (not used here: rule-based extraction instead).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import LETTERS, BadRecord, Task, validate_record
from latentcheck.bench.generic import (TsvImageRefs, check_exists, image_field, image_list_cell,
                                       iter_parquet_rows, iter_tsv_rows, letter_columns, require,
                                       stream_tasks, vlmevalkit_mcq_prompt)
from latentcheck.bench.scoring import accuracy, field

BLINK_SUBTASKS = ("Art_Style", "Counting", "Forensic_Detection", "Functional_Correspondence", "IQ_Test", "Jigsaw",
                  "Multi-view_Reasoning", "Object_Localization", "Relative_Depth", "Relative_Reflectance",
                  "Semantic_Correspondence", "Spatial_Relation", "Visual_Correspondence", "Visual_Similarity")
PAPER_SUBTASKS = ("Jigsaw", "Multi-view_Reasoning")
BLINK_COLUMNS = ["idx", "question", "sub_task", "image_1", "image_2", "image_3", "image_4", "choices", "answer",
                 "prompt"]


def _convert(raw: dict[str, Any], where: str) -> Task:
    idx = require(raw, "idx", where, (str, int))
    question = require(raw, "question", where)
    sub_task = require(raw, "sub_task", where)
    prompt = require(raw, "prompt", where)
    choices = raw.get("choices")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise RecordError(where, "choices", "must be a list of at least 2 option texts")
    images = []
    for k in range(1, 5):
        img = image_field(raw.get(f"image_{k}"), where, f"image_{k}")
        if img is not None:
            images.append(img)
    if not images:
        raise RecordError(where, "image_1", "no image in image_1 .. image_4")
    answer = raw.get("answer")
    if isinstance(answer, str) and not answer.strip("() ").strip():
        answer = None
    if isinstance(answer, str) and answer.strip().lower() in {"hidden", "none", "?"}:
        answer = None
    meta = {"prompt": prompt, "sub_task": sub_task, "images": images, "n_images": len(images)}
    return validate_record({"id": str(idx), "question": question, "image": images[0],
                            "options": [str(c) for c in choices], "answer": answer, "category": sub_task,
                            "meta": meta}, where)


def _convert_tsv(raw: dict[str, Any], where: str, refs: TsvImageRefs) -> Task:
    """VLMEvalKit ``BLINK.tsv``: ``index, question, A.., answer`` (letter), ``category`` (sub-task), ``image`` (a
    base64 string, or a list literal of them for multi-image rows). The dataset's ``prompt`` field is not in the TSV:
    the official variant rebuilds it as question + "Select from the following choices." + ``(A) ...`` lines."""
    index = require(raw, "index", where, (str, int))
    question = require(raw, "question", where)
    options = letter_columns(raw)
    if len(options) < 2:
        raise RecordError(where, "A", "needs option columns A, B (...)")
    images = image_list_cell(raw.get("image"), where)
    if images is None:
        one = refs.image(raw, where)
        images = [one] if one is not None else []
    if not images:
        raise RecordError(where, "image", "missing or empty")
    sub_task = str(raw.get("category") or raw.get("sub_task") or "").strip().replace(" ", "_") or None
    answer = raw.get("answer")
    answer = str(answer).strip("() \t") if answer is not None and str(answer).strip("() \t") else None
    prompt = question if "(A)" in question else (
        f"{question}\nSelect from the following choices.\n" + "\n".join(f"({LETTERS[i]}) {o}"
                                                                        for i, o in enumerate(options)))
    meta = {"prompt": prompt, "sub_task": sub_task, "images": images, "n_images": len(images), "index": str(index)}
    return validate_record({"id": str(index), "question": question, "image": images[0], "options": options,
                            "answer": answer, "category": sub_task, "meta": meta}, where)


def _parquet_files(root: Path, subtasks: tuple[str, ...], split: str) -> list[Path]:
    files = []
    for st in subtasks:
        if st not in BLINK_SUBTASKS:
            raise LatentcheckError(f"unknown BLINK sub-task {st!r}; known: {', '.join(BLINK_SUBTASKS)}")
        found = sorted((root / st).glob(f"{split}-*.parquet")) or sorted((root / st).glob(f"{split}*.parquet"))
        if not found:
            raise LatentcheckError(f"BLINK: no {split} parquet for sub-task {st} under {root / st}")
        files.extend(found)
    return files


def load_blink(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
               subtasks: Iterable[str] | None = None, split: str = "val") -> Iterator[Task | BadRecord]:
    """Stream BLINK tasks from one parquet file or the dataset folder (``{Subtask}/{split}-*.parquet``).

    ``subtasks`` selects sub-tasks (default all 14; ``PAPER_SUBTASKS`` = Jigsaw + Multi-view); with a single file
    it filters rows by ``sub_task``.
    """
    p = check_exists(path)
    wanted = tuple(subtasks) if subtasks is not None else None
    if p.is_file() and p.suffix.lower() == ".tsv":
        refs = TsvImageRefs(p)

        def tsv_rows():
            for where, raw in iter_tsv_rows(p):
                st = str(raw.get("category") or "").strip().replace(" ", "_")
                if wanted is None or st in wanted:
                    yield where, raw
        return stream_tasks(tsv_rows(), lambda raw, where: _convert_tsv(raw, where, refs), str(p), limit=limit,
                            strict=strict)
    if p.is_file() and p.suffix.lower() != ".parquet":
        raise LatentcheckError(f"{p}: not a BLINK file; expected the BLINK-Benchmark/BLINK folder "
                               "({Subtask}/val-*.parquet), one of its parquets, or VLMEvalKit's BLINK.tsv")
    if p.is_file():
        files = [p]
    else:
        files = _parquet_files(p, wanted or BLINK_SUBTASKS, split)

    def rows():
        for f in files:
            for where, raw in iter_parquet_rows(f, BLINK_COLUMNS):
                if wanted is not None and p.is_file() and raw.get("sub_task") not in wanted:
                    continue
                yield where, raw
    return stream_tasks(rows(), _convert, str(p), limit=limit, strict=strict)


def prompt_official(task: Task) -> str:
    """The dataset's ``prompt`` field, verbatim (as in the official ``query_model.py``)."""
    return task.meta["prompt"]


def prompt_lmms_eval(task: Task) -> str:
    """lmms-eval ``blink_doc_to_text``: "Note: You only need to respond with A, B ..." + ``prompt``."""
    letters = ", ".join(LETTERS[: len(task.options or [])])
    return (f"Note: You only need to respond with {letters} without providing any additional information.\n"
            + task.meta["prompt"])


def prompt_vlmevalkit(task: Task) -> str:
    """VLMEvalKit generic MCQ prompt over ``question`` and ``choices``."""
    return vlmevalkit_mcq_prompt(task.question, task.options)


def subtask_of(result: dict[str, Any]) -> str:
    """The BLINK sub-task a result belongs to (its group in the official Total)."""
    st = field(result, "sub_task") or result.get("category")
    if st is None:
        raise LatentcheckError(f"result {result.get('id', '?')!r} has no sub_task / category (needed for scoring)")
    return str(st)


def score_blink(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per sub-task; ``accuracy`` = unweighted mean over the sub-tasks present (official Total);
    ``micro_accuracy`` = pooled accuracy (what lmms-eval reports)."""
    rs = list(results)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rs:
        groups.setdefault(subtask_of(r), []).append(r)
    per = {st: accuracy(v) for st, v in groups.items()}
    macro = sum(v["accuracy"] for v in per.values()) / len(per) if per else None
    missing = [st for st in BLINK_SUBTASKS if st not in per]
    reasons = [f"BLINK Total over {len(per)} of {len(BLINK_SUBTASKS)} sub-tasks (the per-sub-task accuracies are "
               "comparable; the official Total averages all 14)"] if missing and per else []
    return {"n": len(rs), "accuracy": macro, "micro_accuracy": accuracy(rs)["accuracy"], "per_subtask": per,
            "not_comparable": reasons}


__all__ = ["load_blink", "prompt_official", "prompt_lmms_eval", "prompt_vlmevalkit", "score_blink", "subtask_of",
           "BLINK_SUBTASKS", "PAPER_SUBTASKS"]
