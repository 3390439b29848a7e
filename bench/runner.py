"""`latentcheck bench`: run a benchmark protocol (bench/registry.py) on a model, under interventions.

Per sample, through the one analysis driver and its loop (``core.analysis.run_analysis`` -> ``core.runner.run_records``:
resume, error records, progress, shards):

* **generate** scoring: the variant's user text (``Benchmark.prompt``), its system prompt (None = the model's
  default) and ALL the sample's images (BLINK: ``meta["images"]``) go through ``build_prompt``; the baseline and every
  ``--intervention`` run as Conditions of ONE engine Request (one shared prefill per sample, conditions forked as rows
  of the decode batch; the engine sorts by prompt length). Reply and answer text come from the one answer rule
  (core/answers.py: spans from the engine's span mask, the answer after the last span, none if a span never
  closed); the variant's extractor reads the answer text; ``Benchmark.record`` scores it. With a judge (``bench/judges.py``: a protocol on a
  ``local`` or ``openai`` backend with the persistent reply cache), the protocol decides which replies it reads
  (HR-Bench, BLINK: all; VLMEvalKit: those ``can_infer`` cannot settle; Monet: rule failures); each sample keeps the
  rule-based outcome (``extracted``, ``correct_rule``) next to the judged one (``pred``, ``correct``) and the judge's
  prompt, reply and identity.
* **denominators** as official: a sample whose input cannot be prepared (missing or corrupt image) is an error record
  that keeps its scoring fields and counts as wrong (listed in ``errors``); tasks without a gold answer (BLINK's test
  split) are refused.
* **likelihood** scoring (V* official, ``penghao-wu/vstar`` ``multiple_choices_inference``): the user text is the
  question without options; each option text, rendered as the assistant reply by the chat template (option +
  end-of-turn tokens), is teacher-forced and its mean token cross-entropy computed; the option with the lowest mean
  CE is chosen. Implemented with cache sharing: one left-padded prefill per batch of samples, the KV cache is forked
  into one row per (sample, option), and all option rows are teacher-forced in ONE batched forward
  (:func:`option_mean_ce`), so the question is encoded once per sample, as in the official script.

Latency (the paper's Fig. 5): the engine times whole batches, so each sample records its batch's
``batch_total_s`` / ``batch_prefill_s`` / ``batch_rows`` and the share ``row_s = batch_total_s / batch_rows``
(``row_decode_s`` without the prefill), plus the tokens generated and latent steps; summary.json averages them per
category (likelihood runs: the sample's share of its batch by option rows). With continuous batching (a block of
more samples than ``--batch-size``) the "batch" is the block's decode stream: new samples take the rows finished ones
free, and its rows are all rows of the block. Shares depend on the batch composition: compare models at the same
``--batch-size`` (``--batch-size 1`` gives per-sample wall time).
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from latentcheck.core.backends import DEFAULT_KEY_ENV
from latentcheck.bench.judges import Judge, get_protocol
from latentcheck.bench.registry import BENCHMARKS, Benchmark, PromptVariant, get_benchmark
from latentcheck.bench.scoring import result_record
from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.answers import read_trace
from latentcheck.core.interventions import InterventionSpec, LatentStats, parse_specs
from latentcheck.core.analysis import AnalysisResult, AnalysisRun, AnalysisSpec, RecordStage, run_analysis
from latentcheck.core.records import in_id_order
from latentcheck.core.runner import CommonOptions, data_path, error_record
from latentcheck.core.summaries import AccuracyEffect, Proportion
from latentcheck.core.tasks import LETTERS, Task, decode_image
from latentcheck.core.trigger import warn_trigger

COMMAND = "bench"
SCORINGS = ("generate", "likelihood")
PROFILE_VARIANT = "profile"
# Decompression guard for benchmark images (HR-Bench 8K images exceed the task default of 4096 x 4096); the
# processor's --max-pixels then resizes them for the model.
IMAGE_DECODE_LIMIT = 12000 * 12000
# Base64 images longer than this are written once to a content-addressed cache folder and referenced by path, so a
# multi-GB TSV is never held in memory (VLMEvalKit "localizes" its big TSVs the same way).
LOCALIZE_MIN_CHARS = 64 * 1024
# ---------------------------------------------------------------------------------------------- protocol
def profile_variant(lm) -> PromptVariant:
    """The model profile's own prompt (``core.prompts.task_text``, as perturb-latent and probe render tasks) and
    extractor: the native format of the shared task JSONL and of the toy zoo."""
    from latentcheck.core.prompts import task_text

    return PromptVariant(name=PROFILE_VARIANT, build=lambda t: task_text(t, lm.profile),
                         extractor=lm.profile.extractor, system_prompt=None, mode="generate",
                         source=f"profile {lm.profile.name}: core/prompts.task_text + extractor "
                                f"{lm.profile.extractor!r}")


def resolve_protocol(bench: Benchmark, variant: str | None, scoring: str | None) -> tuple[str, str]:
    """(variant name, scoring) from the user's choices; defaults: the benchmark's default variant (``profile`` for
    generic, else ``official``); ``--scoring X`` alone picks the default when it is scored by X, else the
    benchmark's first variant scored by X (V*: ``--scoring generate`` -> ``generate``)."""
    if scoring is not None and scoring not in SCORINGS:
        raise LatentcheckError(f"--scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if variant is None:
        variant = bench.default_variant if bench.default_variant in bench.variants else "official"
        if scoring is not None and bench.variant(variant).mode != scoring:
            names = [n for n, v in bench.variants.items() if v.mode == scoring]
            if not names:
                raise LatentcheckError(f"benchmark {bench.name!r} has no {scoring} variant (only V* is officially "
                                       "scored by likelihood); use --scoring generate")
            variant = names[0]
    mode = bench.variant(variant).mode
    if scoring is not None and scoring != mode:
        raise LatentcheckError(f"variant {variant!r} of {bench.name!r} is scored by {mode}, not {scoring}; "
                               f"pick a matching --variant (known: {', '.join(bench.variants)})")
    return variant, mode


# ---------------------------------------------------------------------------------------------- images
def localize_image(value: str | None, folder: Path) -> str | None:
    """A large base64 data URI -> the path of its decoded bytes in ``folder`` (content-addressed, written once)."""
    if not value or not value.startswith("data:") or len(value) < LOCALIZE_MIN_CHARS:
        return value
    head, _, payload = value.partition(",")
    digest = hashlib.sha256(payload.encode("ascii", "ignore")).hexdigest()[:24]
    ext = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
           "image/bmp": ".bmp"}.get(head[5:].split(";")[0], ".img")
    path = folder / f"{digest}{ext}"
    if not path.exists():
        try:
            data = base64.b64decode(payload)
        except ValueError:
            return value  # left as is: decode_image reports the corrupt payload with the record's name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + f".tmp{id(value)}")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


