"""TableVQA-Bench (naver-ai/tablevqabench): loaders, official prompts, official scoring per split.

Data, as distributed (benchmarks.md s6):

* HF ``terryoo/TableVQA-Bench``: one parquet per split (``data/{split}-*.parquet``; splits ``vwtq`` 750, ``vwtq_syn``
  250, ``vtabfact`` 250, ``fintabnetqa`` 250) with ``qa_id``, ``image`` (``{"bytes", "path"}``), ``question``,
  ``text_markdown_table``, ``text_html_table``, ``gt``. The split is read from the file name (``vwtq_syn`` before
  ``vwtq``), or given with ``split=``.
* VLMEvalKit ``tablevqa-bench.tsv`` (MD5 ``2550adc61bdc82d8e62f3b003de7c62d``): ``index``, ``image`` (base64),
  ``question``, ``answer``, ``split``.

Task: ``id`` = ``qa_id`` / ``index``, ``category`` = ``meta["split"]`` = the split, ``answer`` = ``gt`` as text
(VTabFact's ``gt`` cast to ``"1"`` / ``"0"``: the HF column is declared string while the official outputs hold ints).
The table texts are not kept (the model sees only the image, as in the vision protocol).

Official scoring (``src/evaluate_tablevqa_dataset.py``; the WTQ part is allennlp-semparse's denotation evaluator),
re-implemented here with the same semantics and checked against hand-computed cases in
tests/bench/test_tablevqa.py:

* VWTQ / VWTQ-syn, :func:`wtq_match`: ``||`` in the prediction becomes ``|``; prediction and gold are split on ``|``
  (TSV unescaping ``\\n``, ``\\p`` -> ``|``, ``\\\\``), each item becomes a Number (int when within 1e-6 of one), a Date
  (``y-m-d`` with ``xx`` placeholders; a bare year is a Number) or a normalised String; duplicates collapse; correct
  iff both sets have the same size and every gold value matches a predicted one (same normalised string, numbers within
  1e-6, equal dates). Deviation: ``nan`` / ``inf`` are Strings here (the original raises on them).
* VTabFact, :func:`tabfact_outcome`: the lower-cased prediction (None -> "none") containing both "true" and "false" is
  unparsed (wrong, counted as ``unparsed``); "true" with gold 1 or "false" with gold 0 is correct (substring tests,
  as in the original).
* FinTabNetQA, :func:`fintabnet_forms`: normalise, drop ``$ ( ) ,`` and unit words, map thousand / million / billion
  to e3 / e6 / e9 and ``%`` to e-2, then float when possible; ``relieved`` (the headline) = any of the with-unit and
  unit-free forms of prediction and gold match; ``exact`` = the with-unit forms match.

Aggregates: accuracy per split; ``accuracy`` = the official "Average" (sample-weighted over the splits present);
``paper_overall`` = the paper's TableVQA "Overall" (unweighted mean of VWTQ, VWTQ-syn, VTabFact, when all three are
present; paper.md / benchmarks.md s6).
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Iterator

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import BadRecord, Task, validate_record
from latentcheck.bench.generic import (check_exists, image_field, iter_parquet_rows, iter_tsv_rows, require,
                                                 stream_tasks)
from latentcheck.bench.scoring import accuracy, field

SPLITS = ("vwtq", "vwtq_syn", "vtabfact", "fintabnetqa")
PAPER_SPLITS = ("vwtq", "vwtq_syn", "vtabfact")
TABLEVQA_MD5 = "2550adc61bdc82d8e62f3b003de7c62d"
PARQUET_COLUMNS = ["qa_id", "image", "question", "gt"]

# naver-ai/tablevqabench src/example_prompts.py (vision variants), whitespace as in the source
VWTQ_PROMPT = (
    "You are asked to answer questions asked on an image.\n"
    "You should answer the question with a single word.\n"
    "Example: \n"
    "Question: what was the only year mr. wu competed in the olympic games?\n"
    "Answer: 2004\n"
    "Question: which township in pope county, arkansas has the least amount of water area?\n"
    "Answer: Freeman\n"
    "If you have multiple answers, please separate them with || marks. Example: Apple||Banana||Tomato\n"
    "\n"
    "Question: {question}\n"
    "Answer:")
VTABFACT_PROMPT = (
    "You are asked to answer whether the statement is True or False based on given image\n"
    "You should only answer true or false.\n"
    "Example: \n"
    "Statement: the milwaukee buck win 6 game in the 2010 - 11 season\n"
    "Answer: True\n"
    "Statement: only the top team score above the average of 8.8\n"
    "Answer: False\n"
    "\n"
    "Statement: {question}\n"
    "Answer:")
FINTABNETQA_PROMPT = (
    "You are asked to answer questions asked on a image.\n"
    "You should answer the question within a single word or few words.\n"
    "If units can be known, the answer should include units such as $, %, million and etc.\n"
    "Example: \n"
    "Question: What were the total financing originations for the fiscal year ended October 31, 2004?\n"
    "Answer: $3,852 million\n"
    "Question: What is the time period represented in the table?\n"
    "Answer: October 31\n"
    "Question: What was the percentage of net sales for selling, general and administrative expenses in 2006?\n"
    "Answer: 34.2%\n"
    "Question: {question}\n"
    "Answer:")
PROMPTS = {"vwtq": VWTQ_PROMPT, "vwtq_syn": VWTQ_PROMPT, "vtabfact": VTABFACT_PROMPT,
           "fintabnetqa": FINTABNETQA_PROMPT}


# ---------------------------------------------------------------------------------------------- loading
def split_of_file(path: Path) -> str | None:
    """The split named in a file name (``vwtq_syn`` is tested before ``vwtq``)."""
    name = path.name.lower().replace("-", "_")
    for s in sorted(SPLITS, key=len, reverse=True):
        if re.search(rf"(^|[^a-z]){s}($|[^a-z])", name):
            return s
    return None


def _tabfact_gold(gt: Any, where: str) -> str:
    v = str(gt).strip().lower()
    if v in ("1", "true", "1.0"):
        return "1"
    if v in ("0", "false", "0.0"):
        return "0"
    raise RecordError(where, "gt", f"VTabFact gold must be 1/0 or true/false, got {gt!r}")


def _convert(raw: dict[str, Any], where: str, split: str | None, id_field: str, gold_field: str) -> Task:
    split = split or raw.get("split")
    if split not in SPLITS:
        raise RecordError(where, "split", f"unknown TableVQA split {split!r}; known: {', '.join(SPLITS)}")
    qid = require(raw, id_field, where, (str, int))
    question = require(raw, "question", where)
    gt = raw.get(gold_field)
    if gt is None or (isinstance(gt, float) and math.isnan(gt)) or str(gt).strip() == "":
        raise RecordError(where, gold_field, "missing gold answer")
    gold = _tabfact_gold(gt, where) if split == "vtabfact" else str(gt)
    image = image_field(raw.get("image"), where, "image")
    if image is None:
        raise RecordError(where, "image", "missing image")
    return validate_record({"id": str(qid), "question": question, "image": image, "answer": gold,
                            "category": split, "meta": {"split": split}}, where)


def load_tablevqa(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
                  splits: Iterable[str] | None = None, split: str | None = None) -> Iterator[Task | BadRecord]:
    """Stream TableVQA tasks from a split parquet, the dataset folder (every ``*.parquet`` below it, split from the
    file name) or the VLMEvalKit TSV (``split`` column). ``splits`` keeps only those splits; ``split`` names the
    split of a single parquet whose file name does not."""
    p = check_exists(path)
    wanted = tuple(splits) if splits is not None else None
    for s in (wanted or ()) + ((split,) if split else ()):
        if s not in SPLITS:
            raise LatentcheckError(f"unknown TableVQA split {s!r}; known: {', '.join(SPLITS)}")
    if p.is_file() and p.suffix.lower() == ".tsv":
        def rows_tsv():
            for where, raw in iter_tsv_rows(p):
                if wanted is None or raw.get("split") in wanted:
                    yield where, raw
        return stream_tasks(rows_tsv(), lambda raw, where: _convert(raw, where, None, "index", "answer"), str(p),
                            limit=limit, strict=strict)
    files = [p] if p.is_file() else sorted(p.rglob("*.parquet"))
    if not files:
        raise LatentcheckError(f"TableVQA: no parquet files under {p}")
    plan = []
    for f in files:
        s = split or split_of_file(f)
        if s is None:
            raise LatentcheckError(f"TableVQA: cannot tell the split of {f.name} (expected one of "
                                   f"{', '.join(SPLITS)} in the file name); pass split=")
        if wanted is None or s in wanted:
            plan.append((f, s))

    def rows():
        for f, s in plan:
            for where, raw in iter_parquet_rows(f, PARQUET_COLUMNS):
                yield where, {**raw, "split": s}
    return stream_tasks(rows(), lambda raw, where: _convert(raw, where, raw["split"], "qa_id", "gt"), str(p),
                        limit=limit, strict=strict)


def prompt_official(task: Task) -> str:
    """The split's official prompt with the question substituted."""
    return PROMPTS[task.meta["split"]].format(question=task.question)


