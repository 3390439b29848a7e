"""The ONE answer rule (core/answers.py): hand-built traces give one answer, in the rule and through every command's
own path (perturb-input, perturb-latent, probe, bench, caption-imagine; the audit reads those commands' records)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from latentcheck.core.answers import read_ids, read_trace
from latentcheck.core.engine import Trace
from latentcheck.core.tasks import Task

OPTIONS = ["red", "green", "blue", "yellow"]


def _ids(lm, *parts) -> tuple[list[int], list[bool]]:
    """Token ids and span mask from parts: a string (text, outside the span), ("span", text-or-token) inside."""
    ids, mask = [], []
    vocab = lm.tokenizer.get_vocab()
    for p in parts:
        inside = isinstance(p, tuple)
        s = p[1] if inside else p
        new = [vocab[s]] if s in vocab else lm.tokenizer.encode(s, add_special_tokens=False)
        ids += new
        mask += [inside] * len(new)
    return ids, mask


def _trace(lm, ids, mask, fed=None, reason="eos") -> Trace:
    fed = fed if fed is not None else [m and i > 0 and not (i == 0) for i, m in enumerate(mask)]
    H = 4
    n = int(sum(fed))
    return Trace(key="k", condition="baseline", token_ids=ids, text=lm.tokenizer.decode(ids), latents=np.zeros((n, H)),
                 raw_latents=np.zeros((n, H)), latent_count=n, latent_blocks=int(any(mask) and not mask[-1]),
                 triggered=any(mask), fed_mask=fed, span_mask=mask, option_logprobs=None, refs={}, hidden=None,
                 finish_reason=reason)


def _cases(lm):
    """(name, trace, expected answer) for a Mirage-style toy profile (placeholders recorded)."""
    S, E, P, END = "<|latent_start|>", "<|latent_end|>", "<|latent_pad|>", "<|im_end|>"
    out = []
    ids, m = _ids(lm, ("s", S), ("s", P), ("s", P), E, "A", END)
    out.append(("closed span", _trace(lm, ids, m), "A"))
    ids, m = _ids(lm, ("s", S), ("s", P), ("s", P))
    out.append(("unclosed span", _trace(lm, ids, m, reason="length"), None))
    ids, m = _ids(lm, ("s", S), ("s", "B"), ("s", " C"), E, "A", END)
    out.append(("garbage ids in the span", _trace(lm, ids, m), "A"))
    ids, m = _ids(lm, ("s", S), ("s", "D"), E, END)
    out.append(("answer only inside the span", _trace(lm, ids, m), None))
    ids, m = _ids(lm, "B", ("s", S), ("s", P), E, "A", END)
    out.append(("answers before and after the span", _trace(lm, ids, m), "A"))
    ids, m = _ids(lm, ("s", S), ("s", "B"), ("s", END))
    out.append(("EOS in the span", _trace(lm, ids, m, fed=[True, True, False]), None))
    ids, m = _ids(lm, "C", END)
    out.append(("no span", _trace(lm, ids, m), "C"))
    return out


def test_rule_on_hand_built_latent_traces(load_tiny):
    lm = load_tiny("toy", "toy-latent")
    for name, tr, want in _cases(lm):
        r = read_trace(lm, tr, OPTIONS)
        assert r.answer == want, name
        assert r.closed == (name not in ("unclosed span", "EOS in the span")), name
    # the reply keeps the text outside spans, without markers, placeholders, garbage or end-of-turn tokens
    name, tr, _ = _cases(lm)[4]
    assert read_trace(lm, tr, OPTIONS).reply == "BA"
    assert read_trace(lm, tr, OPTIONS).spans == ((1, 3),)


def test_rule_lvr_reply_after_inner_end(load_tiny):
    """LVR reply ``...<|lvr_latent_end|>C<|im_end|>``: C (the LVR extractor reads the first letter of the answer)."""
    lm = load_tiny("lvr", "lvr")
    ids, m = _ids(lm, ("s", "<|lvr_start|>"), ("s", "<"), ("s", "x"), "<|lvr_latent_end|>", "C", "<|im_end|>")
    r = read_ids(lm, ids, m, OPTIONS)
    assert r.answer == "C" and r.answer_text == "C" and r.closed


def test_rule_on_text_imagination(load_tiny):
    lat = load_tiny("toy", "toy-latent")
    from latentcheck.core.profiles import get_profile

    cap = SimpleNamespace(profile=get_profile("toy-capimagine"), tokenizer=lat.tokenizer, tokens=lat.tokens)
    enc = lat.tokenizer.encode
    r = read_ids(cap, enc("I zoom. <imagine>a red A square</imagine> The answer is \\boxed{B}.") + [lat.tokens.eos[0]],
                 None, OPTIONS)
    assert r.answer == "B" and r.reply == "I zoom.  The answer is \\boxed{B}." and r.closed
    assert lat.tokenizer.decode(enc("I zoom. <imagine>a red A square</imagine>")[r.spans[0][0]:r.spans[0][1]]).strip() \
        == "a red A square"
    r = read_ids(cap, enc("<imagine>a red \\boxed{A} square"), None, OPTIONS)
    assert r.answer is None and not r.closed
    # the prompt opened the span: everything up to the end marker is imagination
    r = read_ids(cap, enc("a \\boxed{C} square</imagine> so \\boxed{D}"), None, OPTIONS, opened=True)
    assert r.answer == "D" and r.reply == "so \\boxed{D}"


def _command_answers(lm, tr, task: Task) -> dict[str, str | None]:
    """The answer each command's own code path reads from one trace."""
    from latentcheck.bench.registry import get_benchmark
    from latentcheck.bench.runner import PROFILE_VARIANT, _BenchRun, _Sample, profile_variant
    from latentcheck.core.extract import get_extractor
    from latentcheck.imagine.run import answer_of
    from latentcheck.perturb.inputs import InputVariant, _Runner
    from latentcheck.perturb.latents import _Analysis
    from latentcheck.perturb.latents import _Sample as LatSample
    from latentcheck.probe.behavioural import _scores

    extract = get_extractor(lm.profile.extractor)
    out = {}
    pl = object.__new__(_Analysis)
    pl.lm, pl.extract = lm, extract
    out["perturb-latent"] = pl.outcome(tr, LatSample(task=task, prompt=None, option_ids=[]), task)["answer"]
    pi = object.__new__(_Runner)
    pi.lm, pi.extract, pi.force_start, pi.max_latents = lm, extract, False, None
    v = InputVariant(image=None, question=task.question, options=task.options)
    out["perturb-input"] = pi._capture(tr, v).answer
    out["probe"] = _scores(lm, tr, task, extract)["gen_pred"]
    from dataclasses import replace

    bench = get_benchmark("generic")
    br = object.__new__(_BenchRun)
    br.lm, br.bench, br.variant = lm, replace(bench, variants={**bench.variants, PROFILE_VARIANT: profile_variant(lm)}), \
        PROFILE_VARIANT
    out["bench"] = br._outcome(tr, _Sample(task=task, text="", prompt=None, n_images=0))["extracted"]
    out["caption-imagine"] = answer_of(lm, tr, task)[1]
    return out


@pytest.mark.parametrize("family,profile", [("toy", "toy-latent"), ("monet", "monet")])
def test_every_command_reads_the_same_answer(load_tiny, family, profile):
    lm = load_tiny(family, profile)
    task = Task(id="k", question="What colour?", options=OPTIONS, answer="A")
    if profile == "monet":
        S, E, END = "<abs_vis_token>", "</abs_vis_token>", "<|im_end|>"
        cases = []
        ids, m = _ids(lm, ("s", S), ("s", "B"), E, "The answer is \\boxed{A}.", END)
        cases.append(("closed", _trace(lm, ids, m), "A"))
        ids, m = _ids(lm, ("s", S), ("s", "\\boxed{B}"), ("s", END))
        cases.append(("EOS in the span", _trace(lm, ids, m, fed=[True] * (len(ids) - 1) + [False]), None))
        ids, m = _ids(lm, "\\boxed{B}", ("s", S), ("s", "x"))
        cases.append(("unclosed", _trace(lm, ids, m, reason="length"), None))
    else:
        cases = _cases(lm)
    for name, tr, want in cases:
        got = _command_answers(lm, tr, task)
        assert set(got.values()) == {want}, (name, got)
