"""caption-imagine intervene: the text do(Z) experiment (paper §5.5 / Table 3) and the X->Z similarity of the
imagination's hidden states (paper Fig. 4, set beside the latent methods).

Per sample (greedy, shared engine):

1. **Z**: generate the chain (with ``--span-rule markers`` only until the imagination end marker), capturing
   last-layer hidden states, and find the imagination span (``find_span``): ``markers`` (the profile's markers),
   ``prose`` (marker-free text such as the released CapImagine-7B's "Upon zooming in, ...": everything between the
   prompt and the final-answer sentence / boxed answer), ``judge`` (a model copies the span out of the output) or
   ``auto`` (markers when the output has a closed marker span, else prose). The rule used is recorded per sample
   (``span_rule``, ``span_chars``). Samples without a span are recorded as not intervened (reason kept) and left
   out of the effect.
2. **do(Z)**: the first imagination span is rewritten to imply a wrong answer — ``rule`` (toy world: the attribute word
   of the target that the question does not name, a colour or shape of ``toy/world.py``, is replaced by another
   word of the same kind, chosen by a seeded hash of the key; when it is an option, that option is the *implied*
   answer) or ``model`` (a model on the ``core.backends`` layer -- a local checkpoint, or an OpenAI-compatible
   endpoint such as vLLM serving Qwen3-32B -- rewrites it with ``prompts/corrupt.txt``).
3. **Continue**: the model finishes from ``build_prompt(..., assistant_prefix=<chain up to and including the
   imagination>)`` twice — with its own imagination re-fed (the paired baseline; under greedy decoding this is the
   uninterrupted run) and with the corrupted one. The answer is the profile's extractor on the continuation. With
   options, the option distribution is read at the answer point: the first token after ``prefix + answer_prefix``.
4. **Effect**: ``core.stats.accuracy_effect`` (Wilson intervals, paired-bootstrap CI of the drop, exact McNemar),
   the same on the option argmax, the change of p(gold), and how often the corrupted answer follows the implied one.
   Per category (the task's ``category``: V*'s direct_attributes / relative_position, HR-Bench's single / cross, the
   paper's Table 3 columns): ``per_category[c]`` is a ``core.summaries.AccuracyEffect`` (clean vs do(Z) on the
   generated answer) whose ``delta.p_holm`` is Holm-adjusted across the categories.
5. **Similarity** of the imagination's hidden states (the first ``span_tokens`` content tokens of each span, as the
   latent analysis uses the first K latents): inter-instance cosine per token index (raw and mean-centred) and
   intra-instance collapse (``core.similarity``), plus the effective rank.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.analysis import AnalysisResult, AnalysisRun, AnalysisSpec, RecordStage, run_analysis
from latentcheck.core.runner import CommonOptions
from latentcheck.core.tasks import LETTERS, Task
from latentcheck.imagine.run import (DEFAULT_MODEL, answer_of, char_token_range, gold_answer, is_correct,
                                     option_summary, require_text_imagination, split_imagination, task_prompt)

COMMAND = "caption-imagine intervene"
CORRUPT_PROMPT = Path(__file__).resolve().parent / "prompts" / "corrupt.txt"
CORRUPT_PLACEHOLDERS = ("question", "options", "imagination", "answer")
CORRUPTERS = ("auto", "rule", "model")
SPAN_PROMPT = Path(__file__).resolve().parent / "prompts" / "span.txt"
SPAN_PLACEHOLDERS = ("question", "response")
SPAN_RULES = ("auto", "markers", "prose", "judge")
# a final-answer phrase: "The answer is", "So the final answer is", "Therefore, the answer:", "Answer:"
_ANSWER_CUE = re.compile(r"(?i)(?:\b(?:so|thus|therefore|hence)\b[,\s]+)?\b(?:the\s+)?(?:final\s+|correct\s+)?"
                         r"answer\s*(?:is\b|:)")
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


# ----------------------------------------------------------------------------------------------- the span
@dataclass
class Span:
    """Where the imagination is in a generated text: ``before + imagination + after == text``; ``rule`` says how it
    was found (``markers``, ``prose:answer-cue``, ``prose:sentence``, ``judge``); ``end_marker`` is what the
    continuation prefix keeps after the span (the profile's end marker, or "" for marker-free text)."""

    before: str
    imagination: str
    after: str
    rule: str
    end_marker: str = ""

    @property
    def chars(self) -> tuple[int, int]:
        return len(self.before), len(self.before) + len(self.imagination)


def prose_span(text: str) -> Span | None:
    """The imagination of a marker-free chain: everything between the prompt and the final-answer sentence. The
    answer is the last ``\\boxed{`` (else the last final-answer phrase); the span ends where that sentence starts --
    at a final-answer phrase in the same sentence ("... in the top left The answer is \\boxed{A}"), else after the
    previous sentence end (., !, ? or a newline). None when there is no answer or nothing before it."""
    anchor = text.rfind("\\boxed{")
    cues = list(_ANSWER_CUE.finditer(text))
    if anchor < 0:
        if not cues:
            return None
        anchor = cues[-1].start()
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, anchor)]
    sentence_start = ends[-1] if ends else 0
    cue = next((m for m in reversed(cues) if sentence_start <= m.start() <= anchor), None)
    cut, rule = (cue.start(), "prose:answer-cue") if cue else (sentence_start, "prose:sentence")
    imagination = text[:cut].rstrip()
    if not imagination.strip():
        return None
    return Span("", imagination, text[len(imagination):], rule)


