"""The Input -> Latent link (X -> Z, paper §2): do latents change when the input changes?

For every sample and input treatment (perturb/treatments.py) the original and the treated input run as separate
engine requests (batched together), and we compare what each produced:

* the *latents*: the fed-back vectors of a latent profile (``Trace.latents``), or, for plain and text-imagination
  profiles, the last-layer hidden states of the generated imagination span (the tokens between the profile's
  imagination markers; the whole response for plain profiles) captured with ``Engine(capture_hidden=True)``;
* the *reference states* of the same runs (``Trace.refs``: mean image-token state, mean question-token state, last
  prompt token).

Per sample we record, per latent index, the cosine and relative L2 change ``||z - z'|| / ||z||`` between original and
treated latents, the same for each reference state, and the answers under both inputs. The aggregates
(:func:`summarise`) are read back from the results file and a bounded tensor store, so memory does not grow with the
number of samples and a resumed run's summary covers every record:

* per treatment: mean change by latent index, bootstrap CIs, and the *sensitivity ratio* = mean latent change / mean
  reference change (``core.stats.bootstrap_ratio``, paired resampling) against each reference state;
* on the first ``max_matrix`` samples in record-id order (original inputs): inter-instance cosine matrices per latent index and for the
  reference states (raw and mean-centred), within- vs across-category means, intra-instance collapse curves, effective
  rank and participation ratio, and mean-centred original-vs-treated cosines.

Centring (anisotropy correction): every state type (latents of every index, image-token, question-token and
last-prompt-token states) is centred by ONE mean, the average of the per-type means over the geometry samples. A
type's own mean would force its off-diagonal mean towards ``-1/(N-1)`` whatever the data (core/similarity.py) and make
latents and references incomparable; one shared centre removes the common "cone" direction and keeps a type that sits
in its own corner (collapsed latents) visible as high centred similarity.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.analysis import AnalysisResult, AnalysisRun, AnalysisSpec, RecordStage, run_analysis
from latentcheck.core.records import record_order_key
from latentcheck.core.summaries import Estimate, Proportion, Ratio
from latentcheck.core.runner import CommonOptions, TensorStore, distributed, item_key, save_npz_atomic
from latentcheck.core.tasks import LETTERS, Task
from latentcheck.core.trigger import warn_trigger
from latentcheck.perturb.treatments import (REFERENCES, InputVariant, NotApplicable, Treatment, TreatmentContext,
                                            apply_treatment, original_variant, parse_treatments, partner_map)

COMMAND = "perturb-input"
TENSOR_DIR = "tensors"
DEFAULT_MAX_LATENTS_TEXT = 32
MAX_HEATMAP_PANELS = 10
# The smallest relative latent change ||z - z'|| / ||z|| told apart from round-off: the identity treatment (the same
# input run twice in other batches) measures <= 5e-7 on every zoo model, the smallest genuine change seen is 9e-4
# (toy-vector under noise:std=0.2). Changes at or below it count as "did not move" (``latents_moved``), and the
# sensitivity ratio's interval reaches at least MOVE_RESOLUTION / mean reference change (docs/perturb-input.md).
MOVE_RESOLUTION = 1e-4


PerturbInputResult = AnalysisResult  # what run_perturb_input returns (the one result type)


@dataclass
class Capture:
    """What one run of one input produced, reduced to what the analysis needs."""

    latents: np.ndarray  # [n, H]
    refs: dict[str, np.ndarray]
    text: str
    answer: str | None  # extracted option letter (or free text for open questions)
    answer_option: str | None  # the chosen option's text
    option_probs: np.ndarray | None
    triggered: bool
    span_closed: bool
    span_length: int  # latents in the span before --max-latents
    image_grid: list[int] | None = None  # the prompt's first image grid (t, h, w patches)
    region: list[int] | None = None  # the variant's bbox as merged-token indices of that image (core.prompts)


# ------------------------------------------------------------------------------------------------ latents
def latent_source(profile) -> str:
    """How the 'latents' of a profile are obtained (recorded in the summary)."""
    if profile.is_latent:
        return "fed-back latent vectors"
    if profile.kind == "text_imagination":
        return "last-layer hidden states of the imagination span (between the imagination markers)"
    return "last-layer hidden states of the generated response"


def _find(seq: list[int], sub: list[int], start: int = 0) -> int | None:
    n = len(sub)
    if n == 0:
        return None
    for i in range(start, len(seq) - n + 1):
        if seq[i:i + n] == sub:
            return i
    return None


def _find_text(lm, ids: list[int], marker: str, start: int = 0) -> tuple[int, int] | None:
    """(first token index of the marker, index after it) by character offsets, for markers that tokenize differently
    inside generated text than alone."""
    pieces = [lm.tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    ends = np.cumsum([len(p) for p in pieces]) if pieces else np.zeros(0, int)
    text = "".join(pieces)
    offset = int(ends[start - 1]) if start > 0 else 0
    pos = text.find(marker, offset)
    if pos < 0:
        return None
    first = int(np.searchsorted(ends, pos, side="right"))
    after = int(np.searchsorted(ends, pos + len(marker), side="left")) + 1
    return first, after


def imagination_span(lm, token_ids: list[int], forced_start: bool) -> tuple[int, int, bool, bool]:
    """(first, end, triggered, closed): generated-token positions of the imagination span of a text-imagination
    trace (``forced_start``: the start marker was part of the prompt, so the span starts at token 0)."""
    tk = lm.tokens
    prof = lm.profile
    if forced_start:
        first = 0
    else:
        s = _find(token_ids, tk.imagination_start)
        if s is not None:
            first = s + len(tk.imagination_start)
        else:
            hit = _find_text(lm, token_ids, prof.imagination["start"])
            if hit is None:
                return 0, 0, False, False
            first = hit[1]
    e = _find(token_ids, tk.imagination_end, first)
    if e is None:
        hit = _find_text(lm, token_ids, prof.imagination["end"], first)
        e = hit[0] if hit is not None else None
    if e is None:
        return first, len(token_ids), True, False
    return first, e, True, True


def trace_latents(lm, trace, forced_start: bool, max_latents: int | None) -> tuple[np.ndarray, bool, bool, int]:
    """(latents [n, H], triggered, span_closed, span length before ``max_latents``) of one trace under the
    profile's definition of 'latents'."""
    prof = lm.profile
    if prof.is_latent:
        lat = trace.latents
        closed = trace.latent_blocks > 0
        triggered = trace.triggered
    else:
        hidden = trace.hidden
        if hidden is None:
            raise LatentcheckError("internal: hidden states were not captured (Engine(capture_hidden=True))")
        ids = list(trace.token_ids)
        if prof.kind == "text_imagination":
            first, end, triggered, closed = imagination_span(lm, ids, forced_start)
        else:
            first, end = 0, len(ids)
            while end > 0 and ids[end - 1] in lm.tokens.eos:
                end -= 1
            triggered, closed = end > 0, trace.finish_reason != "length"
        lat = hidden[first:min(end, len(hidden))]
    span = len(lat)
    if max_latents is not None:
        lat = lat[:max_latents]
    return np.asarray(lat, dtype=np.float32), bool(triggered), bool(closed), span