# ---------------------------------------------------------------------------------------------- WTQ denotation
def normalize(x: str) -> str:
    """allennlp-semparse / WTQ string normalisation: NFKD without combining marks, unified quotes and dashes, trailing
    citations / parentheticals / outer quotes removed to a fixpoint, final "." dropped, whitespace collapsed,
    lower case."""
    x = "".join(c for c in unicodedata.normalize("NFKD", x) if unicodedata.category(c) != "Mn")
    x = re.sub(r"[‘’´`]", "'", x)
    x = re.sub(r"[“”]", '"', x)
    x = re.sub(r"[‐‑‒–—−]", "-", x)
    while True:
        before = x
        x = re.sub(r"((?<!^)\[[^\]]*\]|\[\d+\]|[•♦†‡*#+])*$", "", x.strip())
        x = re.sub(r"(?<!^)( \([^)]*\))*$", "", x.strip())
        x = re.sub(r'^"([^"]*)"$', r"\1", x.strip())
        if x == before:
            break
    if x.endswith("."):
        x = x[:-1]
    return re.sub(r"\s+", " ", x, flags=re.U).lower().strip()


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        return None
    return None if (math.isnan(v) or math.isinf(v)) else v


def _date(text: str) -> tuple[int, int, int] | None:
    parts = text.lower().split("-")
    if len(parts) != 3:
        return None
    try:
        y = -1 if parts[0] in ("xx", "xxxx") else int(parts[0])
        m = -1 if parts[1] == "xx" else int(parts[1])
        d = -1 if parts[2] == "xx" else int(parts[2])
    except ValueError:
        return None
    if (y == m == d == -1) or not (m == -1 or 1 <= m <= 12) or not (d == -1 or 1 <= d <= 31):
        return None
    return y, m, d