def localize_task(task: Task, folder: Path) -> Task:
    """Replace large embedded images (``image`` and ``meta["images"]``) by cached files."""
    images = task.meta.get("images")
    new_image = localize_image(task.image, folder)
    if images is None and new_image is task.image:
        return task
    meta = dict(task.meta)
    if images is not None:
        meta["images"] = [localize_image(v, folder) for v in images]
    return replace(task, image=new_image, meta=meta)


def task_images(task: Task) -> list:
    """All images of a task, decoded (BLINK: ``meta["images"]`` in order; else ``image``); RecordError names the
    failing field."""
    srcs = task.meta.get("images")
    if srcs:
        out = []
        for k, src in enumerate(srcs):
            try:
                out.append(decode_image(src, task.id, task.base_dir, max_pixels=IMAGE_DECODE_LIMIT))
            except RecordError as e:
                raise RecordError(e.record, f"meta.images[{k}]", e.message) from None
        return out
    img = task.load_image(max_pixels=IMAGE_DECODE_LIMIT)
    return [] if img is None else [img]


# ---------------------------------------------------------------------------------------------- likelihood
def option_reply_text(lm, option: str) -> str:
    """The text the chat template renders after the generation header for an assistant reply ``option``
    (Qwen: ``option<|im_end|>\\n``); with the Mirage header (no newline after ``assistant``) it starts with
    the newline."""
    proc = lm.processor
    user = [{"role": "user", "content": "q"}]
    full = proc.apply_chat_template(user + [{"role": "assistant", "content": option}], tokenize=False,
                                    add_generation_prompt=False)
    if lm.profile.prompt.generation_header == "mirage":
        head = proc.apply_chat_template(user, tokenize=False, add_generation_prompt=False) + "<|im_start|>assistant"
    else:
        head = proc.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if not full.startswith(head):
        raise LatentcheckError("the chat template does not render an assistant reply as a continuation of the "
                               "generation prompt; likelihood scoring cannot find the reply tokens")
    return full[len(head):]


def option_reply_ids(lm, option: str) -> list[int]:
    """Token ids of :func:`option_reply_text` (tokenised on its own, after the generation header)."""
    return list(lm.tokenizer.encode(option_reply_text(lm, option), add_special_tokens=False))


