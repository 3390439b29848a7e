"""Shared-prefix decoding (core/kvshare.py): the attention function against SDPA over the explicitly copied KV, and
whole engine runs against the copying fork (identical tokens, option log-probabilities within 1e-4), with one prefix
copy per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.interventions import parse_spec
from latentcheck.core.kvshare import SharedPrefixCache, shared_prefix_attention
from latentcheck.core.prompts import build_prompt, option_token_ids

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTIONS = ["What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow",
             "Where is the square? Answer with one word please.\nA. top\nB. bottom",
             "Which shape is red?\nA. circle\nB. square\nC. cross"]


class _Layer:
    def __init__(self, k, v):
        self.keys, self.values = k, v


class _Prefill:
    def __init__(self, ks, vs):
        self.layers = [_Layer(k, v) for k, v in zip(ks, vs)]


class _Module:
    layer_idx = 0


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("rows", [[2, 0, 0, 1, 2, 2], [0, 1, 2]])  # uneven rows per sample, not sample-major; one
def test_attention_equals_sdpa_over_the_copied_kv(n, rows):  # row per sample in order (the one-softmax path)
    g = torch.Generator().manual_seed(0)
    B, kvh, grp, P, d, S = 3, 2, 3, 11, 8, 5
    h = kvh * grp
    R = len(rows)
    pk, pv = torch.randn(B, kvh, P, d, generator=g), torch.randn(B, kvh, P, d, generator=g)
    cache = SharedPrefixCache(_Prefill([pk], [pv]), rows, capacity=2)
    assert cache.one_to_one == (rows == [0, 1, 2])
    old_k, old_v = torch.randn(R, kvh, S - n, d, generator=g), torch.randn(R, kvh, S - n, d, generator=g)
    cache.update(old_k, old_v, 0)
    new_k, new_v = torch.randn(R, kvh, n, d, generator=g), torch.randn(R, kvh, n, d, generator=g)
    ks, vs = cache.update(new_k, new_v, 0)  # (grows the buffer past its capacity)
    q = torch.randn(R, h, n, d, generator=g)
    mask = torch.rand(R, 1, n, P + S, generator=g) > 0.3
    mask[..., P + S - n:] = torch.ones(n, n, dtype=torch.bool).tril()  # causal among the new positions
    mask[..., 0] = True
    got, _ = shared_prefix_attention(_Module(), q, ks, vs, mask, scaling=0.3, lc_shared_prefix=cache)
    idx = torch.tensor(rows)
    k_full = torch.cat([pk[idx], old_k, new_k], 2).repeat_interleave(grp, 1)
    v_full = torch.cat([pv[idx], old_v, new_v], 2).repeat_interleave(grp, 1)
    want = torch.nn.functional.scaled_dot_product_attention(q, k_full, v_full, attn_mask=mask, scale=0.3)
    assert got.shape == (R, n, h, d)
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-5)
    # rows leave: the kept rows' attention is unchanged, and a sample without rows loses its prefix
    if R == 3:
        return
    keep = torch.tensor([0, 4, 5])  # only sample 2 is left
    cache.select_rows(keep)
    assert cache.prefix_k[0].shape[0] == 1 and cache.rows.tolist() == [0, 0, 0]
    ks2, vs2 = cache.suffix_k[0][:, :, :S], cache.suffix_v[0][:, :, :S]
    got2, _ = shared_prefix_attention(_Module(), q[keep], ks2, vs2, mask[keep], scaling=0.3, lc_shared_prefix=cache)
    assert torch.allclose(got2, got[keep], atol=1e-6)


@pytest.mark.parametrize("rows_old,rows_new", [([1, 0], [0, 1, 1]), ([0, 1], [0])])
def test_extend_appends_samples_left_pads_prefixes_and_drops_old_columns(rows_old, rows_new):
    """Continuous batching's cache step: rows of a new fork join; attention then equals SDPA over the explicitly
    built KV (prefixes left-padded to the longer prompt and masked, the old rows' first columns dropped, the new rows'
    earlier suffix columns masked)."""
    g = torch.Generator().manual_seed(1)
    kvh, grp, d = 2, 2, 8
    h = kvh * grp
    pk1, pv1 = torch.randn(2, kvh, 7, d, generator=g), torch.randn(2, kvh, 7, d, generator=g)
    Bn = max(rows_new) + 1
    pk2, pv2 = torch.randn(Bn, kvh, 10, d, generator=g), torch.randn(Bn, kvh, 10, d, generator=g)
    cache = SharedPrefixCache(_Prefill([pk1], [pv1]), rows_old, capacity=3)
    old_k, old_v = torch.randn(2, kvh, 4, d, generator=g), torch.randn(2, kvh, 4, d, generator=g)
    cache.update(old_k, old_v, 0)  # 4 suffix columns; the first one is dropped at the join
    other = SharedPrefixCache(_Prefill([pk2], [pv2]), rows_new, capacity=3)
    cache.extend(other, drop=1, capacity=6)
    assert cache.P == 10 and cache.length == [3] and cache.rows.tolist() == rows_old + [r + 2 for r in rows_new]
    assert cache.one_to_one == (rows_new == [0])  # rows 0, 1, 2: one row per sample, in order
    R = 2 + len(rows_new)
    new_k, new_v = torch.randn(R, kvh, 1, d, generator=g), torch.randn(R, kvh, 1, d, generator=g)
    ks, vs = cache.update(new_k, new_v, 0)
    assert ks.shape[2] == 4
    q = torch.randn(R, h, 1, d, generator=g)
    mask = torch.ones(R, 1, 1, 14, dtype=torch.bool)
    mask[:2, ..., :3] = False  # the old rows' left padding
    mask[2:, ..., 10:13] = False  # the new rows' columns from before they joined
    got, _ = shared_prefix_attention(_Module(), q, ks, vs, mask, scaling=0.4, lc_shared_prefix=cache)
    pad = torch.zeros(2, kvh, 3, d)
    idx_o, idx_n = torch.tensor(rows_old), torch.tensor(rows_new)
    k_full = torch.cat([torch.cat([torch.cat([pad, pk1], 2)[idx_o], old_k[:, :, 1:]], 2),
                        torch.cat([pk2[idx_n], torch.zeros(len(rows_new), kvh, 3, d)], 2)])
    v_full = torch.cat([torch.cat([torch.cat([pad, pv1], 2)[idx_o], old_v[:, :, 1:]], 2),
                        torch.cat([pv2[idx_n], torch.zeros(len(rows_new), kvh, 3, d)], 2)])
    k_full = torch.cat([k_full, new_k], 2).repeat_interleave(grp, 1)
    v_full = torch.cat([v_full, new_v], 2).repeat_interleave(grp, 1)
    want = torch.nn.functional.scaled_dot_product_attention(q, k_full, v_full, attn_mask=mask, scale=0.4)
    assert torch.allclose(got, want.transpose(1, 2), atol=1e-5)


def _requests(lm, conds, **kw):
    return [Request(build_prompt(lm, f"s{i}", q, make_image(i)), conds, option_ids=option_token_ids(lm, 4), **kw)
            for i, q in enumerate(QUESTIONS)]


@pytest.mark.parametrize("family,profile", [("toy", "toy-latent"), ("monet", "monet"), ("lvr", "lvr"),
                                            ("mirage", "mirage"), ("plain", "qwen2_5_vl"),
                                            ("toy", "toy-capimagine")])
def test_shared_prefix_decoding_equals_the_copying_fork(load_tiny, family, profile):
    lm = load_tiny(family, profile)
    H = lm.model.config.text_config.hidden_size
    conds = [Condition(), Condition("zero", parse_spec("zero")), Condition("noise", parse_spec("noise:sigma=0.7")),
             Condition("ov", override=np.ones((2, H), np.float32))]
    reqs = _requests(lm, conds, force_latent=True, max_new_tokens=12)
    copy = Engine(lm, shared_prefix=False, capture_logits=True).generate(reqs, batch_size=3)
    shared_engine = Engine(lm, shared_prefix=True, capture_logits=True)
    seen = []
    orig = SharedPrefixCache.__init__

    def spy(self, prefill, rows, capacity=64):
        orig(self, prefill, rows, capacity)
        seen.append((self.prefix_k[0].shape[0], len(rows)))

    SharedPrefixCache.__init__ = spy
    try:
        shared = shared_engine.generate(reqs, batch_size=3)
    finally:
        SharedPrefixCache.__init__ = orig
    assert seen == [(3, 12)]  # one prefix copy per sample for 12 rows
    for a_row, b_row in zip(copy, shared):
        for a, b in zip(a_row, b_row):
            assert a.token_ids == b.token_ids
            assert np.abs(a.logits - b.logits).max() <= 1e-4
            if a.option_logprobs is not None:
                assert np.abs(a.option_logprobs - b.option_logprobs).max() <= 1e-4
            if len(a.latents):
                assert np.abs(a.latents - b.latents).max() <= 1e-4


def test_shared_prefix_score_equals_the_copying_fork(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    prompts = [build_prompt(lm, f"s{i}", q, make_image(i)) for i, q in enumerate(QUESTIONS)]
    conts = [[[300, 301], [302], [303, 304, 305]], [[306]], [[307, 308], [309, 310]]]
    with torch.no_grad():
        a = Engine(lm, shared_prefix=False).score(prompts, conts)
        b = Engine(lm, shared_prefix=True).score(prompts, conts)
    assert torch.equal(a.valid, b.valid)
    assert float((a.logprobs - b.logprobs).abs().max()) <= 1e-4


def test_shared_prefix_greedy_equals_model_generate(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    im = make_image(7)
    p = build_prompt(lm, "g", QUESTIONS[0], im)
    enc = lm.processor(text=[p.text], images=[im], return_tensors="pt")
    ref = lm.model.generate(**enc, max_new_tokens=10, do_sample=False)[0, enc["input_ids"].shape[1]:]
    got = Engine(lm, shared_prefix=True).generate([Request(p, [Condition(), Condition("b")], max_new_tokens=10)])
    assert got[0][0].token_ids == got[0][1].token_ids == ref.tolist()
