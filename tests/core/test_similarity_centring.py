"""Mean-centring removes a planted shared offset: in the collapse curve (core/similarity.py) and in perturb-input's
geometry (perturb/inputs.py), where 'centred' must differ from 'raw' whenever the latents share a direction."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.similarity import intra_instance_collapse
from latentcheck.perturb.inputs import geometry

N, K, H = 6, 5, 64


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """latents = offset (large, shared) + parts (independent per instance and step)."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(size=H) * 50.0
    parts = rng.normal(size=(N, K, H))
    return offset + parts, offset, parts


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_collapse_curve_centred_by_the_offset_sees_only_the_parts():
    lat, offset, parts = _planted()
    raw = intra_instance_collapse(lat)
    cen = intra_instance_collapse(lat, mean=offset)
    want_adj = [np.mean([_cos(parts[i, k], parts[i, k + 1]) for i in range(N)]) for k in range(K - 1)]
    want_all = np.mean([np.mean([_cos(parts[i, a], parts[i, b]) for a in range(K) for b in range(K) if a != b])
                        for i in range(N)])
    assert cen["adjacent"] == pytest.approx(want_adj, abs=1e-9)
    assert cen["all_pairs"] == pytest.approx(want_all, abs=1e-9)
    assert min(raw["adjacent"]) > 0.99 and max(abs(x) for x in cen["adjacent"]) < 0.5  # the offset dominated raw


def test_perturb_input_geometry_centres_its_collapse_curve():
    lat, _, _ = _planted(1)
    samples = [(f"s{i}", {"orig.latents": lat[i]}) for i in range(N)]
    geo = geometry(samples, {f"s{i}": None for i in range(N)}, [])
    mu = lat.reshape(N * K, H).mean(0)  # the only state type here: latents, so the centre is their mean
    want = [np.mean([_cos(lat[i, k] - mu, lat[i, k + 1] - mu) for i in range(N)]) for k in range(K - 1)]
    col = geo["collapse"]
    assert col["k"] == K and col["n"] == N
    assert np.asarray(col["centred"]["adjacent"]) == pytest.approx(want, abs=1e-9)
    assert min(col["raw"]["adjacent"]) > 0.99 and max(abs(x) for x in col["centred"]["adjacent"]) < 0.5
