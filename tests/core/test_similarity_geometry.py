"""Geometry beyond raw cosine: linear CKA against its kernel (HSIC) form, RSA, instance retrieval with a permutation
null, and perturb-input's latent-vs-reference section on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.similarity import linear_cka, retrieval_accuracy, rsa
from latentcheck.perturb.inputs import latent_vs_refs


def _orthogonal(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def _cka_kernel_form(X: np.ndarray, Y: np.ndarray) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels and the centring matrix H (the paper's form)."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    hsic = lambda A, B: np.trace(A @ H @ B @ H)  # noqa: E731
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def test_linear_cka_equals_the_kernel_form_and_its_invariances():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    Y = X @ rng.normal(size=(6, 9)) + 0.5 * rng.normal(size=(40, 9))
    assert linear_cka(X, Y) == pytest.approx(_cka_kernel_form(X, Y), abs=1e-10)
    # an orthogonal transform, a scale and a shared offset change nothing
    assert linear_cka(X, 3.0 * X @ _orthogonal(6, 1) + 100.0) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(X, rng.normal(size=(40, 6))) < 0.35  # unrelated representations


def test_rsa_is_one_for_a_rotation_and_low_for_unrelated_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 8))
    assert rsa(X, X @ _orthogonal(8, 2)) == pytest.approx(1.0)
    assert abs(rsa(X, rng.normal(size=(30, 8)))) < 0.2


def test_retrieval_finds_own_instances_and_the_null_is_calibrated():
    rng = np.random.default_rng(2)
    offset = rng.normal(size=16) * 50.0  # a shared cone direction: raw cosine of everything ~1
    parts = rng.normal(size=(25, 16))
    X, Y = offset + parts, offset + parts + 0.05 * rng.normal(size=(25, 16))
    r = retrieval_accuracy(X, Y, n_perm=500, seed=0)
    assert r["accuracy"] == 1.0 and r["chance"] == pytest.approx(1 / 25)
    assert r["p_value"] == pytest.approx(1 / 501)  # no permutation reaches 25/25
    assert r["null_mean"] == pytest.approx(1 / 25, abs=0.02)  # E[matches of a random re-pairing] / n = 1/n
    shuffled = retrieval_accuracy(X, Y[rng.permutation(25)], n_perm=500, seed=0)
    assert shuffled["accuracy"] <= 0.2 and shuffled["p_value"] > 0.05
    with pytest.raises(LatentcheckError):
        retrieval_accuracy(X, Y[:, :8])


def test_perturb_input_latent_vs_refs_on_planted_latents():
    rng = np.random.default_rng(3)
    n, k, h = 20, 4, 12
    refs = rng.normal(size=(n, h)) + 30.0
    carrying = [refs[i] + 0.1 * rng.normal(size=(k, h)) for i in range(n)]  # latents = own input + noise
    blind = [rng.normal(size=(k, h)) + 30.0 for _ in range(n)]  # latents that ignore the input
    ref_X = {"image_tokens": (list(range(n)), refs)}
    good = latent_vs_refs(carrying, ref_X, n_perm=200)["image_tokens"]
    bad = latent_vs_refs(blind, ref_X, n_perm=200)["image_tokens"]
    assert good["retrieval"]["accuracy"] == 1.0 and good["linear_cka"] > 0.95 and good["rsa"] > 0.9
    assert bad["retrieval"]["accuracy"] <= 0.25 and bad["linear_cka"] < 0.6 and bad["retrieval"]["p_value"] > 0.01
    assert "skipped" in latent_vs_refs([np.zeros((0, h))] * n, ref_X)["image_tokens"]
