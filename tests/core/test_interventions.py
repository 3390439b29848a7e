"""Vector interventions: seeded noise is a function of (seed, sample key, latent step) only."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from latentcheck.core.interventions import VectorContext, apply_vector, parse_spec


def _fresh(key: str, step: int, seed: int, h: int) -> torch.Tensor:
    """The documented noise of one row: a fresh CPU generator seeded with sha256(f"{seed}|{key}|{step}")[:8]."""
    s = int(hashlib.sha256(f"{seed}|{key}|{step}".encode()).hexdigest()[:8], 16)
    return torch.randn(h, generator=torch.Generator().manual_seed(s))


def test_noise_replace_rows_are_seeded_per_key_and_step_and_independent_of_the_batch():
    spec = parse_spec("noise_replace")
    h = 48
    v = torch.randn(5, h, generator=torch.Generator().manual_seed(0)) * 3
    keys = [f"s{i}" for i in range(5)]
    steps = torch.tensor([0, 1, 2, 0, 1])
    out = apply_vector(spec, v, steps, VectorContext(keys=keys, seed=11))
    sseed = spec.seed_int(11)
    for i in range(5):
        n = _fresh(keys[i], int(steps[i]), sseed, h)
        expect = n / n.norm() * v[i].norm()
        assert torch.allclose(out[i], expect, atol=1e-6)
        alone = apply_vector(spec, v[i:i + 1], steps[i:i + 1], VectorContext(keys=[keys[i]], seed=11))
        assert torch.equal(alone[0], out[i])  # same row, same noise, whatever else is in the batch
    assert not torch.allclose(out[0], out[3] / out[3].norm() * out[0].norm())  # another key: other noise
    again = apply_vector(spec, v, steps, VectorContext(keys=keys, seed=12))
    assert not torch.allclose(again, out)  # another run seed: other noise


def test_added_noise_has_the_requested_relative_size():
    spec = parse_spec("noise:sigma=2")
    h = 4096
    v = torch.randn(64, h, generator=torch.Generator().manual_seed(1))
    out = apply_vector(spec, v, torch.zeros(64, dtype=torch.long), VectorContext(keys=[f"k{i}" for i in range(64)]))
    ratio = ((out - v).norm(dim=-1) / v.norm(dim=-1)).numpy()
    assert np.allclose(ratio, 2.0, rtol=0.05)
    z = ((out - v) / (2 * v.norm(dim=-1, keepdim=True) / h ** 0.5)).numpy().ravel()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


def test_step_restricted_noise_leaves_other_steps_untouched():
    spec = parse_spec("noise:sigma=1@1")
    v = torch.randn(4, 16)
    steps = torch.tensor([0, 1, 2, 1])
    out = apply_vector(spec, v, steps, VectorContext(keys=["a", "b", "c", "d"]))
    assert torch.equal(out[0], v[0]) and torch.equal(out[2], v[2])
    assert not torch.equal(out[1], v[1]) and not torch.equal(out[3], v[3])
