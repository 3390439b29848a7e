"""Continuous batching (``Engine.generate`` with more requests than ``batch_size``): new samples take the rows that
finished samples free, inside the one engine. Oracles: every request run alone (batch size 1, the fixed-batch path)
and, for plain greedy decoding, ``model.generate``. The scenarios make rows finish at different steps (budgets from
2 to 14 tokens, stop sequences, an extra EOS id), so samples really join a running batch, with prompts of different
lengths (left padding realigned) and, for latent profiles, rows inside their latent span when a new sample joins."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.interventions import parse_spec
from latentcheck.core.profiles import DecodingSpec
from latentcheck.core.prompts import build_prompt, option_token_ids

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTIONS = ["What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow",
             "Where is the square?\nA. top\nB. bottom",
             "Which shape is red? Answer with one letter please.\nA. circle\nB. square\nC. cross",
             "Is it big?\nA. yes\nB. no",
             "Count the shapes in the picture and then name the largest one.\nA. one\nB. two\nC. three",
             "What is left of the cross?\nA. circle\nB. square"]
BUDGETS = [3, 14, 6, 11, 2, 9, 13, 5]


def _requests(lm, conds, n=8, **kw):
    return [Request(build_prompt(lm, f"c{i}", QUESTIONS[i % len(QUESTIONS)] + " ok" * (i // len(QUESTIONS)),
                                 make_image(i)), conds, option_ids=option_token_ids(lm, 4),
                    max_new_tokens=BUDGETS[i % len(BUDGETS)], **kw) for i in range(n)]


def _same(a, b, tol=1e-4):
    assert a.token_ids == b.token_ids
    assert (a.finish_reason, a.fed_mask, a.span_mask) == (b.finish_reason, b.fed_mask, b.span_mask)
    assert (a.latent_count, a.latent_blocks, a.triggered) == (b.latent_count, b.latent_blocks, b.triggered)
    for x, y in ((a.latents, b.latents), (a.raw_latents, b.raw_latents), (a.hidden, b.hidden), (a.logits, b.logits),
                 (a.option_logprobs, b.option_logprobs)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.shape == y.shape and np.abs(x - y).max(initial=0) <= tol


class _Spy:
    """Records, at every admission, whether a live row of the running batch is inside its latent span."""

    def __init__(self, monkeypatch):
        self.joins, self.in_span = 0, []
        orig = Engine._merge

        def merge(eng, b, nb):
            self.joins += nb.R
            self.in_span.append(bool(((b.mode == 1) & ~b.finished).any()))
            orig(eng, b, nb)

        monkeypatch.setattr(Engine, "_merge", merge)


@pytest.mark.parametrize("family,profile", [("toy", "toy-latent"), ("monet", "monet"), ("lvr", "lvr"),
                                            ("mirage", "mirage"), ("plain", "qwen2_5_vl"),
                                            ("toy", "toy-capimagine")])
def test_continuous_batching_equals_batch_size_one(load_tiny, family, profile, monkeypatch):
    lm = load_tiny(family, profile)
    H = lm.model.config.text_config.hidden_size
    conds = [Condition(), Condition("noise", parse_spec("noise:sigma=0.7")),
             Condition("ov", override=np.ones((2, H), np.float32))]
    reqs = _requests(lm, conds, force_latent=lm.profile.is_latent)
    reqs[1].stop_sequences = [[10 ** 6], [5, 6]]
    spy = _Spy(monkeypatch)
    eng = Engine(lm, capture_hidden=True, capture_logits=True)
    stream = eng.generate(reqs, batch_size=3)
    assert spy.joins == 3 * (len(reqs) - 3)  # every later sample joined the running batch
    assert stream[0][0].timing["batch_rows"] == 3 * len(reqs)  # one decode stream
    if lm.profile.is_latent:  # a row in its latent span while a new sample was prefilled and joined
        assert any(spy.in_span)
    lengths = {len(tr.token_ids) for row in stream for tr in row}
    assert len(lengths) > 3  # rows really end at different steps
    monkeypatch.undo()
    for r, row in zip(reqs, stream):
        alone = eng.generate([r], batch_size=1)[0]
        for a, b in zip(row, alone):
            _same(a, b)
    # and the fixed-batch path (rows kept to the end) gives the same
    fixed = Engine(lm, capture_hidden=True, capture_logits=True, continuous=False, retire_rows=False)
    for row, frow in zip(stream, fixed.generate(reqs, batch_size=3)):
        for a, b in zip(row, frow):
            _same(a, b)


def test_continuous_plain_greedy_equals_model_generate(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    images = [make_image(i) for i in range(7)]
    prompts = [build_prompt(lm, f"g{i}", QUESTIONS[i % len(QUESTIONS)] + " please" * i, im)
               for i, im in enumerate(images)]
    reqs = [Request(p, max_new_tokens=BUDGETS[i]) for i, p in enumerate(prompts)]
    got = Engine(lm).generate(reqs, batch_size=2)
    eos = set(lm.tokens.eos)
    for p, im, r, row in zip(prompts, images, reqs, got):
        enc = lm.processor(text=[p.text], images=[im], return_tensors="pt")
        ref = lm.model.generate(**enc, max_new_tokens=r.max_new_tokens, do_sample=False)[0]
        ref = ref[enc["input_ids"].shape[1]:].tolist()
        cut = next((j + 1 for j, t in enumerate(ref) if t in eos), len(ref))
        assert row[0].token_ids == ref[:cut]


def test_continuous_sampling_with_repetition_penalty_equals_batch_size_one(load_tiny):
    lm = load_tiny("toy", "toy-latent")
    dec = dataclasses.replace(lm.profile.decoding, do_sample=True, top_k=20, temperature=0.9,
                              repetition_penalty=1.3)
    assert isinstance(dec, DecodingSpec)
    reqs = _requests(lm, [Condition(), Condition("zero", parse_spec("zero"))], n=7, force_latent=True)
    eng = Engine(lm, decoding=dec, seed=3, capture_logits=True)
    stream = eng.generate(reqs, batch_size=2)
    for r, row in zip(reqs, stream):
        for a, b in zip(row, eng.generate([r], batch_size=1)[0]):
            _same(a, b)


def test_continuous_off_and_fixed_batches_agree(load_tiny):
    lm = load_tiny("toy", "toy-latent")
    reqs = _requests(lm, [Condition()], n=6, force_latent=True)
    a = Engine(lm, continuous=False).generate(reqs, batch_size=2)
    assert a[0][0].timing["batch_rows"] == 2  # fixed batches of two samples
    b = Engine(lm).generate(reqs, batch_size=2)
    assert b[0][0].timing["batch_rows"] == 6
    for x, y in zip(a, b):
        _same(x[0], y[0])
