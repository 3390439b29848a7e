"""The toy zoo: a fast smoke training run, and the shipped models' accuracy and causal structure."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from latentcheck.toy import zoo
from latentcheck.toy.world import MAIN_QUESTION_TYPES, make_samples


def test_smoke_training_run_builds_a_loadable_model(tmp_path):
    card = zoo.build_model("toy-direct", tmp_path, steps=3, n_train=48)
    folder = tmp_path / "toy-direct"
    assert (folder / "config.json").exists() and (folder / "zoo_card.json").exists()
    saved = json.loads((folder / "zoo_card.json").read_text())
    assert saved["steps"] == 3 and saved["data"]["train_examples"] == 48 and 0 <= saved["test_accuracy"] <= 1
    assert card["chance"] == 0.25
    # a latent model fine-tuned from that base trains and reloads through the one loader
    zoo.build_model("toy-bypass", tmp_path, steps=2, n_train=32)
    from latentcheck.core.loader import load_model

    lm = load_model(str(tmp_path / "toy-bypass"))
    assert lm.profile.name == "toy-bypass" and not lm.profile.latents_see_input


@pytest.fixture(scope="module")
def test_samples():
    return make_samples(100, "test", zoo.WORLD_SEED, MAIN_QUESTION_TYPES)


@pytest.mark.parametrize("name", [n for n, s in zoo.ZOO.items() if s.world == "v3"])
def test_shipped_zoo_models_are_accurate(name, test_samples):
    from latentcheck.core.loader import load_model

    lm = load_model(name)
    acc = zoo.evaluate_accuracy(lm, test_samples)
    assert acc >= 0.9, (name, acc)


def _option_accuracy(name, samples, spec=None):
    from latentcheck.core.engine import Condition, Engine, Request
    from latentcheck.core.interventions import parse_spec
    from latentcheck.core.loader import load_model
    from latentcheck.core.prompts import build_prompt, option_token_ids, task_text
    from latentcheck.core.tasks import Task

    lm = load_model(name)
    opts = option_token_ids(lm, 4)
    conds = [Condition()] + ([Condition(spec, parse_spec(spec))] if spec else [])
    reqs = [Request(build_prompt(lm, s.id, task_text(Task(s.id, s.question, options=s.options), lm.profile),
                                 s.image), conds, option_ids=opts) for s in samples]
    traces = Engine(lm).run(reqs, batch_size=25)
    gold = np.array(["ABCD".index(s.answer) for s in samples])
    return [float(np.mean([np.argmax(t[i].option_logprobs) == g for t, g in zip(traces, gold)]))
            for i in range(len(conds))]


def test_positive_control_needs_its_latents_negative_control_ignores_them(test_samples):
    base, zero = _option_accuracy("toy-mediated", test_samples, "zero")
    _, noise = _option_accuracy("toy-mediated", test_samples, "noise_replace")
    assert base >= 0.9 and abs(zero - 0.25) <= 0.10 and abs(noise - 0.25) <= 0.10
    base_b, zero_b = _option_accuracy("toy-bypass", test_samples, "zero")
    _, noise_b = _option_accuracy("toy-bypass", test_samples, "noise_replace")
    assert abs(zero_b - base_b) <= 0.02 and abs(noise_b - base_b) <= 0.02


def test_capimagine_imagination_names_the_target_colour(test_samples):
    from latentcheck.core.engine import Engine, Request
    from latentcheck.core.loader import load_model
    from latentcheck.core.prompts import build_prompt, task_text
    from latentcheck.core.tasks import Task

    lm = load_model("toy-capimagine")
    reqs = [Request(build_prompt(lm, s.id, task_text(Task(s.id, s.question, options=s.options), lm.profile),
                                 s.image)) for s in test_samples]
    traces = Engine(lm).run(reqs, batch_size=25)
    named = []
    for s, t in zip(test_samples, traces):
        text = t[0].text
        span = text.split("<imagine>", 1)[-1].split("</imagine>", 1)[0] if "<imagine>" in text else ""
        named.append(s.meta["target"]["colour"] in span)
    assert np.mean(named) >= 0.9, np.mean(named)


@pytest.mark.slow
def test_behavioural_probe_controls(tmp_path):
    """The behavioural probe asks each source question again with only the recorded fed vectors (image hidden from
    every later position): it must pass on the vector-mediated control (toy-vector: >= 90%, text-only near chance)
    and fail honestly on toy-mediated, whose answer reads the image through the span positions' attention."""
    from latentcheck.core.runner import CommonOptions
    from latentcheck.probe.behavioural import ProbeOptions, run_probe

    arms = {}
    for name in ("toy-vector", "toy-mediated"):
        res = run_probe(CommonOptions(model=name, out=str(tmp_path / name), limit=60, quiet=True, batch_size=16),
                        ProbeOptions(derived="same", trained=False, n_boot=200))
        arms[name] = {a: v["estimate"] for a, v in res.summary["behavioural"]["arms"].items()}
    v, m = arms["toy-vector"], arms["toy-mediated"]
    assert v["latents"] >= 0.9 and v["image"] >= 0.9, v
    assert abs(v["text_only"] - 0.25) <= 0.15 and abs(v["shared"] - 0.25) <= 0.15, v
    assert m["image"] >= 0.9 and abs(m["latents"] - 0.25) <= 0.15, m