# ------------------------------------------------------------------------------------------------ comparisons
def _cos_rel(a: np.ndarray, b: np.ndarray) -> tuple[list[float], list[float]]:
    from latentcheck.core.similarity import cosine, relative_l2

    if len(a) == 0:
        return [], []
    return [float(x) for x in np.atleast_1d(cosine(a, b))], [float(x) for x in np.atleast_1d(relative_l2(a, b))]


def compare(orig: Capture, pert: Capture) -> dict[str, Any]:
    """Per latent index cosine / relative L2 (over the indices both runs have) and the same per reference state."""
    k = min(len(orig.latents), len(pert.latents))
    cos, rel = _cos_rel(orig.latents[:k], pert.latents[:k])
    refs = {}
    for name in REFERENCES:
        if name in orig.refs and name in pert.refs:
            c, r = _cos_rel(orig.refs[name][None], pert.refs[name][None])
            refs[name] = {"cosine": c[0], "rel_l2": r[0]}
    return {"n_compared": k, "latent_cosine": cos, "latent_rel_l2": rel,
            "latent_cosine_mean": float(np.mean(cos)) if cos else None,
            "latent_rel_l2_mean": float(np.mean(rel)) if rel else None, "refs": refs}


def _answer_fields(cap: Capture, variant: InputVariant) -> dict[str, Any]:
    correct = None
    if variant.answer is not None and cap.answer is not None:
        correct = cap.answer == variant.answer
    return {"answer": cap.answer, "answer_option": cap.answer_option, "gold": variant.answer, "correct": correct,
            "option_probs": None if cap.option_probs is None else [float(p) for p in cap.option_probs],
            "latent_count": int(len(cap.latents)), "span_length": cap.span_length, "triggered": cap.triggered,
            "span_closed": cap.span_closed}


def _tv_distance(orig: Capture, pert: Capture, variant: InputVariant) -> float | None:
    """Total-variation distance of the option distributions, with the treated options mapped to the original order."""
    if orig.option_probs is None or pert.option_probs is None or variant.option_map is None:
        return None
    if len(variant.option_map) != len(orig.option_probs):
        return None
    mapped = np.zeros(len(orig.option_probs))
    for i, j in enumerate(variant.option_map):
        mapped[j] = pert.option_probs[i]
    return float(0.5 * np.abs(np.asarray(orig.option_probs) - mapped).sum())


# ------------------------------------------------------------------------------------------------ the run
def tensor_dir(out: str | Path) -> Path:
    """This process's tensor-store folder: ``<out>/tensors`` (``<out>/tensors/shard-R-of-W`` when data-parallel)."""
    rank, world = distributed()
    base = Path(out) / TENSOR_DIR
    return base / f"shard-{rank}-of-{world}" if world > 1 else base


def tensor_dirs(out: str | Path) -> list[Path]:
    """The tensor-store folder of a single-process run and any shard folders (a fresh run clears stale ones first:
    :func:`clear_tensor_store`; a run resumed with another process count reads what the earlier layout saved)."""
    base = Path(out) / TENSOR_DIR
    return ([base] + sorted(p for p in base.iterdir() if p.is_dir())) if base.exists() else []


def clear_tensor_store(out: str | Path) -> None:
    """For a fresh run: drop the tensors of earlier runs (this process's folder, the single-process files and the
    shard folders of other process counts), never a folder another process of this run writes."""
    base = Path(out) / TENSOR_DIR
    if not base.exists():
        return
    _, world = distributed()
    if world == 1:
        shutil.rmtree(base)
        base.mkdir(parents=True)  # the run's TensorStore writes here
        return
    shutil.rmtree(tensor_dir(out), ignore_errors=True)
    tensor_dir(out).mkdir(parents=True)
    for f in base.glob("*.npz"):
        f.unlink(missing_ok=True)
    for d in base.glob("shard-*-of-*"):
        if not d.name.endswith(f"-of-{world}"):
            shutil.rmtree(d, ignore_errors=True)


