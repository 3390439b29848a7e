"""perturb-latent: does the answer causally depend on the fed-back latents (Z -> Y), and how much of the input's
effect on the answer goes through them (mediation)?

Per sample, two passes (both through the one engine, ``core.engine``):

1. **Vector pass** - ONE shared prefill of the prompt, then the cache is forked so the un-intervened baseline and every
   *vector* intervention (identity, zero, near_zero, noise, noise_replace, scale, shared, index_mean) run as rows of
   one decode batch. The same batch also holds the mediation counterfactual inputs (image / question of a partner
   sample, own latents) and, when a partner sits in another block, the partner's baseline.
2. **Sequence pass** - interventions that need the baseline's latents first (swap with the partner's latents,
   shuffle, reverse, drop the span, replay a file) and the mediation interchange runs (original input + the
   counterfactual run's latents = NIE; counterfactual input + the baseline's latents = NDE) become per-sample
   ``Condition.override`` rows, again sharing one prefill per prompt.

``naive=True`` instead runs every (prompt, condition) as a separate full generation at batch size 1 (the reference
pseudo-code's way); both paths give the same answers.

Dataset statistics for ``shared:source=mean|random`` and ``index_mean`` come from a calibration pass: the baselines of
the first ``calibration_size`` valid tasks (default: one processing block, ``4 x batch_size``) in the canonical
record-id order (``core.records.record_order_key``), so a resumed run, or the same tasks in another file order,
recomputes exactly the same statistics. They are saved to ``latent_stats.npz`` and described in the
summary. See docs/perturb-latent.md for every definition.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.special import logsumexp

from latentcheck.core.engine import Condition, Engine, Request, Trace, text_model_of
from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.interventions import (REGISTRY, Embeddings, InterventionSpec, LatentStats, parse_spec,
                                            parse_specs, sequence_override)
from latentcheck.core.profiles import VISIBILITIES
from latentcheck.core.analysis import AnalysisResult, AnalysisRun, AnalysisSpec, RecordStage, run_analysis
from latentcheck.core.summaries import AccuracyEffect, Estimate, Proportion
from latentcheck.core.runner import CommonOptions, error_record, save_npz_atomic
from latentcheck.core.stats import holm
from latentcheck.core.records import in_id_order
from latentcheck.core.tasks import LETTERS, Task
from latentcheck.core.progress import warn
from latentcheck.core.trigger import trigger_block, warn_trigger
from latentcheck.perturb.mediation import (MEDIATION_KINDS, MEDIATORS, PARTNER_RULES, PRIMARY_OUTCOME,
                                           counterfactual_task, parse_kinds, parse_mediators, parse_patch_layers,
                                           partner_map, plot_layer_patching, plot_mediation,
                                           summarise_layer_patching, summarise_mediation)

COMMAND = "perturb-latent"

# The default set when no intervention is given: the paper's four (tau = dataset mean, additive noise, pure noise,
# mu ~ 0), plus the harness check (identity), zero, per-index mean, and the sequence interventions.
DEFAULT_SPECS = ("identity", "shared:source=mean", "noise:sigma=1", "noise_replace", "near_zero", "zero",
                 "index_mean", "swap", "shuffle", "reverse", "drop")

# Degeneration (repetition collapse) rule, on the generated tokens outside the latent span (EOS excluded):
DEGEN_MIN_TOKENS = 8  # at least this many tokens before the repetition test applies
DEGEN_MAX_N = 4  # n-grams of length 1..4
DEGEN_MIN_REPEATS = 3  # the n-gram occurs at least 3 times
DEGEN_COVERAGE = 0.5  # and its occurrences cover at least half of the tokens


# ---------------------------------------------------------------------------------------------- planning
@dataclass
class PlannedIntervention:
    """One intervention of the run: the spec, where it came from (``spec``, ``sigma_sweep`` or
    ``per_index:<name>``) and its x value on a curve (sigma or latent index)."""

    spec: InterventionSpec
    group: str = "spec"
    x: float | None = None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def kind(self) -> str:
        return self.spec.kind

    def to_dict(self) -> dict:
        return {"label": self.label, "group": self.group, "x": self.x, **self.spec.to_dict(), "kind": self.kind}


def parse_float_list(text: str | Sequence[float] | None, what: str = "--sigma-sweep") -> list[float]:
    """``"0.1,0.5,1,2"`` -> [0.1, 0.5, 1.0, 2.0] (non-negative finite numbers)."""
    if text is None or text == "":
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for it in items:
        if isinstance(it, str) and not it.strip():
            continue
        try:
            v = float(it)
        except (TypeError, ValueError):
            raise LatentcheckError(f"{what}: {it!r} is not a number (expected e.g. 0.1,0.5,1,2)") from None
        if not math.isfinite(v) or v < 0:
            raise LatentcheckError(f"{what}: values must be finite and >= 0, got {it!r}")
        out.append(v)
    return out


def _as_specs(items: Iterable[str | InterventionSpec] | None) -> list[InterventionSpec]:
    out = []
    for it in items or []:
        out.extend([it] if isinstance(it, InterventionSpec) else parse_specs([it]))
    return out


def plan_interventions(specs: Iterable[str | InterventionSpec] | None = None, sigma_sweep: Sequence[float] = (),
                       per_index: Iterable[str] = (), n_latents: int = 4,
                       length_sweep: Sequence[float] = (), knockout_sweep: Sequence[str] = (),
                       n_layers: int | None = None) -> list[PlannedIntervention]:
    """Expand the user's specs, ``--sigma-sweep`` (one ``noise:sigma=s`` each), ``--length-sweep`` (one ``length:k=K'``
    each: the span forced to K' vectors), ``--knockout-sweep QUERY-KEY`` (one ``knockout`` per decoder layer l <
    n_layers, that layer alone) and ``--per-index NAME`` (one ``NAME@k`` per latent index k < n_latents) into
    a de-duplicated list (first occurrence of a label wins). With nothing given, ``DEFAULT_SPECS`` is used."""
    planned: list[PlannedIntervention] = [PlannedIntervention(s) for s in _as_specs(specs)]
    for s in sigma_sweep:
        planned.append(PlannedIntervention(parse_spec(f"noise:sigma={float(s)}"), "sigma_sweep", float(s)))
    for k in length_sweep:
        planned.append(PlannedIntervention(parse_spec(f"length:k={k:g}"), "length_sweep", float(k)))
    for pair in knockout_sweep:
        query, sep, key = str(pair).strip().partition("-")
        if not sep or n_layers is None:
            raise LatentcheckError(f"--knockout-sweep {pair!r}: expected QUERY-KEY, e.g. answer-span or span-image")
        for layer in range(n_layers):
            planned.append(PlannedIntervention(parse_spec(f"knockout:query={query},key={key},layers={layer}"),
                                               f"knockout_sweep:{query}-{key}", float(layer)))
    for name in per_index:
        base = parse_spec(name) if isinstance(name, str) else name
        if base.steps is not None:
            raise LatentcheckError(f"--per-index {name!r}: give the intervention without @steps; one spec per latent "
                                   "index is made for you")
        if base.definition.whole_span:
            raise LatentcheckError(f"--per-index {base.name}: {base.name} acts on the whole span; use it without "
                                   "--per-index")
        for k in range(n_latents):
            planned.append(PlannedIntervention(InterventionSpec(base.name, dict(base.params), [k]),
                                               f"per_index:{base.label}", k))
    if not planned:
        planned = [PlannedIntervention(s) for s in parse_specs(list(DEFAULT_SPECS))]
    seen: set[str] = set()
    out = []
    for p in planned:
        if p.label not in seen:
            seen.add(p.label)
            out.append(p)
    return out


def needs_stats(planned: Iterable[PlannedIntervention]) -> bool:
    """True if some intervention needs dataset latent statistics (shared mean/random, index_mean)."""
    return any(p.spec.needs_stats for p in planned)


# ---------------------------------------------------------------------------------------------- outcomes
def option_kl(lp_base: np.ndarray | None, lp_int: np.ndarray | None) -> float | None:
    """KL(baseline || intervened) between the option distributions renormalised over the options (nats)."""
    if lp_base is None or lp_int is None:
        return None
    a = np.asarray(lp_base, np.float64)
    b = np.asarray(lp_int, np.float64)
    la, lb = a - logsumexp(a), b - logsumexp(b)
    return float(max(0.0, np.sum(np.exp(la) * (la - lb))))


def degeneration(token_ids: Sequence[int], span_mask: Sequence[bool], eos_ids: Iterable[int], answered: bool,
                 finish_reason: str) -> str | None:
    """Why a generation counts as degenerate, or None.

    ``length_without_answer``: max_new_tokens was reached and no answer could be extracted.
    ``repeated_<n>gram``: on the tokens outside the latent span (EOS removed), with at least ``DEGEN_MIN_TOKENS``
    of them, one n-gram (n <= ``DEGEN_MAX_N``) occurs >= ``DEGEN_MIN_REPEATS`` times (overlaps counted) and its
    occurrences x n cover >= ``DEGEN_COVERAGE`` of the tokens; ``n`` is the length with the largest coverage
    (ties: the shortest).
    """
    if finish_reason == "length" and not answered:
        return "length_without_answer"
    eos = set(eos_ids)
    toks = [t for t, s in zip(token_ids, span_mask) if not s and t not in eos]
    if len(toks) < DEGEN_MIN_TOKENS:
        return None
    best_n, best_cov = 0, 0.0
    for n in range(1, DEGEN_MAX_N + 1):
        grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        _, c = grams.most_common(1)[0]
        cov = min(1.0, c * n / len(toks))
        if c >= DEGEN_MIN_REPEATS and cov >= DEGEN_COVERAGE and cov > best_cov:
            best_n, best_cov = n, cov
    return f"repeated_{best_n}gram" if best_n else None


# ---------------------------------------------------------------------------------------------- settings/result
@dataclass
class PerturbLatentSettings:
    """Everything besides the common options that changes the results (stored in the provenance config)."""

    interventions: list[dict] = field(default_factory=list)
    mediation: list[str] = field(default_factory=lambda: ["image"])
    mediators: list[str] = field(default_factory=lambda: list(MEDIATORS))
    partner: str = "different_gold"
    naive: bool = False
    force_latent: bool = False
    image_visibility: str | None = None
    max_new_tokens: int | None = None
    calibration_size: int | None = None
    n_boot: int = 2000
    plots: bool = True
    patch_layers: list[list] = field(default_factory=list)  # [(label, state indices)] of --patch-layers


PerturbLatentResult = AnalysisResult  # what run_perturb_latent returns (the one result type)


@dataclass
class _Sample:
    task: Task
    prompt: Any
    option_ids: list[int]


# ---------------------------------------------------------------------------------------------- execution
def execute(engine: Engine, requests: list[Request], batch_size: int, naive: bool = False) -> list[list[Trace]]:
    """Run requests through the engine: batched (shared prefill per request, conditions forked) or ``naive``
    (every (request, condition) as its own generation at batch size 1). Same return shape either way."""
    if not naive:
        return engine.run(requests, batch_size=batch_size)
    out: list[list[Trace]] = []
    for r in requests:
        traces = []
        for c in r.conditions:
            single = Request(r.prompt, [c], option_ids=r.option_ids, image_visibility=r.image_visibility,
                             force_latent=r.force_latent, stop_sequences=r.stop_sequences,
                             max_new_tokens=r.max_new_tokens)
            traces.append(engine.run([single], batch_size=1)[0][0])
        out.append(traces)
    return out


def sequence_conditions(planned: Sequence[PlannedIntervention], key: str, base_latents: np.ndarray,
                        partner_latents: np.ndarray | None, seed: int,
                        hidden_size: int | None = None, embeddings: Embeddings | None = None
                        ) -> tuple[list[Condition], dict[str, str]]:
    """Override conditions for the sequence interventions of one sample (+ reasons for the ones skipped);
    ``embeddings``: the model's input embeddings (for interventions that declare ``needs_embedding``)."""
    conds, skipped = [], {}
    for p in planned:
        spec = p.spec
        if spec.definition.needs_partner and partner_latents is None:
            skipped[p.label] = "no partner sample (need >= 2 valid samples) or the partner failed"
            continue
        ov, mask = sequence_override(spec, base_latents, partner_latents, key, seed, embeddings)
        if ov.size and (ov.ndim != 2 or (hidden_size is not None and ov.shape[1] != hidden_size)):
            raise LatentcheckError(f"{p.label}: the override vectors have shape {ov.shape}; expected [K, {hidden_size}]")
        conds.append(Condition(p.label, override=np.ascontiguousarray(ov, dtype=np.float32), override_mask=mask))
    return conds, skipped