def to_value(text: str) -> tuple:
    """A hashable value: ``("N", amount, normalised)``, ``("D", (y, m, d), normalised)`` or ``("S", normalised)``.
    Equality (for de-duplication) is by amount / date / normalised string, as in the original classes."""
    amount = _number(text)
    if amount is None:
        ymd = _date(text)
        if ymd is not None and ymd[1] == ymd[2] == -1:
            amount = ymd[0]
        elif ymd is not None:
            return ("D", ymd, normalize(text))
    if amount is not None:
        amount = int(amount) if abs(amount - round(amount)) < 1e-6 else float(amount)
        return ("N", amount, normalize(text))
    return ("S", normalize(text))


def _dedupe(values: list[tuple]) -> list[tuple]:
    seen, out = set(), []
    for v in values:
        key = v[:2]  # number -> amount, date -> ymd, string -> normalised text
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _matches(gold: tuple, pred: tuple) -> bool:
    if gold[-1] == pred[-1]:
        return True
    if gold[0] == pred[0] == "N":
        return abs(gold[1] - pred[1]) < 1e-6
    if gold[0] == pred[0] == "D":
        return gold[1] == pred[1]
    return False


def tsv_unescape_list(x: str) -> list[str]:
    return [y.replace(r"\n", "\n").replace(r"\p", "|").replace("\\\\", "\\") for y in x.split("|")]


def wtq_match(pred: str | None, gold: str) -> bool:
    """WTQ denotation accuracy of one prediction (see the module docstring)."""
    if pred is None:
        return False
    golds = _dedupe([to_value(s) for s in tsv_unescape_list(gold)])
    preds = _dedupe([to_value(s) for s in tsv_unescape_list(pred.replace("||", "|"))])
    return len(golds) == len(preds) and all(any(_matches(g, p) for p in preds) for g in golds)


