"""Similarity measures against constructed geometry with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.similarity import (
    centred_cosine_matrix,
    cosine,
    cosine_matrix,
    effective_rank,
    inter_instance,
    intra_instance_collapse,
    mean_centred,
    mean_offdiag,
    nearest_centroid_accuracy,
    participation_ratio,
    relative_l2,
    within_across,
)


def _orthonormal(h: int, r: int, seed: int) -> np.ndarray:
    """r random orthonormal vectors in R^h as rows [r, h]."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(h, r)))
    return q.T


# ----------------------------------------------------------------------------- cosine / relative L2


def test_identical_orthogonal_opposite():
    x = np.random.default_rng(0).normal(size=(5, 8)) * 100.0
    assert cosine(x, x.copy()) == pytest.approx(np.ones(5), abs=1e-12)
    assert np.all(relative_l2(x, x.copy()) == 0.0)
    assert cosine([1.0, 0.0, 0.0], [0.0, 3.0, 0.0]) == 0.0
    assert cosine([1.0, 2.0], [-2.0, -4.0]) == pytest.approx(-1.0)
    assert cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
    assert relative_l2([3.0, 4.0], [0.0, 4.0]) == pytest.approx(3 / 5)
    assert relative_l2([[3.0, 4.0], [1.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]]) == pytest.approx([0.0, 1.0])


def test_zero_norm_convention():
    z, v = np.zeros(4), np.array([1.0, 2.0, 0.0, -1.0])
    assert cosine(z, z) == 1.0
    assert cosine(z, v) == 0.0 and cosine(v, z) == 0.0
    M = cosine_matrix(np.stack([z, v, z, 2 * v]))
    expected = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=float)
    assert M == pytest.approx(expected, abs=1e-12)
    assert relative_l2(z, z) == 0.0
    assert relative_l2(z, v) == math.inf


def test_centred_cosine_of_identical_vectors_follows_convention():
    # Values that are not exactly representable, so X - mean leaves rounding residue.
    row = np.array([0.1, 1 / 3, 123.456789, -7e3, 2.0 ** -20])
    X = np.tile(row, (7, 1))
    raw = cosine_matrix(X)
    centred = centred_cosine_matrix(X)
    assert not np.isnan(centred).any()
    assert centred == pytest.approx(np.ones((7, 7)))
    assert raw == pytest.approx(np.ones((7, 7)))
    assert np.abs(mean_centred(X)).max() < 1e-9


def test_centred_vector_equal_to_mean_counts_as_zero():
    # Row 0 equals the set mean; in float64 X - mean leaves rounding residue above the absolute tol,
    # whose direction is arbitrary. The relative tolerance must treat it as the zero vector.
    rng = np.random.default_rng(0)
    m, e = rng.normal(size=16) * 1e4, rng.normal(size=16)
    X = np.stack([m, m + e, m - e])
    residue = np.linalg.norm(mean_centred(X)[0])
    assert residue > 1e-12  # the case actually exercises the tolerance
    expected = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0], [0.0, -1.0, 1.0]])
    assert centred_cosine_matrix(X) == pytest.approx(expected, abs=1e-9)
    res = inter_instance(X[:, None, :])
    assert res["centred"][0] == pytest.approx(expected, abs=1e-9)


def test_centred_cosine_removes_shared_offset():
    n, h = 6, 12
    basis = _orthonormal(h, n + 1, seed=3)
    offset, parts = 50.0 * basis[0], basis[1:]  # big shared direction + orthonormal individual parts
    X = offset + parts
    assert mean_offdiag(cosine_matrix(X)) == pytest.approx(2500 / 2501)  # <o+e_i, o+e_j> / |o+e|^2
    # Centring by the set's own mean: e_i - mean(e) have pairwise cosine exactly -1/(n-1).
    C = centred_cosine_matrix(X)
    assert mean_offdiag(C) == pytest.approx(-1 / (n - 1))
    # Centring by the true offset recovers the orthogonal parts.
    assert centred_cosine_matrix(X, mean=offset) == pytest.approx(np.eye(n), abs=1e-12)
    assert mean_centred(X, mean=offset) == pytest.approx(parts)


def test_mean_offdiag_hand_matrix():
    M = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert mean_offdiag(M) == pytest.approx((0.2 + 0.4 + 0.6) * 2 / 6)
    assert math.isnan(mean_offdiag(np.ones((1, 1))))
    with pytest.raises(LatentcheckError, match="square"):
        mean_offdiag(np.ones((2, 3)))