def option_mean_ce(engine, prompts: Sequence, replies: Sequence[Sequence[Sequence[int]]],
                   image_visibility: str | None = None) -> list[np.ndarray]:
    """Mean token cross-entropy (nats) of each reply given its prompt (``Engine.score``: one prefill per prompt,
    one cache row per reply, all replies teacher-forced in one batched forward)."""
    import torch

    if not replies or any(len(ids) == 0 for reps in replies for ids in reps) or not any(replies):
        raise LatentcheckError("likelihood scoring needs at least one non-empty reply per prompt")
    with torch.no_grad():
        ce = engine.score(list(prompts), replies, image_visibility=image_visibility).mean_nll()
    out, i = [], 0
    for reps in replies:
        out.append(ce[i:i + len(reps)])
        i += len(reps)
    return out


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class BenchSettings:
    """Everything besides the common options that changes results (stored in the provenance config)."""

    benchmark: str = "generic"
    variant: str = "official"
    scoring: str = "generate"
    interventions: list[dict] = field(default_factory=list)
    decoding: dict = field(default_factory=dict)
    judge: dict | None = None
    verify: bool = True
    calibration_size: int | None = None
    force_latent: bool = False


@dataclass
class _Sample:
    task: Task
    text: str
    prompt: Any
    n_images: int