class _Analysis:
    """State of one perturb-latent run: the model, engine, plan, partners; ``process_block`` is the runner's hook."""

    def __init__(self, lm, opts: CommonOptions, planned: list[PlannedIntervention], settings: PerturbLatentSettings,
                 tasks: list[Task], group_size: int):
        from latentcheck.core.extract import get_extractor

        self.lm = lm
        self.opts = opts
        self.settings = settings
        self.engine = Engine(lm, seed=opts.seed)
        self.vector = [p for p in planned if p.kind in ("vector", "attention")]  # (rows of the decode batch)
        self.sequence = [p for p in planned if p.kind == "sequence"]
        self.kinds = list(settings.mediation)
        self.tasks = {t.id: t for t in tasks}
        self.has_swap = any(p.spec.definition.needs_partner for p in self.sequence)
        golds = [t.answer_index for t in tasks] if settings.partner == "different_gold" else None
        self.partner_of = partner_map([t.id for t in tasks], opts.seed, group_size, golds=golds) \
            if (self.has_swap or self.kinds) else {}
        self.span = "span" in settings.mediators
        self.extract = get_extractor(lm.profile.extractor)
        self.embeddings = Embeddings(self.engine.embed.weight, lm.tokenizer)
        self.timing = {"calibration_s": 0.0, "vector_pass_s": 0.0, "sequence_pass_s": 0.0, "samples": 0}
        self._cache: dict[str, _Sample | RecordError] = {}
        self._cache_size = max(64, 2 * group_size)

    # -- inputs
    def prepare(self, task: Task) -> _Sample:
        """Validate a task for this analysis and build its prompt (RecordError names record + field)."""
        from latentcheck.core.prompts import build_prompt, option_token_ids, task_text

        if not task.options:
            raise RecordError(task.id, "options", "perturb-latent needs multiple-choice tasks (options missing)")
        if task.answer is None or task.answer_index is None:
            raise RecordError(task.id, "answer", "perturb-latent needs the gold answer (missing)")
        image = task.load_image()
        prompt = build_prompt(self.lm, task.id, task_text(task, self.lm.profile), image)
        return _Sample(task, prompt, option_token_ids(self.lm, len(task.options)))

    def _prepared(self, key: str) -> _Sample | RecordError:
        if key not in self._cache:
            try:
                self._cache[key] = self.prepare(self.tasks[key])
            except RecordError as e:
                self._cache[key] = e
            if len(self._cache) > self._cache_size:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def counterfactual(self, sample: _Sample, partner: Task, kind: str) -> _Sample:
        from latentcheck.core.prompts import build_prompt, task_text

        cf = counterfactual_task(sample.task, partner, kind)
        image = cf.load_image()
        prompt = build_prompt(self.lm, cf.id, task_text(cf, self.lm.profile), image)
        return _Sample(cf, prompt, sample.option_ids)

    def request(self, s: _Sample, conditions: list[Condition]) -> Request:
        st = self.settings
        return Request(s.prompt, conditions, option_ids=s.option_ids, image_visibility=st.image_visibility,
                       force_latent=st.force_latent, max_new_tokens=st.max_new_tokens)

    def run(self, requests: list[Request]) -> list[list[Trace]]:
        return execute(self.engine, requests, self.opts.batch_size, self.settings.naive)

    # -- calibration
    def calibrate(self, tasks: list[Task], n: int) -> tuple[LatentStats, dict]:
        """Baselines of the first ``n`` valid tasks -> dataset latent statistics (installed in the engine)."""
        t0 = time.perf_counter()
        samples = []
        for t in tasks:
            if len(samples) >= n:
                break
            s = self._prepared(t.id)
            if isinstance(s, _Sample):
                samples.append(s)
        if not samples:
            raise LatentcheckError("calibration: no valid task to compute latent statistics from")
        traces = self.run([self.request(s, [Condition()]) for s in samples])
        lat = [tr[0].latents for tr in traces]
        try:
            stats = LatentStats.from_latents(lat)
        except LatentcheckError as e:
            raise LatentcheckError(f"{e}; the model never entered latent mode on the calibration samples - check "
                                   "the profile, or pass --force-latent to force the latent-start token") from None
        self.engine.stats = stats
        self.timing["calibration_s"] += time.perf_counter() - t0
        info = {"n_samples": len(samples), "n_triggered": int(sum(len(x) > 0 for x in lat)),
                "n_vectors": int(sum(len(x) for x in lat)), "keys": [s.task.id for s in samples],
                "mean_norm": stats.mean_norm, "mean_vector_norm": float(np.linalg.norm(stats.mean)),
                "n_index": int(len(stats.index_mean)),
                "index_mean_norms": [float(v) for v in np.linalg.norm(stats.index_mean, axis=1)],
                "index_counts": [int(sum(len(x) > i for x in lat)) for i in range(len(stats.index_mean))]}
        return stats, info

    # -- outcomes
    def outcome(self, tr: Trace, s: _Sample, gold_task: Task, base: dict | None = None,
                base_lp: np.ndarray | None = None) -> dict:
        from latentcheck.core.answers import read_trace

        answer = read_trace(self.lm, tr, s.task.options, self.extract).answer  # the one answer rule
        gold = gold_task.answer_index
        lp = tr.option_logprobs
        degen = degeneration(tr.token_ids, tr.span_mask, self.lm.tokens.eos, answer is not None, tr.finish_reason)
        out = {"answer": answer, "correct": bool(answer is not None and answer == LETTERS[gold]),
               "logp_gold": None if lp is None else float(lp[gold]),
               "degenerate": degen is not None, "degenerate_reason": degen, "triggered": bool(tr.triggered),
               "latent_count": int(tr.latent_count), "finish_reason": tr.finish_reason, "text": tr.text,
               "option_logprobs": None if lp is None else [float(x) for x in lp]}
        if base is not None:
            out["flipped"] = answer != base["answer"]
            bi = LETTERS.index(base["answer"]) if base["answer"] is not None else None
            out["logp_base_answer"] = None if (lp is None or bi is None or bi >= len(lp)) else float(lp[bi])
            out["d_logp_gold"] = None if (out["logp_gold"] is None or base["logp_gold"] is None) \
                else out["logp_gold"] - base["logp_gold"]
            out["kl"] = option_kl(base_lp, lp)
        return out

    # -- the span mediator: activation patching of the whole latent span (Engine.replay_span)
    def span_mediation(self, s: _Sample, btr: Trace, c: _Sample, ctr: Trace, gold_task: Task) -> dict:
        """y00 / y11 / y01 / y10 with the latent span's states at every layer as the mediator: y01 = original input
        with the span states of the counterfactual run, y10 = counterfactual input with the original span states.
        Outcomes from the answer-point option distribution of teacher-forced replays (argmax = the answer)."""
        vis = self.settings.image_visibility
        if not btr.triggered or not ctr.triggered:
            return {"skipped": "latent mode did not run in the original or the counterfactual run"}
        try:
            r00 = self.engine.replay_span(s.prompt, btr, image_visibility=vis)
            r11 = self.engine.replay_span(c.prompt, ctr, image_visibility=vis)
            if r00 is None or r11 is None:
                return {"skipped": "the original or the counterfactual run never reached the answer point"}
            if r00[1].shape != r11[1].shape:
                return {"skipped": f"span lengths differ ({r00[1].shape[1]} vs {r11[1].shape[1]} positions)"}
            r01 = self.engine.replay_span(s.prompt, btr, span_states=r11[1], image_visibility=vis)
            r10 = self.engine.replay_span(c.prompt, ctr, span_states=r00[1], image_visibility=vis)
            # the layer sweep: the counterfactual run's span states at the chosen layers only (y01 at layer l)
            per_layer = {label: self.engine.replay_span(s.prompt, btr, span_states=r11[1], image_visibility=vis,
                                                        layers=layers)
                         for label, layers in self.settings.patch_layers}
        except ValueError as e:
            return {"skipped": str(e)}
        gold = gold_task.answer_index

        def scored(r) -> dict:
            lp = r[0][s.option_ids]
            pick = int(np.argmax(lp))
            return {"answer": LETTERS[pick], "correct": pick == gold, "logp_gold": float(lp[gold])}

        out: dict[str, Any] = {y: scored(r) for y, r in (("y00", r00), ("y11", r11), ("y01", r01), ("y10", r10))}
        if per_layer:
            out["layers"] = {label: scored(r) for label, r in per_layer.items()}
        return out

    # -- the runner's block function
    def process_block(self, tasks: list[Task]) -> list[dict]:  # noqa: C901 - two passes, kept together
        results: dict[str, dict] = {}
        samples: dict[str, _Sample] = {}
        for t in tasks:
            s = self._prepared(t.id)
            if isinstance(s, RecordError):
                results[t.id] = error_record(t.id, s)
            else:
                samples[t.id] = s
        partners: dict[str, _Sample] = {}
        partner_err: dict[str, str] = {}
        for key in samples:
            pk = self.partner_of.get(key)
            if pk is None:
                partner_err[key] = "no partner sample (need >= 2 valid samples)"
                continue
            ps = samples.get(pk) or self._prepared(pk)
            if isinstance(ps, RecordError):
                partner_err[key] = f"partner {pk} failed: {ps}"
            else:
                partners[key] = ps
        cf: dict[tuple[str, str], _Sample] = {}
        cf_err: dict[tuple[str, str], str] = {}
        for key, s in samples.items():
            for kind in self.kinds:
                if key not in partners:
                    cf_err[(key, kind)] = partner_err[key]
                    continue
                try:
                    cf[(key, kind)] = self.counterfactual(s, partners[key].task, kind)
                except RecordError as e:
                    cf_err[(key, kind)] = f"counterfactual input failed: {e}"

        # ---- pass 1: baseline + vector interventions (one prefill per sample), counterfactual runs, partners
        t0 = time.perf_counter()
        reqs, tags = [], []
        for key, s in samples.items():
            reqs.append(self.request(s, [Condition()] + [Condition(p.label, p.spec) for p in self.vector]))
            tags.append(("own", key))
        if self.has_swap:
            extra = {p.task.id: p for p in partners.values() if p.task.id not in samples}
            for pk in sorted(extra):
                reqs.append(self.request(extra[pk], [Condition()]))
                tags.append(("partner", pk))
        for (key, kind), c in cf.items():
            reqs.append(self.request(c, [Condition()]))
            tags.append(("cf", key, kind))
        traces = dict(zip(tags, self.run(reqs))) if reqs else {}
        self.timing["vector_pass_s"] += time.perf_counter() - t0

        base_tr = {key: traces[("own", key)][0] for key in samples}
        base_latents = {k: tr.latents for k, tr in base_tr.items()}
        base_latents.update({tag[1]: tr[0].latents for tag, tr in traces.items() if tag[0] == "partner"})

        # ---- pass 2: sequence interventions and mediation interchange runs (need the baseline latents)
        t0 = time.perf_counter()
        reqs, tags = [], []
        skipped: dict[str, dict[str, str]] = {}
        H = self.engine.embed.weight.shape[1]
        for key, s in samples.items():
            pk = partners[key].task.id if key in partners else None
            conds, skipped[key] = sequence_conditions(self.sequence, key, base_latents[key],
                                                      base_latents.get(pk) if pk else None, self.opts.seed, H,
                                                      self.embeddings)
            for kind in self.kinds:
                if (key, kind) in cf:
                    conds.append(Condition(f"nie:{kind}", override=traces[("cf", key, kind)][0].latents))
            if conds:
                reqs.append(self.request(s, conds))
                tags.append(("own2", key))
            for kind in self.kinds:
                if (key, kind) in cf:
                    reqs.append(self.request(cf[(key, kind)], [Condition(f"nde:{kind}", override=base_latents[key])]))
                    tags.append(("cf2", key, kind))
        traces2 = dict(zip(tags, self.run(reqs))) if reqs else {}
        self.timing["sequence_pass_s"] += time.perf_counter() - t0
        self.timing["samples"] += len(samples)

        # ---- records
        for key, s in samples.items():
            task = s.task
            btr = base_tr[key]
            base = self.outcome(btr, s, task)
            own = {tr.condition: tr for tr in traces[("own", key)][1:]}
            own.update({tr.condition: tr for tr in traces2.get(("own2", key), [])})
            interventions = {}
            for p in self.vector + self.sequence:
                if p.label in skipped[key]:
                    interventions[p.label] = {"skipped": skipped[key][p.label]}
                else:
                    interventions[p.label] = self.outcome(own[p.label], s, task, base, btr.option_logprobs)
            med = {}
            for kind in self.kinds:
                if (key, kind) not in cf:
                    med[kind] = {"skipped": cf_err[(key, kind)]}
                    continue
                c = cf[(key, kind)]
                ctr = traces[("cf", key, kind)][0]
                med[kind] = {
                    "partner": partners[key].task.id, "partner_gold": partners[key].task.answer_letter,
                    "y11": self.outcome(ctr, c, task, base, btr.option_logprobs),
                    "y01": self.outcome(own[f"nie:{kind}"], s, task, base, btr.option_logprobs),
                    "y10": self.outcome(traces2[("cf2", key, kind)][0], c, task, base, btr.option_logprobs)}
                if self.span:
                    med[kind]["span"] = self.span_mediation(s, btr, c, ctr, task)
            results[key] = {"key": key, "gold": task.answer_letter, "n_options": len(task.options),
                            "category": task.category, "partner": self.partner_of.get(key),
                            "baseline": base, "interventions": interventions, "mediation": med}
        return [results[t.id] for t in tasks]


