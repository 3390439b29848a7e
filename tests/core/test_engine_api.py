"""The engine's public surface: ``generate`` (forks), ``score`` (teacher-forced log-likelihoods) and ``replay``,
checked against the model's own forward and the engine's decode; and no caller outside the engine reaches into it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from latentcheck.core.engine import Engine, Request
from latentcheck.core.prompts import build_prompt

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def test_score_equals_one_forward_of_the_model(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    eng = Engine(lm)
    imgs = [make_image(3), make_image(4)]
    prompts = [build_prompt(lm, "a", QUESTION, imgs[0]), build_prompt(lm, "b", "Where is it? Be brief.", imgs[1])]
    conts = [[[300, 301, 302], [250]], [[260, 270]]]  # two continuations of different lengths for prompt 0 (a fork)
    with torch.no_grad():
        sc = eng.score(prompts, conts)
    assert sc.rows == [0, 0, 1] and sc.valid.sum(1).tolist() == [3, 1, 2]
    r = 0
    for i, (p, im) in enumerate(zip(prompts, imgs)):
        for ids in conts[i]:
            enc = lm.processor(text=[p.text], images=[im], return_tensors="pt")
            full = torch.cat([enc["input_ids"], torch.tensor([ids])], 1)
            types = torch.cat([enc["mm_token_type_ids"], torch.zeros((1, len(ids)), dtype=torch.long)], 1)
            with torch.no_grad():
                logits = lm.model(input_ids=full, mm_token_type_ids=types, pixel_values=enc["pixel_values"],
                                  image_grid_thw=enc["image_grid_thw"]).logits[0].float()
            lp = torch.log_softmax(logits, -1)
            want = [float(lp[p.length - 1 + j, t]) for j, t in enumerate(ids)]
            got = sc.logprobs[r, :len(ids)].tolist()
            assert np.allclose(got, want, atol=1e-4), (got, want)
            assert float(sc.logprobs[r, len(ids):].abs().sum()) == 0.0  # padding contributes nothing
            r += 1
    mean = sc.mean_nll()
    assert mean.shape == (3,) and mean[1] == pytest.approx(-float(sc.logprobs[1, 0]))


@pytest.mark.parametrize("family,profile", [("toy", "toy-latent"), ("lvr", "lvr"), ("monet", "monet_sft")])
def test_score_with_a_latent_span_equals_the_decoded_span(load_tiny, family, profile):
    lm = load_tiny(family, profile)
    K = lm.profile.latent.k
    eng = Engine(lm, capture_logits=True)
    p = build_prompt(lm, "s", QUESTION, make_image(5))
    tr = eng.generate([Request(p, force_latent=True, max_new_tokens=K + 6)])[0][0]
    assert tr.latent_count == K and tr.span_mask[:K + 1] == [True] * (K + 1)
    after = tr.token_ids[K + 1:]  # the tokens after the span (end token first)
    with torch.no_grad():
        sc = eng.score([p], [[after]], latent_steps=K)
    lp = torch.log_softmax(torch.as_tensor(tr.logits), -1).numpy()
    assert abs(float(sc.start_logprob[0]) - lp[0, lm.tokens.start]) <= 1e-4
    want = [lp[K + 1 + j, t] for j, t in enumerate(after)]
    assert np.allclose(sc.logprobs[0].numpy(), want, atol=1e-4)
    got_latents = torch.stack(sc.latents, 1)[0].float().numpy()
    assert np.abs(got_latents - tr.raw_latents).max() <= 1e-4


def test_generate_takes_bare_prompts_and_run_is_the_same_method(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    eng = Engine(lm)
    p = build_prompt(lm, "s", QUESTION, make_image(1))
    a = eng.generate([p])[0][0]
    b = eng.run([Request(p)])[0][0]
    assert a.token_ids == b.token_ids and Engine.run is Engine.generate


def test_score_rejects_empty_continuations(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    p = build_prompt(lm, "s", QUESTION, make_image(1))
    with pytest.raises(ValueError, match="non-empty"):
        Engine(lm).score([p], [[[]]])
    with pytest.raises(ValueError, match="latent profile"):
        Engine(lm).score([p], [[[1]]], latent_steps=2)


def test_nothing_outside_the_engine_calls_its_private_methods():
    private = {n for n in vars(Engine) if n.startswith("_") and not n.startswith("__")}
    assert {"_forward", "_feedback", "_decode"} <= private
    hits = []
    own = ("core", "cli", "perturb", "probe", "imagine", "bench", "audit", "toy", "reproduce", "benchmarks")
    for path in sorted([*ROOT.glob("*.py"), *(p for d in own for p in (ROOT / d).rglob("*.py"))]):
        rel = path.relative_to(ROOT).parts  # the project's own modules only (not a venv or build folder inside it)
        if rel == ("core", "engine.py"):  # (tests may spy on internals)
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in private and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not hits, hits
