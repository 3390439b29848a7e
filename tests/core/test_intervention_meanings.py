"""Each vector intervention's documented parameter meaning, checked on latents of arbitrary norms.

Random test vectors of norm ~sqrt(H) hide the difference between "noise relative to the latent's norm" and absolute
N(0, sigma^2) noise; real latents have norms far from sqrt(H) (7B: ~150 at H=3584), so every test here uses rows whose
norms span five orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentcheck.core.interventions import LatentStats, VectorContext, apply_vector, parse_spec

H = 2048
NORMS = torch.tensor([0.01, 1.0, 150.0, 3000.0])


def _latents(seed: int = 0) -> torch.Tensor:
    v = torch.randn(len(NORMS), H, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True) * NORMS[:, None].double()


def _ctx(n: int, stats: LatentStats | None = None) -> VectorContext:
    return VectorContext(keys=[f"k{i}" for i in range(n)], seed=3, stats=stats)


@pytest.mark.parametrize("sigma", [0.1, 1.0, 2.5])
def test_noise_sigma_is_relative_to_each_latents_own_norm(sigma):
    v = _latents()
    out = apply_vector(parse_spec(f"noise:sigma={sigma}"), v, torch.zeros(len(v), dtype=torch.long), _ctx(len(v)))
    rel = ((out - v).norm(dim=-1) / v.norm(dim=-1)).numpy()
    # ||noise|| / ||v|| = sigma for every row, whatever its norm (chi distribution with H dof: +-3% at H=2048)
    assert np.allclose(rel, sigma, rtol=0.06), rel


def test_noise_replace_keeps_each_norm_and_forgets_the_direction():
    v = _latents()
    out = apply_vector(parse_spec("noise_replace"), v, torch.zeros(len(v), dtype=torch.long), _ctx(len(v)))
    assert torch.allclose(out.norm(dim=-1), v.norm(dim=-1), rtol=1e-9)
    cos = torch.nn.functional.cosine_similarity(out, v, dim=-1)
    assert cos.abs().max() < 0.15  # a random direction in 2048 dims: |cos| ~ 0.02


@pytest.mark.parametrize("alpha", [0.0, 0.3, -1.0, 4.0])
def test_scale_alpha_multiplies(alpha):
    v = _latents()
    out = apply_vector(parse_spec(f"scale:alpha={alpha}"), v, torch.zeros(len(v), dtype=torch.long), _ctx(len(v)))
    assert torch.allclose(out, v * alpha)


def test_zero_and_near_zero_mu():
    v = _latents()
    steps = torch.zeros(len(v), dtype=torch.long)
    assert torch.equal(apply_vector(parse_spec("zero"), v, steps, _ctx(len(v))), torch.zeros_like(v))
    out = apply_vector(parse_spec("near_zero:mu=0.25"), v, steps, _ctx(len(v)))
    assert torch.equal(out, torch.full_like(v, 0.25))


def test_step_subsets_touch_exactly_the_named_latent_indices():
    v = _latents()
    steps = torch.tensor([0, 1, 2, 3])
    for spec_text, touched in (("scale:alpha=2@1,3", {1, 3}), ("zero@0", {0}), ("noise:sigma=1@2", {2})):
        out = apply_vector(parse_spec(spec_text), v, steps, _ctx(len(v)))
        for i in range(len(v)):
            assert torch.equal(out[i], v[i]) != (i in touched), (spec_text, i)


def test_shared_mean_and_index_mean_use_the_dataset_statistics():
    rng = np.random.default_rng(0)
    lat = [rng.normal(size=(3, H)) * s for s in (1.0, 10.0, 100.0)]  # three samples of K=3 latents
    stats = LatentStats.from_latents(lat)
    allv = np.concatenate(lat)
    assert np.allclose(stats.mean, allv.mean(0))
    assert np.allclose(stats.index_mean[1], np.mean([x[1] for x in lat], 0))
    assert stats.mean_norm == pytest.approx(float(np.linalg.norm(allv, axis=1).mean()))
    v = torch.as_tensor(lat[2])
    steps = torch.tensor([0, 1, 2])
    out = apply_vector(parse_spec("shared:source=mean"), v, steps, _ctx(3, stats))
    assert np.allclose(out.numpy(), np.broadcast_to(allv.mean(0), (3, H)))
    out = apply_vector(parse_spec("index_mean"), v, steps, _ctx(3, stats))
    assert np.allclose(out.numpy(), stats.index_mean[[0, 1, 2]])
    rnd = apply_vector(parse_spec("shared:source=random"), v, steps, _ctx(3, stats)).numpy()
    assert np.allclose(rnd, rnd[0]) and np.linalg.norm(rnd[0]) == pytest.approx(stats.mean_norm)