class _BenchRun:
    """State of one bench run; ``process_block`` is the runner's hook."""

    def __init__(self, lm, opts: CommonOptions, bench: Benchmark, variant: str, scoring: str,
                 specs: list[InterventionSpec], decoding, judge: Judge | None, force_latent: bool = False):
        from latentcheck.core.engine import Engine

        self.lm, self.opts, self.bench, self.variant, self.scoring = lm, opts, bench, variant, scoring
        self.v = bench.variant(variant)
        self.specs = specs
        self.engine = Engine(lm, decoding=decoding, seed=opts.seed)
        self.judge = judge
        self.force_latent = force_latent

    # -- inputs
    def prepare(self, task: Task) -> _Sample:
        from latentcheck.core.prompts import build_prompt

        images = task_images(task)
        if self.scoring == "likelihood":
            text, _, _ = self.bench.likelihood_inputs(task, self.variant)
        else:
            text = self.bench.prompt(task, self.variant)
        try:
            system = self.v.system_prompt if self.opts.system is None else self.opts.system  # --system wins
            prompt = build_prompt(self.lm, task.id, text, images or None, system=system,
                                  image_placeholder=self.v.image_placeholder)
        except ValueError as e:  # e.g. the processor refuses an image smaller than one patch
            raise RecordError(task.id, "image", f"cannot build the model input ({e})") from None
        return _Sample(task, text, prompt, len(images))

    def conditions(self):
        from latentcheck.core.engine import Condition

        return [Condition()] + [Condition(s.label, s) for s in self.specs]

    # -- calibration for shared / index_mean
    def calibrate(self, tasks: list[Task], n: int) -> dict:
        from latentcheck.core.engine import Request

        samples = []
        for t in tasks:
            if len(samples) >= n:
                break
            try:
                samples.append(self.prepare(t))
            except RecordError:
                continue
        if not samples:
            raise LatentcheckError("calibration: no valid sample to compute latent statistics from")
        traces = self.engine.run([Request(s.prompt, force_latent=self.force_latent) for s in samples],
                                 batch_size=self.opts.batch_size)
        lat = [tr[0].latents for tr in traces]
        try:
            self.engine.stats = LatentStats.from_latents(lat)
        except LatentcheckError as e:
            raise LatentcheckError(f"{e}; the model never entered latent mode on the calibration samples") from None
        return {"n_samples": len(samples), "keys": [s.task.id for s in samples],
                "n_vectors": int(sum(len(x) for x in lat)), **self.engine.stats.to_dict()}

    # -- outcomes
    def _outcome(self, tr, s: _Sample) -> dict[str, Any]:
        t = dict(tr.timing)
        rows = max(1, int(t.get("batch_rows", 1)))
        t["row_s"] = t.get("batch_total_s", math.nan) / rows
        t["row_decode_s"] = (t.get("batch_total_s", math.nan) - t.get("batch_prefill_s", 0.0)) / rows
        r = read_trace(self.lm, tr)  # the one answer rule (core/answers.py); the variant's extractor reads its answer
        return {"extracted": self.bench.extract(r.answer_text, s.task, self.variant) if r.answer_text else None,
                "reply": r.reply, "answer_text": r.answer_text, "span_closed": r.closed, "text": tr.text,
                "tokens": len(tr.token_ids),
                # fed vectors (latent profiles) or imagination tokens (text imagination: spans of the answer rule)
                "latent_steps": int(tr.latent_count) if self.lm.profile.is_latent else r.span_tokens,
                "latent_blocks": int(tr.latent_blocks), "triggered": bool(tr.triggered) or r.triggered,
                "finish_reason": tr.finish_reason, "timing": t}

    def _finish(self, s: _Sample, o: dict[str, Any], verdict: dict | None) -> dict[str, Any]:
        """Rule outcome, then the judge's (if it was asked): ``pred`` / ``correct`` are final, ``extracted`` /
        ``correct_rule`` the rule-based ones."""
        rule_pred = o["extracted"]
        rule_ok = self.bench.record(s.task, None, self.variant, pred=rule_pred)["correct"]
        pred, ok = rule_pred, rule_ok
        if verdict and verdict.get("used") and verdict.get("error") is None:
            if verdict["kind"] == "correct":
                ok = bool(verdict["value"])
            else:
                pred = verdict["value"]
                ok = self.bench.record(s.task, None, self.variant, pred=pred)["correct"]
        o["judge"] = verdict or {"used": False}
        return {"pred": pred, "correct": bool(ok), "correct_rule": bool(rule_ok), **o}

    def _generate(self, samples: list[_Sample]) -> dict[str, dict]:
        from latentcheck.core.engine import Request

        dec = self.engine.decoding
        reqs = [Request(s.prompt, self.conditions(), max_new_tokens=dec.max_new_tokens,
                        force_latent=self.force_latent) for s in samples]
        traces = self.engine.run(reqs, batch_size=self.opts.batch_size)
        outs = {s.task.id: {tr.condition: self._outcome(tr, s) for tr in trs} for s, trs in zip(samples, traces)}
        verdicts: dict[tuple[str, str], dict] = {}
        if self.judge is not None:
            keys = [(s, c) for s in samples for c in outs[s.task.id]]
            answers = self.judge.run([(s.task, outs[s.task.id][c]["reply"], outs[s.task.id][c]["extracted"])
                                      for s, c in keys])
            verdicts = {(s.task.id, c): a for (s, c), a in zip(keys, answers)}
        return {s.task.id: {c: self._finish(s, o, verdicts.get((s.task.id, c))) for c, o in outs[s.task.id].items()}
                for s in samples}

    def _likelihood(self, samples: list[_Sample]) -> dict[str, dict]:
        ordered = sorted(samples, key=lambda s: s.prompt.length)
        result = {}
        bs = max(1, self.opts.batch_size)
        for i in range(0, len(ordered), bs):
            chunk = ordered[i:i + bs]
            replies = [[option_reply_ids(self.lm, o) for o in s.task.options] for s in chunk]
            t0 = time.perf_counter()
            ces = option_mean_ce(self.engine, [s.prompt for s in chunk], replies)
            total = time.perf_counter() - t0
            rows = sum(len(r) for r in replies)
            for s, ce, reps in zip(chunk, ces, replies):
                k = int(np.argmin(ce))
                rec = self.bench.record(s.task, None, self.variant, pred=LETTERS[k])
                # row_s = this sample's share of the batch time (its option rows / all option rows)
                timing = {"batch_total_s": total, "batch_rows": rows, "batch_samples": len(chunk),
                          "option_row_s": total / rows, "row_s": total * len(reps) / rows}
                result[s.task.id] = {"baseline": {
                    "pred": rec["pred"], "correct": rec["correct"], "chosen_index": k,
                    "option_mean_ce": [float(x) for x in ce], "option_tokens": [len(r) for r in reps],
                    "tokens": 0, "latent_steps": 0, "timing": timing}}
        return result

    def prepare_block(self, tasks: list[Task]) -> tuple[list[Task], list[_Sample], dict[str, dict]]:
        """The model-free part of a block (images, processor, tokenizer): the runner runs it one block ahead."""
        records: dict[str, dict] = {}
        samples = []
        for t in tasks:
            try:
                if self.scoring == "likelihood" and not t.options:
                    raise RecordError(t.id, "options", "likelihood scoring ranks option texts; none given")
                if self.bench.needs_gold and t.answer is None:
                    raise RecordError(t.id, "answer", "no gold answer (hidden test split?): cannot be scored")
                samples.append(self.prepare(t))
            except RecordError as e:
                # official denominators: the sample counts as wrong, so it keeps what the scorers read
                base = result_record(t, None, False, self.bench.meta_keys)
                records[t.id] = {**error_record(t.id, e), **{k: v for k, v in base.items() if k != "pred"},
                                 "correct_rule": False}
        return tasks, samples, records

    def process_block(self, prepared: tuple[list[Task], list[_Sample], dict[str, dict]]) -> list[dict]:
        tasks, samples, records = prepared
        per = (self._likelihood(samples) if self.scoring == "likelihood" else self._generate(samples)) \
            if samples else {}
        for s in samples:
            task = s.task
            conds = per[task.id]
            base = self.bench.record(task, None, self.variant, pred=conds["baseline"]["pred"])
            rec = {"key": task.id, **{k: v for k, v in base.items() if k not in ("pred", "correct")},
                   "n_options": len(task.options) if task.options else None, "n_images": s.n_images,
                   "prompt": s.text, **conds["baseline"]}
            if len(conds) > 1:
                rec["interventions"] = {c: o for c, o in conds.items() if c != "baseline"}
            records[task.id] = rec
        return [records[t.id] for t in tasks]


