"""Format vs content: the span forced to K' vectors (``length:k=K'``, ``--length-sweep``)."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.interventions import parse_spec
from latentcheck.core.prompts import build_prompt, option_token_ids
from latentcheck.perturb.latents import plan_interventions, sequence_conditions

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def test_length_override_truncates_or_repeats_the_last_own_vector():
    base = np.arange(12, dtype=np.float32).reshape(4, 3)
    for k, want in ((0, base[:0]), (2, base[:2]), (4, base), (6, np.concatenate([base, base[3:], base[3:]]))):
        (cond,), skipped = sequence_conditions(plan_interventions([f"length:k={k}"]), "s", base, None, 0, 3)
        assert not skipped and np.array_equal(cond.override, want)
    with pytest.raises(LatentcheckError):
        parse_spec("length:k=1.5")


def test_sweep_plans_one_curve_point_per_length():
    planned = plan_interventions(["zero"], length_sweep=[0, 2, 8])
    assert [(p.group, p.x, p.label) for p in planned][1:] == [("length_sweep", 0.0, "length:k=0.0"),
                                                            ("length_sweep", 2.0, "length:k=2.0"),
                                                            ("length_sweep", 8.0, "length:k=8.0")]


@pytest.mark.parametrize("family,profile", [("toy", "toy-latent"), ("mirage", "mirage"), ("lvr", "lvr")])
def test_forced_span_of_the_models_own_length_equals_the_baseline_and_other_lengths_are_fed(load_tiny, family,
                                                                                            profile):
    lm = load_tiny(family, profile)
    eng = Engine(lm, capture_logits=True)
    p = build_prompt(lm, "s0", QUESTION, make_image(0))
    opts = option_token_ids(lm, 4)
    base = eng.run([Request(p, option_ids=opts, force_latent=True, max_new_tokens=16)])[0][0]
    K = base.latent_count
    assert K >= 1
    conds = []
    for k in (K, max(0, K - 1), K + 2):
        (c,), _ = sequence_conditions(plan_interventions([f"length:k={k}"]), "s0", base.latents, None, 0,
                                      base.latents.shape[1])
        conds.append(c)
    same, shorter, longer = eng.run([Request(p, conds, option_ids=opts, force_latent=True, max_new_tokens=16)])[0]
    assert same.token_ids == base.token_ids  # K' = K with the model's own vectors is the baseline itself
    if base.option_logprobs is not None:
        assert np.abs(same.option_logprobs - base.option_logprobs).max() <= 1e-4
    assert shorter.latent_count == max(0, K - 1) and longer.latent_count == K + 2
    assert np.allclose(longer.latents[K:], base.latents[-1])
