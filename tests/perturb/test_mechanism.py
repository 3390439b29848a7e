"""Mechanism arms of perturb-latent (#24): attention knockout per layer range and the constant-placeholder span, on
tiny models (mechanics) and on the shipped zoo controls (must-show: each control with a case that must detect an
effect and one that must not)."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.engine import Engine, Request
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.interventions import Embeddings, parse_spec
from latentcheck.core.prompts import build_prompt, option_token_ids
from latentcheck.core.stats import paired_tost
from latentcheck.perturb.latents import plan_interventions, sequence_conditions

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def test_placeholder_needs_the_embedding_table_and_fills_every_position_with_one_vector():
    import torch

    w = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    emb = Embeddings(w)
    base = np.ones((3, 4), dtype=np.float32)
    planned = plan_interventions(["placeholder", "placeholder:source=token,token=#2", "drop"])
    with pytest.raises(LatentcheckError, match="embeddings"):
        sequence_conditions(planned[:1], "s", base, None, 0, 4)
    (mean, tok, drop), skipped = sequence_conditions(planned, "s", base, None, 0, 4, emb)
    assert not skipped
    assert np.array_equal(mean.override, np.repeat(w.mean(0).numpy()[None], 3, 0))  # K = 3 positions kept
    assert np.array_equal(tok.override, np.repeat(w[2].numpy()[None], 3, 0))
    assert drop.override.shape == (0, 4)  # drop removes the positions
    with pytest.raises(LatentcheckError):
        parse_spec("placeholder:source=token")  # a token is required
    with pytest.raises(LatentcheckError, match="outside the vocabulary"):
        sequence_conditions(plan_interventions(["placeholder:source=token,token=#9"]), "s", base, None, 0, 4, emb)
    assert parse_spec("placeholder").definition.needs_embedding


def test_placeholder_keeps_the_span_length_and_differs_from_drop(load_tiny):
    """Through the engine: the placeholder span has the baseline's K positions, each fed the mean input embedding;
    drop feeds none; the two answer distributions differ."""
    lm = load_tiny("toy", "toy-latent")
    eng = Engine(lm)
    p = build_prompt(lm, "s0", QUESTION, make_image(0))
    opts = option_token_ids(lm, 4)
    base = eng.run([Request(p, option_ids=opts, force_latent=True, max_new_tokens=10)])[0][0]
    K = base.latent_count
    assert K >= 1
    emb = Embeddings(eng.embed.weight, lm.tokenizer)
    conds, _ = sequence_conditions(plan_interventions(["placeholder", "drop"]), "s0", base.latents, None, 0,
                                   base.latents.shape[1], emb)
    ph, dr = eng.run([Request(p, conds, option_ids=opts, force_latent=True, max_new_tokens=10)])[0]
    assert ph.latent_count == K and dr.latent_count == 0
    want = eng.embed.weight.detach().float().mean(0).numpy()
    assert np.abs(ph.latents - want[None]).max() <= 1e-6
    assert np.abs(ph.option_logprobs - dr.option_logprobs).max() > 1e-4


def _perturb(tmp_path, model, specs, limit):
    from latentcheck.core.runner import CommonOptions
    from latentcheck.perturb.latents import run_perturb_latent

    res = run_perturb_latent(CommonOptions(model=model, out=str(tmp_path / model), limit=limit, quiet=True,
                                           batch_size=20), specs, mediation="none", n_boot=200, plots=False)
    return res.summary["baseline"], {r["label"]: r for r in res.summary["interventions"]}


KO_ALL = "knockout:query=answer,key=span,layers=all"
KO_NONE = "knockout:query=answer,key=span,layers=none"


@pytest.mark.slow
def test_answer_to_span_knockout_drops_the_vector_mediated_control_to_chance(tmp_path):
    """toy-vector: the image reaches the answer only through the span, so the answer that cannot attend to the span
    is at chance (the effect is detected); a knockout over zero layers is the baseline exactly."""
    base, rows = _perturb(tmp_path, "toy-vector", [KO_ALL, KO_NONE], 60)
    ko, none = rows[parse_spec(KO_ALL).label], rows[parse_spec(KO_NONE).label]
    assert base["accuracy"]["estimate"] >= 0.9
    assert abs(ko["effect"]["cond"]["estimate"] - base["chance"]) <= 0.10, ko["effect"]["cond"]
    assert ko["effect"]["delta"]["hi"] < 0 and ko["effect"]["delta"]["p_holm"] < 0.05
    assert none["effect"]["flips"] == 0 and none["answer_flip_rate"] == 0.0
    assert none["effect"]["delta"]["estimate"] == 0.0


@pytest.mark.slow
def test_answer_to_span_knockout_changes_nothing_on_the_bypass_control(tmp_path):
    """toy-bypass: the answer reads the image directly and never the span, so knocking out its attention to the
    span changes nothing: equivalence within +-5 points (TOST), not just 'no significant effect'."""
    base, rows = _perturb(tmp_path, "toy-bypass", [KO_ALL], 100)
    ko = rows[parse_spec(KO_ALL).label]
    assert base["accuracy"]["estimate"] >= 0.9
    tost = paired_tost(ko["effect"]["n01"], ko["effect"]["n10"], ko["n"], 0.05)
    assert tost["equivalent"], tost


def test_knockout_sweep_plans_one_knockout_per_layer_and_plots_a_curve(load_tiny, tmp_path):
    planned = plan_interventions(["zero"], knockout_sweep=["answer-span", "span-image"], n_layers=3)
    assert [(p.group, p.x, p.spec.params["layers"]) for p in planned[1:]] == \
        [("knockout_sweep:answer-span", float(i), str(i)) for i in range(3)] + \
        [("knockout_sweep:span-image", float(i), str(i)) for i in range(3)]
    with pytest.raises(LatentcheckError, match="QUERY-KEY"):
        plan_interventions([], knockout_sweep=["answer"], n_layers=3)
    with pytest.raises(LatentcheckError, match="key must be"):
        plan_interventions([], knockout_sweep=["answer-question"], n_layers=3)
    from latentcheck.core.runner import CommonOptions
    from latentcheck.perturb.latents import run_perturb_latent

    from .test_mediation import write_tasks

    lm = load_tiny("toy", "toy-latent")
    data = write_tasks(tmp_path / "data", ["What colour is the circle?"] * 4)
    res = run_perturb_latent(CommonOptions(data=str(data), out=str(tmp_path / "out"), batch_size=4, quiet=True),
                             None, knockout_sweep="answer-span", mediation="none", force_latent=True, n_boot=100,
                             lm=lm)
    n_layers = len(lm.model.model.language_model.layers)
    curve = res.summary["curves"]["knockout_sweep:answer-span"]
    assert curve["x"] == [float(i) for i in range(n_layers)] and len(curve["accuracy"]) == n_layers
    assert [r["kind"] for r in res.summary["interventions"]] == ["attention"] * n_layers
    # each point of a curve is its row's typed records: the intervened accuracy's Proportion (with its Wilson
    # interval) and the log p(gold) change's Estimate
    rows = res.summary["interventions"]
    assert curve["accuracy"] == [r["effect"]["cond"] for r in rows] and curve["accuracy"][0]["method"] == "wilson"
    assert curve["d_logp_gold"] == [r["d_logp_gold"] for r in rows]
    assert (tmp_path / "out" / res.summary["plots"]["knockout_sweep_answer_span"]).exists()


@pytest.mark.slow
def test_layer_patching_on_the_zoo_controls(tmp_path):
    """--patch-layers each on the zoo: toy-vector carries the image in its fed vectors only, so the partner's span
    at the input layer moves the answer to the partner's run in (nearly) every sample and layer 1 carries nothing;
    toy-bypass's answer never reads the span, so no layer changes anything (TOST equivalence within +-5 points)."""
    from latentcheck.core.runner import CommonOptions
    from latentcheck.perturb.latents import run_perturb_latent

    rows = {}
    for model, n in (("toy-vector", 40), ("toy-bypass", 60)):
        res = run_perturb_latent(CommonOptions(model=model, out=str(tmp_path / model), limit=n, quiet=True,
                                               batch_size=20), ["identity"], patch_layers="each", n_boot=200,
                                 plots=False)
        rows[model] = {r["label"]: r for r in res.summary["layer_patching"]["image"]["rows"]}
    v0, v1 = rows["toy-vector"]["0"], rows["toy-vector"]["1"]
    assert v0["follows_counterfactual"]["estimate"] >= 0.9 and v0["effect"]["delta"]["hi"] < 0
    assert v0["effect"]["delta"]["p_holm"] < 0.05
    assert v1["effect"]["delta"]["lo"] <= 0 <= v1["effect"]["delta"]["hi"]
    for r in rows["toy-bypass"].values():
        e = r["effect"]
        assert paired_tost(e["n01"], e["n10"], e["n"], 0.05)["equivalent"], r["label"]
