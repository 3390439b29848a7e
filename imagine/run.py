"""caption-imagine run: inference with explicit (text) imagination, paper §5.4.

Plain greedy decoding through the shared engine. Per sample: the imagination spans (text between the profile's
markers), the final answer (the profile's extractor on the text after the last imagination span), correctness, and —
for multiple-choice tasks — the option distribution at the answer point (after the imagination end marker and the
profile's answer prefix, engine convention). It runs through the one analysis driver (``core.analysis.run_analysis``:
resume, error records, data-parallel shards); the summary reports accuracy with a Wilson interval, the imagination
rate and per-category accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.analysis import AnalysisResult, AnalysisRun, AnalysisSpec, RecordStage, run_analysis
from latentcheck.core.runner import CommonOptions
from latentcheck.core.tasks import Task

DEFAULT_MODEL = "toy-capimagine"
COMMAND = "caption-imagine run"


def require_text_imagination(lm) -> tuple[str, str]:
    """The profile's imagination markers; a clear error for profiles without them."""
    prof = lm.profile
    if prof.kind != "text_imagination":
        raise LatentcheckError(f"profile {prof.name!r} is {prof.kind!r}, not a text-imagination profile; pass "
                               "--profile capimagine (or a profile file with [imagination] markers)")
    return prof.imagination["start"], prof.imagination["end"]


def split_imagination(text: str, markers: tuple[str, str]) -> tuple[str, str, str] | None:
    """``(before, imagination, after)`` around the FIRST closed imagination span of ``text`` (``before`` ends with the
    start marker, ``after`` starts with the end marker), or None when there is no closed span."""
    start_m, end_m = markers
    i = text.find(start_m)
    if i < 0:
        return None
    j = text.find(end_m, i + len(start_m))
    if j < 0:
        return None
    return text[: i + len(start_m)], text[i + len(start_m): j], text[j:]


def char_token_range(lm, token_ids: list[int], start: int, end: int) -> tuple[int, int]:
    """Token indices ``[s, e)`` of generated ``token_ids`` covering the characters ``[start, end)`` of their decoded
    text (per-token decoded pieces, special tokens kept)."""
    tok = lm.tokenizer
    ends, pos = [], 0
    for t in token_ids:
        pos += len(tok.decode([t], skip_special_tokens=False))
        ends.append(pos)
    first = next((k for k, e in enumerate(ends) if e > start), len(ends))
    stop = next((k for k, e in enumerate(ends) if e > end), len(ends))
    return first, max(first, stop)


def imagination_token_range(lm, token_ids: list[int], markers: tuple[str, str]) -> tuple[int, int] | None:
    """Token indices ``[s, e)`` of the first imagination span's content in generated ``token_ids``: tokens after the
    start marker up to (excluding) the token holding the first character of the end marker. Works whether the
    markers are special tokens or plain text (located in the per-token decoded pieces)."""
    tok = lm.tokenizer
    pieces = [tok.decode([t], skip_special_tokens=False) for t in token_ids]
    ends, pos = [], 0
    for p in pieces:
        pos += len(p)
        ends.append(pos)
    split = split_imagination("".join(pieces), markers)
    if split is None:
        return None
    content_start = len(split[0])
    content_end = content_start + len(split[1])
    first = next((k for k, end in enumerate(ends) if end > content_start), len(ends))
    stop = next((k for k, end in enumerate(ends) if end > content_end), len(ends))
    return first, max(first, stop)


def gold_answer(task: Task) -> str | None:
    """Gold option letter (multiple choice) or the free-text answer."""
    if task.options:
        return task.answer_letter
    return task.answer


def is_correct(task: Task, pred: str | None) -> bool | None:
    """Correctness of an extracted answer (None when the task has no gold answer)."""
    from latentcheck.core.extract import normalize_text

    gold = gold_answer(task)
    if gold is None:
        return None
    if task.options:
        return pred == gold
    return pred is not None and normalize_text(pred) == normalize_text(gold)


def answer_of(lm, trace, task: Task) -> tuple[str, str | None]:
    """(answer text after the imagination, extracted answer) of a generated trace (core.answers, the one rule)."""
    from latentcheck.core.answers import read_trace

    r = read_trace(lm, trace, task.options)
    return r.answer_text, r.answer


def option_summary(task: Task, probs) -> dict[str, Any]:
    """Option distribution fields of a record: probabilities by letter, argmax letter, its correctness."""
    from latentcheck.core.tasks import LETTERS

    if probs is None or not task.options:
        return {"option_probs": None, "option_pred": None, "option_correct": None}
    letters = LETTERS[: len(task.options)]
    best = letters[int(probs.argmax())]
    gold = gold_answer(task)
    return {"option_probs": {letter: float(p) for letter, p in zip(letters, probs)}, "option_pred": best,
            "option_correct": None if gold is None else best == gold,
            "p_gold": None if gold is None else float(probs[letters.index(gold)])}