# ----------------------------------------------------------------------------- inter / intra instance


def test_inter_instance_distinct_then_collapsed():
    n, h = 5, 16
    distinct = _orthonormal(h, n, seed=4)  # index 0: orthogonal across instances
    shared = np.random.default_rng(5).normal(size=h)  # index 1: identical across instances
    latents = np.stack([distinct, np.tile(shared, (n, 1))], axis=1)  # [N, K=2, H]
    res = inter_instance(latents)
    assert res["raw"].shape == (2, n, n) and res["centred"].shape == (2, n, n)
    assert res["raw_mean"][0] == pytest.approx(0.0, abs=1e-12)
    assert res["raw_mean"][1] == pytest.approx(1.0)
    assert res["centred_mean"][1] == pytest.approx(1.0)  # identical vectors stay identical after centring
    assert not np.isnan(res["centred"]).any()
    # With a reference mean of zero, centred == raw.
    res0 = inter_instance(latents, mean=np.zeros(h))
    assert res0["centred"] == pytest.approx(res0["raw"])
    with pytest.raises(LatentcheckError, match="latents"):
        inter_instance(np.zeros((3, 4)))


def test_within_across_planted_clusters():
    e = np.eye(4)
    X = np.stack([e[0], 2 * e[0], 0.5 * e[0], e[1], 3 * e[1]])  # cluster a: rows 0-2, cluster b: rows 3-4
    res = within_across(cosine_matrix(X), ["a", "a", "a", "b", "b"])
    assert res["within"] == pytest.approx(1.0) and res["across"] == pytest.approx(0.0)
    assert res["n_within_pairs"] == 3 + 1 and res["n_across_pairs"] == 3 * 2
    assert res["difference"] == pytest.approx(1.0)
    M = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
    res = within_across(M, [0, 0, 1])
    assert res["within"] == pytest.approx(0.8) and res["across"] == pytest.approx(0.2)
    with pytest.raises(LatentcheckError, match="categories"):
        within_across(M, [0, 1])


def test_collapse_curve_of_planar_rotation():
    n, k, h = 4, 6, 10
    thetas = np.array([0.9, 0.6, 0.4, 0.2, 0.1])  # angle between step j and j+1
    angles = np.r_[0.0, np.cumsum(thetas)]
    latents = np.empty((n, k, h))
    for i in range(n):
        u, v = _orthonormal(h, 2, seed=10 + i)
        scale = 1.0 + i  # norms differ per instance; cosine ignores them
        latents[i] = scale * (np.cos(angles)[:, None] * u + np.sin(angles)[:, None] * v)
    res = intra_instance_collapse(latents)
    assert res["adjacent"] == pytest.approx(np.cos(thetas))
    assert res["adjacent_per_instance"].shape == (n, k - 1)
    expected_matrix = np.cos(angles[:, None] - angles[None, :])
    assert res["matrix"] == pytest.approx(expected_matrix)
    off = ~np.eye(k, dtype=bool)
    assert res["all_pairs"] == pytest.approx(expected_matrix[off].mean())
    assert res["all_pairs_per_instance"] == pytest.approx(np.full(n, expected_matrix[off].mean()))
    expected_to_others = (expected_matrix.sum(axis=1) - 1.0) / (k - 1)
    assert res["to_others"] == pytest.approx(expected_to_others)