def marker_span(text: str, markers: tuple[str, str]) -> Span | None:
    """The first closed ``markers`` span (``before`` ends with the start marker, ``after`` starts with the end)."""
    split = split_imagination(text, markers)
    return None if split is None else Span(*split, rule="markers", end_marker=markers[1])


def judged_span(text: str, marked: str) -> Span | None:
    """The judge's copy of the imagination located in the text (exactly, else up to whitespace); None if absent."""
    marked = marked.strip().strip("\"'`").strip()
    if not marked:
        return None
    i = text.find(marked)
    if i >= 0:
        return Span(text[:i], marked, text[i + len(marked):], "judge")
    pattern = r"\s+".join(re.escape(w) for w in marked.split())
    m = re.search(pattern, text)
    return Span(text[: m.start()], m.group(0), text[m.end():], "judge") if m else None


def find_span(text: str, rule: str, markers: tuple[str, str] | None, judged: str | None = None) -> Span | None:
    """The imagination span of a generated text under ``rule`` (``auto``: the markers when the text has a closed
    marker span, else the prose rule)."""
    if rule not in SPAN_RULES:
        raise LatentcheckError(f"--span-rule must be one of {', '.join(SPAN_RULES)}, got {rule!r}")
    if rule in ("markers", "auto") and markers:
        span = marker_span(text, markers)
        if span is not None or rule == "markers":
            return span
    if rule == "judge":
        return judged_span(text, judged) if judged is not None else None
    return prose_span(text)


class SpanJudge:
    """A model marks the imagination of each response by copying it verbatim (``prompts/span.txt``)."""

    def __init__(self, generator, template: str | None = None):
        from latentcheck.imagine.build_data import read_template

        self.generator = generator
        self.template = template if template is not None else read_template(
            SPAN_PROMPT, SPAN_PLACEHOLDERS, ("response",), "span prompt")

    def mark(self, questions: list[str], responses: list[str]) -> list[str | None]:
        from latentcheck.imagine.build_data import GenRequest

        if not responses:
            return []
        prompts = [self.template.replace("{question}", q).replace("{response}", r).strip()
                   for q, r in zip(questions, responses)]
        replies = self.generator.generate([GenRequest(images=[], prompt=p) for p in prompts])
        return [r if isinstance(r, str) else None for r in replies]


# ----------------------------------------------------------------------------------------------- corruption
@dataclass
class CorruptItem:
    """What a corrupter sees of one sample."""

    key: str
    question: str
    options: list[str] | None
    imagination: str
    answer: str | None  # the model's own answer (letter or text) from the clean run, when known


@dataclass
class Corruption:
    """A corrupted imagination (None = could not corrupt), the option letter it implies (when known), and how."""

    text: str | None
    implied: str | None
    how: str


class Corrupter(Protocol):
    def corrupt(self, items: list[CorruptItem]) -> list[Corruption]: ...


