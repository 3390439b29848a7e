"""MME-RealWorld (full JSON + image folder) and MME-RealWorld-Lite (VLMEvalKit base64 TSV): loaders, prompts,
official Task -> Subtask -> category rating with the count of "E" predictions.

Full: ``MME_RealWorld.json`` is a JSON array of ``{Question_id, Image, Text, "Answer choices": ["(A) ...", ...],
"Ground truth", Task, Subtask, Category, "Question Type"}``; ``Image`` is relative to the image folder. The JSON
holds no images (tens of MB), so it is parsed whole; images stay paths.
Lite: ``mme_realworld_lite.tsv`` with ``index, question, multi-choice options`` (a Python-literal list of
``"(A) ..."``) or ``A``-``E`` columns, ``answer, category`` (``"Perception/Autonomous_Driving"`` = Task/Subtask),
``l2-category`` (the category), ``image`` (base64).

Other distributed layouts, all accepted by both benchmark names (the file's suffix and columns decide):

* VLMEvalKit ``MME-RealWorld.tsv`` (``MMERealWorld.load_data`` / ``generate_tsv``): ``multi-choice options`` is the
  text ``"The choices are listed below:\n(A) ...\n(B) ..."`` (not a list literal), ``A``-``E`` columns alongside;
* lmms-eval ``yifanzhang114/MME-RealWorld-Lmms-eval`` / ``MME-RealWorld-lite-lmms-eval`` parquet: ``index, question,
  multi-choice options`` (list), ``answer, category, l2-category`` and the base64 image in ``bytes``;
* the base64 JSON of ``yifanzhang114/MME-RealWorld-Base64`` (VLMEvalKit ``generate_tsv`` input): a JSON array of
  ``{index, image (base64), question, multi-choice options (list), answer, category, l2-category}``.

Task fields: ``category`` = ``"{Task}/{Subtask}"``; ``meta``: ``task``, ``subtask``, ``l2_category``,
``choices_raw`` (the ``"(X) ..."`` strings as distributed).
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import LETTERS, BadRecord, Task, validate_record
from latentcheck.bench.generic import (TsvImageRefs, check_exists, image_field, iter_parquet_rows,
                                       iter_tsv_rows, letter_columns, require, stream_tasks)
from latentcheck.bench.scoring import field, is_correct, required_field

MME_RW_INSTRUCTION = ("Select the best answer to the above multiple-choice question based on the image. "
                      "Respond with only the letter (A, B, C, D, or E) of the correct option.")
_CHOICE_PREFIX = re.compile(r"^\s*[\(（]\s*([A-Z])\s*[\)）]\s?")


def split_choices(choices: list[Any], where: str, fieldname: str) -> tuple[list[str], list[str]]:
    """``["(A) x", ...]`` -> (option texts, raw strings); a choice without its ``(X)`` prefix is a RecordError."""
    texts, raw = [], []
    for i, c in enumerate(choices):
        c = str(c)
        m = _CHOICE_PREFIX.match(c)
        if m is None or m.group(1) != LETTERS[i]:
            raise RecordError(where, fieldname, f"choice {i + 1} should start with '({LETTERS[i]})', got {c[:40]!r}")
        texts.append(c[m.end():])
        raw.append(c)
    return texts, raw


def _convert_json(raw: Any, where: str, image_root: str) -> Task:
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", "expected a JSON object")
    qid = require(raw, "Question_id", where, (str, int))
    text = require(raw, "Text", where)
    image = require(raw, "Image", where)
    gt = require(raw, "Ground truth", where)
    task_name = require(raw, "Task", where)
    subtask = require(raw, "Subtask", where)
    category = require(raw, "Category", where)
    choices = require(raw, "Answer choices", where, list)
    options, choices_raw = split_choices(choices, where, "Answer choices")
    qtype = raw.get("Question Type", raw.get("Question type"))
    meta = {"task": task_name, "subtask": subtask, "l2_category": category, "choices_raw": choices_raw}
    if qtype is not None:
        meta["question_type"] = qtype
    if raw.get("Dataset") is not None:
        meta["dataset"] = raw["Dataset"]
    return validate_record({"id": str(qid), "question": text, "image": image, "options": options, "answer": gt,
                            "category": f"{task_name}/{subtask}", "meta": meta}, where, base_dir=image_root)


def load_mme_realworld(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
                       image_root: str | os.PathLike | None = None) -> Iterator[Task | BadRecord]:
    """Stream tasks from ``MME_RealWorld.json``; ``image_root`` defaults to the JSON's folder."""
    p = check_exists(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LatentcheckError(f"{p}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise LatentcheckError(f"{p}: expected a JSON array of questions")
    root = str(Path(image_root).resolve() if image_root is not None else p.resolve().parent)
    rows = ((f"{p.name}#{i}", raw) for i, raw in enumerate(data, 1))
    first = next((r for r in data if isinstance(r, dict)), {})
    if "Question_id" not in first and "index" in first and "multi-choice options" in first:
        # the MME-RealWorld-Base64 JSON: same fields as the Lite TSV, image embedded as base64
        return stream_tasks(rows, lambda raw, where: _convert_lite(_as_dict(raw, where), where, root, None), str(p),
                            limit=limit, strict=strict)
    return stream_tasks(rows, lambda raw, where: _convert_json(raw, where, root), str(p), limit=limit, strict=strict)


def _as_dict(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", "expected a JSON object")
    return raw


def load_mme_realworld_any(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
                           image_root: str | os.PathLike | None = None) -> Iterator[Task | BadRecord]:
    """Any distributed layout (module docstring), by suffix: ``.json``, ``.tsv``, ``.parquet``; else a one-line
    error naming the file and the layouts expected."""
    p = check_exists(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        return load_mme_realworld(p, limit=limit, strict=strict, image_root=image_root)
    if suffix == ".tsv":
        return load_mme_realworld_lite(p, limit=limit, strict=strict)
    if suffix == ".parquet":
        return load_mme_realworld_parquet(p, limit=limit, strict=strict)
    raise LatentcheckError(f"{p}: not an MME-RealWorld file; expected MME_RealWorld.json (+ image folder), the "
                           "MME-RealWorld-Base64 JSON, VLMEvalKit's MME-RealWorld(-Lite).tsv or the lmms-eval parquet")


_CHOICES_HEADER = re.compile(r"^\s*(The choices are listed below:|选项如下所示:)\s*\n?")


def _choice_lines(text: str) -> list[str] | None:
    """VLMEvalKit's ``"The choices are listed below:\n(A) ...\n(B) ..."`` -> the ``(X) ...`` lines (None if the
    text is not in that layout)."""
    m = _CHOICES_HEADER.match(text)
    if m is None:
        return None
    lines = [ln.strip() for ln in text[m.end():].split("\n") if ln.strip()]
    return lines or None


def _convert_lite(raw: dict[str, Any], where: str, base_dir: str, refs: TsvImageRefs | None) -> Task:
    index = require(raw, "index", where, (str, int))
    question = require(raw, "question", where)
    answer = require(raw, "answer", where)
    cat = require(raw, "category", where)
    if "/" not in cat:
        raise RecordError(where, "category", f"expected 'Task/Subtask', got {cat!r}")
    task_name, subtask = cat.split("/", 1)
    l2 = require(raw, "l2-category", where)
    mco = raw.get("multi-choice options")
    if hasattr(mco, "tolist"):  # numpy array from a parquet reader
        mco = mco.tolist()
    if isinstance(mco, str) and _choice_lines(mco) is not None:
        options, choices_raw = split_choices(_choice_lines(mco), where, "multi-choice options")
    elif isinstance(mco, str) and mco.strip():
        try:
            parsed = ast.literal_eval(mco.strip())
        except (ValueError, SyntaxError):
            raise RecordError(where, "multi-choice options", "not a list literal") from None
        if not isinstance(parsed, list):
            raise RecordError(where, "multi-choice options", "not a list literal")
        options, choices_raw = split_choices(parsed, where, "multi-choice options")
    elif isinstance(mco, list):
        options, choices_raw = split_choices(mco, where, "multi-choice options")
    else:
        options = letter_columns(raw, max_options=5)
        if len(options) < 2:
            raise RecordError(where, "multi-choice options", "missing (and no A-E option columns)")
        choices_raw = [f"({LETTERS[i]}) {o}" for i, o in enumerate(options)]
    if refs is not None:
        image = refs.image(raw, where)
    else:  # JSON / parquet: the image is the cell itself (lmms-eval: ``bytes``)
        key = "image" if raw.get("image") is not None else "bytes"
        image = image_field(raw.get(key), where, key)
    if image is None:
        raise RecordError(where, "image", "missing or empty")
    meta = {"task": task_name, "subtask": subtask, "l2_category": l2, "choices_raw": choices_raw,
            "index": str(index)}
    return validate_record({"id": str(index), "question": question, "image": image, "options": options,
                            "answer": str(answer).strip(), "category": cat, "meta": meta}, where, base_dir=base_dir)


def load_mme_realworld_lite(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
                            ) -> Iterator[Task | BadRecord]:
    """Stream tasks from ``mme_realworld_lite.tsv`` (base64 images stay undecoded)."""
    p = check_exists(path)
    base_dir = str(p.resolve().parent)
    refs = TsvImageRefs(p)
    return stream_tasks(iter_tsv_rows(p), lambda raw, where: _convert_lite(raw, where, base_dir, refs), str(p),
                        limit=limit, strict=strict)


def load_mme_realworld_parquet(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
                               ) -> Iterator[Task | BadRecord]:
    """Stream tasks from the lmms-eval parquet (``bytes`` = base64 image)."""
    p = check_exists(path)
    base_dir = str(p.resolve().parent)
    return stream_tasks(iter_parquet_rows(p), lambda raw, where: _convert_lite(raw, where, base_dir, None), str(p),
                        limit=limit, strict=strict)


# ---------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------
def _choices(task: Task) -> list[str]:
    return task.meta.get("choices_raw") or [f"({LETTERS[i]}) {o}" for i, o in enumerate(task.options or [])]


def prompt_official(task: Task) -> str:
    """README prompt (identical to VLMEvalKit ``MMERealWorld.build_prompt``), incl. the space before the newline."""
    return (f"{task.question} The choices are listed below:\n" + "\n".join(_choices(task)) + "\n"
            + MME_RW_INSTRUCTION + " \nThe best answer is:")


def prompt_official_script(task: Task) -> str:
    """The official inference script ``evaluation/model_vqa_mme_real_world.py`` (``below: \\n`` variant)."""
    return (f"{task.question} The choices are listed below: \n" + "".join(c + "\n" for c in _choices(task))
            + MME_RW_INSTRUCTION + "\nThe best answer is:")


def prompt_lmms_eval(task: Task) -> str:
    """lmms-eval ``mme_realworld_doc_to_text`` (no space before the newline, trailing space after the colon)."""
    return (f"{task.question} The choices are listed below:\n" + "\n".join(_choices(task)) + "\n"
            + MME_RW_INSTRUCTION + "\nThe best answer is: ")


# ---------------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------------
def rating_category(l2_category: str) -> str:
    """Official category key: lower-cased; any ``attribute`` category merged into ``{first part}/attribute``."""
    c = str(l2_category).lower()
    if "attribute" in c:
        c = c.split("/")[0] + "/attribute"
    return c


def _acc(k: int, n: int) -> float:
    return k / n if n else 0.0


def score_mme_realworld(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Official rating (``eval_your_results.py`` / VLMEvalKit ``get_dimension_rating``).

    ``tasks[Task]["subtasks"][Subtask]["categories"][category]`` = ``{n, correct, accuracy, e_count}``; subtask and
    task accuracies pool their samples; ``accuracy`` = overall micro; ``e_count`` = predictions equal to "E".
    """
    tree: dict[str, dict[str, dict[str, list[int]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(
        lambda: [0, 0, 0])))
    for r in results:
        t = str(required_field(r, "task"))
        s = str(required_field(r, "subtask"))
        c = rating_category(required_field(r, "l2_category"))
        cell = tree[t][s][c]
        cell[0] += int(is_correct(r))
        cell[1] += 1
        cell[2] += int(field(r, "pred") == "E")
    out_tasks: dict[str, Any] = {}
    k_all = n_all = e_all = 0
    for t, subtasks in tree.items():
        k_t = n_t = e_t = 0
        out_sub: dict[str, Any] = {}
        for s, cats in subtasks.items():
            cat_out = {c: {"n": n, "correct": k, "accuracy": _acc(k, n), "e_count": e} for c, (k, n, e) in cats.items()}
            k_s = sum(v[0] for v in cats.values())
            n_s = sum(v[1] for v in cats.values())
            e_s = sum(v[2] for v in cats.values())
            out_sub[s] = {"n": n_s, "correct": k_s, "accuracy": _acc(k_s, n_s), "e_count": e_s,
                          "categories": cat_out}
            k_t, n_t, e_t = k_t + k_s, n_t + n_s, e_t + e_s
        out_tasks[t] = {"n": n_t, "correct": k_t, "accuracy": _acc(k_t, n_t), "e_count": e_t, "subtasks": out_sub}
        k_all, n_all, e_all = k_all + k_t, n_all + n_t, e_all + e_t
    return {"n": n_all, "correct": k_all, "accuracy": k_all / n_all if n_all else None, "e_count": e_all,
            "tasks": out_tasks}


__all__ = ["load_mme_realworld", "load_mme_realworld_lite", "load_mme_realworld_parquet", "load_mme_realworld_any",
           "prompt_official", "prompt_official_script",
           "prompt_lmms_eval", "score_mme_realworld", "rating_category", "split_choices", "MME_RW_INSTRUCTION"]