# ---------------------------------------------------------------------------------------------- VTabFact
def tabfact_outcome(pred: str | None, gold: str) -> str:
    """``correct`` | ``wrong`` | ``unparsed`` (both "true" and "false" in the prediction)."""
    p = (pred if pred is not None else "none").lower()
    if "true" in p and "false" in p:
        return "unparsed"
    if ("true" in p and gold == "1") or ("false" in p and gold == "0"):
        return "correct"
    return "wrong"


# ---------------------------------------------------------------------------------------------- FinTabNetQA
_UNIT_WORDS = ("dollar", "gallons", "square feet", "shares", "mbtu", "mbpd", "mbbls", "mmbtu", "unit", "gwh", "year",
               "mmcf", "mile", "mboe")
_MAGNITUDES = ((r" \bthousand\b", "e3"), (r" \bmillion\b", "e6"), (r" \bbillion\b", "e9"), (r"\bthousand\b", "e3"),
               (r"\bmillion\b", "e6"), (r"\bbillion\b", "e9"), (r" ?%", "e-2"))


def fintabnet_forms(s: str | None) -> tuple[Any, list[Any]]:
    """(with-unit form, [with-unit form, unit-free form]); floats when BOTH forms parse, else the strings."""
    s = normalize(s if s is not None else "none")
    s = re.sub(r"[\$\(\),]", "", s)
    s = re.sub(r"\b(" + "|".join(_UNIT_WORDS) + r")s?\b", "", s, flags=re.IGNORECASE)
    free = s
    for pat, rep in _MAGNITUDES:
        s = re.sub(pat, rep, s)
        free = re.sub(pat, "", free)
    try:
        return float(s), [float(s), float(free)]
    except ValueError:
        return s, [s, free]


def fintabnet_match(pred: str | None, gold: str) -> tuple[bool, bool]:
    """(relieved, exact) correctness."""
    p, ps = fintabnet_forms(pred)
    g, gs = fintabnet_forms(gold)
    return any(a == b for a in ps for b in gs), p == g


# ---------------------------------------------------------------------------------------------- correctness, score
def tablevqa_is_correct(task: Task, pred: str | None) -> bool:
    split = task.meta.get("split")
    gold = task.answer or ""
    if split == "vtabfact":
        return tabfact_outcome(pred, gold) == "correct"
    if split == "fintabnetqa":
        return fintabnet_match(pred, gold)[0]
    return wtq_match(pred, gold)


def score_tablevqa(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-split accuracy (+ VTabFact ``unparsed``, FinTabNetQA ``exact_accuracy``), the official sample-weighted
    ``accuracy`` and the paper's ``paper_overall``."""
    rs = list(results)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rs:
        s = field(r, "split") or r.get("category")
        if s not in SPLITS:
            raise LatentcheckError(f"result {r.get('id', '?')!r} has no TableVQA split (needed for scoring)")
        groups.setdefault(s, []).append(r)
    per: dict[str, dict[str, Any]] = {}
    for s in SPLITS:
        if s not in groups:
            continue
        g = groups[s]
        per[s] = accuracy(g)
        if s == "vtabfact":
            per[s]["unparsed"] = sum(tabfact_outcome(r.get("pred"), str(r.get("gold"))) == "unparsed" for r in g)
        if s == "fintabnetqa":
            exact = sum(fintabnet_match(r.get("pred"), str(r.get("gold")))[1] for r in g)
            per[s]["exact_accuracy"] = exact / len(g)
    paper = [per[s]["accuracy"] for s in PAPER_SPLITS if s in per]
    return {"n": len(rs), "accuracy": accuracy(rs)["accuracy"],
            "paper_overall": sum(paper) / len(paper) if len(paper) == len(PAPER_SPLITS) else None,
            "per_split": per}


__all__ = ["load_tablevqa", "prompt_official", "score_tablevqa", "tablevqa_is_correct", "wtq_match",
           "tabfact_outcome", "fintabnet_forms", "fintabnet_match", "normalize", "SPLITS", "PAPER_SPLITS",
           "TABLEVQA_MD5"]