class _Runner:
    """Holds the model, engine and per-run settings; ``process_block`` is the block function of the record stage."""

    def __init__(self, lm, opts: CommonOptions, treatments: list[Treatment], tasks_by_key: dict[str, Task],
                 index_of: dict[str, int], partners: dict[str, str], max_matrix: int, save_tensors: bool,
                 force_start: bool, image_visibility: str | None, max_latents: int | None,
                 max_new_tokens: int | None, latent_override: Callable[[InputVariant], np.ndarray] | None,
                 per_token_refs: bool = True):
        from latentcheck.core.engine import Engine
        from latentcheck.core.extract import get_extractor

        self.lm = lm
        self.opts = opts
        self.treatments = treatments
        self.tasks_by_key = tasks_by_key
        self.index_of = index_of
        self.partners = partners
        self.max_matrix = max_matrix
        self.save_tensors = save_tensors
        self.force_start = force_start
        self.image_visibility = image_visibility
        self.max_latents = max_latents
        self.max_new_tokens = max_new_tokens
        self.latent_override = latent_override
        self.engine = Engine(lm, seed=opts.seed, capture_hidden=not lm.profile.is_latent,
                             capture_image_tokens=per_token_refs)
        self.extract = get_extractor(lm.profile.extractor)
        self.store = TensorStore(tensor_dir(opts.out))

    # -- inputs
    def _variant(self, task: Task) -> InputVariant:
        return original_variant(task, task.load_image())

    def _partner(self, key: str, cache: dict[str, Any]) -> tuple[InputVariant | None, str | None]:
        pk = self.partners.get(key)
        if pk is None:
            return None, None
        if pk not in cache:
            try:
                cache[pk] = self._variant(self.tasks_by_key[pk])
            except RecordError:
                cache[pk] = None
        return cache[pk], pk

    def _request(self, key: str, v: InputVariant):
        from latentcheck.core.engine import Condition, Request
        from latentcheck.core.prompts import build_prompt, option_token_ids, task_text

        prof = self.lm.profile
        prefix = prof.imagination["start"] if (self.force_start and prof.kind == "text_imagination") else ""
        text = task_text(Task(id=key, question=v.question, options=v.options), prof)
        prompt = build_prompt(self.lm, key, text, v.image, assistant_prefix=prefix)
        conds = [Condition()]
        if self.latent_override is not None and prof.is_latent:
            conds = [Condition("override", override=np.asarray(self.latent_override(v), dtype=np.float32))]
        return Request(prompt, conds, option_ids=option_token_ids(self.lm, len(v.options)) if v.options else None,
                       image_visibility=self.image_visibility,
                       force_latent=self.force_start and prof.is_latent, max_new_tokens=self.max_new_tokens)

    def _capture(self, trace, v: InputVariant, prompt=None) -> Capture:
        from latentcheck.core.answers import read_trace
        from latentcheck.core.prompts import region_token_indices

        lat, triggered, closed, span = trace_latents(self.lm, trace, self.force_start, self.max_latents)
        opened = self.force_start and self.lm.profile.kind == "text_imagination"  # the prefix opened the span
        ans = read_trace(self.lm, trace, v.options, self.extract, opened=opened).answer  # the one answer rule
        opt = None
        if ans is not None and v.options and len(ans) == 1 and ans in LETTERS[:len(v.options)]:
            opt = v.options[LETTERS.index(ans)]
        elif ans is not None and not v.options:
            opt = ans
        grid = None if prompt is None or prompt.image_grid_thw is None else \
            [int(x) for x in prompt.image_grid_thw[0]]
        region = region_token_indices(self.lm, prompt, v.bbox, v.image) if grid else None
        return Capture(latents=lat, refs=dict(trace.refs), text=trace.text, answer=ans, answer_option=opt,
                       option_probs=trace.option_probs, triggered=triggered, span_closed=closed,
                       span_length=span, image_grid=grid, region=region)

    # -- one block
    def process_block(self, tasks: list[Task]) -> list[dict]:
        requests, slots = [], []  # slots[i] = (task position, treatment index or -1, variant)
        records: dict[int, dict] = {}
        skipped: dict[int, dict[str, str]] = {}
        cache: dict[str, Any] = {}
        for ti, task in enumerate(tasks):
            mine: list[tuple[Any, tuple[int, int, InputVariant]]] = []  # all of a task's inputs, or none of them
            try:
                v0 = self._variant(task)
                mine.append((self._request(task.id, v0), (ti, -1, v0)))
                partner, pk = self._partner(task.id, cache)
                ctx = TreatmentContext(key=task.id, seed=self.opts.seed, partner=partner, partner_key=pk)
                skipped[ti] = {}
                for j, tr in enumerate(self.treatments):
                    try:
                        v = apply_treatment(tr, v0, ctx)
                    except NotApplicable as e:
                        skipped[ti][tr.label] = str(e)
                        continue
                    mine.append((self._request(task.id, v), (ti, j, v)))
            except RecordError as e:
                records[ti] = {"key": task.id, "error": e.to_dict()}
                skipped.pop(ti, None)
                continue
            requests.extend(r for r, _ in mine)
            slots.extend(sl for _, sl in mine)
        traces = self.engine.run(requests, batch_size=max(1, self.opts.batch_size)) if requests else []
        caps: dict[int, dict[int, tuple[Capture, InputVariant]]] = {}
        for (ti, j, v), req, tr in zip(slots, requests, traces):
            caps.setdefault(ti, {})[j] = (self._capture(tr[0], v, req.prompt), v)
        saved: dict[str, dict[str, np.ndarray]] = {}
        for ti, task in enumerate(tasks):
            if ti in records:
                continue
            records[ti] = self._record(task, caps[ti], skipped[ti])
            if self.save_tensors or self.index_of.get(task.id, math.inf) < self.max_matrix:
                saved[task.id] = self._tensors(caps[ti])
        if saved:  # every key needs every array name: a missing one (skipped treatment) is an empty array
            names = sorted({n for t in saved.values() for n in t})
            empty = np.zeros((0,), np.float32)
            self.store.save(list(saved), {n: [t.get(n, empty) for t in saved.values()] for n in names})
        return [records[i] for i in range(len(tasks))]

    def _tensors(self, caps: dict[int, tuple[Capture, InputVariant]]) -> dict[str, np.ndarray]:
        out = {}
        for j, (cap, _) in caps.items():
            tag = "orig" if j < 0 else f"t{j}"
            out[f"{tag}.latents"] = cap.latents
            for name, arr in cap.refs.items():
                if name != "image_token_states" or j < 0:  # per-token states: the original input's only
                    out[f"{tag}.{name}"] = arr
            if j < 0 and cap.image_grid is not None:
                out["orig.image_grid"] = np.asarray(cap.image_grid, np.float32)
                out["orig.region_tokens"] = np.asarray(cap.region or [], np.float32)
        return out

    def _record(self, task: Task, caps: dict[int, tuple[Capture, InputVariant]], skipped: dict[str, str]) -> dict:
        orig, v0 = caps[-1]
        rec: dict[str, Any] = {"key": task.id, "category": task.category,
                               "original": {**_answer_fields(orig, v0), "text": orig.text}, "treatments": {}}
        for j, tr in enumerate(self.treatments):
            if tr.label in skipped:
                rec["treatments"][tr.label] = {"skipped": skipped[tr.label]}
                continue
            cap, v = caps[j]
            same = None
            if orig.answer_option is not None and cap.answer_option is not None:
                same = orig.answer_option == cap.answer_option
            rec["treatments"][tr.label] = {
                **compare(orig, cap), **_answer_fields(cap, v), "same_answer": same,
                "answer_tv": _tv_distance(orig, cap, v), "partner": v.partner}
        return rec