# ---------------------------------------------------------------------------------------------- summary
def condition_results(records: Iterable[dict], condition: str = "baseline") -> list[dict]:
    """Per-sample result dicts (``id``, ``category``, ``pred``, ``gold``, ``correct``, ``meta``, ...) of one
    condition, as the benchmark scorers read them."""
    out = []
    for r in records:
        if r.get("type") == "error":
            if r.get("id") is not None:  # a scorable error row: wrong in every condition, as officially
                out.append({**r, "pred": None, "correct": False, "correct_rule": False, "error_row": True})
            continue
        if r.get("type", "sample") != "sample":
            continue
        if condition == "baseline":
            out.append(r)
        elif condition in (r.get("interventions") or {}):
            out.append({**{k: v for k, v in r.items() if k != "interventions"}, **r["interventions"][condition]})
    return out


def trigger_summary(records: list[dict], conditions: Sequence[str], kind: str) -> dict | None:
    """The fake-null guard block (core/trigger.py) per condition (scorable error rows have no trace: left out)."""
    from latentcheck.core.trigger import trigger_block

    conds = {}
    for c in conditions:
        rs = [r for r in condition_results(records, c) if not r.get("error_row") and "triggered" in r]
        conds[c] = ([bool(r["triggered"]) for r in rs], [r.get("latent_steps") or 0 for r in rs])
    return trigger_block(conds, "baseline", kind)


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else None


def latency(results: list[dict]) -> dict[str, Any]:
    """Tokens generated, latent steps and judge use per sample, and under ``timing`` (the only wall-clock values,
    removed by records.strip_timing) the mean time share per sample (``row_s``, ``row_decode_s``)."""
    return {"n": len(results),
            "timing": {"row_s": _mean([(r.get("timing") or {}).get("row_s") for r in results]),
                       "row_decode_s": _mean([(r.get("timing") or {}).get("row_decode_s") for r in results])},
            "tokens": _mean([r.get("tokens") for r in results]),
            "latent_steps": _mean([r.get("latent_steps") for r in results]),
            "latent_blocks": _mean([r.get("latent_blocks") for r in results]),
            "judge_used": int(sum(bool((r.get("judge") or {}).get("used")) for r in results))}


def _acc_ci(results: list[dict]) -> dict[str, Any]:
    """Micro accuracy of the results as a Proportion dict (Wilson 95% interval)."""
    return Proportion.of(r.get("correct") for r in results).to_dict()


def summarise(bench: Benchmark, records: list[dict], conditions: Sequence[str], seed: int = 0,
              n_boot: int = 2000) -> dict[str, Any]:
    """Per condition: the benchmark's official score (a ``Score``: the authors' number, its interval and their whole
    breakdown under ``official``), micro accuracy with a Wilson 95% CI overall and per
    category, latency overall and per category, and (interventions) the paired effect against the baseline."""
    out: dict[str, Any] = {}
    base = condition_results(records, "baseline")
    base_by_id = {r["id"]: r for r in base}
    for c in conditions:
        rs = condition_results(records, c)
        cats: dict[str, list[dict]] = {}
        for r in rs:
            cats.setdefault(str(r.get("category")), []).append(r)
        rule = [{**r, "correct": r.get("correct_rule", r.get("correct"))} for r in rs]
        judged = [r for r in rs if (r.get("judge") or {}).get("used")]
        entry: dict[str, Any] = {
            "scores": bench.official_score(rs).to_dict() if rs else None, "accuracy": _acc_ci(rs),
            "scores_rule": bench.official_score(rule).to_dict() if rs else None, "accuracy_rule": _acc_ci(rule),
            "judge": {"asked": len(judged), "errors": sum(bool(r["judge"].get("error")) for r in judged),
                      "cached": sum(bool(r["judge"].get("cached")) for r in judged),
                      "changed": sum(r.get("correct") != r.get("correct_rule") for r in judged)},
            "errors": [r["id"] for r in rs if r.get("error_row")],
            "per_category": {k: _acc_ci(v) for k, v in cats.items()},
            "latency": {"overall": latency(rs), "per_category": {k: latency(v) for k, v in cats.items()}}}
        if c != "baseline":
            pairs = [(base_by_id[r["id"]], r) for r in rs if r["id"] in base_by_id]
            entry["effect"] = AccuracyEffect.paired([int(b["correct"]) for b, _ in pairs],
                                                    [int(x["correct"]) for _, x in pairs], seed=seed,
                                                    n_boot=n_boot).to_dict() if pairs else None
            entry["answer_flips"] = int(sum(b["pred"] != x["pred"] for b, x in pairs))
        out[c] = entry
    return out


