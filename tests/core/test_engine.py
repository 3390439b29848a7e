"""Oracle tests for the decoding engine: against model.generate and against one teacher-forced forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.interventions import parse_spec
from latentcheck.core.prompts import build_prompt, option_token_ids

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def _prompt(lm, key="s0", seed=0, question=QUESTION, image=True):
    return build_prompt(lm, key, question, make_image(seed) if image else None)


def test_processor_path_matches_manual_prompt(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    img = make_image(0)
    pr = build_prompt(lm, "a", QUESTION, img)
    enc = lm.processor(text=[pr.text], images=[img], return_tensors="pt")
    assert torch.equal(enc["input_ids"][0], pr.input_ids)
    assert torch.equal(enc["pixel_values"], pr.pixel_values)
    assert int(pr.image_mask.sum()) == 16
    assert lm.tokenizer.decode(pr.input_ids[pr.question_mask]) == QUESTION


def test_plain_greedy_equals_generate_single_and_left_padded(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    eng = Engine(lm)
    imgs = [make_image(1), make_image(2)]
    texts = [QUESTION, "Where is the square? Answer with one word please, and be brief about it."]
    prompts = [build_prompt(lm, f"k{i}", t, im) for i, (t, im) in enumerate(zip(texts, imgs))]
    n = 8
    # single
    for p, im in zip(prompts, imgs):
        enc = lm.processor(text=[p.text], images=[im], return_tensors="pt")
        ref = lm.model.generate(**enc, max_new_tokens=n, do_sample=False)[0, enc["input_ids"].shape[1]:]
        tr = eng.run([Request(p, max_new_tokens=n)])[0][0]
        assert tr.token_ids == ref.tolist()
    # left-padded batch through generate vs the engine's own batch
    lm.tokenizer.padding_side = "left"
    enc = lm.processor(text=[p.text for p in prompts], images=imgs, return_tensors="pt", padding=True)
    ref = lm.model.generate(**enc, max_new_tokens=n, do_sample=False)[:, enc["input_ids"].shape[1]:]
    traces = eng.run([Request(p, max_new_tokens=n) for p in prompts], batch_size=2)
    assert prompts[0].length != prompts[1].length
    for i in range(2):
        assert traces[i][0].token_ids == ref[i].tolist()


CASES = [  # (family, profile, visibility override)
    ("mirage", "mirage", None),
    ("monet", "monet", None),
    ("monet", "monet_sft", None),
    ("lvr", "lvr", None),
    ("toy", "toy-latent", None),
    ("toy", "toy-mediated", None),
    ("toy", "toy-bypass", None),
    ("toy", "toy-latent", "none"),
    ("toy", "toy-vector", None),
    ("toy", "toy-vector", "none"),
]


@pytest.mark.parametrize("family,profile,vis", CASES)
def test_cached_latent_run_equals_teacher_forced_forward(load_tiny, family, profile, vis):
    lm = load_tiny(family, profile)
    eng = Engine(lm, capture_logits=True)
    p = _prompt(lm)
    opts = option_token_ids(lm, 4)
    req = Request(p, [Condition(), Condition("noise", parse_spec("noise:sigma=0.7"))], option_ids=opts,
                  force_latent=True, max_new_tokens=16, image_visibility=vis)
    for tr in eng.run([req])[0]:
        assert tr.triggered and tr.latent_count >= 1
        ref = eng.replay(p, tr, image_visibility=vis).float().numpy()
        got = tr.logits
        want = ref[p.length - 1: p.length - 1 + len(got)]
        assert np.abs(got - want).max() <= 1e-4


def test_latent_protocols_follow_their_profiles(load_tiny):
    # monet: on_start => the start position itself receives a vector, span length <= cap, sampled ids kept
    lm = load_tiny("monet", "monet")
    tr = Engine(lm).run([Request(_prompt(lm), force_latent=True, max_new_tokens=14)])[0][0]
    assert tr.fed_mask[0] and tr.token_ids[0] == lm.tokens.start
    assert tr.latent_count <= lm.profile.latent.k
    # lvr: after_start, fixed K, no forced end (next token sampled freely)
    lm = load_tiny("lvr", "lvr")
    tr = Engine(lm).run([Request(_prompt(lm), force_latent=True, max_new_tokens=14)])[0][0]
    assert tr.token_ids[0] == lm.tokens.start and not tr.fed_mask[0]
    assert tr.fed_mask[1:1 + lm.profile.latent.k] == [True] * lm.profile.latent.k
    assert tr.latent_count == lm.profile.latent.k
    # mirage: placeholders recorded at latent positions, span closed by the end token
    lm = load_tiny("mirage", "mirage")
    tr = Engine(lm).run([Request(_prompt(lm), force_latent=True, max_new_tokens=14)])[0][0]
    n = tr.latent_count
    assert tr.token_ids[1:1 + n] == [lm.tokens.placeholder] * n
    assert tr.token_ids[1 + n] == lm.tokens.end


def test_zero_changes_answer_identity_does_not(load_tiny):
    lm = load_tiny("toy", "toy-latent")
    eng = Engine(lm, capture_logits=True)
    p = _prompt(lm)
    conds = [Condition(), Condition("identity", parse_spec("identity")), Condition("zero", parse_spec("zero"))]
    base, ident, zero = eng.run([Request(p, conds, option_ids=option_token_ids(lm, 4), force_latent=True,
                                         max_new_tokens=10)])[0]
    assert np.array_equal(base.logits, ident.logits) and np.array_equal(base.option_logprobs, ident.option_logprobs)
    assert np.abs(base.option_logprobs - zero.option_logprobs).max() > 1e-3
    assert np.allclose(zero.latents, 0)


def test_fork_equals_separate_runs(load_tiny):
    lm = load_tiny("mirage", "mirage")
    eng = Engine(lm, capture_logits=True)
    specs = ["identity", "zero", "noise:sigma=0.5", "scale:alpha=0.3@1", "noise_replace"]
    prompts = [_prompt(lm, f"s{i}", seed=i) for i in range(2)]
    opts = option_token_ids(lm, 4)
    forked = eng.run([Request(p, [Condition(s, parse_spec(s)) for s in specs], option_ids=opts, force_latent=True,
                              max_new_tokens=12) for p in prompts], batch_size=2)
    for i, p in enumerate(prompts):
        for j, s in enumerate(specs):
            sep = eng.run([Request(p, [Condition(s, parse_spec(s))], option_ids=opts, force_latent=True,
                                   max_new_tokens=12)], batch_size=1)[0][0]
            f = forked[i][j]
            assert f.token_ids == sep.token_ids
            assert np.abs(f.logits - sep.logits).max() <= 1e-4
            assert np.abs(f.option_logprobs - sep.option_logprobs).max() <= 1e-4


def test_override_replays_latents_and_visibility_none_hides_image(load_tiny):
    lm = load_tiny("toy", "toy-latent")
    eng = Engine(lm, capture_logits=True)
    opts = option_token_ids(lm, 4)
    a = eng.run([Request(_prompt(lm, "a", 1), option_ids=opts, force_latent=True, max_new_tokens=8)])[0][0]
    z = a.latents
    # replaying a run's own latents reproduces it exactly
    rep = eng.run([Request(_prompt(lm, "a", 1), [Condition("replay", override=z)], option_ids=opts,
                           force_latent=True, max_new_tokens=8)])[0][0]
    assert rep.token_ids == a.token_ids and np.abs(rep.logits - a.logits).max() <= 1e-5
    # with the image hidden from everything after it and the same forced latents, the image no longer matters
    outs = [eng.run([Request(_prompt(lm, "x", seed), [Condition("forced", override=z)], option_ids=opts,
                             force_latent=True, image_visibility="none", max_new_tokens=8)])[0][0]
            for seed in (1, 2)]
    assert np.abs(outs[0].option_logprobs - outs[1].option_logprobs).max() <= 1e-5
    # ... whereas with the image visible it does
    vis = [eng.run([Request(_prompt(lm, "x", seed), [Condition("forced", override=z)], option_ids=opts,
                            force_latent=True, max_new_tokens=8)])[0][0] for seed in (1, 2)]
    assert np.abs(vis[0].option_logprobs - vis[1].option_logprobs).max() > 1e-5


def test_bypass_latents_cannot_reach_the_answer(load_tiny):
    lm = load_tiny("toy", "toy-bypass")
    eng = Engine(lm)
    opts = option_token_ids(lm, 4)
    conds = [Condition(), Condition("zero", parse_spec("zero")), Condition("noise", parse_spec("noise:sigma=3"))]
    outs = eng.run([Request(_prompt(lm), conds, option_ids=opts, force_latent=True, max_new_tokens=8)])[0]
    for o in outs[1:]:
        assert np.abs(o.option_logprobs - outs[0].option_logprobs).max() <= 1e-5
    # ... and its latents cannot see the input: two different images give the same latents (same prompt length,
    # so the same positions)
    a = eng.run([Request(_prompt(lm, "a", 1), force_latent=True, max_new_tokens=8)])[0][0]
    b = eng.run([Request(_prompt(lm, "b", 2), force_latent=True, max_new_tokens=8)])[0][0]
    assert a.latent_count == b.latent_count > 0
    assert np.allclose(a.latents, b.latents, atol=1e-5)
    # whereas the toy-latent model's latents do depend on the image
    lm2 = load_tiny("toy", "toy-latent")
    e2 = Engine(lm2)
    x, y = (e2.run([Request(_prompt(lm2, k, s), force_latent=True, max_new_tokens=8)])[0][0] for k, s in (("a", 1),
                                                                                                      ("b", 2)))
    assert not np.allclose(x.latents, y.latents, atol=1e-3)


def test_sampling_is_seeded_and_batch_invariant(load_tiny):
    from latentcheck.core.profiles import DecodingSpec

    lm = load_tiny("plain", "qwen2_5_vl")
    dec = DecodingSpec(do_sample=True, temperature=1.5, top_p=0.95, top_k=50, max_new_tokens=10)
    prompts = [_prompt(lm, f"s{i}", seed=i) for i in range(3)]
    a = Engine(lm, decoding=dec, seed=7).run([Request(p) for p in prompts], batch_size=3)
    b = Engine(lm, decoding=dec, seed=7).run([Request(p) for p in prompts], batch_size=1)
    c = Engine(lm, decoding=dec, seed=8).run([Request(p) for p in prompts], batch_size=3)
    assert [x[0].token_ids for x in a] == [x[0].token_ids for x in b]
    assert [x[0].token_ids for x in a] != [x[0].token_ids for x in c]


def test_vector_mediated_image_reaches_the_answer_only_through_fed_vectors(load_tiny):
    """toy-vector (image visible to the latent-start position only, that position hidden from everything later):
    with the same fed vectors, two images give the same answer distribution, also with the image hidden altogether
    (the behavioural probe's setting); the model's own vectors differ between the images."""
    lm = load_tiny("toy", "toy-vector")
    eng = Engine(lm, capture_logits=True)
    opts = option_token_ids(lm, 4)
    own = [eng.run([Request(_prompt(lm, k, seed), option_ids=opts, force_latent=True, max_new_tokens=8)])[0][0]
           for k, seed in (("a", 1), ("b", 2))]
    assert not np.allclose(own[0].latents, own[1].latents, atol=1e-4)  # the start position saw the image
    z = own[0].latents
    for vis in (None, "none"):
        outs = [eng.run([Request(_prompt(lm, "x", seed), [Condition("forced", override=z)], option_ids=opts,
                                 force_latent=True, image_visibility=vis, max_new_tokens=8)])[0][0]
                for seed in (1, 2)]
        assert np.abs(outs[0].option_logprobs - outs[1].option_logprobs).max() <= 1e-5
        assert np.abs(outs[0].option_logprobs - own[0].option_logprobs).max() <= 1e-5
    # the fed vectors do reach the answer
    zero = eng.run([Request(_prompt(lm, "a", 1), [Condition("zero", parse_spec("zero"))], option_ids=opts,
                            force_latent=True, max_new_tokens=8)])[0][0]
    assert np.abs(zero.option_logprobs - own[0].option_logprobs).max() > 1e-4


@pytest.mark.parametrize("profile", ["toy-latent", "toy-mediated", "toy-vector", "toy-bypass"])
def test_span_patching_oracle(load_tiny, profile):
    """replay_span: without a patch it reproduces the engine's answer distribution; patching a run's own span
    changes nothing; patching the span of a run on another image gives exactly that run's answer when the image
    can reach the answer only through the span (toy-mediated, toy-vector) and nothing when the span is invisible
    to the answer (toy-bypass)."""
    lm = load_tiny("toy", profile)
    eng = Engine(lm)
    opts = option_token_ids(lm, 4)
    pa, pb = _prompt(lm, "a", 1), _prompt(lm, "b", 2)
    ta, tb = (eng.run([Request(p, option_ids=opts, force_latent=True, max_new_tokens=8)])[0][0] for p in (pa, pb))
    lp_a, sa = eng.replay_span(pa, ta)
    lp_b, sb = eng.replay_span(pb, tb)
    assert sa.shape == (len(lm.model.model.language_model.layers) + 1, 1 + lm.profile.latent.k, sa.shape[-1])
    assert np.abs(lp_a[opts] - ta.option_logprobs).max() <= 1e-4
    own, _ = eng.replay_span(pa, ta, span_states=sa)
    assert np.abs(own - lp_a).max() <= 1e-5
    ab, _ = eng.replay_span(pa, ta, span_states=sb)  # image a, span from the run on image b
    if profile in ("toy-mediated", "toy-vector"):
        assert np.abs(ab[opts] - lp_b[opts]).max() <= 1e-4
    elif profile == "toy-bypass":
        assert np.abs(ab[opts] - lp_a[opts]).max() <= 1e-5
    else:  # toy-latent: the answer also reads the image directly, so the patch moves it but not all the way
        assert np.abs(ab[opts] - lp_a[opts]).max() > 1e-6
