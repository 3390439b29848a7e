"""Activation patching of the latent span per layer (``Engine.replay_span(..., layers=...)``): the oracles of #24."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.interventions import parse_spec
from latentcheck.core.prompts import build_prompt, option_token_ids

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


@pytest.mark.parametrize("family,profile", [("toy", "toy-latent"), ("toy", "toy-mediated"), ("mirage", "mirage")])
def test_patching_every_layer_from_a_run_equals_replaying_that_run(load_tiny, family, profile):
    """Run B = the same prompt with noised fed vectors (same span length). Patching A's span from B at every layer
    gives B's answer distribution (log-probs within 1e-5, same answer token, = the engine's own B run to 1e-4);
    patching only the input layer (the fed vectors) already does, since every later span state is recomputed from
    the same prefix; patching no layer is A's own replay bit for bit; the last layer's output is read by no later
    position (keys and values are made from layer inputs), so patching it alone changes nothing; a middle layer moves
    the answer part way."""
    lm = load_tiny(family, profile)
    eng = Engine(lm)
    opts = option_token_ids(lm, 4)
    p = build_prompt(lm, "s0", QUESTION, make_image(0))
    ta, tb = eng.run([Request(p, [Condition(), Condition("noise", parse_spec("noise:sigma=2"))], option_ids=opts,
                              force_latent=True, max_new_tokens=12)])[0]
    assert ta.latent_count == tb.latent_count >= 1
    lp_a, sa = eng.replay_span(p, ta)
    lp_b, sb = eng.replay_span(p, tb)
    assert np.abs(lp_b - lp_a).max() > 1e-3  # the two runs differ
    n_states = len(eng.text_model.layers) + 1
    full, _ = eng.replay_span(p, ta, span_states=sb)
    assert np.abs(full - lp_b).max() <= 1e-5 and int(np.argmax(full)) == int(np.argmax(lp_b))
    assert np.abs(full[opts] - tb.option_logprobs).max() <= 1e-4
    same, _ = eng.replay_span(p, ta, span_states=sb, layers=range(n_states))
    assert np.array_equal(same, full)
    inp, _ = eng.replay_span(p, ta, span_states=sb, layers=[0])
    assert np.abs(inp - lp_b).max() <= 1e-5
    none, states = eng.replay_span(p, ta, span_states=sb, layers=[])
    assert np.array_equal(none, lp_a) and np.array_equal(states, sa)
    last, _ = eng.replay_span(p, ta, span_states=sb, layers=[n_states - 1])
    assert np.array_equal(last, lp_a)
    mid, _ = eng.replay_span(p, ta, span_states=sb, layers=[1])
    assert np.abs(mid - lp_a).max() > 1e-6 and np.abs(mid - lp_b).max() > 1e-6
    with pytest.raises(ValueError, match="state indices"):
        eng.replay_span(p, ta, span_states=sb, layers=[n_states])


def test_patching_the_partners_span_per_layer_on_toy_vector(load_tiny):
    """toy-vector (only the latent-start position sees the image and it is hidden from every later position; the
    question is the same, only the image differs): the partner's image reaches the answer only through the fed
    vectors, so patching the input layer alone (the fed vectors) already gives the partner's answer distribution,
    as does every layer; the last layer's output alone changes nothing."""
    lm = load_tiny("toy", "toy-vector")
    eng = Engine(lm)
    opts = option_token_ids(lm, 4)
    pa, pb = (build_prompt(lm, k, QUESTION, make_image(s)) for k, s in (("a", 1), ("b", 2)))
    ta, tb = (eng.run([Request(q, option_ids=opts, force_latent=True, max_new_tokens=8)])[0][0] for q in (pa, pb))
    lp_a, _ = eng.replay_span(pa, ta)
    lp_b, sb = eng.replay_span(pb, tb)
    assert np.abs(lp_a[opts] - lp_b[opts]).max() > 1e-4
    n_states = len(eng.text_model.layers) + 1
    every, _ = eng.replay_span(pa, ta, span_states=sb)
    first, _ = eng.replay_span(pa, ta, span_states=sb, layers=[0])
    last, _ = eng.replay_span(pa, ta, span_states=sb, layers=[n_states - 1])
    assert np.abs(every[opts] - lp_b[opts]).max() <= 1e-4
    assert np.abs(first[opts] - lp_b[opts]).max() <= 1e-4
    assert np.array_equal(last, lp_a)


