"""Attention knockout (``knockout:query=..,key=..,layers=..``): per-layer key masks in the engine's two attention
paths (the shared-prefix attention and the plain path's knockout attention), checked against the engine's own
independent visibility rules and against the un-intervened run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.interventions import parse_layers, parse_spec
from latentcheck.core.prompts import build_prompt, option_token_ids

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def _ko(query: str, key: str, layers: str) -> Condition:
    spec = parse_spec(f"knockout:query={query},key={key},layers={layers}")
    return Condition(spec.label, spec)


def _run(lm, conds, shared=None, seeds=(0, 1), visibility=None):
    eng = Engine(lm, shared_prefix=shared)
    opts = option_token_ids(lm, 4)
    reqs = [Request(build_prompt(lm, f"s{s}", QUESTION, make_image(s)), list(conds), option_ids=opts,
                    force_latent=True, max_new_tokens=10, image_visibility=visibility) for s in seeds]
    return eng.run(reqs, batch_size=len(reqs))


def _same(a, b, tol=0.0):
    assert a.token_ids == b.token_ids
    assert a.latent_count == b.latent_count
    if tol == 0.0:
        assert np.array_equal(a.option_logprobs, b.option_logprobs)
        assert np.array_equal(a.latents, b.latents)
    else:
        assert np.abs(a.option_logprobs - b.option_logprobs).max() <= tol
        assert np.abs(a.latents - b.latents).max() <= tol


def test_layer_ranges_parse_and_are_checked_against_the_model():
    assert parse_layers("all", 4) == frozenset(range(4))
    assert parse_layers("none", 4) == frozenset()
    assert parse_layers("1-2", 4) == frozenset({1, 2})
    assert parse_layers("3", 4) == frozenset({3})
    for bad in ("2-1", "x", "-1", "1-"):
        with pytest.raises(LatentcheckError):
            parse_layers(bad, 4)
    with pytest.raises(LatentcheckError):
        parse_layers("0-4", 4)
    with pytest.raises(LatentcheckError):
        parse_spec("knockout:query=span,key=span")
    with pytest.raises(LatentcheckError):
        parse_spec("knockout:query=image")
    assert parse_spec("knockout").definition.kind == "attention"


@pytest.mark.parametrize("shared", [True, False])
def test_knockout_over_zero_layers_equals_the_baseline_exactly(load_tiny, shared):
    """A knockout over no layer runs through the knockout attention but hides nothing: the un-intervened run
    exactly (same batch: bit for bit), on the shared-prefix path and on the plain path."""
    lm = load_tiny("toy", "toy-latent")
    conds = [Condition(), _ko("answer", "span", "none"), _ko("span", "image", "none")]
    for traces in _run(lm, conds, shared=shared):
        base, a, b = traces
        _same(a, base)
        _same(b, base)
    # and against a batch with no knockout row at all (the plain attention functions): float-rounding level
    (alone,), _ = _run(lm, [Condition()], shared=shared)
    mixed = _run(lm, conds, shared=shared)[0]
    _same(mixed[1], alone, tol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_answer_to_span_knockout_in_every_layer_equals_hiding_the_span(load_tiny, shared):
    """query=answer,key=span in every layer = the profile rule latents_visible_after=False (an independent mask
    path of the engine), on both attention paths; in one layer only it is neither the baseline nor the full
    knockout."""
    lm = load_tiny("toy", "toy-latent")
    assert lm.profile.latents_visible_after
    hidden = replace(lm, profile=replace(lm.profile, latents_visible_after=False))
    ref = _run(hidden, [Condition()], shared=shared)
    got = _run(lm, [Condition(), _ko("answer", "span", "all"), _ko("answer", "span", "0")], shared=shared)
    for (r,), (base, full, one) in zip(ref, got):
        _same(full, r, tol=1e-5)
        assert np.abs(base.option_logprobs - full.option_logprobs).max() > 1e-4
        assert np.abs(one.option_logprobs - full.option_logprobs).max() > 1e-6
        assert np.abs(one.option_logprobs - base.option_logprobs).max() > 1e-6


@pytest.mark.parametrize("shared", [True, False])
def test_span_to_image_knockout_in_every_layer_on_toy_vector_equals_hiding_the_image(load_tiny, shared):
    """toy-vector: only the latent-start query (a span position) sees the image; knocking out span -> image in
    every layer leaves no position that sees it = image_visibility 'none' (another independent mask path)."""
    lm = load_tiny("toy", "toy-vector")
    ref = _run(lm, [Condition()], shared=shared, visibility="none")
    got = _run(lm, [Condition(), _ko("span", "image", "all")], shared=shared)
    for (r,), (base, full) in zip(ref, got):
        _same(full, r, tol=1e-5)
        assert np.abs(base.latents - full.latents).max() > 1e-4  # the fed vectors change: the image was read


def test_knockout_on_the_plain_path_with_eager_attention(load_tiny):
    """The plain path's knockout attention runs the model's own eager attention (additive mask) when the model is
    loaded with it: zero layers = baseline bit for bit, every layer = the span hidden by the profile rule."""
    lm = load_tiny("toy", "toy-latent")
    cfg = lm.model.model.language_model.config
    before = cfg._attn_implementation_internal
    cfg._attn_implementation_internal = "eager"
    try:
        hidden = replace(lm, profile=replace(lm.profile, latents_visible_after=False))
        (ref,), _ = _run(hidden, [Condition()], shared=False)
        base, none, full = _run(lm, [Condition(), _ko("answer", "span", "none"), _ko("answer", "span", "all")],
                                shared=False)[0]
    finally:
        cfg._attn_implementation_internal = before
    _same(none, base)
    _same(full, ref, tol=1e-5)
    assert np.abs(base.option_logprobs - full.option_logprobs).max() > 1e-4


def test_knockout_on_an_unsupported_attention_is_a_user_error():
    """The plain path refuses attention it cannot wrap (flash) and sliding-window layers, as user errors."""
    from types import SimpleNamespace

    import torch

    from latentcheck.core.kvshare import KeyKnockout, knockout_forward

    emb = torch.zeros((1, 2, 4))
    for types, impl, msg in ((["full_attention"], "flash_attention_2", "sdpa or eager"),
                             (["full_attention", "sliding_attention"], "sdpa", "full attention")):
        cfg = SimpleNamespace(layer_types=types, _attn_implementation=impl, _attn_implementation_internal=impl)
        with pytest.raises(LatentcheckError, match=msg):
            knockout_forward(SimpleNamespace(config=cfg), emb, None, None, None, KeyKnockout({}))
