"""V* Bench (craigwu/vstar_bench): loader, prompts, scoring.

Distributed as a folder with ``test_questions.jsonl`` (``image``, ``text`` = question + ``(A) ...`` lines +
instruction, ``category``, ``question_id``, ``label``) and per-sample image + same-stem JSON pairs under
``direct_attributes/`` and ``relative_position/`` (``target_object``, ``bbox`` = list of ``[x, y, w, h]``,
``question``, ``options`` with the FIRST option correct). With the jsonl, each question is joined to its JSON (by
image path) for the bbox; without it, tasks are built from the pairs (gold always "A", official order).

Task: ``question`` = the plain question (no options), ``options`` in prompt order, ``answer`` = letter,
``category`` = folder, ``bbox`` = union of the target boxes (``meta["bboxes"]`` keeps each box,
``meta["target_object"]`` the names), ``meta["text"]`` = the distributed prompt text.

Official scoring is likelihood ranking of the option texts after the plain question (``likelihood`` variant, done
by the runner); generation protocols use the other variants. Reported: accuracy per category and overall (micro).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import LETTERS, BadRecord, Task, json_object, validate_record
from latentcheck.bench.generic import (LLAVA_MC_SUFFIX, TsvImageRefs, check_exists, iter_tsv_rows,
                                       letter_columns, require, stream_tasks, vlmevalkit_mcq_prompt)
from latentcheck.bench.scoring import score_accuracy

VSTAR_CATEGORIES = ("direct_attributes", "relative_position")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s?(.*?)\s*$", re.MULTILINE)
_LMMS_OPTIONS = re.compile(r"\([A-D]\)\s*([^()]+?)(?=\s*\([A-D]\)|$)")


def parse_vstar_text(text: str) -> tuple[str, list[str]]:
    """Split a ``test_questions.jsonl`` text into the plain question and the option texts (``(A) ...`` lines)."""
    options: list[str] = []
    first = None
    for m in _OPTION_LINE.finditer(text):
        if m.group(1) != LETTERS[len(options)]:
            break
        if first is None:
            first = m.start()
        options.append(m.group(2))
    if first is None:
        return text.strip(), []
    return text[:first].strip(), options


def synthesize_text(question: str, options: list[str]) -> str:
    """The ``test_questions.jsonl`` text layout (LLaVA style) for a question built from a JSON pair."""
    lines = "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))
    return f"{question}\n{lines}\n{LLAVA_MC_SUFFIX}"


def _boxes(value: Any, where: str) -> list[list[float]]:
    """``bbox`` as a list of ``[x, y, w, h]`` boxes (a single box is accepted too)."""
    if value is None:
        return []
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        value = [value]
    if not isinstance(value, list):
        raise RecordError(where, "bbox", "must be a list of [x, y, w, h] boxes")
    boxes = []
    for b in value:
        if (not isinstance(b, list) or len(b) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
            raise RecordError(where, "bbox", f"each box must be [x, y, w, h] (4 numbers), got {b!r}")
        if b[2] <= 0 or b[3] <= 0:
            raise RecordError(where, "bbox", f"box width and height must be positive, got {b!r}")
        boxes.append([float(v) for v in b])
    return boxes


def union_box(boxes: list[list[float]]) -> list[float] | None:
    """Smallest ``[x, y, w, h]`` covering all boxes (None for no boxes)."""
    if not boxes:
        return None
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    return [x0, y0, x1 - x0, y1 - y0]


def _read_annotation(path: Path, where: str) -> dict[str, Any]:
    try:
        ann = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(where, "<annotation>", f"malformed JSON in {path.name} ({e.msg})") from None
    if not isinstance(ann, dict):
        raise RecordError(where, "<annotation>", f"{path.name} must hold a JSON object")
    return ann


def _annotation_meta(ann: dict[str, Any] | None, where: str) -> tuple[dict[str, Any], list[float] | None]:
    if ann is None:
        return {}, None
    boxes = _boxes(ann.get("bbox"), where)
    meta: dict[str, Any] = {"bboxes": boxes}
    if ann.get("target_object") is not None:
        meta["target_object"] = ann["target_object"]
    if isinstance(ann.get("question"), str):
        meta["question_plain"] = ann["question"]
    return meta, union_box(boxes)


def _from_question_line(line: str, where: str, root: Path) -> Task:
    raw = json_object(line, where)
    qid = require(raw, "question_id", where, (str, int))
    text = require(raw, "text", where)
    image = require(raw, "image", where)
    label = require(raw, "label", where)
    category = raw.get("category") or (Path(image).parts[0] if len(Path(image).parts) > 1 else None)
    question, options = parse_vstar_text(text)
    if len(options) < 2:
        raise RecordError(where, "text", "no '(A) ...' / '(B) ...' option lines found")
    ann_path = (root / image).with_suffix(".json")
    ann = _read_annotation(ann_path, where) if ann_path.is_file() else None
    meta, bbox = _annotation_meta(ann, where)
    meta.update({"text": text, "source": "test_questions.jsonl"})
    return validate_record({"id": qid, "question": meta.get("question_plain", question), "image": image,
                            "options": options, "answer": label, "category": category, "bbox": bbox,
                            "meta": meta}, where, base_dir=str(root))


def _from_pair(image_rel: str, where: str, root: Path) -> Task:
    ann_path = (root / image_rel).with_suffix(".json")
    if not ann_path.is_file():
        raise RecordError(where, "<annotation>", f"missing annotation file {ann_path.name}")
    ann = _read_annotation(ann_path, where)
    question = require(ann, "question", where)
    options = require(ann, "options", where, list)
    meta, bbox = _annotation_meta(ann, where)
    meta.update({"text": synthesize_text(question, [str(o) for o in options]), "source": "pairs"})
    category = Path(image_rel).parts[0]
    return validate_record({"id": f"{category}/{Path(image_rel).stem}", "question": question, "image": image_rel,
                            "options": options, "answer": "A", "category": category, "bbox": bbox,
                            "meta": meta}, where, base_dir=str(root))


def _from_tsv_row(raw: dict[str, Any], where: str, base_dir: str, refs: TsvImageRefs) -> Task:
    index = require(raw, "index", where, (str, int))
    question = require(raw, "question", where)
    answer = require(raw, "answer", where)
    options = letter_columns(raw, max_options=4)
    if len(options) < 2:
        raise RecordError(where, "A", "needs option columns A, B (C, D)")
    image = refs.image(raw, where)
    if image is None:
        raise RecordError(where, "image", "missing or empty")
    category = raw.get("category") or None
    meta = {"text": synthesize_text(question, options), "source": "VStarBench.tsv", "index": str(index)}
    return validate_record({"id": str(index), "question": question, "image": image, "options": options,
                            "answer": str(answer).strip(), "category": category, "meta": meta}, where,
                           base_dir=base_dir)


def load_vstar(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
               categories: tuple[str, ...] = VSTAR_CATEGORIES) -> Iterator[Task | BadRecord]:
    """Stream V* tasks from the benchmark folder (or its ``test_questions.jsonl``; images stay file paths) or from
    VLMEvalKit's ``VStarBench.tsv`` (``index, question, A..D, answer, category, image`` base64)."""
    p = check_exists(path)
    if p.is_file() and p.suffix.lower() == ".tsv":
        refs = TsvImageRefs(p)
        base = str(p.resolve().parent)
        return stream_tasks(iter_tsv_rows(p), lambda raw, where: _from_tsv_row(raw, where, base, refs), str(p),
                            limit=limit, strict=strict)
    if p.is_file() and p.suffix.lower() != ".jsonl":
        raise LatentcheckError(f"{p}: not a V* file; expected the craigwu/vstar_bench folder, its "
                               "test_questions.jsonl, or VLMEvalKit's VStarBench.tsv")
    if p.is_file():
        jsonl, root = p, p.parent
    else:
        root = p
        jsonl = root / "test_questions.jsonl" if (root / "test_questions.jsonl").is_file() else None
    if jsonl is not None:
        def line_rows():
            with open(jsonl, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.strip():
                        yield f"{jsonl.name}:{lineno}", line
        return stream_tasks(line_rows(), lambda line, where: _from_question_line(line, where, root), str(jsonl),
                            limit=limit, strict=strict)

    def pair_rows():
        found = False
        for cat in categories:
            folder = root / cat
            if not folder.is_dir():
                continue
            found = True
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    rel = f"{cat}/{f.name}"
                    yield rel, rel
        if not found:
            raise LatentcheckError(f"{root}: no test_questions.jsonl and none of the folders {', '.join(categories)}")
    return stream_tasks(pair_rows(), lambda rel, where: _from_pair(rel, where, root), str(root),
                        limit=limit, strict=strict)


# ---------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------
def vstar_text(task: Task) -> str:
    """The distributed prompt text (``test_questions.jsonl`` ``text``; synthesised in the same layout for pairs)."""
    return task.meta.get("text") or synthesize_text(task.question, task.options or [])


def prompt_official(task: Task) -> str:
    """Generation with the distributed text: question, ``(A) ...`` lines, "Answer with the option's letter ..."."""
    return vstar_text(task)


def prompt_likelihood(task: Task) -> str:
    """Official likelihood ranking: the plain annotation question, no options (options are scored as replies)."""
    return task.meta.get("question_plain") or task.question


def prompt_lmms_eval(task: Task) -> str:
    """lmms-eval ``vstar_doc_to_text``: options re-parsed from ``text`` by its regex, rendered ``A. opt``, plus the
    post_prompt. As in lmms-eval, the instruction already in ``text`` stays attached to the last option, so it
    appears twice."""
    question = vstar_text(task)
    matches = _LMMS_OPTIONS.findall(question)
    if matches:
        question_text = question.split("(A)")[0].strip()
        formatted = [f"{'ABCD'[i]}. {o.strip()}" for i, o in enumerate(matches) if i < 4]
        question = f"{question_text}\n" + "\n".join(formatted)
    return f"{question}\n{LLAVA_MC_SUFFIX}"


def prompt_vlmevalkit(task: Task) -> str:
    """VLMEvalKit ``VStarBench`` (generic MCQ prompt)."""
    return vlmevalkit_mcq_prompt(task.question, task.options)


def prompt_lvr(task: Task) -> str:
    """LVR evaluation: the dataset text plus "\\nAnswer with the option's letter ..." (duplicated instruction)."""
    return f"{vstar_text(task)}\n{LLAVA_MC_SUFFIX}"


def score_vstar(results) -> dict[str, Any]:
    """Accuracy per category (``direct_attributes``, ``relative_position``) and overall (micro over all samples)."""
    return score_accuracy(results)


__all__ = ["load_vstar", "parse_vstar_text", "synthesize_text", "union_box", "prompt_official", "prompt_likelihood",
           "prompt_lmms_eval", "prompt_vlmevalkit", "prompt_lvr", "score_vstar", "VSTAR_CATEGORIES"]