# ---------------------------------------------------------------------------------------------- entry point
def _plan(interventions: Iterable[str | InterventionSpec] | None) -> list[InterventionSpec]:
    specs: list[InterventionSpec] = []
    for it in interventions or []:
        specs.extend([it] if isinstance(it, InterventionSpec) else parse_specs([it]))
    seen, out = set(), []
    for s in specs:
        if s.kind not in ("vector", "attention"):
            raise LatentcheckError(f"bench runs vector and attention interventions only; {s.label!r} is a sequence "
                                   "intervention "
                                   "(it needs the baseline's latents first): use `latentcheck perturb-latent`")
        if s.label == "baseline":
            raise LatentcheckError("intervention label 'baseline' is reserved")
        if s.label not in seen:
            seen.add(s.label)
            out.append(s)
    return out


def _needs_stats(specs: list[InterventionSpec]) -> bool:
    return any(s.needs_stats for s in specs)


class BenchRun(AnalysisSpec):
    """A benchmark as an analysis (core.analysis.run_analysis): the benchmark's own reader and checksum for the
    items, the judge and protocol for the model, one record stage (prepared one block ahead on a GPU), the summary
    with the official-number status. The arguments are :func:`run_bench`'s."""

    command = COMMAND

    def __init__(self, benchmark: str | Benchmark | None = None, variant: str | None = None,
                 scoring: str | None = None, interventions: Iterable[str | InterventionSpec] | None = None,
                 judge: str | Judge | None = None, *, decoding: dict[str, Any] | None = None, verify: bool = True,
                 judge_profile: str | None = None, calibration_size: int | None = None, force_latent: bool = False,
                 n_boot: int = 2000, judge_protocol: str | None = None, judge_url: str | None = None,
                 judge_key_env: str = DEFAULT_KEY_ENV, judge_cache: str | bool | None = True,
                 judge_concurrency: int = 4, image_root: str | None = None):
        from latentcheck.core.profiles import DecodingSpec

        bench = get_benchmark(benchmark) if isinstance(benchmark, str) else (benchmark or get_benchmark("generic"))
        if image_root is not None:
            import inspect

            if "image_root" not in inspect.signature(bench.loader).parameters:
                raise LatentcheckError(f"--image-root does not apply to {bench.name!r} (its loader takes no image "
                                       "root)")
            bench = bench.with_options(image_root=image_root)
        self.specs = _plan(interventions)
        bad = set(decoding or {}) - set(DecodingSpec.__dataclass_fields__)
        if bad:
            raise LatentcheckError(f"unknown decoding setting(s) {sorted(bad)}; known: "
                                   f"{', '.join(DecodingSpec.__dataclass_fields__)}")
        if (decoding or {}).get("max_new_tokens") is not None and decoding["max_new_tokens"] < 1:
            raise LatentcheckError("--max-new-tokens must be >= 1")
        self.bench, self.variant, self.scoring, self.judge, self.decoding = bench, variant, scoring, judge, decoding
        self.verify, self.judge_profile, self.calibration_size = verify, judge_profile, calibration_size
        self.force_latent, self.n_boot, self.judge_protocol, self.judge_url = force_latent, n_boot, judge_protocol, \
            judge_url
        self.judge_key_env, self.judge_cache, self.judge_concurrency = judge_key_env, judge_cache, judge_concurrency

    def read_items(self, opts: CommonOptions) -> tuple[str, list]:
        """The benchmark's reader (checksum first when ``verify``); images cached locally."""
        bench = self.bench
        if not bench.default_data and not opts.data:
            defaults = " and ".join(b.name for b in BENCHMARKS.values() if b.default_data)
            raise LatentcheckError(f"--data is required for benchmark {bench.name!r} (the toy world default applies "
                                   f"to {defaults} only)")
        path = opts.data if opts.data else data_path(opts)
        self.md5 = bench.verify(path) if self.verify else None
        cache = _image_cache()
        items = [localize_task(it, cache) if isinstance(it, Task) else it
                 for it in bench.load(path, limit=opts.limit, strict=opts.strict, verify=False)]
        tasks = [t for t in items if isinstance(t, Task)]
        if bench.needs_gold and tasks and all(t.answer is None for t in tasks):
            raise LatentcheckError(f"{path}: none of the {len(tasks)} tasks has a gold answer (BLINK's test split "
                                   "hides them: score it on the official server); refusing to report a score")
        return path, items

    def setup(self, run: AnalysisRun) -> None:
        lm, opts, specs, judge = run.lm, run.opts, self.specs, self.judge
        bench = self.bench = replace(self.bench, variants={**self.bench.variants, PROFILE_VARIANT: profile_variant(lm)})
        variant, mode = resolve_protocol(bench, self.variant, self.scoring)
        if specs and mode != "generate":
            raise LatentcheckError("--intervention needs generation scoring (likelihood ranking never decodes "
                                   "latents)")
        if specs and not lm.profile.is_latent:
            raise LatentcheckError(f"--intervention perturbs fed-back latent vectors, but profile {lm.profile.name!r} "
                                   f"is {lm.profile.kind!r}")
        if judge is not None and mode != "generate":
            raise LatentcheckError("--judge-model applies to generation scoring only (likelihood needs no "
                                   "extraction)")
        dec = replace(lm.profile.decoding, **{k: v for k, v in (self.decoding or {}).items() if v is not None})
        v = bench.variant(variant)
        if judge is None and self.judge_url is not None:
            raise LatentcheckError("--judge-url needs --judge-model (the served model's name)")
        if isinstance(judge, str) or (judge is not None and not isinstance(judge, Judge)):
            from latentcheck.core.backends import make_backend

            protocol = get_protocol(self.judge_protocol or v.judge or "vlmevalkit")
            if self.judge_url is not None:
                backend = make_backend("openai", judge, base_url=self.judge_url, key_env=self.judge_key_env,
                                       concurrency=self.judge_concurrency, cache=self.judge_cache)
            else:
                backend = make_backend("local", judge, batch_size=opts.batch_size, cache=self.judge_cache,
                                       load_kw={"profile": self.judge_profile, "quant": opts.quant,
                                                "device": opts.device, "trust_remote_code": opts.trust_remote_code})
            judge = Judge(backend, protocol)
        self.block = block = max(1, opts.batch_size) * 4
        subtasks = bench.loader_kwargs.get("subtasks")
        self.settings = BenchSettings(benchmark=bench.name + (":" + ",".join(subtasks) if subtasks else ""),
                                      variant=variant, scoring=mode, interventions=[s.to_dict() for s in specs],
                                      decoding=asdict(dec), judge=None if judge is None else judge.describe(),
                                      verify=self.verify, calibration_size=(self.calibration_size or block)
                                      if _needs_stats(specs) else None, force_latent=self.force_latent)
        self.run = _BenchRun(lm, opts, bench, variant, mode, specs, dec, judge, self.force_latent)
        self.calibration = self.run.calibrate(in_id_order(run.tasks), self.settings.calibration_size) \
            if _needs_stats(specs) else None
        self.variant_name, self.mode, self.v, self.dec, self.judge = variant, mode, v, dec, judge

    def stages(self, run: AnalysisRun) -> list[RecordStage]:
        # on CPU the preparation thread competes with the model for the GIL and the cores: no gain measured
        # (docs/performance.md); on a GPU it hides image decoding behind the forward passes
        return [RecordStage("samples", self.run.process_block, config=asdict(self.settings), block_size=self.block,
                            prepare_block=self.run.prepare_block, prefetch=run.lm.device != "cpu",
                            description=f"bench {self.bench.name}")]

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        bench, opts, lm, specs, v, mode, judge = self.bench, run.opts, run.lm, self.specs, self.v, self.mode, self.judge
        records = [r for r in run.records["samples"] if r.get("type", "sample") in ("sample", "error")]
        conditions = ["baseline"] + [s.label for s in specs]
        per = summarise(bench, records, conditions, seed=opts.seed, n_boot=self.n_boot)
        unscored = [r.get("record") or r.get("key") for r in records
                    if r.get("type") == "error" and r.get("id") is None]
        summary: dict[str, Any] = {
            "command": COMMAND, "benchmark": bench.name, "description": bench.description,
            "subtasks": bench.loader_kwargs.get("subtasks"),
            "variant": {"name": self.variant_name, "source": v.source, "mode": v.mode, "extractor": v.extractor,
                        "system_prompt": v.system_prompt if opts.system is None else opts.system},
            "scoring": mode, "extractor": v.extractor if mode == "generate" else None,
            "judge": None if judge is None else judge.describe(),
            "model": lm.describe(),
            "processor": {"max_pixels": lm.info.get("max_pixels"), "min_pixels": lm.info.get("min_pixels")},
            "decoding": asdict(self.dec) if mode == "generate" else None, "batch_size": opts.batch_size,
            "seed": opts.seed, "data": {"path": run.data, "md5": self.md5, "limit": opts.limit},
            "chance": {"official": bench.chance, "these_samples": bench.chance_for(run.tasks)},
            "interventions": [s.to_dict() | {"label": s.label} for s in specs], "calibration": self.calibration,
            "counts": run.counts["samples"], "scores": per["baseline"]["scores"],
            "scores_rule": per["baseline"]["scores_rule"],
            "official": official_status(bench, v, mode, judge, opts.limit, per["baseline"], unscored),
            "errors": {"counted_wrong": per["baseline"]["errors"], "unreadable_rows": unscored},
            "conditions": per,
            "latent_trigger": trigger_summary(records, conditions, lm.profile.kind) if mode == "generate" else None,
            "timing": {"total_s": round(time.perf_counter() - run.started, 3)}}
        warn_trigger(summary["latent_trigger"], COMMAND)
        return summary