@pytest.mark.slow
def test_span_mediator_carries_the_effect_in_toy_mediated(tmp_path):
    """toy-mediated: only the latent span sees the image, so patching the whole span from the image-swapped run
    carries the whole total effect (span NIE = TE, span NDE = 0, the answer follows the partner's run), while the
    fed vectors alone carry only part of it."""
    from latentcheck.core.runner import CommonOptions
    from latentcheck.perturb.latents import run_perturb_latent

    res = run_perturb_latent(CommonOptions(model="toy-mediated", out=str(tmp_path), limit=40, quiet=True,
                                           batch_size=20), ["identity"], n_boot=200, plots=False)
    med = res.summary["mediation"]["image"]
    span, vec = med["span"]["correct"], med["correct"]
    assert span["te"]["estimate"] <= -0.5
    assert span["nie"]["estimate"] == pytest.approx(span["te"]["estimate"], abs=1e-9)
    assert span["nde"]["estimate"] == 0.0
    assert med["span"]["interchange"]["follows_counterfactual"]["estimate"] == 1.0
    assert abs(vec["nie"]["estimate"]) < abs(span["nie"]["estimate"])


def _retargeted(sample):
    """The same binding-world image asked about ANOTHER of its objects (named by its colour); gold = that object's
    shape."""
    from latentcheck.core.tasks import LETTERS

    other = sample.meta["distractors"][0]
    return dataclasses.replace(sample, id=sample.id + "-other", question=f"What shape is the {other['colour']} object?",
                               answer=LETTERS[sample.options.index(other["shape"])])


@pytest.mark.slow
def test_binding_control_reads_the_question():
    """toy-binding (binding world: three objects in their own colours, the question names one by its colour): it
    answers the asked object's shape, and asked about ANOTHER object of the same image it answers THAT object's shape
    (a model that does not read which object is named would repeat the first answer)."""
    from latentcheck.core.loader import load_model
    from latentcheck.toy.world import main_question_types

    samples = make_samples(100, "test", zoo.WORLD_SEED, main_question_types("binding"), variant="binding")
    lm = load_model("toy-binding")
    own = zoo.evaluate_accuracy(lm, samples)
    other = zoo.evaluate_accuracy(lm, [_retargeted(s) for s in samples])
    assert own >= 0.75 and other >= 0.75, (own, other)


@pytest.mark.slow
def test_question_mediation_detects_the_binding_control_and_not_a_model_that_ignores_the_named_object(tmp_path):
    """Question mediation (own image, a partner's question): on toy-binding the answer must change (TE < 0) and the
    fed vectors carry much of it (NIE < 0); on toy-mediated (zoom world: the one coloured object is the target
    whatever shape the question names) the same change moves little (TE above -0.15, measured -0.04 at n = 100)."""
    from latentcheck.core.runner import CommonOptions
    from latentcheck.perturb.latents import run_perturb_latent

    med = {}
    for name in ("toy-binding", "toy-mediated"):
        res = run_perturb_latent(CommonOptions(model=name, out=str(tmp_path / name), limit=60, quiet=True,
                                               batch_size=20), ["identity"], mediation=["question"], n_boot=200,
                                 plots=False)
        med[name] = res.summary["mediation"]["question"]["correct"]
    b, m = med["toy-binding"], med["toy-mediated"]
    assert b["te"]["hi"] < -0.3 and b["nie"]["hi"] < -0.2, b
    assert m["te"]["lo"] > -0.15 and m["te"]["lo"] > b["te"]["hi"], m


@pytest.mark.slow
def test_question_swap_moves_the_latents_of_the_binding_control_only(tmp_path):
    """perturb-input's swap_question (own image, a partner's question): the binding control's latents carry the
    object the question names, so they move far (and the answer with them); toy-mediated's latents carry the one
    coloured object whatever shape is named, so they barely move."""
    from latentcheck.core.runner import CommonOptions
    from latentcheck.perturb.inputs import run_perturb_input

    rows = {}
    for name in ("toy-binding", "toy-mediated"):
        res = run_perturb_input(CommonOptions(model=name, out=str(tmp_path / name), limit=40, quiet=True,
                                              batch_size=20), ["identity", "swap_question"], n_boot=200, plots=False)
        rows[name] = res.summary["treatments"]["swap_question"]
    b, m = rows["toy-binding"], rows["toy-mediated"]
    assert b["latent_rel_l2"]["lo"] > 0.4 and m["latent_rel_l2"]["hi"] < 0.15, (b["latent_rel_l2"], m["latent_rel_l2"])
    assert b["answer_changed"]["lo"] > 0.3 and m["answer_changed"]["hi"] < 0.3


def test_object_latent_targets_are_the_asked_objects_own_merged_token():
    """latent_targets="object": every latent's target is the main image's merged visual token of the asked object's
    cell (raster order), computed here image by image; the batched computation gives the same tensors at any batch
    size."""
    import torch

    from latentcheck.core.fastpaths import image_inputs
    from latentcheck.core.loader import load_model
    from latentcheck.toy.world import GRID

    lm = load_model(str(zoo.PACKAGED / "toy-mediated"), profile="toy-mediated", fast_paths=False)
    samples = make_samples(6, "train", 0, ("shape",), variant="binding")
    assert any(r != c for r, c in (s.meta["target"]["cell"] for s in samples))  # a transposed index would show
    targets = zoo._latent_targets(lm, samples, 4, "object")
    assert all(torch.equal(a, b) for a, b in zip(targets, zoo._latent_targets(lm, samples, 4, "object", batch=4)))
    for s, t in zip(samples, targets):
        pv, grid = image_inputs(lm.processor.image_processor, [s.image])
        with torch.no_grad():
            feats = lm.model.model.get_image_features(pv, grid).pooler_output[0]
        row, col = s.meta["target"]["cell"]
        assert feats.shape[0] == GRID * GRID and t.shape == (4, feats.shape[1])
        assert torch.allclose(t, feats[row * GRID + col].expand(4, -1), atol=1e-5)