def _word_re(word: str) -> re.Pattern:
    return re.compile(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", re.I)


def _match_case(src: str, new: str) -> str:
    return new.capitalize() if src[:1].isupper() else new


class RuleCorrupter:
    """Swap one attribute word for another of the same vocabulary (default: the toy world's colours and shapes)."""

    def __init__(self, vocabularies: Sequence[Sequence[str]] | None = None, seed: int = 0):
        if vocabularies is None:
            from latentcheck.toy.world import COLOURS, SHAPES

            vocabularies = (COLOURS, SHAPES)
        self.vocabularies = [tuple(v) for v in vocabularies]
        self.seed = seed

    def corrupt_one(self, item: CorruptItem) -> Corruption:
        found = [(w, vocab) for vocab in self.vocabularies for w in vocab if _word_re(w).search(item.imagination)]
        if not found:
            return Corruption(None, None, "no attribute word of the rule vocabularies in the imagination")
        # the decisive attribute is the one the question does not name ("What colour is the circle?" -> the colour)
        unnamed = [(w, v) for w, v in found if not _word_re(w).search(item.question)] or found
        options = [o.lower() for o in item.options or []]
        asked = [(w, v) for w, v in unnamed if w.lower() in options] or unnamed
        word, vocab = asked[0]
        choices = [w for w in vocab if w.lower() != word.lower()]
        if options and any(w.lower() in options for w in choices):
            choices = [w for w in choices if w.lower() in options]
        digest = hashlib.sha256(f"{self.seed}|{item.key}|{word}".encode()).digest()
        new = choices[int.from_bytes(digest[:8], "big") % len(choices)]
        text = _word_re(word).sub(lambda m: _match_case(m.group(0), new), item.imagination)
        implied = LETTERS[options.index(new.lower())] if new.lower() in options else None
        return Corruption(text, implied, f"rule: {word} -> {new}")

    def corrupt(self, items: list[CorruptItem]) -> list[Corruption]:
        return [self.corrupt_one(it) for it in items]


def neutral_edit(imagination: str, key: str, seed: int = 0, vocabulary: Sequence[str] | None = None) -> str | None:
    """The neutral-edit control of text do(Z): the imagination with one answer-irrelevant phrase swapped for another
    of its kind (default: the toy world's quadrant phrases — toy questions ask colour or shape, never position), chosen
    by a seeded hash of the key. None when the imagination holds no such phrase. An edit that does not change the
    answer must not move accuracy; if it does, the model reacts to any edit and a do(Z) drop is not evidence that the
    content is used."""
    if vocabulary is None:
        from latentcheck.toy.world import QUADRANTS

        vocabulary = QUADRANTS
    found = [w for w in vocabulary if _word_re(w).search(imagination)]
    if not found:
        return None
    word = found[0]
    choices = [w for w in vocabulary if w.lower() != word.lower()]
    digest = hashlib.sha256(f"{seed}|{key}|neutral|{word}".encode()).digest()
    new = choices[int.from_bytes(digest[:8], "big") % len(choices)]
    return _word_re(word).sub(lambda m: _match_case(m.group(0), new), imagination)


def load_corrupt_prompt(path: str | Path | None = None) -> str:
    """The rewriting prompt template (default ``imagine/prompts/corrupt.txt``), placeholders checked."""
    from latentcheck.imagine.build_data import read_template

    return read_template(Path(path) if path else CORRUPT_PROMPT, CORRUPT_PLACEHOLDERS, ("imagination",),
                         "corruption prompt")


class ModelCorrupter:
    """A model rewrites the imagination to imply a wrong answer (a ``TextGenerator``: ``imagine.generate``'s
    ``BackendGenerator`` over a local checkpoint or an OpenAI-compatible endpoint, e.g. Qwen3-32B served by vLLM)."""

    def __init__(self, generator, template: str | None = None, markers: Sequence[str] = ("<imagine>", "</imagine>")):
        self.generator = generator
        self.template = template if template is not None else load_corrupt_prompt()
        self.markers = tuple(markers)

    def render(self, item: CorruptItem) -> str:
        from latentcheck.core.prompts import format_options

        values = {"question": item.question, "imagination": item.imagination, "answer": item.answer or "unknown",
                  "options": format_options(item.options, "{letter}. {option}") if item.options else ""}
        text = self.template
        for k, v in values.items():
            text = text.replace("{" + k + "}", v)
        return text.strip()

    def corrupt(self, items: list[CorruptItem]) -> list[Corruption]:
        from latentcheck.imagine.build_data import GenRequest, sanitize_description

        if not items:
            return []
        replies = self.generator.generate([GenRequest(images=[], prompt=self.render(it)) for it in items])
        if len(replies) != len(items):
            raise LatentcheckError(f"corruption model returned {len(replies)} replies for {len(items)} requests")
        out = []
        for it, reply in zip(items, replies):
            if not isinstance(reply, str):
                out.append(Corruption(None, None, f"model: {reply}"))
                continue
            text = sanitize_description(reply, self.markers)
            if not text:
                out.append(Corruption(None, None, "model: empty rewrite"))
            elif " ".join(text.split()).lower() == " ".join(it.imagination.split()).lower():
                out.append(Corruption(None, None, "model: rewrite equals the original"))
            else:
                out.append(Corruption(text, None, "model"))
        return out


def make_corrupter(kind: str, lm, corrupt_model: str | None = None, prompt_path: str | None = None,
                   seed: int = 0, load_kw: dict | None = None, batch_size: int = 8, url: str | None = None,
                   backend_kw: dict | None = None) -> Corrupter:
    """``rule`` | ``model`` | ``auto`` (model when ``corrupt_model`` is given, else rule). The model runs locally, or
    at ``url`` (an OpenAI-compatible endpoint serving ``corrupt_model``) through ``core.backends``."""
    if kind not in CORRUPTERS:
        raise LatentcheckError(f"--corrupter must be one of {', '.join(CORRUPTERS)}, got {kind!r}")
    if kind == "auto":
        kind = "model" if corrupt_model else "rule"
    if kind == "rule":
        return RuleCorrupter(seed=seed)
    if not corrupt_model:
        raise LatentcheckError("--corrupter model needs --corrupt-model (a local checkpoint, or a served model's name "
                               "with --corrupt-url)")
    from latentcheck.imagine.generate import BackendSpec, make_generator

    template = load_corrupt_prompt(prompt_path)
    gen = make_generator(BackendSpec(corrupt_model, url=url, load_kw=load_kw or {}, batch_size=batch_size,
                                     **(backend_kw or {})))
    markers = (lm.profile.imagination.get("start", ""), lm.profile.imagination.get("end", ""))
    return ModelCorrupter(gen, template, markers)


def make_span_judge(model: str | None, url: str | None = None, load_kw: dict | None = None, batch_size: int = 8,
                    backend_kw: dict | None = None) -> SpanJudge:
    """The span judge of ``--span-rule judge``."""
    if not model:
        raise LatentcheckError("--span-rule judge needs --span-model (a local checkpoint, or a served model's name "
                               "with --span-url)")
    from latentcheck.imagine.generate import BackendSpec, make_generator

    return SpanJudge(make_generator(BackendSpec(model, url=url, load_kw=load_kw or {}, batch_size=batch_size,
                                                **(backend_kw or {}))))


# ----------------------------------------------------------------------------------------------- per block
def _continuation(lm, trace, task: Task) -> dict[str, Any]:
    ans, pred = answer_of(lm, trace, task)
    return {"pred": pred, "correct": is_correct(task, pred), "answer_text": ans, "text": trace.text}


def _option_probs(trace, option_ids: list[int]) -> np.ndarray:
    logits = trace.logits[0].astype(np.float64)
    lp = logits - logits.max()
    lp = lp - np.log(np.exp(lp).sum())
    p = np.exp(lp[option_ids])
    return p / p.sum()


def doz_prefixes(split: tuple[str, str, str], corrupted: str, end_marker: str) -> dict[str, str]:
    """Assistant prefixes for the continuation: the chain up to and including the first imagination span, with the
    model's own imagination (``clean``) or the corrupted one (whitespace around the span kept). Anything generated
    after the end marker (when the stop sequence did not fire, e.g. the marker tokenized differently in context)
    is cut."""
    before, imag, after = split
    end = after[: len(end_marker)]
    lead, trail = imag[: len(imag) - len(imag.lstrip())], imag[len(imag.rstrip()):]
    return {"clean": before + imag + end, "corrupt": before + lead + corrupted.strip() + trail + end}


def intervene_block(lm, engines: dict, corrupter: Corrupter, tasks: list[Task], store=None, span_tokens: int = 8,
                    max_pixels: int | None = None, batch_size: int = 8, span_rule: str = "auto",
                    span_judge: SpanJudge | None = None) -> list[dict]:
    """The do(Z) experiment for a block of tasks (module docstring); one record per task. ``span_rule``: how the
    imagination is found in the output (``find_span``); the rule used is recorded per sample."""
    from latentcheck.core.engine import Request
    from latentcheck.core.prompts import option_token_ids
    from latentcheck.core.runner import error_record

    markers = require_text_imagination(lm)
    # only the markers rule may stop at the end marker; the others need the whole output (the answer locates the span)
    stop = [list(lm.tokens.imagination_end)] if span_rule == "markers" else []
    out: dict[str, dict] = {}
    live, reqs = [], []
    for t in tasks:
        try:
            reqs.append(Request(task_prompt(lm, t, max_pixels), stop_sequences=stop))
            live.append(t)
        except RecordError as e:
            out[t.id] = error_record(t.id, e)
    z_traces = [tr[0] for tr in engines["z"].run(reqs, batch_size=batch_size)] if reqs else []
    judged: list[str | None] = [None] * len(live)
    if span_rule == "judge":
        if span_judge is None:
            raise LatentcheckError("--span-rule judge needs a span judge (--span-model)")
        judged = span_judge.mark([t.question for t in live], [tr.text for tr in z_traces])
    todo, items = [], []
    for t, tr, marked in zip(live, z_traces, judged):
        span = find_span(tr.text, span_rule, markers, marked)
        base = {"key": t.id, "category": t.category, "gold": gold_answer(t), "z_text": tr.text,
                "z_finish_reason": tr.finish_reason}
        if span is None:
            reason = {"markers": "no closed imagination span", "judge": "the judge's span is not in the output"
                      if marked is not None else "the span judge gave no reply"}.get(
                span_rule, "no imagination before a final answer (no closed marker span, no boxed answer or answer "
                           "phrase)")
            out[t.id] = {**base, "intervened": False, "span_rule": span_rule,
                         "skip_reason": reason + (" (generation ended)" if tr.finish_reason != "stop"
                                                  and span_rule in ("markers", "auto") else "")}
            continue
        lo, hi = span.chars
        lead = len(span.imagination) - len(span.imagination.lstrip())
        rng = char_token_range(lm, tr.token_ids, lo + lead, hi)
        if store is not None and tr.hidden is not None and rng[1] > rng[0]:
            hid = tr.hidden[rng[0]: min(rng[1], rng[0] + span_tokens)]
            if len(hid):
                store.save([t.id], {"imagination_hidden": [hid]})
        base.update(imagination=span.imagination.strip(), imagination_tokens=rng[1] - rng[0], span_rule=span.rule,
                    span_chars=[lo, hi])
        todo.append((t, span, base))
        items.append(CorruptItem(t.id, t.question, t.options, span.imagination.strip(), None))
    corruptions = corrupter.corrupt(items) if items else []
    if len(corruptions) != len(items):
        raise LatentcheckError(f"corrupter returned {len(corruptions)} results for {len(items)} samples")
    cont_reqs, score_reqs, plan = [], [], []
    answer_prefix = lm.profile.answer_prefix
    for (t, span, base), c in zip(todo, corruptions):
        if c.text is None:
            out[t.id] = {**base, "intervened": False, "skip_reason": c.how}
            continue
        split = (span.before, span.imagination, span.after)
        prefixes = doz_prefixes(split, c.text, span.end_marker)
        neutral = neutral_edit(span.imagination.strip(), t.id)
        if neutral is not None:  # the neutral-edit control
            prefixes["neutral"] = doz_prefixes(split, neutral, span.end_marker)["corrupt"]
        partner = next((p for p in _partners(todo, t)), None)
        if partner is not None:  # text interchange: the partner's imagination in this sample's context
            prefixes["interchange"] = doz_prefixes(split, partner[1].imagination, span.end_marker)["corrupt"]
            base.update(partner=partner[0].id, partner_gold=gold_answer(partner[0]))
        base.update(corrupted_imagination=c.text.strip(), corruption=c.how, implied=c.implied, intervened=True,
                    neutral_imagination=None if neutral is None else neutral.strip(),
                    runs=list(prefixes))
        opt_ids = option_token_ids(lm, len(t.options)) if t.options else None
        mine_cont, mine_score = [], []  # all of a task's continuations, or none (a longer prefix may be too long)
        try:
            for name, prefix in prefixes.items():
                mine_cont.append(Request(task_prompt(lm, t, max_pixels, assistant_prefix=prefix)))
                if opt_ids:
                    mine_score.append(Request(task_prompt(lm, t, max_pixels, assistant_prefix=prefix + answer_prefix),
                                              max_new_tokens=1))
        except RecordError as e:
            out[t.id] = error_record(t.id, e)
            continue
        cont_reqs.extend(mine_cont)
        score_reqs.extend(mine_score)
        plan.append((t, base, opt_ids))
    conts = [tr[0] for tr in engines["cont"].run(cont_reqs, batch_size=batch_size)] if cont_reqs else []
    scores = [tr[0] for tr in engines["score"].run(score_reqs, batch_size=batch_size)] if score_reqs else []
    ci, si = 0, 0
    for t, base, opt_ids in plan:
        rec = dict(base)
        for name in rec.pop("runs"):
            res = _continuation(lm, conts[ci], t)
            ci += 1
            probs = None
            if opt_ids:
                probs = _option_probs(scores[si], opt_ids)
                si += 1
            res.update(option_summary(t, probs))
            rec[name] = res
        rec["flipped"] = rec["clean"]["pred"] != rec["corrupt"]["pred"]
        rec["follows_corruption"] = (rec["corrupt"]["pred"] == rec["implied"]) if rec.get("implied") else None
        out[t.id] = rec
    # text interchange: does the answer follow the partner's own answer (its clean run)?
    for t, base, _ in plan:
        rec = out[t.id]
        pk = rec.get("partner")
        if "interchange" in rec and pk in out and "clean" in out[pk]:
            rec["follows_partner"] = rec["interchange"]["pred"] is not None and \
                rec["interchange"]["pred"] == out[pk]["clean"]["pred"]
    return [out[t.id] for t in tasks]


def _partners(todo, t: Task):
    """Samples of the block (closed imagination span) that could lend ``t`` their imagination: another sample with a
    different gold answer, the next one in block order first (deterministic)."""
    i = next(j for j, (u, _, _) in enumerate(todo) if u.id == t.id)
    order = todo[i + 1:] + todo[:i]
    return [(u, split) for u, split, _ in order if gold_answer(u) != gold_answer(t)]


# ----------------------------------------------------------------------------------------------- summary
def similarity_summary(hidden: dict[str, np.ndarray], span_tokens: int) -> dict[str, Any]:
    """Inter-instance cosine per token index and intra-instance collapse of the imagination's hidden states (the
    first ``span_tokens`` content tokens; spans shorter than that are left out)."""
    from latentcheck.core.similarity import effective_rank, inter_instance, intra_instance_collapse

    keys = sorted(k for k, h in hidden.items() if len(h) >= span_tokens)
    out: dict[str, Any] = {"span_tokens": span_tokens, "n": len(keys), "n_shorter": len(hidden) - len(keys)}
    if len(keys) < 2 or span_tokens < 2:
        out["note"] = "needs at least 2 imagination spans with span_tokens >= 2 tokens"
        return out
    X = np.stack([hidden[k][:span_tokens] for k in keys]).astype(np.float64)
    mu = X.reshape(-1, X.shape[-1]).mean(0)
    inter = inter_instance(X)
    intra_raw = intra_instance_collapse(X)
    intra_c = intra_instance_collapse(X, mean=mu)
    out.update({
        "inter_raw": inter["raw_mean"].tolist(), "inter_centred": inter["centred_mean"].tolist(),
        "inter_raw_mean": float(np.mean(inter["raw_mean"])),
        "inter_centred_mean": float(np.mean(inter["centred_mean"])),
        "intra_adjacent": intra_raw["adjacent"].tolist(), "intra_adjacent_centred": intra_c["adjacent"].tolist(),
        "intra_all_pairs": intra_raw["all_pairs"], "intra_all_pairs_centred": intra_c["all_pairs"],
        "intra_matrix": intra_raw["matrix"].tolist(),
        "effective_rank": float(effective_rank(X.reshape(-1, X.shape[-1]))),
    })
    return out


def per_category_effects(scored: list[dict], seed: int = 0) -> dict[str, dict] | None:
    """``{category: AccuracyEffect}`` (as dicts) of clean vs do(Z) correctness per task category, with
    ``delta.p_holm`` the exact McNemar p Holm-adjusted across the categories; None when no record has a category."""
    import dataclasses
    import math

    from latentcheck.core.stats import holm
    from latentcheck.core.summaries import AccuracyEffect

    groups: dict[str, list[dict]] = {}
    for r in scored:
        if r.get("category") is not None:
            groups.setdefault(str(r["category"]), []).append(r)
    if not groups:
        return None
    effects = {c: AccuracyEffect.paired([r["clean"]["correct"] for r in rs], [r["corrupt"]["correct"] for r in rs],
                                        seed=seed)
               for c, rs in sorted(groups.items())}
    adjusted = holm([math.nan if e.delta.p_value is None else e.delta.p_value for e in effects.values()])
    return {c: dataclasses.replace(e, delta=dataclasses.replace(e.delta, p_holm=None if math.isnan(p) else float(p)))
            .to_dict() for (c, e), p in zip(effects.items(), adjusted)}


def summarize_intervene(records: list[dict], hidden: dict[str, np.ndarray] | None = None, span_tokens: int = 8,
                        seed: int = 0) -> dict[str, Any]:
    """Summary of intervene records (module docstring, step 4 and 5)."""
    from latentcheck.core.summaries import AccuracyEffect, Effect, Proportion

    def paired(base: list, cond: list) -> dict[str, Any] | None:
        return AccuracyEffect.paired(base, cond, seed=seed).to_dict() if base else None

    samples = [r for r in records if r.get("type", "sample") == "sample"]
    done = [r for r in samples if r.get("intervened")]
    scored = [r for r in done if r["clean"]["correct"] is not None]
    out: dict[str, Any] = {
        "n_samples": len(samples), "n_errors": sum(r.get("type") == "error" for r in records),
        "n_intervened": len(done), "skip_reasons": dict(Counter(r["skip_reason"] for r in samples
                                                                if not r.get("intervened"))),
        "span_rules": dict(Counter(r["span_rule"] for r in done if r.get("span_rule"))),
        "imagination_rate": (sum("imagination" in r for r in samples) / len(samples)) if samples else None,
    }
    out["effect"] = paired([r["clean"]["correct"] for r in scored], [r["corrupt"]["correct"] for r in scored])
    opt = [r for r in scored if r["clean"].get("option_correct") is not None]
    out["per_category"] = per_category_effects(scored, seed)
    out["option_effect"] = paired([r["clean"]["option_correct"] for r in opt],
                                  [r["corrupt"]["option_correct"] for r in opt])
    if opt:
        a, b = [r["clean"]["p_gold"] for r in opt], [r["corrupt"]["p_gold"] for r in opt]
        out["p_gold"] = {"clean": float(np.mean(a)), "corrupt": float(np.mean(b)),
                         "delta": Effect.paired(a, b, seed=seed).to_dict()}
    else:
        out["p_gold"] = None
    neu = [r for r in scored if "neutral" in r]
    out["neutral_effect"] = paired([r["clean"]["correct"] for r in neu], [r["neutral"]["correct"] for r in neu])
    ic = [bool(r["follows_partner"]) for r in done if r.get("follows_partner") is not None]
    out["interchange"] = {"follows_partner": Proportion.of(ic).to_dict()} if ic else None
    fol = [bool(r["follows_corruption"]) for r in done if r.get("follows_corruption") is not None]
    out["follows_corruption"] = Proportion.of(fol).to_dict() if fol else None
    out["flip_rate"] = (sum(bool(r["flipped"]) for r in done) / len(done)) if done else None
    out["similarity"] = similarity_summary(hidden or {}, span_tokens)
    return out


def make_plots(summary: dict, folder: str | Path) -> dict[str, str]:
    """Accuracy clean vs do(Z) (Wilson CIs) and the imagination similarity curves / intra matrix."""
    from latentcheck.core import plots

    folder = Path(folder)
    paths: dict[str, str] = {}
    eff = summary.get("effect")
    if eff:
        base, cond = eff["base"], eff["cond"]
        paths["accuracy"] = plots.bar_ci(["clean imagination", "do(Z) corrupted"], [base["estimate"], cond["estimate"]],
                                         [base["lo"], cond["lo"]], [base["hi"], cond["hi"]], folder / "accuracy.png",
                                         title=f"Text do(Z): delta {100 * eff['delta']['estimate']:+.1f} pts "
                                               f"(n={eff['n']})", ylabel="accuracy")
    sim = summary.get("similarity") or {}
    if sim.get("inter_raw"):
        k = len(sim["inter_raw"])
        series = {"inter raw": sim["inter_raw"], "inter centred": sim["inter_centred"],
                  "intra adjacent (k,k+1)": sim["intra_adjacent"] + [float("nan")]}
        paths["similarity"] = plots.lines(list(range(k)), series, folder / "similarity.png",
                                          title="Imagination hidden states (X->Z)", xlabel="token index in span",
                                          ylabel="cosine")
        paths["intra_matrix"] = plots.heatmap_grid([np.asarray(sim["intra_matrix"])], ["intra-instance cosine"],
                                                   folder / "intra_matrix.png")
    return paths


class CaptionImagineIntervene(AnalysisSpec):
    """``caption-imagine intervene`` as an analysis (core.analysis.run_analysis): one record stage (imagination
    hidden states to a TensorStore), the summary with the paired effects, the figures."""

    command = COMMAND
    default_model = DEFAULT_MODEL

    def __init__(self, corrupter: str = "auto", corrupt_model: str | None = None, corrupt_prompt: str | None = None,
                 span_tokens: int = 8, plots: bool = True, span_rule: str = "auto", span_model: str | None = None,
                 corrupt_url: str | None = None, span_url: str | None = None, backend_kw: dict | None = None):
        if span_tokens < 1:
            raise LatentcheckError(f"--span-tokens must be >= 1, got {span_tokens}")
        self.corrupter, self.corrupt_model, self.corrupt_prompt = corrupter, corrupt_model, corrupt_prompt
        self.span_tokens, self.plots, self.span_rule, self.span_model = span_tokens, plots, span_rule, span_model
        self.corrupt_url, self.span_url, self.backend_kw = corrupt_url, span_url, backend_kw

    def setup(self, run: AnalysisRun) -> None:
        from latentcheck.core.engine import Engine
        from latentcheck.core.runner import TensorStore

        o, lm = run.opts, run.lm
        require_text_imagination(lm)
        load_kw = {"quant": o.quant, "device": o.device, "trust_remote_code": o.trust_remote_code}
        if self.span_rule not in SPAN_RULES:
            raise LatentcheckError(f"--span-rule must be one of {', '.join(SPAN_RULES)}, got {self.span_rule!r}")
        self.corr = make_corrupter(self.corrupter, lm, self.corrupt_model, self.corrupt_prompt, o.seed, load_kw,
                                   o.batch_size, url=self.corrupt_url, backend_kw=self.backend_kw)
        self.judge = make_span_judge(self.span_model, self.span_url, load_kw, o.batch_size, self.backend_kw) \
            if self.span_rule == "judge" else None
        self.engines = {"z": Engine(lm, seed=o.seed, capture_hidden=True), "cont": Engine(lm, seed=o.seed),
                        "score": Engine(lm, seed=o.seed, capture_logits=True)}
        self.store = TensorStore(run.out / "tensors")

    def stages(self, run: AnalysisRun) -> list[RecordStage]:
        o = run.opts
        config = {"corrupter": self.corrupter, "corrupt_model": self.corrupt_model,
                  "corrupt_prompt": self.corrupt_prompt, "span_tokens": self.span_tokens, "span_rule": self.span_rule,
                  "span_model": self.span_model, "corrupt_url": self.corrupt_url, "span_url": self.span_url}
        return [RecordStage("samples", lambda tasks: intervene_block(run.lm, self.engines, self.corr, tasks, self.store,
                                                                     self.span_tokens, o.max_pixels, o.batch_size,
                                                                     self.span_rule, self.judge), config=config)]

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        from latentcheck.core.trigger import trigger_block, warn_trigger

        records = run.records["samples"]
        keys = [r["key"] for r in records if r.get("type", "sample") == "sample" and "imagination" in r]
        hidden = {k: v["imagination_hidden"] for k, v in self.store.load(keys).items() if "imagination_hidden" in v}
        summary = {"command": COMMAND, "model": run.lm.describe(), "data": run.data,
                   "corrupter": type(self.corr).__name__,
                   **summarize_intervene(records, hidden, self.span_tokens, run.opts.seed),
                   "results": run.paths["samples"]}
        ok = [r for r in records if r.get("type", "sample") == "sample"]
        summary["latent_trigger"] = trigger_block(  # a closed imagination span in the model's own run (the Z)
            {"baseline": (["imagination_tokens" in r for r in ok], [r.get("imagination_tokens") or 0 for r in ok])},
            "baseline", run.lm.profile.kind, "imagination tokens")
        warn_trigger(summary["latent_trigger"], COMMAND)
        return summary

    def figures(self, run: AnalysisRun, summary: dict[str, Any]) -> dict[str, str]:
        summary["plots"] = make_plots(summary, run.out / "plots") if self.plots else {}
        return summary["plots"]


def run_intervene(opts: CommonOptions, corrupter: str = "auto", corrupt_model: str | None = None,
                  corrupt_prompt: str | None = None, span_tokens: int = 8, plots: bool = True,
                  lm=None, span_rule: str = "auto", span_model: str | None = None, corrupt_url: str | None = None,
                  span_url: str | None = None, backend_kw: dict | None = None) -> AnalysisResult:
    """``caption-imagine intervene`` (module docstring). Returns the result (summary also in ``<out>/summary.json``)."""
    return run_analysis(CaptionImagineIntervene(corrupter, corrupt_model, corrupt_prompt, span_tokens, plots,
                                                span_rule, span_model, corrupt_url, span_url, backend_kw), opts, lm=lm)