def run_bench(opts: CommonOptions, benchmark: str | Benchmark | None = None, variant: str | None = None,
              scoring: str | None = None, interventions: Iterable[str | InterventionSpec] | None = None,
              judge: str | Judge | None = None, *, decoding: dict[str, Any] | None = None, verify: bool = True,
              judge_profile: str | None = None, calibration_size: int | None = None, force_latent: bool = False,
              n_boot: int = 2000, lm=None, judge_protocol: str | None = None, judge_url: str | None = None,
              judge_key_env: str = DEFAULT_KEY_ENV, judge_cache: str | bool | None = True,
              judge_concurrency: int = 4, image_root: str | None = None) -> AnalysisResult:
    """Run a benchmark; write ``<out>/samples.jsonl``, ``<out>/summary.json`` (and the lmms-eval-shaped
    ``<out>/results.json``, core/lmms.py); return the
    :class:`~latentcheck.core.analysis.AnalysisResult` (``result["conditions"]`` etc. read the results).

    ``benchmark``: a registry name (``"blink:Jigsaw"``), a :class:`Benchmark`, or None = ``generic`` (then with no
    ``opts.data`` the toy world test split). ``decoding`` overrides fields of the profile's decoding
    (``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``). ``judge``:
    a :class:`~latentcheck.bench.judges.Judge`, or a model: with ``judge_url`` the served model's name on that
    OpenAI-compatible endpoint (key from ``$judge_key_env``), else a local path / zoo name loaded through the one
    loader (``judge_profile``). ``judge_protocol`` defaults to the variant's (HR-Bench official: ``hrbench``, BLINK
    official: ``blink``, Monet: ``monet``, else ``vlmevalkit``); ``judge_cache``: the persistent reply cache (True =
    ``$LATENTCHECK_CACHE/responses.sqlite``, a path, or None). ``force_latent`` forces the latent-start token as the
    first generated token (latent profiles).
    """
    return run_analysis(BenchRun(benchmark, variant, scoring, interventions, judge, decoding=decoding, verify=verify,
                                 judge_profile=judge_profile, calibration_size=calibration_size,
                                 force_latent=force_latent, n_boot=n_boot, judge_protocol=judge_protocol,
                                 judge_url=judge_url, judge_key_env=judge_key_env, judge_cache=judge_cache,
                                 judge_concurrency=judge_concurrency, image_root=image_root), opts, lm=lm)