def test_collapse_with_identical_steps_and_centring():
    latents = np.tile(np.array([0.3, -1.7, 2.2]), (2, 4, 1))  # every step identical
    res = intra_instance_collapse(latents, mean=latents[0, 0])  # centred vectors are all zero
    assert res["adjacent"] == pytest.approx(np.ones(3))
    assert res["all_pairs"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- rank measures


@pytest.mark.parametrize("r", [1, 3, 7])
def test_effective_rank_and_participation_ratio_equal_variance(r):
    h = 20
    basis = _orthonormal(h, r, seed=r)
    # +-c along each direction: centred data has r equal singular values, the rest zero.
    X = np.concatenate([4.0 * basis, -4.0 * basis]) + 11.0  # constant offset removed by centring
    assert effective_rank(X) == pytest.approx(r, abs=1e-6)
    assert participation_ratio(X) == pytest.approx(r, abs=1e-6)


def test_rank_measures_unequal_variance_hand_computed():
    # Two orthogonal directions with spreads 1 and 2: singular values proportional to (1, 2).
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    p = np.array([1.0, 2.0]) / 3.0
    assert effective_rank(X) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    lam = np.array([1.0, 4.0])  # eigenvalues up to a common factor
    assert participation_ratio(X) == pytest.approx(lam.sum() ** 2 / (lam**2).sum())  # 25/17
    assert effective_rank(np.ones((5, 3))) == 0.0 and participation_ratio(np.ones((5, 3))) == 0.0


# ----------------------------------------------------------------------------- separability


def test_nearest_centroid_separable_and_chance():
    rng = np.random.default_rng(0)
    dirs = _orthonormal(8, 3, seed=1)
    labels = np.repeat([0, 1, 2], 20)
    X = dirs[labels] * rng.uniform(0.5, 5.0, size=(60, 1)) + rng.normal(0, 0.05, size=(60, 8))
    for metric in ("cosine", "euclidean"):
        res = nearest_centroid_accuracy(X, labels, metric=metric)
        assert res["estimate"] == 1.0 and res["n_splits"] == 5 and len(res["per_fold"]) == 5
        assert res["chance"] == pytest.approx(1 / 3)
        # a FoldAccuracy record: 60 of 60 out-of-fold hits, Wilson [60 / (60 + z^2), 1] (never zero-width)
        assert (res["successes"], res["n"], res["method"]) == (60, 60, "wilson_pooled_folds")
        assert res["lo"] == pytest.approx(60 / (60 + 1.959964 ** 2), abs=1e-6) and res["hi"] == 1.0
    noise = rng.normal(size=(200, 8))
    shuffled = rng.permutation(np.repeat(["x", "y"], 100))
    res = nearest_centroid_accuracy(noise, shuffled, seed=2)
    assert 0.35 <= res["estimate"] <= 0.65


def test_nearest_centroid_one_outlier_in_unequal_folds():
    """11 samples (6 of class a along e1, 5 of class b along e2, one more 'a' pointing along e2): the outlier is
    always classified b, every other sample right. 5 stratified folds of sizes 3, 2, 2, 2, 2: the estimate is the
    mean fold accuracy, 1 - 1/(5*3) or 1 - 1/(5*2) depending on the fold the outlier falls in; the interval is
    Wilson's on the pooled 10 of 11 hits: centre (10/11 + z^2/22) / (1 + z^2/11), = 0.8032047 -+ 0.1805631: [0.6226416, 0.9837679]."""
    e1, e2 = np.eye(4)[0], np.eye(4)[1]
    rng = np.random.default_rng(0)
    X = np.stack([e1] * 5 + [e2] + [e2] * 5) + rng.normal(0, 0.01, size=(11, 4))
    labels = ["a"] * 6 + ["b"] * 5
    for seed in range(4):
        res = nearest_centroid_accuracy(X, labels, seed=seed)
        assert (res["successes"], res["n"], res["n_splits"]) == (10, 11, 5)
        assert min(abs(res["estimate"] - v) for v in (1 - 1 / 15, 1 - 1 / 10)) < 1e-12
        assert res["estimate"] == pytest.approx(sum(res["per_fold"]) / 5)
        assert res["lo"] == pytest.approx(0.6226416, abs=1e-6) and res["hi"] == pytest.approx(0.9837679, abs=1e-6)


def test_nearest_centroid_cosine_ignores_row_scale():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(40, 6))
    labels = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    scaled = X * rng.uniform(0.01, 100.0, size=(40, 1))
    a = nearest_centroid_accuracy(X, labels, seed=3)
    b = nearest_centroid_accuracy(scaled, labels, seed=3)
    assert a["per_fold"] == pytest.approx(b["per_fold"])


def test_nearest_centroid_bad_input():
    X = np.zeros((4, 2))
    with pytest.raises(LatentcheckError, match="labels"):
        nearest_centroid_accuracy(X, [0, 0, 0, 1])
    with pytest.raises(LatentcheckError, match="labels"):
        nearest_centroid_accuracy(X, [0, 1])
    with pytest.raises(LatentcheckError, match="metric"):
        nearest_centroid_accuracy(X, [0, 0, 1, 1], metric="manhattan")