class PerturbInput(AnalysisSpec):
    """perturb-input as an analysis (core.analysis.run_analysis): one record stage (tensors to a TensorStore), the
    summary from the records and the stored tensors, the figures and the inter-instance matrices file. The
    arguments are :func:`run_perturb_input`'s."""

    command = COMMAND

    def __init__(self, treatments: list[str] | list[Treatment] | None = None, *, max_matrix: int = 64,
                 save_tensors: bool = False, force_start: bool = False, image_visibility: str | None = None,
                 max_latents: int | None = None, max_new_tokens: int | None = None, n_boot: int = 2000,
                 plots: bool = True, latent_override: Callable[[InputVariant], np.ndarray] | None = None,
                 per_token_refs: bool = True):
        from latentcheck.perturb.treatments import DEFAULT_TREATMENTS

        if max_matrix < 2:
            raise LatentcheckError(f"--max-matrix must be at least 2, got {max_matrix}")
        if image_visibility is not None and image_visibility not in ("all", "latents_only", "none"):
            raise LatentcheckError(f"--image-visibility must be all, latents_only or none, got {image_visibility!r}")
        if max_latents is not None and max_latents < 1:
            raise LatentcheckError(f"--max-latents must be at least 1, got {max_latents}")
        self.treatments = treatments if treatments and isinstance(treatments[0], Treatment) else \
            parse_treatments(list(treatments or DEFAULT_TREATMENTS))
        self.max_matrix, self.save_tensors, self.force_start = max_matrix, save_tensors, force_start
        self.image_visibility, self.max_latents, self.max_new_tokens = image_visibility, max_latents, max_new_tokens
        self.n_boot, self.plots, self.latent_override, self.per_token_refs = n_boot, plots, latent_override, \
            per_token_refs

    def setup(self, run: AnalysisRun) -> None:
        if self.max_latents is None and not run.lm.profile.is_latent:
            self.max_latents = DEFAULT_MAX_LATENTS_TEXT
        keys = [t.id for t in run.tasks]
        self.order = sorted((item_key(it) for it in run.items), key=record_order_key)  # canonical, not file order
        self.config = {"treatments": [t.label for t in self.treatments], "max_matrix": self.max_matrix,
                       "save_tensors": self.save_tensors, "force_start": self.force_start,
                       "image_visibility": self.image_visibility, "max_latents": self.max_latents,
                       "max_new_tokens": self.max_new_tokens, "latent_override": self.latent_override is not None,
                       "per_token_refs": self.per_token_refs}
        self.runner = _Runner(run.lm, run.opts, self.treatments, {t.id: t for t in run.tasks},
                              {k: i for i, k in enumerate(self.order)}, partner_map(keys, run.opts.seed),
                              self.max_matrix, self.save_tensors, self.force_start, self.image_visibility,
                              self.max_latents, self.max_new_tokens, self.latent_override, self.per_token_refs)

    def stages(self, run: AnalysisRun) -> list[RecordStage]:
        return [RecordStage("samples", self.runner.process_block, config=self.config,
                            on_fresh_start=lambda: clear_tensor_store(run.out))]

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        records, lm, seed = run.records["samples"], run.lm, run.opts.seed
        summary = summarise(records, tensor_dirs(run.out), self.treatments, self.order, self.max_matrix, seed=seed,
                            n_boot=self.n_boot)
        config = {**run.opts.config(), **self.config}
        summary = {"command": COMMAND, "model": lm.describe(), "profile": lm.profile.name, "kind": lm.profile.kind,
                   "latent_source": latent_source(lm.profile), "counts": run.counts["samples"],
                   "config": {k: config[k] for k in ("treatments", "max_matrix", "force_start", "image_visibility",
                                                     "max_latents", "seed")}, **summary}
        summary["latent_trigger"] = trigger_summary(records, self.treatments, lm.profile)
        warn_trigger(summary["latent_trigger"], COMMAND)
        return summary

    def figures(self, run: AnalysisRun, summary: dict[str, Any]) -> list[str]:
        """The plots (they read the geometry matrices), then the matrices move from the summary to
        ``inter_instance.npz``."""
        out = run.out
        plot_paths = make_plots(summary, out / "plots") if self.plots else []
        mats = strip_matrices(summary["geometry"])
        if mats:
            save_npz_atomic(out / "inter_instance.npz", keys=np.array(summary["geometry"]["keys"]), **mats)
        summary["plots"] = [str(Path(p).relative_to(out)) for p in plot_paths]
        return plot_paths


def run_perturb_input(opts: CommonOptions, treatments: list[str] | list[Treatment] | None = None, *,
                      max_matrix: int = 64, save_tensors: bool = False, force_start: bool = False,
                      image_visibility: str | None = None, max_latents: int | None = None,
                      max_new_tokens: int | None = None, n_boot: int = 2000, plots: bool = True, lm=None,
                      latent_override: Callable[[InputVariant], np.ndarray] | None = None,
                      per_token_refs: bool = True) -> PerturbInputResult:
    """Run the X -> Z analysis (module docstring) and return the summary, result paths and plot paths.

    ``treatments``: specs (``"noise:std=0.2"``) or parsed treatments (default: treatments.DEFAULT_TREATMENTS).
    ``max_matrix``: samples used for the matrix / geometry aggregates (kept on disk, bounded in memory).
    ``save_tensors``: keep every sample's latents and reference states in ``<out>/tensors`` (TensorStore).
    ``force_start``: force the latent-start token (latent profiles) or the imagination start marker
    (text-imagination profiles) so untrained checkpoints produce a span. ``image_visibility``: override the
    profile's visibility rule. ``max_latents``: keep at most this many latents per run (text-imagination / plain
    default: 32). ``lm``: an already loaded model. ``latent_override(variant) -> [K, H]``: feed these vectors instead
    of the model's own (latent profiles; oracle tests). ``per_token_refs``: keep the original input's per-token
    image states of the geometry samples for the position-matched comparison (``geometry.position_matched``).
    """
    return run_analysis(PerturbInput(treatments, max_matrix=max_matrix, save_tensors=save_tensors,
                                     force_start=force_start, image_visibility=image_visibility,
                                     max_latents=max_latents, max_new_tokens=max_new_tokens, n_boot=n_boot,
                                     plots=plots, latent_override=latent_override, per_token_refs=per_token_refs),
                        opts, lm=lm)