def official_status(bench: Benchmark, v: PromptVariant, mode: str, judge: Judge | None, limit: int | None,
                    base: dict[str, Any], unscored: list) -> dict[str, Any]:
    """Whether ``scores`` is the official number, and every reason it is not (comparable = False)."""
    reasons = []
    if v.name != "official":
        reasons.append(f"variant {v.name!r} is not the official protocol")
    if v.judge_required and judge is None:
        reasons.append(f"the official {bench.name} pipeline sends every reply to an LLM judge ({v.judge}); these are "
                       "rule-based scores (pass --judge-model)")
    if judge is not None and v.judge and judge.protocol.name != v.judge:
        reasons.append(f"judged with protocol {judge.protocol.name!r}, the variant's is {v.judge!r}")
    if limit is not None:
        reasons.append(f"--limit {limit}: a subset of the benchmark")
    scores = base.get("scores") or {}
    for r in (scores.get("official") or {}).get("not_comparable", []):
        reasons.append(r)
    if unscored:
        reasons.append(f"{len(unscored)} row(s) could not be read at all and are not in any denominator: "
                       + ", ".join(map(str, unscored[:5])))
    return {"comparable": not reasons, "reasons": reasons, "variant_is_official": v.name == "official",
            "judge_required": v.judge_required}


def _image_cache() -> Path:
    from latentcheck.toy.zoo import cache_root

    return cache_root() / "bench-images"


__all__ = ["run_bench", "Judge", "official_status", "option_mean_ce", "option_reply_ids", "option_reply_text",
           "resolve_protocol", "profile_variant", "summarise", "condition_results", "latency",
           "localize_task", "task_images", "BenchSettings"]
