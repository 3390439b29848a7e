"""Position-matched per-token reference states (issue #24 part 4): CKA per latent step and image position, the
matched-minus-mismatched specificity, the target-aligned comparison; planted data that must be detected and data
that must not, the Gram-form CKA against linear_cka, and the per-token states a real run stores."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.similarity import cka_matrix, linear_cka, linear_cka_ci
from latentcheck.perturb.inputs import _specificity, position_matched

N, K, T, H = 40, 3, 16, 24


def _samples(latents, toks, regions):
    return [(f"s{i}", {"orig.latents": latents[i], "orig.image_token_states": toks[i],
                       "orig.image_grid": np.array([1, 8, 8], np.float32),
                       "orig.region_tokens": np.asarray(regions[i], np.float32)}) for i in range(len(toks))]


def _world(seed=0):
    rng = np.random.default_rng(seed)
    toks = [rng.normal(size=(T, H)) + 20.0 for _ in range(N)]  # a shared cone offset: raw cosine ~1 everywhere
    regions = [[int(rng.integers(T))] for _ in range(N)]  # the target cell differs per instance
    return rng, toks, regions


def test_cka_matrix_equals_linear_cka_and_the_bootstrap_brackets_it():
    rng = np.random.default_rng(0)
    As = [rng.normal(size=(30, 5)), rng.normal(size=(30, 7))]
    Bs = [As[0] @ rng.normal(size=(5, 9)) + 0.3 * rng.normal(size=(30, 9)), rng.normal(size=(30, 4)),
          np.ones((30, 6)) * 3.0]
    M = cka_matrix(As, Bs)
    for i, a in enumerate(As):
        for j, b in enumerate(Bs[:2]):
            assert M[i, j] == pytest.approx(linear_cka(a, b), abs=1e-10)
    assert np.isnan(M[:, 2]).all()  # a constant representation has no variance: undefined, not a number
    ci = linear_cka_ci(As[0], Bs[0], n_boot=300)
    assert ci["estimate"] == pytest.approx(linear_cka(As[0], Bs[0])) and ci["lo"] < ci["estimate"] < ci["hi"]
    assert linear_cka_ci(As[0], Bs[2], n_boot=50) == {"estimate": None, "lo": None, "hi": None}


def test_specificity_is_exactly_zero_for_a_constant_latent_and_one_minus_mean_for_identity():
    rng = np.random.default_rng(1)
    R = rng.normal(size=(10, 6))
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    const = np.tile(R[0], (10, 1))
    assert np.mean(_specificity(const, R)) == pytest.approx(0.0, abs=1e-12)
    C = R @ R.T
    want = 1.0 - (C.sum(1) - 1.0) / 9
    assert _specificity(R, R) == pytest.approx(want)


def test_latents_carrying_their_own_target_are_detected():
    rng, toks, regions = _world(0)
    lats = [np.stack([toks[i][regions[i][0]] + 0.2 * rng.normal(size=H) for _ in range(K)]) for i in range(N)]
    pm = position_matched(_samples(lats, toks, regions), lats, mu=np.full(H, 20.0), n_boot=300)
    assert pm["n"] == N and pm["token_grid"] == [1, 4, 4] and pm["n_tokens"] == T and pm["K"] == K
    for st in pm["target"]["steps"]:
        assert st["cka_target"]["estimate"] > 0.9 and st["cka_other"]["estimate"] < 0.5
        assert st["target_specificity"]["lo"] > 0.5  # matched pairs far above mismatched ones
        assert st["target_vs_other"]["lo"] > 0.5
    # position by position, no single cell carries it (the target moves between instances)
    assert max(b["cka"] for b in pm["best"]) < 0.6


def test_a_latent_tied_to_one_image_position_is_found_at_that_position():
    rng, toks, regions = _world(1)
    lats = [np.stack([toks[i][5] + 0.2 * rng.normal(size=H) for _ in range(K)]) for i in range(N)]
    pm = position_matched(_samples(lats, toks, regions), lats, mu=np.full(H, 20.0), n_boot=100)
    spec = np.asarray(pm["specificity"])
    assert [b["position"] for b in pm["best"]] == [5] * K and all(b["cka"] > 0.95 for b in pm["best"])
    assert (spec.argmax(1) == 5).all() and spec[:, 5].min() > 0.5
    assert np.abs(np.delete(spec, 5, axis=1)).max() < 0.2


def test_input_blind_latents_are_not_detected():
    rng, toks, regions = _world(2)
    blind = [rng.normal(size=(K, H)) + 20.0 for _ in range(N)]  # independent of the image
    pm = position_matched(_samples(blind, toks, regions), blind, mu=np.full(H, 20.0), n_boot=300)
    for st in pm["target"]["steps"]:
        assert st["target_specificity"]["lo"] < 0 < st["target_specificity"]["hi"]
        assert st["target_vs_other"]["lo"] < 0 < st["target_vs_other"]["hi"]
    assert np.abs(np.asarray(pm["specificity"])).max() < 0.15
    const = [np.tile(blind[0][0], (K, 1)) for _ in range(N)]  # the same vector for every instance
    pc = position_matched(_samples(const, toks, regions), const, mu=np.full(H, 20.0), n_boot=100)
    assert np.abs(np.asarray(pc["specificity"])).max() < 1e-12 and all(b["cka"] is None for b in pc["best"])
    assert all(st["target_specificity"]["estimate"] == pytest.approx(0.0, abs=1e-12) for st in pc["target"]["steps"])


def test_skips_name_their_reason():
    rng, toks, regions = _world(3)
    lats = [rng.normal(size=(K, H)) for _ in range(N)]
    assert "skipped" in position_matched(_samples(lats, toks, regions)[:2], lats[:2], None)
    no_box = position_matched(_samples(lats, toks, [[]] * N), lats, None, n_boot=50)
    assert "bbox" in no_box["target"]["skipped"] and "cka" in no_box
    assert "per-token" in position_matched([(k, {"orig.latents": a["orig.latents"]})
                                            for k, a in _samples(lats, toks, regions)], lats, None)["skipped"]


def test_a_run_stores_the_per_token_states_of_the_original_input(tmp_path, load_tiny):
    from latentcheck.core.runner import CommonOptions, TensorStore
    from latentcheck.perturb.inputs import run_perturb_input

    lm = load_tiny("toy", "toy-latent")
    res = run_perturb_input(CommonOptions(out=str(tmp_path / "run"), limit=6, quiet=True),
                            ["identity"], lm=lm, force_start=True, n_boot=100)
    stored = TensorStore(tmp_path / "run" / "tensors").load()
    some = next(iter(stored.values()))
    toks, mean = some["orig.image_token_states"], some["orig.image_tokens"]
    assert toks.shape == (16, mean.shape[0]) and np.allclose(toks.mean(0), mean, atol=1e-5)
    assert some["orig.image_grid"].tolist() == [1, 8, 8] and len(some["orig.region_tokens"]) >= 1
    assert "t0.image_token_states" not in some  # treated inputs keep the pooled references only
    pm = res.summary["geometry"]["position_matched"]
    assert pm["n"] == 6 and pm["token_grid"] == [1, 4, 4] and "cka" not in pm  # matrices moved to the npz
    mats = np.load(tmp_path / "run" / "inter_instance.npz")
    assert mats["position_cka"].shape == (lm.profile.latent.k, 16)
    assert {"position_cka.png", "position_target.png"} <= {p.split("/")[-1] for p in res.plots}
    off = run_perturb_input(CommonOptions(out=str(tmp_path / "off"), limit=3, quiet=True), ["identity"], lm=lm,
                            force_start=True, n_boot=50, per_token_refs=False)
    assert "skipped" in off.summary["geometry"]["position_matched"]