def test_layer_sweep_through_perturb_latent_records_summary_and_plot(load_tiny, tmp_path):
    """perturb-latent --patch-layers each,all: per sample one outcome per layer set under mediation.image.span.layers;
    'all' equals the span mediator's y01 in every sample; the summary rows are typed records whose numbers equal a
    hand computation (AccuracyEffect / Proportion on the per-sample outcomes), Holm over the sweep; the plot exists."""
    import json

    from latentcheck.core.runner import CommonOptions
    from latentcheck.core.stats import holm
    from latentcheck.core.summaries import AccuracyEffect, Proportion
    from latentcheck.perturb.latents import run_perturb_latent

    from ..perturb.test_mediation import write_tasks  # noqa: TID252

    lm = load_tiny("toy", "toy-mediated")
    data = write_tasks(tmp_path / "data", ["What colour is the circle?"] * 8)
    res = run_perturb_latent(CommonOptions(data=str(data), out=str(tmp_path / "out"), batch_size=4, quiet=True),
                             ["identity"], force_latent=True, n_boot=200, patch_layers="each,all", lm=lm)
    recs = [json.loads(x) for x in open(res.results_path)][1:]
    n_layers = len(lm.model.model.language_model.layers)
    labels = [str(i) for i in range(n_layers)] + ["all"]
    spans = [r["mediation"]["image"]["span"] for r in recs]
    assert all(list(sp["layers"]) == labels for sp in spans)
    assert all(sp["layers"]["all"] == sp["y01"] for sp in spans)
    lp = res.summary["layer_patching"]["image"]
    assert [r["label"] for r in lp["rows"]] == labels and lp["n_states"] == n_layers + 1
    assert [r["x"] for r in lp["rows"]] == list(range(n_layers)) + [None]
    ps = []
    for row in lp["rows"]:
        want = AccuracyEffect.paired([sp["y00"]["correct"] for sp in spans],
                                     [sp["layers"][row["label"]]["correct"] for sp in spans], n_boot=200)
        got = AccuracyEffect.from_dict(row["effect"])
        assert got.delta.estimate == want.delta.estimate and got.delta.lo == want.delta.lo
        assert (got.n01, got.n10, got.n) == (want.n01, want.n10, len(recs))
        assert got.delta.hi > got.delta.lo  # never zero-width
        fol = Proportion.of([sp["layers"][row["label"]]["answer"] == sp["y11"]["answer"] for sp in spans])
        assert row["follows_counterfactual"]["estimate"] == fol.estimate
        ps.append(want.delta.p_value)
    assert [r["effect"]["delta"]["p_holm"] for r in lp["rows"]] == pytest.approx(holm(ps))
    assert lp["multiplicity"]["m"] == len(labels)
    assert (tmp_path / "out" / res.summary["plots"]["layer_patching_image"]).exists()
    from latentcheck.core.errors import LatentcheckError

    with pytest.raises(LatentcheckError, match="span mediator"):
        run_perturb_latent(CommonOptions(data=str(data), out=str(tmp_path / "o2"), quiet=True), ["identity"],
                           force_latent=True, mediators="vectors", patch_layers="0", lm=lm)
    with pytest.raises(LatentcheckError, match="reaches past"):
        run_perturb_latent(CommonOptions(data=str(data), out=str(tmp_path / "o3"), quiet=True), ["identity"],
                           force_latent=True, patch_layers=f"0-{n_layers + 1}", lm=lm)