def task_prompt(lm, task: Task, max_pixels: int | None, assistant_prefix: str = ""):
    """The prompt of a task under the model's profile (image decoded now; RecordError names the field)."""
    from latentcheck.core.prompts import build_prompt, task_text
    from latentcheck.core.tasks import DEFAULT_MAX_PIXELS

    image = task.load_image(max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    return build_prompt(lm, task.id, task_text(task, lm.profile), image, assistant_prefix=assistant_prefix)


def run_block(lm, engine, tasks: list[Task], max_pixels: int | None = None, batch_size: int = 8) -> list[dict]:
    """Generate for a block of tasks; one record per task (or an error record)."""
    from latentcheck.core.engine import Request
    from latentcheck.core.prompts import option_token_ids
    from latentcheck.core.runner import error_record
    from latentcheck.imagine.build_data import parse_imagination

    markers = require_text_imagination(lm)
    out: dict[str, dict] = {}
    reqs, live = [], []
    for t in tasks:
        try:
            prompt = task_prompt(lm, t, max_pixels)
        except RecordError as e:
            out[t.id] = error_record(t.id, e)
            continue
        opt_ids = option_token_ids(lm, len(t.options)) if t.options else None
        reqs.append(Request(prompt, option_ids=opt_ids))
        live.append(t)
    traces = engine.run(reqs, batch_size=batch_size) if reqs else []
    for t, tr in zip(live, traces):
        tr = tr[0]
        ans, pred = answer_of(lm, tr, t)
        rng = imagination_token_range(lm, tr.token_ids, markers)
        spans = parse_imagination(tr.text, markers)
        out[t.id] = {"key": t.id, "category": t.category, "gold": gold_answer(t), "pred": pred,
                     "correct": is_correct(t, pred), "imagination": spans, "has_imagination": bool(spans),
                     "imagination_tokens": (rng[1] - rng[0]) if rng else 0, "answer_text": ans, "text": tr.text,
                     "finish_reason": tr.finish_reason, "generated_tokens": len(tr.token_ids),
                     **option_summary(t, tr.option_probs)}
    return [out[t.id] for t in tasks]


def accuracy_block(values: list[bool]) -> dict[str, Any]:
    """The accuracy of ``values`` as a ``core.summaries.Proportion`` dict (estimate, Wilson 95% interval, n,
    successes)."""
    from latentcheck.core.summaries import Proportion

    return Proportion.of(values).to_dict()


def summarize_run(records: list[dict]) -> dict[str, Any]:
    """Summary of run records (sample and error records of a results file)."""
    samples = [r for r in records if r.get("type", "sample") == "sample"]
    errors = [r for r in records if r.get("type") == "error"]
    scored = [r for r in samples if r.get("correct") is not None]
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for r in scored:
        by_cat[str(r.get("category"))].append(bool(r["correct"]))
    with_opts = [r for r in samples if r.get("option_correct") is not None]
    lengths = [r["imagination_tokens"] for r in samples if r.get("has_imagination")]
    return {
        "n_samples": len(samples), "n_errors": len(errors),
        "accuracy": accuracy_block([bool(r["correct"]) for r in scored]),
        "option_accuracy": accuracy_block([bool(r["option_correct"]) for r in with_opts]) if with_opts else None,
        "imagination_rate": (sum(bool(r.get("has_imagination")) for r in samples) / len(samples)) if samples
        else None,
        "mean_imagination_tokens": (sum(lengths) / len(lengths)) if lengths else None,
        "by_category": {c: accuracy_block(v) for c, v in sorted(by_cat.items())},
    }


class CaptionImagineRun(AnalysisSpec):
    """``caption-imagine run`` as an analysis (core.analysis.run_analysis): one record stage, the summary with the
    imagination trigger block."""

    command = COMMAND
    default_model = DEFAULT_MODEL

    def setup(self, run: AnalysisRun) -> None:
        from latentcheck.core.engine import Engine

        require_text_imagination(run.lm)
        self.engine = Engine(run.lm, seed=run.opts.seed)

    def stages(self, run: AnalysisRun) -> list[RecordStage]:
        o = run.opts
        return [RecordStage("samples", lambda tasks: run_block(run.lm, self.engine, tasks, o.max_pixels, o.batch_size))]

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        from latentcheck.core.trigger import trigger_block, warn_trigger

        records = run.records["samples"]
        summary = {"command": COMMAND, "model": run.lm.describe(), "data": run.data, **summarize_run(records),
                   "results": run.paths["samples"]}
        ok = [r for r in records if r.get("type", "sample") == "sample"]
        summary["latent_trigger"] = trigger_block(
            {"baseline": ([bool(r.get("has_imagination")) for r in ok],
                          [r.get("imagination_tokens") or 0 for r in ok])},
            "baseline", run.lm.profile.kind, "imagination tokens")
        warn_trigger(summary["latent_trigger"], COMMAND)
        return summary


def run_caption_imagine(opts: CommonOptions, lm=None) -> AnalysisResult:
    """``caption-imagine run`` (module docstring). Returns the result (summary also in ``<out>/summary.json``)."""
    return run_analysis(CaptionImagineRun(), opts, lm=lm)
