"""The engine's vectorised bookkeeping (preallocated id/mask tensors, per-step latent/hidden/logit tensors split per
row at the end, grouped stop sequences, prepared 4-D step masks) against independent ground truths: the same requests
run one at a time, a teacher-forced forward, and the trace's own structure. No timing assertions here (see
benchmarks/run.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.interventions import parse_spec
from latentcheck.core.prompts import build_prompt, option_token_ids

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTIONS = ["What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow",
             "Where is the square? Answer with one word please.\nA. top\nB. bottom",
             "Which shape is red?\nA. circle\nB. square\nC. cross"]


def _prompts(lm, prefix: str = ""):
    # different lengths, so the batch is left-padded and the step masks are not all-ones
    return [build_prompt(lm, f"s{i}", q, make_image(i), assistant_prefix=prefix) for i, q in enumerate(QUESTIONS)]


@dataclasses.dataclass
class _Patched:
    """Temporarily replace fields of ``lm.tokens`` (the session-cached model is shared by other tests)."""

    lm: object
    changes: dict

    def __enter__(self):
        self.saved = self.lm.tokens
        self.lm.tokens = dataclasses.replace(self.saved, **self.changes)
        return self.lm

    def __exit__(self, *exc):
        self.lm.tokens = self.saved


def _assert_same(a, b, tol=1e-4):
    assert a.token_ids == b.token_ids
    assert a.finish_reason == b.finish_reason
    assert a.fed_mask == b.fed_mask and a.span_mask == b.span_mask
    assert a.latent_count == b.latent_count and a.latent_blocks == b.latent_blocks and a.triggered == b.triggered
    assert a.latents.shape == b.latents.shape and np.abs(a.latents - b.latents).max(initial=0) <= tol
    assert a.raw_latents.shape == b.raw_latents.shape
    for x, y in ((a.hidden, b.hidden), (a.logits, b.logits), (a.option_logprobs, b.option_logprobs)):
        assert (x is None) == (y is None)
        if x is not None:
            assert x.shape == y.shape and np.abs(x - y).max(initial=0) <= tol


def _assert_structure(tr, lm):
    n = len(tr.token_ids)
    assert len(tr.fed_mask) == len(tr.span_mask) == n == tr.logits.shape[0]
    assert tr.latent_count == sum(tr.fed_mask) == len(tr.latents) == len(tr.raw_latents)
    assert all(s for f, s in zip(tr.fed_mask, tr.span_mask) if f)  # a fed position is inside a span
    # a hidden state for every generated token that was fed back (all but the last one)
    assert (tr.hidden is None and n == 1) or tr.hidden.shape[0] == n - 1
    if tr.finish_reason == "eos":
        assert tr.token_ids[-1] in lm.tokens.eos
    if tr.finish_reason == "length":
        assert n == 16


def test_rows_finishing_at_different_steps_match_single_runs(load_tiny):
    lm = load_tiny("toy", "toy-latent")
    prompts = _prompts(lm)
    opts = option_token_ids(lm, 4)
    first = [Engine(lm).run([Request(p, force_latent=True, max_new_tokens=16)])[0][0].token_ids for p in prompts]
    # an extra EOS id and a stop sequence taken from the free-running outputs, so rows stop at different steps
    stop = first[0][7:9]
    with _Patched(lm, {"eos": list(lm.tokens.eos) + [first[1][10]]}):
        conds = [Condition(), Condition("zero", parse_spec("zero")), Condition("noise", parse_spec("noise:sigma=2")),
                 Condition("ov", override=np.ones((2, 128), np.float32), override_mask=np.array([False, True]))]
        reqs = [Request(p, conds, option_ids=opts, force_latent=True, max_new_tokens=16,
                        stop_sequences=[stop, [10 ** 6]] if i == 0 else []) for i, p in enumerate(prompts)]
        eng = Engine(lm, capture_hidden=True, capture_logits=True)
        batched = eng.run(reqs, batch_size=3)
        reasons = {tr.finish_reason for row in batched for tr in row}
        assert {"stop", "eos"} <= reasons  # the scenario really has early finishers
        assert len({len(tr.token_ids) for row in batched for tr in row}) > 1
        assert batched[0][0].timing["rows_retired"] > 0  # finished rows left the batch before the end
        kept = Engine(lm, capture_hidden=True, capture_logits=True, retire_rows=False).run(reqs, batch_size=3)
        assert kept[0][0].timing["rows_retired"] == 0
        for a_row, b_row in zip(kept, batched):
            for a, b in zip(a_row, b_row):
                _assert_same(a, b)
        for i, p in enumerate(prompts):
            for j, c in enumerate(conds):
                single = eng.run([dataclasses.replace(reqs[i], conditions=[c])], batch_size=1)[0][0]
                _assert_same(batched[i][j], single)
                _assert_structure(batched[i][j], lm)
                if batched[i][j].finish_reason == "stop":
                    assert batched[i][j].token_ids[-2:] == stop


def test_hidden_and_logits_line_up_with_a_teacher_forced_forward(load_tiny):
    import torch

    lm = load_tiny("toy", "toy-latent")
    eng = Engine(lm, capture_hidden=True, capture_logits=True)
    p = _prompts(lm)[2]
    tr = eng.run([Request(p, [Condition("noise", parse_spec("noise:sigma=0.5"))], force_latent=True,
                          max_new_tokens=12)])[0][0]
    ref = eng.replay(p, tr).float().numpy()
    assert np.abs(tr.logits - ref[p.length - 1:p.length - 1 + len(tr.token_ids)]).max() <= 1e-4
    # hidden state t is the state after feeding generated token t: the lm_head of it gives the logits of step t + 1
    with torch.no_grad():
        from_hidden = lm.model.lm_head(torch.as_tensor(tr.hidden)).numpy()
    assert np.abs(from_hidden - tr.logits[1:]).max() <= 1e-4


def test_text_imagination_marker_and_stop_sequences(load_tiny):
    lm = load_tiny("toy", "toy-capimagine")
    prompts = _prompts(lm, prefix="<imagine>")
    opts = option_token_ids(lm, 4)
    free = [t[0].token_ids for t in Engine(lm).run([Request(p, max_new_tokens=20) for p in prompts], batch_size=3)]
    # the answer-point marker = two tokens prompt 0 generates; a stop sequence for prompt 1
    with _Patched(lm, {"imagination_end": free[0][3:5]}):
        eng = Engine(lm, capture_hidden=True, capture_logits=True)
        reqs = [Request(p, option_ids=opts, max_new_tokens=20, stop_sequences=[free[1][6:8]] if i == 1 else [])
                for i, p in enumerate(prompts)]
        batched = eng.run(reqs, batch_size=3)
        assert batched[0][0].option_logprobs is not None  # the marker was generated: options scored after it
        assert batched[1][0].finish_reason == "stop" and batched[1][0].token_ids == free[1][:8]
        for i, r in enumerate(reqs):
            _assert_same(batched[i][0], eng.run([r], batch_size=1)[0][0])


@pytest.mark.parametrize("family,profile", [("plain", "qwen2_5_vl"), ("toy", "toy-capimagine")])
def test_force_latent_is_ignored_without_a_latent_span(load_tiny, family, profile):
    lm = load_tiny(family, profile)
    p = _prompts(lm)[0]
    eng = Engine(lm)
    a = eng.run([Request(p, force_latent=True, max_new_tokens=6)])[0][0]
    b = eng.run([Request(p, max_new_tokens=6)])[0][0]
    assert a.token_ids == b.token_ids and not a.triggered


def test_each_row_stops_at_its_own_token_budget(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    prompts = _prompts(lm)
    reqs = [Request(p, max_new_tokens=n) for p, n in zip(prompts, (5, 12, 8))]
    eng = Engine(lm, capture_logits=True)
    batched = eng.run(reqs, batch_size=3)
    for r, row in zip(reqs, batched):
        single = eng.run([r], batch_size=1)[0][0]
        assert len(row[0].token_ids) <= r.max_new_tokens
        _assert_same(row[0], single)
        if single.finish_reason == "length":
            assert len(row[0].token_ids) == r.max_new_tokens