# ------------------------------------------------------------------------------------------------ aggregation
def _ci(values: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of the finite values with a percentile-bootstrap CI (a core.summaries.Estimate)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return Estimate.missing().to_dict()
    return Estimate.bootstrap(vals, n_boot=n_boot, seed=seed).to_dict()


def _ratio(num: list[float | None], den: list[float | None], n_boot: int, seed: int) -> dict[str, Any]:
    """mean(num) / mean(den) over the finite pairs, paired bootstrap with the latent change's resolution floor
    (a core.summaries.Ratio)."""
    pairs = [(a, b) for a, b in zip(num, den)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return Ratio(estimate=None, n=0, method="none").to_dict()
    a, b = zip(*pairs)
    return Ratio.bootstrap(list(a), list(b), n_boot=n_boot, seed=seed, resolution=MOVE_RESOLUTION).to_dict()


def _rate(flags: list[bool]) -> dict[str, Any]:
    """The share of true flags with a Wilson CI (a core.summaries.Proportion)."""
    return Proportion.of(flags).to_dict()


class _IndexMean:
    """Running per-index means of variable-length lists (bounded by the number of indices)."""

    def __init__(self):
        self.sums: list[float] = []
        self.counts: list[int] = []

    def add(self, values: list[float | None]) -> None:
        for i, v in enumerate(values):
            if v is None or not math.isfinite(v):
                continue
            while len(self.sums) <= i:
                self.sums.append(0.0)
                self.counts.append(0)
            self.sums[i] += v
            self.counts[i] += 1

    def means(self) -> list[float | None]:
        return [s / c if c else None for s, c in zip(self.sums, self.counts)]


def _treatment_stats(records: list[dict], treatments: list[Treatment], n_boot: int, seed: int) -> dict[str, Any]:
    """Per-treatment aggregates of the records (per-sample scalars only)."""
    acc = {t.label: {"cos": _IndexMean(), "rel": _IndexMean(), "cos_s": [], "rel_s": [], "moved": [], "skips": {},
                     "refs": {r: {"cos": [], "rel": []} for r in REFERENCES}, "same": [], "tv": [],
                     "correct": [], "n": 0} for t in treatments}
    n_ok = 0
    orig_correct, triggered, counts = [], [], []
    for rec in records:
        if rec.get("type") != "sample":
            continue
        n_ok += 1
        o = rec["original"]
        triggered.append(bool(o["triggered"]))
        counts.append(o["latent_count"])
        if o["correct"] is not None:
            orig_correct.append(bool(o["correct"]))
        for t in treatments:
            e = rec["treatments"].get(t.label)
            a = acc[t.label]
            if e is None:
                continue
            if "skipped" in e:
                reason = e["skipped"]
                a["skips"][reason] = a["skips"].get(reason, 0) + 1
                continue
            a["n"] += 1
            a["cos"].add(e["latent_cosine"])
            a["rel"].add(e["latent_rel_l2"])
            a["cos_s"].append(e["latent_cosine_mean"])
            a["rel_s"].append(e["latent_rel_l2_mean"])
            rel = e["latent_rel_l2_mean"]
            if rel is not None and math.isfinite(rel):
                a["moved"].append(rel > MOVE_RESOLUTION)
            for r in REFERENCES:
                ref = e["refs"].get(r)
                a["refs"][r]["cos"].append(ref["cosine"] if ref else None)
                a["refs"][r]["rel"].append(ref["rel_l2"] if ref else None)
            if e["same_answer"] is not None:
                a["same"].append(not e["same_answer"])
            if e["answer_tv"] is not None:
                a["tv"].append(e["answer_tv"])
            if e["correct"] is not None:
                a["correct"].append(bool(e["correct"]))
    out = {}
    for t in treatments:
        a = acc[t.label]
        refs = {}
        for r in REFERENCES:
            rc, rr = a["refs"][r]["cos"], a["refs"][r]["rel"]
            refs[r] = {"cosine": _ci(rc, n_boot, seed), "rel_l2": _ci(rr, n_boot, seed),
                       "sensitivity_ratio": _ratio(a["rel_s"], rr, n_boot, seed)}
        out[t.label] = {
            **t.to_dict(), "n": a["n"], "n_skipped": sum(a["skips"].values()), "skip_reasons": a["skips"],
            "latent_cosine_by_index": a["cos"].means(), "latent_rel_l2_by_index": a["rel"].means(),
            "latent_cosine": _ci(a["cos_s"], n_boot, seed), "latent_rel_l2": _ci(a["rel_s"], n_boot, seed),
            "refs": refs, "sensitivity_ratio": refs[t.reference]["sensitivity_ratio"],
            "latents_moved": _rate(a["moved"]), "move_resolution": MOVE_RESOLUTION,
            "answer_changed": _rate(a["same"]), "answer_tv": _ci(a["tv"], n_boot, seed),
            "accuracy": _rate(a["correct"])}
    overall = {"n_samples": n_ok, "trigger_rate": _rate(triggered),
               "mean_latent_count": float(np.mean(counts)) if counts else None,
               "original_accuracy": _rate(orig_correct)}
    return {"overall": overall, "treatments": out}


def _load_geometry(store_dirs: list[Path], order: list[str], ok_keys: set[str],
                   max_matrix: int) -> list[tuple[str, dict]]:
    """The tensors of the first ``max_matrix`` samples in ``order`` (the canonical record-id order; only those kept)."""
    rank = {k: i for i, k in enumerate(order)}
    keep: dict[str, dict] = {}
    for d in store_dirs:
        for block in TensorStore(d).iter_blocks():
            for k, arrays in block.items():
                if k in ok_keys and rank.get(k, math.inf) < max_matrix:
                    keep[k] = arrays
    return sorted(keep.items(), key=lambda kv: rank[kv[0]])


def _centred_pair_cosine(a: np.ndarray, b: np.ndarray, mean: np.ndarray) -> float:
    from latentcheck.core.similarity import centred_cosine_matrix

    return float(centred_cosine_matrix(np.stack([a, b]), mean=mean)[0, 1])


def _matrix_stats(X: np.ndarray, cats: list | None, mean: np.ndarray) -> dict[str, Any]:
    from latentcheck.core.similarity import (centred_cosine_matrix, cosine_matrix, effective_rank, mean_offdiag,
                                             participation_ratio, within_across)

    raw = cosine_matrix(X)
    cen = centred_cosine_matrix(X, mean=mean)
    out = {"n": int(len(X)), "raw": raw, "centred": cen, "raw_mean": mean_offdiag(raw),
           "centred_mean": mean_offdiag(cen), "effective_rank": effective_rank(X),
           "participation_ratio": participation_ratio(X)}
    if cats is not None and len(set(cats)) > 1:
        out["within_across_raw"] = within_across(raw, cats)
        out["within_across_centred"] = within_across(cen, cats)
    return out


def _array(arrays: dict, name: str) -> np.ndarray:
    return np.asarray(arrays.get(name, np.zeros((0,))), np.float64)


def latent_vs_refs(lats: list[np.ndarray], ref_X: dict[str, tuple[list[int], np.ndarray]], n_perm: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """Does the latent span carry THIS instance's input? Per reference state type, over the instances that have both:
    linear CKA and RSA between the instances' mean latent and their reference state, and instance retrieval (does an
    instance's mean latent pick out its own reference state among all n, centred cosine) with a permutation null.
    Unlike raw cosine, none of these is inflated by the shared direction of the hidden-state cone."""
    from latentcheck.core.similarity import linear_cka, retrieval_accuracy, rsa

    out: dict[str, Any] = {}
    for r, (rows, X) in ref_X.items():
        keep = [j for j, i in enumerate(rows) if len(lats[i])]
        if len(keep) < 3:
            out[r] = {"skipped": f"only {len(keep)} instances have latents and a {r} state"}
            continue
        L = np.stack([lats[rows[j]].mean(0) for j in keep])
        R = X[keep]
        out[r] = {"n": len(keep), "linear_cka": linear_cka(L, R), "rsa": rsa(L, R),
                  "retrieval": retrieval_accuracy(L, R, n_perm=n_perm, seed=seed)}
    return out


POSITION_MATCHED = (
    "latent step k of instance i vs the last-layer state of image token t of instance i's original input, "
    "t = the t-th merged image token in the processor's row-major order (the same grid cell in every instance; "
    "only instances with the most common image grid); target = the mean state of instance i's bbox tokens, other = "
    "the mean state of its remaining image tokens; specificity = centred cosine with the own instance's state minus "
    "the mean centred cosine with the other instances' states at the same position")


def _specificity(L: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Per instance i: cos(L_i, R_i) - mean_{j != i} cos(L_i, R_j) on unit rows (the matched pair minus the
    mismatched pairs). Its mean is exactly 0 when L carries nothing instance-specific about R (a constant L)."""
    C = L @ R.T  # [n, n] cosines (rows already centred and unit)
    n = C.shape[0]
    return np.diag(C) - (C.sum(1) - np.diag(C)) / (n - 1)


def position_matched(samples: list[tuple[str, dict]], lats: list[np.ndarray], mu: np.ndarray | None,
                     n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Latent steps vs per-token image states matched by position (:data:`POSITION_MATCHED`), not mean-pooled.

    Over the instances that share the most common image grid: ``cka`` [K][T] = linear CKA across instances between
    latent step k and image token t (``core.similarity.cka_matrix``); ``specificity`` [K][T] = the mean over
    instances of (centred cosine of an instance's latent k with its OWN token t) - (mean centred cosine with the
    other instances' token t) (the geometry's one centring mean; 0 for latents without instance information about
    that position, whatever the cone or a constant offset); ``pooled_cka`` [K] = CKA of latent k with the mean image
    state (the mean-pooled reference); ``best`` = the position of the largest CKA per step (a maximum over T
    positions: optimistic, descriptive). ``target`` (instances whose bbox covers some but not all tokens): per step
    the CKA with the target tokens' mean state and with the other tokens' mean state (bootstrap ``Estimate`` over
    instances), ``target_specificity`` / ``other_specificity`` (paired ``Effect``: matched minus mismatched centred
    cosine, bootstrap over instances), and ``target_vs_other`` = target minus other specificity (``Effect``): does
    a latent step carry its own target's states more than the rest of its own image?; ``mean_over_steps``: the
    target specificity of each instance's mean over steps (one pre-specified number)."""
    from collections import Counter

    from latentcheck.core.similarity import cka_matrix, linear_cka_ci
    from latentcheck.core.summaries import Effect, Estimate

    toks = [_array(a, "orig.image_token_states") for _, a in samples]
    grids = [tuple(int(v) for v in _array(a, "orig.image_grid")) for _, a in samples]
    usable = [i for i in range(len(samples)) if len(lats[i]) and toks[i].ndim == 2 and len(toks[i]) and grids[i]]
    if not usable:
        return {"skipped": "no per-token image states (no image, no latents, or --no-per-token-refs)"}
    grid = Counter(grids[i] for i in usable).most_common(1)[0][0]
    rows = [i for i in usable if grids[i] == grid]
    if len(rows) < 3:
        return {"skipped": f"only {len(rows)} instances share the image grid {list(grid)} (need 3)"}
    K = min(len(lats[i]) for i in rows)
    T = toks[rows[0]].shape[0]
    Ls = [np.stack([lats[i][k] for i in rows]) for k in range(K)]
    Ps = [np.stack([toks[i][t] for i in rows]) for t in range(T)]
    cka = cka_matrix(Ls, Ps)
    pooled = cka_matrix(Ls, [np.stack([toks[i].mean(0) for i in rows])])[:, 0]
    centre = np.zeros(Ls[0].shape[1]) if mu is None else mu

    def unit(X: np.ndarray) -> np.ndarray:
        X = X - centre
        return X / np.maximum(np.linalg.norm(X, axis=-1, keepdims=True), 1e-12)

    PU = [unit(P) for P in Ps]
    spec = np.array([[float(np.mean(_specificity(unit(L), PU[t]))) for t in range(T)] for L in Ls])
    merge = int(round(math.sqrt(grid[0] * grid[1] * grid[2] / T))) or 1
    out: dict[str, Any] = {
        "definition": POSITION_MATCHED, "n": len(rows), "grid": list(grid),
        "token_grid": [grid[0], grid[1] // merge, grid[2] // merge], "n_tokens": int(T), "K": int(K),
        "cka": cka.round(6).tolist(), "specificity": spec.round(6).tolist(), "pooled_cka": pooled.round(6).tolist(),
        "best": [{"step": k, "position": int(np.nanargmax(cka[k])) if np.isfinite(cka[k]).any() else None,
                  "cka": float(np.nanmax(cka[k])) if np.isfinite(cka[k]).any() else None} for k in range(K)]}
    regions = {i: sorted({int(v) for v in _array(samples[i][1], "orig.region_tokens") if 0 <= v < T}) for i in rows}
    trows = [i for i in rows if 0 < len(regions[i]) < T]
    if len(trows) < 3:
        out["target"] = {"skipped": f"only {len(trows)} instances have a bbox covering some but not all tokens"}
        return out
    tgt = np.stack([toks[i][regions[i]].mean(0) for i in trows])
    oth = np.stack([np.delete(toks[i], regions[i], axis=0).mean(0) for i in trows])
    zero = np.zeros(len(trows))
    steps, per_step = [], []
    for k in range(K):
        L = np.stack([lats[i][k] for i in trows])
        st, so = _specificity(unit(L), unit(tgt)), _specificity(unit(L), unit(oth))
        per_step.append(st)
        steps.append({"step": k,
                      "cka_target": Estimate(**linear_cka_ci(L, tgt, n_boot=n_boot, seed=seed), n=len(trows),
                                             method="percentile_bootstrap").to_dict(),
                      "cka_other": Estimate(**linear_cka_ci(L, oth, n_boot=n_boot, seed=seed), n=len(trows),
                                            method="percentile_bootstrap").to_dict(),
                      "target_specificity": Effect.paired(zero, st, n_boot=n_boot, seed=seed).to_dict(),
                      "other_specificity": Effect.paired(zero, so, n_boot=n_boot, seed=seed).to_dict(),
                      "target_vs_other": Effect.paired(so, st, n_boot=n_boot, seed=seed).to_dict()})
    out["target"] = {"n": len(trows), "steps": steps,  # one pre-specified number: each instance's mean over steps
                     "mean_over_steps": Effect.paired(zero, np.mean(per_step, 0), n_boot=n_boot, seed=seed).to_dict()}
    return out


def geometry(samples: list[tuple[str, dict]], categories: dict[str, str | None],
             treatments: list[Treatment], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Inter-instance matrices, collapse curves, effective rank and centred treated-vs-original cosines on the
    geometry samples (``samples``: [(key, {array name: array})] from the tensor store)."""
    from latentcheck.core.similarity import effective_rank, intra_instance_collapse, participation_ratio

    # grouped by category (stable), so category blocks show in the heat maps
    samples = sorted(samples, key=lambda kv: str(categories.get(kv[0]) or ""))
    keys = [k for k, _ in samples]
    cats = [categories.get(k) for k in keys]
    has_cats = len({c for c in cats if c is not None}) > 1
    lats = [_array(a, "orig.latents") for _, a in samples]
    lats = [x if x.ndim == 2 else np.zeros((0, 1)) for x in lats]
    out: dict[str, Any] = {"n": len(samples), "keys": keys, "categories": cats if has_cats else None}
    nonempty = [x for x in lats if len(x)]
    ref_X: dict[str, tuple[list[int], np.ndarray]] = {}
    for r in REFERENCES:
        rows = [i for i, (_, a) in enumerate(samples) if _array(a, f"orig.{r}").size]
        if len(rows) >= 2:
            ref_X[r] = (rows, np.stack([_array(samples[i][1], f"orig.{r}") for i in rows]))
    # one centring mean for every state type: the mean of the per-type means (see the module docstring)
    type_means = ([np.concatenate(nonempty).mean(0)] if nonempty else []) + [X.mean(0) for _, X in ref_X.values()]
    mu = np.mean(type_means, 0) if type_means else None
    out["centring"] = "mean of the per-type means (" + ", ".join((["latents"] if nonempty else []) + list(ref_X)) + ")"
    # inter-instance similarity per latent index, over the instances that have that index
    per_index = []
    kmax = max((len(x) for x in lats), default=0)
    for k in range(kmax):
        rows = [i for i, x in enumerate(lats) if len(x) > k]
        if len(rows) < 2:
            break
        st = _matrix_stats(np.stack([lats[i][k] for i in rows]), [cats[i] for i in rows] if has_cats else None, mu)
        per_index.append({"index": k, "rows": rows, **st})
    out["latent_index"] = per_index
    refs = {r: {"rows": rows, **_matrix_stats(X, [cats[i] for i in rows] if has_cats else None, mu)}
            for r, (rows, X) in ref_X.items()}
    out["refs"] = refs
    out["latent_vs_refs"] = latent_vs_refs(lats, ref_X)
    out["position_matched"] = position_matched(samples, lats, mu, n_boot=n_boot, seed=seed)
    if nonempty and sum(len(x) for x in nonempty) >= 2:
        pooled = np.concatenate(nonempty)
        out["latent_pooled"] = {"n": int(len(pooled)), "effective_rank": effective_rank(pooled),
                                "participation_ratio": participation_ratio(pooled)}
    # intra-instance collapse over the instances with at least K_c latents (K_c: the longest span half of them have)
    lengths = sorted((len(x) for x in lats), reverse=True)
    need = max(2, math.ceil(len(lats) / 2))
    kc = lengths[need - 1] if len(lengths) >= need else 0
    if kc >= 2:
        X = np.stack([x[:kc] for x in lats if len(x) >= kc])
        out["collapse"] = {"k": int(kc), "n": int(len(X))}
        for name, m in (("raw", None), ("centred", mu)):
            c = intra_instance_collapse(X, mean=m)
            out["collapse"][name] = {"adjacent": c["adjacent"], "to_others": c["to_others"], "matrix": c["matrix"],
                                     "all_pairs": c["all_pairs"]}
    # mean-centred cosine between original and treated latents / reference states
    centred = {}
    for j, t in enumerate(treatments):
        by_index: list[list[float]] = [[] for _ in range(kmax)]
        by_ref: dict[str, list[float]] = {r: [] for r in ref_X}
        for i, (_, a) in enumerate(samples):
            tl = _array(a, f"t{j}.latents")
            if tl.ndim == 2 and mu is not None:
                for k in range(min(len(tl), len(lats[i]))):
                    by_index[k].append(_centred_pair_cosine(lats[i][k], tl[k], mu))
            for r in ref_X:
                o, p = _array(a, f"orig.{r}"), _array(a, f"t{j}.{r}")
                if o.size and p.size:
                    by_ref[r].append(_centred_pair_cosine(o, p, mu))
        centred[t.label] = {"latent_by_index": [float(np.mean(v)) if v else None for v in by_index],
                            "refs": {r: float(np.mean(v)) if v else None for r, v in by_ref.items()}}
    out["centred_treated_cosine"] = centred
    return out


def strip_matrices(geo: dict[str, Any]) -> dict[str, np.ndarray]:
    """Remove the N x N matrices from a geometry dict (in place) and return them by name (for an .npz file;
    ``latent{k}_rows`` = positions in ``geometry["keys"]`` of the rows of latent index k's matrices)."""
    mats = {}
    for p in geo.get("latent_index", []):
        mats[f"latent{p['index']}_rows"] = np.asarray(p.pop("rows"), dtype=np.int64)
        for kind in ("raw", "centred"):
            mats[f"latent{p['index']}_{kind}"] = p.pop(kind)
    for r, st in geo.get("refs", {}).items():
        for kind in ("raw", "centred"):
            mats[f"{r}_{kind}"] = st.pop(kind)
    pm = geo.get("position_matched") or {}
    for kind in ("cka", "specificity"):  # [K, T] per latent step and image position
        if kind in pm:
            mats[f"position_{kind}"] = np.asarray(pm.pop(kind), dtype=np.float64)
    return mats


def trigger_summary(records: list[dict], treatments: list[Treatment], profile) -> dict | None:
    """The fake-null guard block (core/trigger.py): the original input and every treated one; the length is the
    whole latent / imagination span (before --max-latents)."""
    from latentcheck.core.trigger import trigger_block

    conds: dict[str, tuple[list, list]] = {"original": ([], [])}
    conds.update({t.label: ([], []) for t in treatments})
    for rec in records:
        if rec.get("type") != "sample":
            continue
        for name, e in [("original", rec["original"])] + [(t.label, rec["treatments"].get(t.label))
                                                          for t in treatments]:
            if e is not None and "skipped" not in e:
                conds[name][0].append(bool(e["triggered"]))
                conds[name][1].append(e["span_length"])
    unit = "imagination tokens" if profile.kind == "text_imagination" else "fed latent vectors"
    return trigger_block(conds, "original", profile.kind, unit)


def summarise(records: list[dict], store_dirs: list[Path], treatments: list[Treatment], order: list[str],
              max_matrix: int, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
    """Aggregates of the records (canonical record order) and the tensor store (first ``max_matrix`` samples)."""
    stats = _treatment_stats(records, treatments, n_boot, seed)
    ok, cats = set(), {}
    for rec in records:
        if rec.get("type") == "sample":
            ok.add(rec["key"])
            cats[rec["key"]] = rec.get("category")
    geo = geometry(_load_geometry(store_dirs, order, ok, max_matrix), cats, treatments, n_boot=n_boot, seed=seed)
    for label, c in geo.pop("centred_treated_cosine").items():
        stats["treatments"][label]["centred_latent_cosine_by_index"] = c["latent_by_index"]
        stats["treatments"][label]["centred_ref_cosine"] = c["refs"]
    return {**stats["overall"], "treatments": stats["treatments"], "geometry": geo}


# ------------------------------------------------------------------------------------------------ plots
def make_plots(summary: dict[str, Any], folder: Path) -> list[str]:
    """Per-index heat maps (raw, centred), collapse curves, change by index and sensitivity bars (PNG)."""
    from latentcheck.core import plots

    geo = summary["geometry"]
    paths = []
    panels = geo["latent_index"]
    if len(panels) > MAX_HEATMAP_PANELS:
        pick = np.unique(np.linspace(0, len(panels) - 1, MAX_HEATMAP_PANELS).round().astype(int))
        panels = [panels[i] for i in pick]
    ref_names = {"image_tokens": "image tokens", "question_tokens": "question tokens",
                 "last_prompt_token": "last prompt token"}
    for kind in ("raw", "centred"):
        mats = [p[kind] for p in panels] + [geo["refs"][r][kind] for r in REFERENCES if r in geo["refs"]]
        titles = [f"latent {p['index']} ({p[kind + '_mean']:.2f})" for p in panels] + \
                 [f"{ref_names[r]} ({geo['refs'][r][kind + '_mean']:.2f})" for r in REFERENCES if r in geo["refs"]]
        cats = geo.get("categories")  # per matrix row: the sample's category (None: one category or none)
        ticks = [[str(cats[i]) for i in rows] if cats and rows is not None else None
                 for rows in [p.get("rows") for p in panels]
                 + [geo["refs"][r].get("rows") for r in REFERENCES if r in geo["refs"]]]
        if mats:
            paths.append(plots.heatmap_grid(mats, titles, folder / f"inter_instance_{kind}.png",
                                            suptitle=f"inter-instance cosine ({kind}), n={geo['n']}",
                                            ticks=ticks if any(ticks) else None))
    col = geo.get("collapse")
    if col:
        k = col["k"]
        paths.append(plots.lines(list(range(1, k)), {"raw": col["raw"]["adjacent"],
                                                     "mean-centred": col["centred"]["adjacent"]},
                                 folder / "collapse_adjacent.png", xlabel="step k (cos of latent k-1 and k)",
                                 ylabel="cosine", title=f"intra-instance: adjacent steps (n={col['n']})"))
        paths.append(plots.lines(list(range(k)), {"raw": col["raw"]["to_others"],
                                                  "mean-centred": col["centred"]["to_others"]},
                                 folder / "collapse_all_pairs.png", xlabel="latent index",
                                 ylabel="mean cosine with the other steps",
                                 title=f"intra-instance: all pairs (mean {col['raw']['all_pairs']:.2f} raw)"))
    paths += plot_position_matched(geo.get("position_matched") or {}, folder)
    tr = summary["treatments"]
    series = {}
    for label, t in tr.items():
        vals = t["latent_cosine_by_index"]
        if vals and all(v is not None for v in vals):
            series[label] = vals
    if series:
        kx = min(len(v) for v in series.values())
        paths.append(plots.lines(list(range(kx)), {k: v[:kx] for k, v in series.items()},
                                 folder / "latent_cosine_by_index.png", xlabel="latent index",
                                 ylabel="cos(original, treated)", title="latent change by index", hline=1.0))
    bars = [(label, t["sensitivity_ratio"]) for label, t in tr.items()
            if t["sensitivity_ratio"]["estimate"] is not None and math.isfinite(t["sensitivity_ratio"]["estimate"])]
    if bars:
        paths.append(plots.bar_ci([f"{b[0]}\n/{tr[b[0]]['reference']}" for b in bars],
                                  [b[1]["estimate"] for b in bars],
                                  [_finite(b[1]["lo"], b[1]["estimate"]) for b in bars],
                                  [_finite(b[1]["hi"], b[1]["estimate"]) for b in bars],
                                  folder / "sensitivity.png", ylabel="latent rel. change / reference rel. change",
                                  title="sensitivity ratio (95% bootstrap CI)"))
    return paths


def plot_position_matched(pm: dict[str, Any], folder: Path) -> list[str]:
    """``position_cka.png``: per latent step, the CKA with each image position drawn on the image's token grid;
    ``position_target.png``: per step, the target tokens' specificity (own minus other instances' targets)."""
    from latentcheck.core import plots

    out = []
    if "cka" in pm:
        t, rows, cols = pm["token_grid"]
        mats = [np.asarray(row, float).reshape(t * rows, cols) for row in pm["cka"]]
        step = max(1, math.ceil(len(mats) / MAX_HEATMAP_PANELS))
        shown = list(range(0, len(mats), step))
        out.append(plots.heatmap_grid([mats[k] for k in shown],
                                      [f"latent {k} (pooled {pm['pooled_cka'][k]:.2f})" for k in shown],
                                      folder / "position_cka.png",
                                      suptitle=f"linear CKA of each latent step with each image position (n={pm['n']})"))
    tg = pm.get("target") or {}
    if "steps" in tg:
        st = tg["steps"]
        c = [x["target_specificity"] for x in st]
        out.append(plots.forest([f"latent {x['step']}" for x in st], [e["estimate"] for e in c],
                                [e["lo"] for e in c], [e["hi"] for e in c], folder / "position_target.png",
                                title=f"target specificity: centred cosine with the own target's tokens minus with "
                                      f"the other instances' targets (n={tg['n']})",
                                xlabel="cosine difference (95% bootstrap CI)"))
    return out


def _finite(x, default):
    return x if x is not None and math.isfinite(x) else default
