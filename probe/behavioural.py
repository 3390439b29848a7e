"""Behavioural probe: can the model answer derived questions from its own latents alone (paper §4)?

Stage 1 (capture): each source task is run normally (image visible, profile attention rules); its latents and the
prompt's reference states (image tokens, question tokens, last prompt token) go to a ``TensorStore`` on disk
(``<out>/capture/tensors``, one record per source in ``<out>/capture/samples.jsonl``).

Stage 2 (behavioural, ``<out>/samples.jsonl``, one record per derived question): every derived question (same image
region, other attribute; ``meta.source_id`` names its source) is asked under these arms, all scored at the same answer
point (after the latent span):

- ``latents``: the source's recorded latents are inserted as the latent span (override), and the image is hidden
  from every position after the image block (``image_visibility="none"``): the answer sees the image only through
  the inserted vectors;
- ``shared``: same, with the dataset-mean latent repeated (as many vectors as recorded);
- ``noise``: same, with Gaussian vectors norm-matched to each recorded latent (seeded per source and index);
- ``text_only``: the image removed from the prompt and the latent span dropped (override of length 0);
- ``image``: a normal run with the image (the model's own latents for the derived question) = upper bound;
- ``random``: a seeded random guess (1 / n_options expected).

Stage 3 (``probe/trained.py``): trained probes and latent geometry on the captured states.
All three stages write into one summary (``summary.json``) plus PNG plots under ``<out>/plots``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.analysis import AnalysisResult, AnalysisRun, AnalysisSpec, RecordStage, finish, run_analysis
from latentcheck.core.runner import CommonOptions, TensorStore, data_path, error_record
from latentcheck.core.records import in_id_order
from latentcheck.core.summaries import AccuracyEffect, Effect, Proportion
from latentcheck.core.tasks import LETTERS, BadRecord, Task, read_tasks, validate_record
from latentcheck.probe.attention import attention_record, plot_attention, summarise_attention
from latentcheck.probe.lens import lens_record, summarise_lens
from latentcheck.probe.trained import REFERENCE_SITES, ProbeConfig, analyse_states

COMMAND = "probe"
ARMS = ("latents", "shared", "noise", "text_only", "image")
PLOT_ORDER = ("random", "text_only", "shared", "noise", "latents", "image")
SCORINGS = ("logprob", "generate")
SAME = "same"  # --derived same: ask each source's own question again
CAPTURE_DIR = "capture"
TENSOR_DIR = "tensors"


@dataclass
class ProbeOptions:
    """Options of ``latentcheck probe`` beyond the common ones."""

    derived: str | None = None  # derived-question JSONL (default: next to a toy task file, or from toy metadata)
    labels: list[str] | None = None  # trained-probe labels (default: toy labels / category + answer)
    from_cache: str | None = None  # re-run the trained probes on a previous run's captured states (no model)
    scoring: str = "logprob"  # logprob: argmax of option log-probs at the answer point; generate: extracted letter
    force_latent: bool = True  # force the latent span in the capture and image runs
    behavioural: bool = True
    trained: bool = True
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    n_boot: int = 2000
    erase: str | None = None  # a label to erase from / steer in the latents (probe/erasure.py); None = skip
    attention: bool = True  # attention mass of every latent step on the image / target region per layer

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise LatentcheckError(f"--scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")


ProbeResult = AnalysisResult  # what run_probe returns (the one result type)


# ------------------------------------------------------------------------------------------------ shared helpers
def _key_seed(seed: int, key: str, salt: str) -> list[int]:
    return [int(seed), int(hashlib.sha256(f"{salt}|{key}".encode()).hexdigest()[:12], 16)]


def _scores(lm, trace, task: Task, extract) -> dict[str, Any]:
    """Both answers of one trace: argmax option log-prob at the answer point and the extracted generated letter."""
    from latentcheck.core.answers import read_trace

    gold = task.answer_letter
    lp = trace.option_logprobs
    pred = LETTERS[int(np.argmax(lp))] if lp is not None else None
    gen = read_trace(lm, trace, task.options, extract).answer if task.options else None
    return {"pred": pred, "correct": int(pred is not None and pred == gold), "gen_pred": gen,
            "gen_correct": int(gen is not None and gen == gold),
            "option_logprobs": None if lp is None else [float(x) for x in lp]}


def _option_ids(lm, task: Task) -> list[int] | None:
    from latentcheck.core.prompts import option_token_ids

    return option_token_ids(lm, len(task.options)) if task.options else None


def _hidden_size(lm) -> int:
    return int(lm.model.get_input_embeddings().weight.shape[1])


# ------------------------------------------------------------------------------------------------ stage 1: capture
def capture_block(engine, lm, tasks: list[Task], store: TensorStore, force_latent: bool = True,
                  batch_size: int = 8, attention: bool = True) -> list[dict[str, Any]]:
    """Run source tasks normally; save latents + reference states to ``store``; one record per task (with the logit
    lens, and with ``attention`` the attention mass of every latent step per layer: probe/attention.py)."""
    from latentcheck.core.engine import Request
    from latentcheck.core.extract import get_extractor
    from latentcheck.core.prompts import build_prompt, region_token_indices, task_text

    extract = get_extractor(lm.profile.extractor)
    out: dict[str, dict] = {}
    reqs, ok, prompts = [], [], []
    for t in tasks:
        try:
            image = t.load_image()
            prompt = build_prompt(lm, t.id, task_text(t, lm.profile), image)
        except RecordError as e:
            out[t.id] = error_record(t.id, e)
            continue
        reqs.append(Request(prompt, option_ids=_option_ids(lm, t), force_latent=force_latent))
        ok.append(t)
        prompts.append((prompt, image))
    traces = [tr[0] for tr in engine.run(reqs, batch_size=batch_size)] if reqs else []
    if ok:
        empty = np.zeros(0, dtype=np.float32)
        arrays = {"latents": [tr.latents for tr in traces]}
        for site in REFERENCE_SITES:
            arrays[site] = [tr.refs.get(site, empty) for tr in traces]
        store.save([t.id for t in ok], arrays)  # before the records: every written record has its tensors
    for t, tr, (prompt, image) in zip(ok, traces, prompts):
        rec = {"key": t.id, "category": t.category, "answer": t.answer_letter, "has_image": t.image is not None,
               "latent_count": tr.latent_count, "triggered": tr.triggered}
        if t.options:
            rec.update({k: v for k, v in _scores(lm, tr, t, extract).items() if k != "option_logprobs"})
            if tr.latent_count and t.answer_letter is not None and t.answer_letter in LETTERS[:len(t.options)]:
                pred = rec.get("pred")
                rec["logit_lens"] = lens_record(
                    lm, tr.raw_latents, tr.refs.get("last_prompt_token"), _option_ids(lm, t),
                    LETTERS.index(t.answer_letter),
                    LETTERS.index(pred) if isinstance(pred, str) and pred in LETTERS[:len(t.options)] else None)
        if attention and tr.latent_count and prompt.image_grid_thw is not None:
            rows = engine.replay_attention(prompt, tr)
            if rows is not None:
                rec["attention"] = attention_record(rows, region_token_indices(lm, prompt, t.bbox, image))
        out[t.id] = rec
    return [out[t.id] for t in tasks]


# ------------------------------------------------------------------------------------------------ derived questions
def load_derived(data: str, derived: str | None, sources: list[Task], strict: bool = False
                 ) -> tuple[list[Task | BadRecord] | None, str]:
    """The derived questions and where they came from: ``derived`` (a task-schema JSONL), else
    ``derived_<split>.jsonl`` next to a toy ``tasks_<split>.jsonl``, else regenerated from toy-world metadata
    (``toy/world.derived_questions``). (None, reason) when there are none. ``derived="same"`` asks every source
    task's own question again (``meta.source_id`` = the source): the probe's positive-control setting, where a model
    whose answer reads the image only through the fed vectors must answer as well as with the image."""
    if derived == SAME:
        return [dataclasses.replace(t, id=f"{t.id}~same", meta={**t.meta, "source_id": t.id}) for t in sources], \
            "the source questions themselves (--derived same)"
    if derived:
        return list(read_tasks(derived, strict=strict)), derived
    p = Path(data)
    m = re.fullmatch(r"tasks_(\w+)\.jsonl", p.name)
    if m and (p.parent / f"derived_{m.group(1)}.jsonl").exists():
        sib = p.parent / f"derived_{m.group(1)}.jsonl"
        return list(read_tasks(sib, strict=strict)), str(sib)
    from latentcheck.toy.world import WORLD_NAME

    if sources and all(t.meta.get("world") == WORLD_NAME for t in sources):
        return _toy_derived(sources, strict), "generated from toy-world metadata"
    return None, "no derived questions (pass --derived FILE with meta.source_id on each record)"


def _toy_derived(sources: list[Task], strict: bool) -> list[Task | BadRecord]:
    from latentcheck.toy.world import derived_questions, make_sample

    out: list[Task | BadRecord] = []
    for t in sources:
        where = f"{t.id} (toy metadata)"
        try:
            meta = t.meta
            try:
                sample = make_sample(int(meta["index"]), meta["split"], int(meta["seed"]), meta["question_type"])
            except (KeyError, TypeError, ValueError) as e:
                raise RecordError(t.id, "meta", f"toy metadata incomplete ({e!s}); pass --derived") from None
            if sample.id != t.id:
                raise RecordError(t.id, "meta", f"toy metadata regenerates {sample.id!r}, not this id; pass --derived")
            for d in derived_questions(sample, t.image):
                out.append(validate_record(d, where, t.base_dir))
        except RecordError as e:
            if strict:
                raise
            out.append(BadRecord(where, e))
    return out


def select_derived(items: list[Task | BadRecord], selected: set[str], all_ids: set[str]) -> list[Task | BadRecord]:
    """Derived questions whose source is among the run's sources (``--limit`` drops the others). Records without a
    source id or with an unknown one are kept so they become error records; bad records are kept too."""
    out = []
    for it in items:
        if isinstance(it, BadRecord):
            out.append(it)
            continue
        sid = it.meta.get("source_id")
        if sid is None or str(sid) in selected or str(sid) not in all_ids:
            out.append(it)
    return out


# ------------------------------------------------------------------------------------------------ stage 2: behavioural
@dataclass
class BehaviouralContext:
    """What the behavioural block needs besides the derived questions."""

    sources: dict[str, Task]  # the run's source tasks (by id)
    latents: dict[str, np.ndarray]  # captured latents [K, H] of the sources that ran
    mean_latent: np.ndarray  # [H] dataset-mean latent (the shared-tensor arm)
    seed: int = 0
    force_latent: bool = True
    batch_size: int = 8


def noise_like(latents: np.ndarray, key: str, seed: int) -> np.ndarray:
    """Gaussian vectors with the norm of each row of ``latents`` (seeded per key)."""
    rng = np.random.default_rng(_key_seed(seed, key, "noise"))
    n = rng.standard_normal(latents.shape)
    norms = np.linalg.norm(latents, axis=-1, keepdims=True)
    return (n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12) * norms).astype(np.float32)


def _check_derived(d: Task, ctx: BehaviouralContext) -> tuple[Task, np.ndarray]:
    if not d.options:
        raise RecordError(d.id, "options", "the behavioural probe needs multiple-choice options")
    if d.answer_letter is None:
        raise RecordError(d.id, "answer", "missing (needed to score the derived question)")
    sid = d.meta.get("source_id")
    if sid is None:
        raise RecordError(d.id, "meta.source_id", "missing: a derived question must name its source sample")
    sid = str(sid)
    if sid not in ctx.sources:
        raise RecordError(d.id, "meta.source_id", f"unknown source {sid!r} (not in the task file)")
    if sid not in ctx.latents:
        raise RecordError(d.id, "meta.source_id", f"source {sid!r} has no captured latents (its own record failed)")
    return ctx.sources[sid], ctx.latents[sid]


def behavioural_block(engine, lm, derived: list[Task], ctx: BehaviouralContext) -> list[dict[str, Any]]:
    """Answer each derived question under every arm (module docstring); one record per question."""
    from latentcheck.core.engine import Condition, Request
    from latentcheck.core.extract import get_extractor
    from latentcheck.core.prompts import build_prompt, task_text

    extract = get_extractor(lm.profile.extractor)
    H = _hidden_size(lm)
    out: dict[str, dict] = {}
    reqs, plan = [], []
    for d in derived:
        try:
            src, z = _check_derived(d, ctx)
            image = d.load_image() if d.image is not None else src.load_image()
            if image is None:
                raise RecordError(d.id, "image", "neither the derived question nor its source has an image")
            text = task_text(d, lm.profile)
            with_image = build_prompt(lm, d.id, text, image)
            text_only = build_prompt(lm, d.id, text, None)
        except RecordError as e:
            out[d.id] = error_record(d.id, e)
            continue
        z = np.asarray(z, dtype=np.float32).reshape(-1, H)
        opts = _option_ids(lm, d)
        shared = np.repeat(np.asarray(ctx.mean_latent, dtype=np.float32)[None], len(z), 0)
        reqs.append(Request(with_image, [Condition("latents", override=z), Condition("shared", override=shared),
                                         Condition("noise", override=noise_like(z, src.id, ctx.seed))],
                            option_ids=opts, image_visibility="none", force_latent=True))
        reqs.append(Request(with_image, [Condition("image")], option_ids=opts, force_latent=ctx.force_latent))
        reqs.append(Request(text_only, [Condition("text_only", override=np.zeros((0, H)))],
                            option_ids=opts, force_latent=True))
        plan.append((d, src, len(z)))
    traces = engine.run(reqs, batch_size=ctx.batch_size) if reqs else []
    for i, (d, src, k) in enumerate(plan):
        by_arm = {tr.condition: tr for group in traces[3 * i:3 * i + 3] for tr in group}
        n = len(d.options)
        guess = LETTERS[int(np.random.default_rng(_key_seed(ctx.seed, d.id, "random")).integers(n))]
        gold = d.answer_letter
        rand = {"pred": guess, "correct": int(guess == gold), "gen_pred": guess, "gen_correct": int(guess == gold)}
        out[d.id] = {"key": d.id, "source_id": src.id, "category": d.category, "n_options": n, "answer": gold,
                     "latent_count": k,
                     "arms": {**{a: _scores(lm, by_arm[a], d, extract) for a in ARMS}, "random": rand}}
    return [out[d.id] for d in derived]


# ------------------------------------------------------------------------------------------------ summaries
def _acc(correct: np.ndarray) -> dict[str, Any]:
    """The accuracy of 0/1 ``correct`` as a Proportion dict (Wilson interval)."""
    return Proportion.of(correct).to_dict()


def summarise_behavioural(records: list[dict], scoring: str = "logprob", seed: int = 0,
                          n_boot: int = 2000) -> dict[str, Any]:
    """Per-arm accuracy (Wilson), accuracy - expected chance (paired bootstrap vs 1/n_options), and paired
    comparisons (McNemar + paired bootstrap, ``core.stats.accuracy_effect``) of each arm vs the random guess and
    the text-only baseline, plus latents vs shared / noise / image; accuracy by category."""
    ok = [r for r in records if r.get("type", "sample") == "sample" and "arms" in r]
    if not ok:
        return {"n": 0, "skipped": "no scored derived questions"}
    field_ = "correct" if scoring == "logprob" else "gen_correct"
    arms = list(PLOT_ORDER)
    corr = {a: np.array([r["arms"][a][field_] for r in ok], dtype=np.int64) for a in arms}
    chance = np.array([1.0 / r["n_options"] for r in ok])
    res: dict[str, Any] = {"n": len(ok), "scoring": scoring, "expected_chance": float(chance.mean()),
                           "arms": {a: _acc(corr[a]) for a in arms}}
    res["no_answer"] = {a: int(sum(r["arms"][a]["pred" if scoring == "logprob" else "gen_pred"] is None for r in ok))
                        for a in ARMS}
    res["vs_chance"] = {a: Effect.paired(chance, corr[a], n_boot=n_boot, seed=seed).to_dict() for a in arms}

    def paired(base: np.ndarray, cond: np.ndarray) -> dict[str, Any]:
        return AccuracyEffect.paired(base, cond, seed=seed, n_boot=n_boot).to_dict()

    comps: dict[str, Any] = {}
    for a in arms:
        if a != "random":
            comps[f"{a}_vs_random"] = paired(corr["random"], corr[a])
        if a not in ("random", "text_only"):
            comps[f"{a}_vs_text_only"] = paired(corr["text_only"], corr[a])
    for a in ("shared", "noise", "image"):
        comps[f"latents_vs_{a}"] = paired(corr[a], corr["latents"])
    res["comparisons"] = comps
    cats = sorted({str(r.get("category")) for r in ok})
    if len(cats) > 1:  # per category and arm: a Proportion (n = the category's samples)
        res["by_category"] = {c: {a: _acc(np.array([r["arms"][a][field_] for r in ok if str(r.get("category")) == c]))
                                  for a in arms} for c in cats}
    return res


def summarise_capture(records: list[dict]) -> dict[str, Any]:
    """Source accuracy (with the image, normal run) and latent counts."""
    ok = [r for r in records if r.get("type", "sample") == "sample"]
    res: dict[str, Any] = {"n": len(ok)}
    if not ok:
        return res
    counts = np.array([r["latent_count"] for r in ok])
    res.update(latent_count_mean=float(counts.mean()), latent_count_min=int(counts.min()),
               latent_count_max=int(counts.max()), triggered_rate=float(np.mean([r["triggered"] for r in ok])))
    res["logit_lens"] = summarise_lens(ok)
    scored = [r for r in ok if "correct" in r]
    if scored:
        res["source_accuracy"] = _acc(np.array([r["correct"] for r in scored]))
        res["source_accuracy_generated"] = _acc(np.array([r["gen_correct"] for r in scored]))
    return res


def plot_behavioural(beh: dict[str, Any], out_dir: str | Path) -> list[str]:
    from latentcheck.core.plots import bar_ci

    if "arms" not in beh:
        return []
    arms = [a for a in PLOT_ORDER if a in beh["arms"]]
    A = beh["arms"]
    return [bar_ci(arms, [A[a]["estimate"] for a in arms], [A[a]["lo"] for a in arms], [A[a]["hi"] for a in arms],
                   Path(out_dir) / "behavioural.png", title=f"derived questions (n={beh['n']}, {beh['scoring']})",
                   ylabel="accuracy (Wilson 95% CI)", hline=beh["expected_chance"], hline_label="chance (1/n options)")]


# ------------------------------------------------------------------------------------------------ orchestration
def _tensor_dir(root: Path) -> Path:
    return root / CAPTURE_DIR / TENSOR_DIR


class Probe(AnalysisSpec):
    """The probe as an analysis (core.analysis.run_analysis), two record stages: ``capture`` (the sources, latents
    to a TensorStore, ``<out>/capture/samples.jsonl``) and then, built from the captured latents, ``behavioural``
    (the derived questions, ``<out>/samples.jsonl``); the summary adds the optional erasure arm (run on the model,
    ``erasure_samples.json``), the trained probes and geometry, and makes the figures with them."""

    command = COMMAND
    results_stage = None  # two record files: the result names neither (counts nest per stage)

    def __init__(self, popts: ProbeOptions | None = None):
        self.popts = popts or ProbeOptions()

    def setup(self, run: AnalysisRun) -> None:
        from latentcheck.core.engine import Engine

        lm = run.lm
        if not lm.profile.is_latent:
            raise LatentcheckError(f"profile {lm.profile.name!r} is {lm.profile.kind}: the probe needs a "
                                   "latent-reasoning model (one whose profile feeds latent vectors)")
        # the valid tasks in the canonical record-id order: the mean latent, erasure, trained probes (their splits)
        # and every statistic see the samples in one order whatever the file's order (results files keep input order)
        self.sources = in_id_order(run.tasks)
        self.engine = Engine(lm, seed=run.opts.seed)
        self.tdir = _tensor_dir(run.out)
        self.store = TensorStore(self.tdir)
        self.origin: str | None = None

    def _clear_tensors(self) -> None:
        """A fresh run replaces the results file, so it replaces the tensors too; called by run_records once this
        process holds the results file's lock; every data-parallel process deletes, and a barrier stops early
        writers."""
        for f in self.tdir.glob("*.npz"):
            f.unlink(missing_ok=True)

    def stages(self, run: AnalysisRun) -> Iterator[RecordStage]:
        from latentcheck.core.interventions import LatentStats

        o, popts, lm, sources = run.opts, self.popts, run.lm, self.sources
        yield RecordStage("capture", lambda block: capture_block(self.engine, lm, block, self.store,
                                                                 popts.force_latent, o.batch_size, popts.attention),
                          config={"force_latent": popts.force_latent, "attention": popts.attention},
                          command="probe.capture", folder=CAPTURE_DIR, description="probe: capture",
                          on_fresh_start=self._clear_tensors)
        self.tensors = tensors = self.store.load([t.id for t in sources])
        if not popts.behavioural:
            return
        derived, self.origin = load_derived(run.data, popts.derived, sources, o.strict)
        if derived is None:
            return
        all_ids = {t.id for t in read_tasks(run.data) if isinstance(t, Task)} if o.limit else {t.id for t in sources}
        derived = select_derived(derived, {t.id for t in sources}, all_ids)
        lat = {t.id: tensors[t.id]["latents"] for t in sources if "latents" in tensors.get(t.id, {})}
        stats = LatentStats.from_latents(list(lat.values()))  # record-id order: the same float sums every run
        ctx = BehaviouralContext(sources={t.id: t for t in sources}, latents=lat, mean_latent=stats.mean, seed=o.seed,
                                 force_latent=popts.force_latent, batch_size=o.batch_size)
        yield RecordStage("behavioural", lambda block: behavioural_block(self.engine, lm, block, ctx), items=derived,
                          config={"force_latent": popts.force_latent, "derived": self.origin},
                          command="probe.behavioural", description="probe: derived questions")

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        o, popts, sources, tensors = run.opts, self.popts, self.sources, self.tensors
        summary: dict[str, Any] = {"command": "probe", "model": run.lm.describe(), "data": run.data,
                                   "options": {"scoring": popts.scoring, "force_latent": popts.force_latent}}
        if popts.behavioural:
            summary["derived"] = self.origin
        if popts.erase:
            from latentcheck.core.records import write_json_atomic
            from latentcheck.probe.erasure import erasure_block, summarise_erasure

            lat = {t.id: tensors[t.id]["latents"] for t in sources if "latents" in tensors.get(t.id, {})}
            er_records, check = erasure_block(self.engine, run.lm, sources, lat, popts.erase, o.seed, o.batch_size,
                                              popts.probe)
            write_json_atomic(run.out / "erasure_samples.json", er_records)
            summary["erasure"] = summarise_erasure(er_records, check, o.seed, popts.n_boot)
        summary["counts"] = dict(run.counts)
        self.plots = _complete(o, popts, summary, run.records["capture"], run.records.get("behavioural", []),
                               tensors, {t.id: t for t in sources})
        return summary

    def figures(self, run: AnalysisRun, summary: dict[str, Any]) -> list[str]:
        return self.plots


def run_probe(opts: CommonOptions, popts: ProbeOptions | None = None, lm=None) -> ProbeResult:
    """The whole probe (capture -> behavioural -> trained probes + geometry -> summary.json + plots); with
    ``popts.from_cache`` only the trained probes / geometry are recomputed from a previous run's states.
    ``lm``: an already loaded model (default: load the one named by ``opts``)."""
    popts = popts or ProbeOptions()
    if popts.from_cache:
        return _run_from_cache(opts, popts)
    return run_analysis(Probe(popts), opts, lm=lm)


def _complete(opts: CommonOptions, popts: ProbeOptions, summary: dict[str, Any], cap_records: list[dict],
              beh_records: list[dict], tensors: dict[str, dict[str, np.ndarray]], tasks: dict[str, Task]
              ) -> list[str]:
    """Add the capture, behavioural and trained-probe parts to ``summary`` (their figures made on the way, the
    trained probes' inside ``analyse_states``); returns the figure paths."""
    plot_dir = Path(opts.out) / "plots"
    plots: list[str] = []
    summary["capture"] = summarise_capture(cap_records)
    if any("attention" in r for r in cap_records):
        summary["capture"]["attention"] = summarise_attention(cap_records, popts.n_boot, opts.seed)
        plots += plot_attention(summary["capture"]["attention"], plot_dir)
    from latentcheck.core.trigger import trigger_block, warn_trigger

    ok = [r for r in cap_records if r.get("type", "sample") == "sample"]
    kind = (summary.get("model") or {}).get("profile_kind", "latent")
    summary["latent_trigger"] = trigger_block(
        {"capture": ([bool(r["triggered"]) for r in ok], [r["latent_count"] for r in ok])}, "capture", kind)
    warn_trigger(summary["latent_trigger"], "probe")
    if beh_records:
        summary["behavioural"] = summarise_behavioural(beh_records, popts.scoring, opts.seed, popts.n_boot)
        plots += plot_behavioural(summary["behavioural"], plot_dir)
    elif popts.behavioural:
        summary["behavioural"] = {"n": 0, "skipped": summary.get("derived") or "no behavioural records"}
    if popts.trained:
        usable = {k: v for k, v in tensors.items() if k in tasks}
        if usable:
            tr = analyse_states(usable, tasks, popts.labels, popts.probe, plot_dir=plot_dir)
            summary["trained"], summary["similarity"] = tr.probes, tr.similarity
            plots += tr.plots
        else:
            summary["trained"] = {"skipped": "no captured states"}
    summary["plots"] = plots
    summary["errors"] = sum(int((c or {}).get("errors", 0)) for c in summary.get("counts", {}).values())
    return plots


def _run_from_cache(opts: CommonOptions, popts: ProbeOptions) -> ProbeResult:
    """Trained probes and geometry from cached states; the behavioural summary from the cached samples.jsonl."""
    from latentcheck.core.records import in_record_order, read_results, record_order_key

    root = Path(popts.from_cache)
    if _tensor_dir(root).is_dir():
        tdir, run_dir = _tensor_dir(root), root
    elif root.is_dir() and any(root.glob("*.npz")):
        tdir = root
        run_dir = root.parent.parent if root.parent.name == CAPTURE_DIR else None
    else:
        raise LatentcheckError(f"--from-cache {root}: no captured states there (expected {CAPTURE_DIR}/{TENSOR_DIR}/ "
                               "of a previous `latentcheck probe` run, or a folder of .npz files)")
    prov, cap_records = ({}, [])
    cap_file = run_dir / CAPTURE_DIR / "samples.jsonl" if run_dir else None
    if cap_file is not None and cap_file.exists():
        prov, cap_records = read_results(cap_file)
        cap_records = in_record_order(cap_records)
    data = opts.data or (prov.get("config") or {}).get("data")
    data = data or data_path(opts)
    tasks = {t.id: t for t in read_tasks(data, limit=opts.limit) if isinstance(t, Task)}
    tensors = dict(sorted(TensorStore(tdir).load().items(), key=lambda kv: record_order_key(kv[0])))
    beh_records = []
    if run_dir is not None and (run_dir / "samples.jsonl").exists():
        beh_records = in_record_order(read_results(run_dir / "samples.jsonl")[1])
        beh_records = [r for r in beh_records if r.get("source_id") in tasks or r.get("type") == "error"]
    summary: dict[str, Any] = {"command": "probe", "from_cache": str(root), "model": prov.get("model"), "data": data,
                               "options": {"scoring": popts.scoring}}
    popts = dataclasses.replace(popts, behavioural=bool(beh_records))
    plots = _complete(opts, popts, summary, cap_records, beh_records, tensors, tasks)
    return finish(COMMAND, opts.out, summary, {"errors": summary["errors"], **summary.get("counts", {})}, None, plots)
