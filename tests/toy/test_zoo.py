"""The toy zoo: a fast smoke training run, and the shipped models' accuracy and causal structure."""

from __future__ import annotations

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


@pytest.mark.parametrize("name", list(zoo.ZOO))
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