# ---------------------------------------------------------------------------------------------- summary
def _ci(values: list[float], seed: int, n_boot: int) -> dict | None:
    """Mean with a percentile-bootstrap CI (a core.summaries.Estimate), None without values."""
    return Estimate.bootstrap(values, n_boot=n_boot, seed=seed).to_dict() if values else None


def _rate(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(records: list[dict], planned: Sequence[PlannedIntervention], seed: int = 0,
              n_boot: int = 2000) -> dict:
    """Baseline, per-intervention effects (accuracy delta with paired bootstrap CI + exact McNemar, flip rates,
    mean delta log p(gold) with CI, mean KL) and curves, from the per-sample records."""
    samples = [r for r in records if r.get("type", "sample") == "sample"]
    n = len(samples)
    base_correct = [int(r["baseline"]["correct"]) for r in samples]
    baseline = {"n": n, "accuracy": Proportion.of(base_correct).to_dict(),
                "chance": float(np.mean([1.0 / r["n_options"] for r in samples])) if n else math.nan,
                "answered_rate": _rate([r["baseline"]["answer"] is not None for r in samples]),
                "trigger_rate": _rate([r["baseline"]["triggered"] for r in samples]),
                "mean_latent_count": float(np.mean([r["baseline"]["latent_count"] for r in samples])) if n else None,
                "degenerate_rate": _rate([r["baseline"]["degenerate"] for r in samples]),
                "mean_logp_gold": _ci([r["baseline"]["logp_gold"] for r in samples
                                       if r["baseline"]["logp_gold"] is not None], seed, n_boot)}
    rows = []
    for p in planned:
        got = [(r["baseline"], r["interventions"].get(p.label)) for r in samples]
        got = [(b, o) for b, o in got if o is not None and "skipped" not in o]
        row: dict[str, Any] = {**p.to_dict(), "n": len(got), "n_skipped": n - len(got)}
        if got:
            row["effect"] = AccuracyEffect.paired([int(b["correct"]) for b, _ in got],
                                                  [int(o["correct"]) for _, o in got], seed=seed, n_boot=n_boot)
            row["answer_flip_rate"] = _rate([o["flipped"] for _, o in got])
            row["d_logp_gold"] = _ci([o["d_logp_gold"] for _, o in got if o["d_logp_gold"] is not None],
                                     seed, n_boot)
            row["kl"] = _ci([o["kl"] for _, o in got if o["kl"] is not None], seed, n_boot)
            row["degenerate_rate"] = _rate([o["degenerate"] for _, o in got])
            row["trigger_rate"] = _rate([o["triggered"] for _, o in got])
            row["mean_latent_count"] = float(np.mean([o["latent_count"] for _, o in got]))
        rows.append(row)
    adjusted = holm([r["effect"].delta.p_value if "effect" in r else math.nan for r in rows])
    for r, ph in zip(rows, adjusted):
        if "effect" in r:  # the Holm-adjusted p goes into the effect's delta (core.summaries.Effect.p_holm)
            eff = r["effect"]
            r["effect"] = dataclasses.replace(eff, delta=dataclasses.replace(
                eff.delta, p_holm=None if math.isnan(ph) else ph)).to_dict()
    curves: dict[str, Any] = {}
    groups = sorted({p.group for p in planned if p.group != "spec"})
    for g in groups:
        rs = [r for r in rows if r["group"] == g and r["n"]]
        # one point per row: the intervened accuracy (the row's effect.cond Proportion) and the change in log p(gold)
        # (the row's Estimate, None when not measured)
        curves[g] = {"x": [r["x"] for r in rs], "labels": [r["label"] for r in rs],
                     "accuracy": [r["effect"]["cond"] for r in rs], "d_logp_gold": [r["d_logp_gold"] for r in rs]}
    return {"baseline": baseline, "interventions": rows, "curves": curves,
            "multiplicity": {"method": "holm", "family": "every intervention row of this run (exact McNemar p)",
                             "m": int(sum(1 for x in adjusted if not math.isnan(x)))}}


def trigger_summary(records: list[dict], planned: Sequence[PlannedIntervention], kind: str) -> dict | None:
    """The fake-null guard block (core/trigger.py) per condition: baseline and every intervention."""
    conds = {"baseline": ([r["baseline"]["triggered"] for r in records],
                          [r["baseline"]["latent_count"] for r in records])}
    for p in planned:
        got = [r["interventions"].get(p.label) for r in records]
        got = [o for o in got if o is not None and "skipped" not in o]
        conds[p.label] = ([o["triggered"] for o in got], [o["latent_count"] for o in got])
    return trigger_block(conds, "baseline", kind)


def make_plots(summary: dict, folder: str | Path) -> dict[str, str]:
    """accuracy.png (every non-curve intervention, Wilson CI bars, chance line), delta_logp.png, one curve per
    --sigma-sweep / --per-index group, and mediation_<kind>.png."""
    from latentcheck.core.plots import bar_ci, forest, lines

    folder = Path(folder)
    b = summary["baseline"]
    paths: dict[str, str] = {}
    if not b["n"]:
        return paths
    rows = [r for r in summary["interventions"] if r["group"] == "spec" and r["n"]]
    labels = ["baseline"] + [r["label"] for r in rows]
    accs = [b["accuracy"]] + [r["effect"]["cond"] for r in rows]
    paths["accuracy"] = bar_ci(labels, [a["estimate"] for a in accs], [a["lo"] for a in accs],
                               [a["hi"] for a in accs], folder / "accuracy.png",
                               title=f"accuracy under latent interventions (n={b['n']}, Wilson 95% CI)",
                               ylabel="accuracy", hline=b["chance"], hline_label="chance")
    lrows = [r for r in rows if r.get("d_logp_gold")]
    if lrows:
        paths["delta_logp"] = forest([r["label"] for r in lrows], [r["d_logp_gold"]["estimate"] for r in lrows],
                                     [r["d_logp_gold"]["lo"] for r in lrows], [r["d_logp_gold"]["hi"] for r in lrows],
                                     folder / "delta_logp.png", title="mean change in log p(gold) (bootstrap 95% CI)",
                                     xlabel="delta log p(gold)")
    for g, c in summary["curves"].items():
        if not c["x"]:
            continue
        x = c["x"]
        series = {"intervened": [a["estimate"] for a in c["accuracy"]],
                  "baseline": [b["accuracy"]["estimate"]] * len(x)}
        bands = {"intervened": ([a["lo"] for a in c["accuracy"]], [a["hi"] for a in c["accuracy"]])}
        if g == "sigma_sweep":
            name, xlabel, title = "sigma_sweep", "sigma (noise norm / latent norm)", "accuracy vs additive noise"
        elif g == "length_sweep":
            name, xlabel, title = "length_sweep", "latent span length K'", "accuracy vs forced span length"
        elif g.startswith("knockout_sweep:"):
            pair = g.split(":", 1)[1]
            q, k = pair.split("-", 1)
            name, xlabel = f"knockout_sweep_{q}_{k}", "decoder layer (knocked out alone)"
            title = f"attention knockout per layer: {q} cannot attend to {k}"
        else:
            spec_label = g.split(":", 1)[1]
            name = "per_index_" + "".join(ch if ch.isalnum() else "_" for ch in spec_label)
            xlabel, title = "latent index", f"per-index ablation: {spec_label} at one index"
        paths[name] = lines(x, series, folder / f"{name}.png", title=f"{title} (chance dashed)", xlabel=xlabel,
                            ylabel="accuracy", bands=bands, hline=b["chance"])
    if summary.get("mediation"):
        paths.update(plot_mediation(summary["mediation"], folder))
    if summary.get("layer_patching"):
        paths.update(plot_layer_patching(summary["layer_patching"], folder))
    return paths


# ---------------------------------------------------------------------------------------------- entry point
class PerturbLatent(AnalysisSpec):
    """perturb-latent as an analysis (core.analysis.run_analysis): the interventions planned for the model,
    dataset latent statistics when an intervention needs them (``latent_stats.npz``), one record stage, the
    summary (interventions, mediation, layer patching) and the figures. The arguments are
    :func:`run_perturb_latent`'s."""

    command = COMMAND

    def __init__(self, specs: Iterable[str | InterventionSpec] | None = None, *,
                 sigma_sweep: str | Sequence[float] | None = None, per_index: Iterable[str] = (),
                 length_sweep: str | Sequence[float] | None = None,
                 mediation: str | Sequence[str] | None = ("image",),
                 mediators: str | Sequence[str] | None = MEDIATORS, partner: str = "different_gold",
                 naive: bool = False, force_latent: bool = False, image_visibility: str | None = None,
                 max_new_tokens: int | None = None, calibration_size: int | None = None, n_boot: int = 2000,
                 plots: bool = True, patch_layers: str | Sequence[str] | None = None,
                 knockout_sweep: str | Sequence[str] | None = None):
        if image_visibility is not None and image_visibility not in VISIBILITIES:
            raise LatentcheckError(f"--image-visibility must be one of {', '.join(VISIBILITIES)}, got "
                                   f"{image_visibility!r}")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise LatentcheckError("--max-new-tokens must be >= 1")
        if calibration_size is not None and calibration_size < 1:
            raise LatentcheckError("--calibration must be >= 1")
        self.kinds = parse_kinds(mediation)
        self.meds = parse_mediators(mediators)
        if partner not in PARTNER_RULES:
            raise LatentcheckError(f"--partner must be one of {', '.join(PARTNER_RULES)}, got {partner!r}")
        self.sweep = parse_float_list(sigma_sweep)
        self.specs, self.per_index, self.length_sweep, self.partner, self.naive = specs, per_index, length_sweep, \
            partner, naive
        self.force_latent, self.image_visibility, self.max_new_tokens = force_latent, image_visibility, max_new_tokens
        self.calibration_size, self.n_boot, self.plots = calibration_size, n_boot, plots
        self.patch_layers, self.knockout_sweep = patch_layers, knockout_sweep

    def setup(self, run: AnalysisRun) -> None:
        """The model-dependent plan (profile, layers, K), then the calibration pass when needed."""
        lm, opts = run.lm, run.opts
        prof = lm.profile
        if not prof.is_latent:
            raise LatentcheckError(f"perturb-latent intervenes on fed-back latent vectors, but profile {prof.name!r} "
                                   f"is {prof.kind!r}; use a latent profile (for text imagination see perturb-input / "
                                   "caption-imagine)")
        lengths = parse_float_list(self.length_sweep, "--length-sweep")
        if any(not float(k).is_integer() for k in lengths):
            raise LatentcheckError(f"--length-sweep takes whole numbers of vectors, got {self.length_sweep!r}")
        self.n_states = len(text_model_of(lm.model).layers) + 1  # span states: input + every decoder layer's output
        ko = self.knockout_sweep
        ko_pairs = [x.strip() for x in (ko.split(",") if isinstance(ko, str) else (ko or [])) if x.strip()]
        planned = plan_interventions(self.specs, self.sweep, list(self.per_index), prof.latent.k,
                                     length_sweep=lengths, knockout_sweep=ko_pairs, n_layers=self.n_states - 1)
        self.patch_sets = parse_patch_layers(self.patch_layers, self.n_states)
        if self.patch_sets and ("span" not in self.meds or not self.kinds):
            raise LatentcheckError("--patch-layers patches the span from the mediation's counterfactual run: it needs "
                                   "--mediation image|question and the span mediator (--mediators vectors,span)")
        self.block = block = max(1, opts.batch_size) * 4
        settings = PerturbLatentSettings(interventions=[p.to_dict() for p in planned], mediation=self.kinds,
                                         mediators=self.meds, partner=self.partner, naive=self.naive,
                                         force_latent=self.force_latent, image_visibility=self.image_visibility,
                                         max_new_tokens=self.max_new_tokens,
                                         calibration_size=self.calibration_size or block, n_boot=self.n_boot,
                                         plots=self.plots, patch_layers=[[lab, ls] for lab, ls in self.patch_sets])
        tasks = run.tasks
        ana = _Analysis(lm, opts, planned, settings, tasks, group_size=block)
        calibration = None
        if needs_stats(planned):
            try:
                stats, calibration = ana.calibrate(in_id_order(tasks), settings.calibration_size)
            except LatentcheckError as e:
                if "never entered latent mode" not in str(e):
                    raise
                # nothing to calibrate on: drop the interventions that need latent statistics and go on, so the run
                # measures (and flags) the trigger rate instead of stopping (the fake-null guard reports it)
                dropped = [p.label for p in planned if p.spec.needs_stats]
                planned = [p for p in planned if not p.spec.needs_stats]
                settings.interventions = [p.to_dict() for p in planned]
                ana = _Analysis(lm, opts, planned, settings, tasks, group_size=block)
                calibration = {"error": str(e), "dropped_interventions": dropped}
                warn(f"{COMMAND}: latent mode never triggered on the calibration samples; interventions that need "
                     f"latent statistics were dropped: {', '.join(dropped)}")
            else:
                run.out.mkdir(parents=True, exist_ok=True)
                save_npz_atomic(run.out / "latent_stats.npz", mean=stats.mean, index_mean=stats.index_mean)
                calibration["path"] = "latent_stats.npz"
        self.planned, self.settings, self.ana, self.calibration = planned, settings, ana, calibration

    def stages(self, run: AnalysisRun) -> list[RecordStage]:
        return [RecordStage("samples", self.ana.process_block, config=asdict(self.settings), block_size=self.block)]

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        seed, n_boot, kinds = run.opts.seed, self.n_boot, self.kinds
        records = [r for r in run.records["samples"] if r.get("type", "sample") == "sample"]
        summary: dict[str, Any] = {"command": COMMAND, "model": run.lm.describe(), "data": run.data,
                                   "counts": run.counts["samples"], "settings": asdict(self.settings),
                                   "calibration": self.calibration}
        summary.update(summarise(records, self.planned, seed=seed, n_boot=n_boot))
        summary["latent_trigger"] = trigger_summary(records, self.planned, run.lm.profile.kind)
        warn_trigger(summary["latent_trigger"], COMMAND)
        summary["mediation"] = summarise_mediation(records, kinds, seed=seed, n_boot=n_boot,
                                                   mediators=self.meds) if kinds else {}
        summary["layer_patching"] = summarise_layer_patching(records, kinds, self.patch_sets, self.n_states,
                                                             seed=seed, n_boot=n_boot) if self.patch_sets else {}
        summary["mediation_partner"] = self.partner
        summary["mediation_primary_outcome"] = PRIMARY_OUTCOME
        summary["timing"] = {**{k: round(v, 3) if isinstance(v, float) else v for k, v in self.ana.timing.items()},
                             "total_s": round(time.perf_counter() - run.started, 3)}
        return summary

    def figures(self, run: AnalysisRun, summary: dict[str, Any]) -> dict[str, str]:
        plot_paths = make_plots(summary, run.out / "plots") if self.plots else {}
        summary["plots"] = {k: str(Path(v).relative_to(run.out)) for k, v in plot_paths.items()}
        return plot_paths


def run_perturb_latent(opts: CommonOptions, specs: Iterable[str | InterventionSpec] | None = None, *,
                       sigma_sweep: str | Sequence[float] | None = None, per_index: Iterable[str] = (),
                       length_sweep: str | Sequence[float] | None = None,
                       mediation: str | Sequence[str] | None = ("image",),
                       mediators: str | Sequence[str] | None = MEDIATORS, partner: str = "different_gold",
                       naive: bool = False,
                       force_latent: bool = False, image_visibility: str | None = None,
                       max_new_tokens: int | None = None, calibration_size: int | None = None,
                       n_boot: int = 2000, plots: bool = True, patch_layers: str | Sequence[str] | None = None,
                       knockout_sweep: str | Sequence[str] | None = None, lm=None) -> PerturbLatentResult:
    """Run the Z -> Y interventions and the mediation analysis over a task file; write ``samples.jsonl``,
    ``summary.json`` and ``plots/*.png`` to ``opts.out`` and return the summary (see module docstring)."""
    return run_analysis(PerturbLatent(specs, sigma_sweep=sigma_sweep, per_index=per_index, length_sweep=length_sweep,
                                      mediation=mediation, mediators=mediators, partner=partner, naive=naive,
                                      force_latent=force_latent, image_visibility=image_visibility,
                                      max_new_tokens=max_new_tokens, calibration_size=calibration_size,
                                      n_boot=n_boot, plots=plots, patch_layers=patch_layers,
                                      knockout_sweep=knockout_sweep), opts, lm=lm)


def intervention_names() -> list[tuple[str, str, dict, str]]:
    """(name, kind, default params, description) of every registered intervention (for ``--list``)."""
    return [(d.name, d.kind, dict(d.params), d.doc) for d in REGISTRY.values()]


__all__ = ["DEFAULT_SPECS", "MEDIATION_KINDS", "PerturbLatentResult", "PerturbLatentSettings", "PlannedIntervention",
           "degeneration", "execute", "intervention_names", "make_plots", "needs_stats", "option_kl",
           "parse_float_list", "plan_interventions", "run_perturb_latent", "sequence_conditions", "summarise"]
