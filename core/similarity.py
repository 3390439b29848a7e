"""Similarity and geometry measures for hidden states (latents, text/image reference states).

Inputs are numpy arrays (anything ``np.asarray`` accepts); everything is computed in float64.

Zero-norm convention (used by every cosine here): a vector whose norm is <= ``zero_tol`` counts as the
zero vector. Two zero vectors are identical (cosine 1.0); a zero and a non-zero vector share nothing
(cosine 0.0). This keeps mean-centred cosine well defined when vectors equal the mean: a set of
identical vectors stays "identical" (1.0) after centring instead of becoming nan.

Anisotropy: raw cosine between hidden states is inflated by a shared mean direction (the "cone").
``mean_centred`` / ``centred_cosine_matrix`` subtract a dataset mean first. Which mean matters:
centring a set of N vectors by *its own* mean forces the off-diagonal mean cosine towards -1/(N-1)
(the centred vectors sum to zero), whatever the data. Prefer a mean taken over a larger reference
population (all latents of all steps, or the model's text/image states at the same layer).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import NearestCentroid

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.summaries import FoldAccuracy

DEFAULT_ZERO_TOL = 1e-12
# Centred vectors shorter than this fraction of the data's scale count as zero (rounding residue of X - mean).
CENTRED_REL_TOL = 1e-9


def _as_array(x, name: str, ndim: int | tuple[int, ...]) -> np.ndarray:
    """A finite float64 array with the expected number of dimensions, or a LatentcheckError naming it."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LatentcheckError(f"argument '{name}': not numeric ({exc})") from None
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if arr.ndim not in allowed:
        dims = " or ".join(f"{d}-D" for d in allowed)
        raise LatentcheckError(f"argument '{name}': expected {dims} array, got shape {arr.shape}")
    if arr.size and not np.all(np.isfinite(arr)):
        raise LatentcheckError(f"argument '{name}': contains nan or inf")
    return arr


def cosine(a, b, zero_tol: float = DEFAULT_ZERO_TOL):
    """Cosine similarity along the last axis (rowwise for [N, H] inputs; a float for two vectors).

    Zero-norm convention: see the module docstring (both zero -> 1.0, exactly one zero -> 0.0).
    """
    a_arr, b_arr = _as_array(a, "a", (1, 2)), _as_array(b, "b", (1, 2))
    if a_arr.shape != b_arr.shape:
        raise LatentcheckError(f"arguments 'a' and 'b': shapes differ ({a_arr.shape} vs {b_arr.shape})")
    na, nb = np.linalg.norm(a_arr, axis=-1), np.linalg.norm(b_arr, axis=-1)
    za, zb = na <= zero_tol, nb <= zero_tol
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.sum(a_arr * b_arr, axis=-1) / (na * nb)
    cos = np.where(za & zb, 1.0, np.where(za | zb, 0.0, np.clip(cos, -1.0, 1.0)))
    return float(cos) if cos.ndim == 0 else cos


def cosine_matrix(X, zero_tol: float = DEFAULT_ZERO_TOL) -> np.ndarray:
    """Pairwise cosine matrix [N, N] of the rows of X [N, H] (zero-norm convention as ``cosine``)."""
    arr = _as_array(X, "X", 2)
    norms = np.linalg.norm(arr, axis=1)
    zero = norms <= zero_tol
    unit = np.zeros_like(arr)
    unit[~zero] = arr[~zero] / norms[~zero, None]
    M = np.clip(unit @ unit.T, -1.0, 1.0)
    M[np.ix_(zero, zero)] = 1.0  # zero vs zero: identical; zero vs non-zero is already 0
    np.fill_diagonal(M, 1.0)
    return M


def mean_centred(X, mean=None) -> np.ndarray:
    """X [N, H] minus ``mean`` [H] (default: the mean of X's rows)."""
    arr = _as_array(X, "X", 2)
    mu = arr.mean(axis=0) if mean is None else _as_array(mean, "mean", 1)
    if mu.shape != (arr.shape[1],):
        raise LatentcheckError(f"argument 'mean': expected shape ({arr.shape[1]},), got {mu.shape}")
    return arr - mu


def _centred_zero_tol(arr: np.ndarray, mu: np.ndarray) -> float:
    scale = max(float(np.max(np.linalg.norm(arr, axis=-1), initial=0.0)), float(np.linalg.norm(mu)))
    return max(DEFAULT_ZERO_TOL, CENTRED_REL_TOL * scale)


def centred_cosine_matrix(X, mean=None) -> np.ndarray:
    """Cosine matrix of mean-centred rows (anisotropy correction).

    A centred row shorter than ``CENTRED_REL_TOL`` x the data's largest norm is rounding residue and
    counts as zero, so a set of identical vectors gives an all-ones matrix, never nan.
    """
    arr = _as_array(X, "X", 2)
    mu = arr.mean(axis=0) if mean is None else _as_array(mean, "mean", 1)
    centred = mean_centred(arr, mu)
    return cosine_matrix(centred, zero_tol=_centred_zero_tol(arr, mu))


def relative_l2(a, b, zero_tol: float = DEFAULT_ZERO_TOL):
    """||a - b|| / ||a|| along the last axis (0 when identical).

    When ||a|| <= zero_tol: 0.0 if ||a - b|| <= zero_tol as well, else inf (any change of a zero vector
    is infinitely large relative to it).
    """
    a_arr, b_arr = _as_array(a, "a", (1, 2)), _as_array(b, "b", (1, 2))
    if a_arr.shape != b_arr.shape:
        raise LatentcheckError(f"arguments 'a' and 'b': shapes differ ({a_arr.shape} vs {b_arr.shape})")
    na = np.linalg.norm(a_arr, axis=-1)
    nd = np.linalg.norm(a_arr - b_arr, axis=-1)
    small = na <= zero_tol
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(small, np.where(nd <= zero_tol, 0.0, np.inf), nd / na)
    return float(rel) if rel.ndim == 0 else rel


def mean_offdiag(M) -> float:
    """Mean of the off-diagonal entries of a square matrix (nan when N < 2: there are no pairs)."""
    arr = _as_array(M, "M", 2)
    n = arr.shape[0]
    if arr.shape != (n, n):
        raise LatentcheckError(f"argument 'M': expected a square matrix, got shape {arr.shape}")
    if n < 2:
        return float("nan")
    return float((arr.sum() - np.trace(arr)) / (n * (n - 1)))


def inter_instance(latents, mean=None) -> dict:
    """Inter-instance similarity per latent index (paper §2): for each index k, the N x N cosine matrix
    of latent k across the N instances.

    ``latents`` is [N, K, H]. Centring subtracts ``mean`` [H] (default: the mean of all N*K latents, a
    dataset mean shared by every index — see the module docstring for why not the per-index mean).
    Returns dict(raw [K, N, N], centred [K, N, N], raw_mean [K], centred_mean [K]) where *_mean is the
    off-diagonal mean of each matrix.
    """
    arr = _as_array(latents, "latents", 3)
    n, k, h = arr.shape
    mu = arr.reshape(n * k, h).mean(axis=0) if mean is None else _as_array(mean, "mean", 1)
    if mu.shape != (h,):
        raise LatentcheckError(f"argument 'mean': expected shape ({h},), got {mu.shape}")
    tol = _centred_zero_tol(arr, mu)
    raw = np.stack([cosine_matrix(arr[:, j]) for j in range(k)])
    centred = np.stack([cosine_matrix(arr[:, j] - mu, zero_tol=tol) for j in range(k)])
    return {
        "raw": raw,
        "centred": centred,
        "raw_mean": np.array([mean_offdiag(m) for m in raw]),
        "centred_mean": np.array([mean_offdiag(m) for m in centred]),
    }


def within_across(M, categories) -> dict:
    """Mean similarity over within-category vs across-category pairs (i < j) of a square matrix M.

    Returns dict(within, across, difference = within - across, n_within_pairs, n_across_pairs);
    a mean over zero pairs is nan.
    """
    arr = _as_array(M, "M", 2)
    n = arr.shape[0]
    if arr.shape != (n, n):
        raise LatentcheckError(f"argument 'M': expected a square matrix, got shape {arr.shape}")
    cats = np.asarray(categories, dtype=object)
    if cats.shape != (n,):
        raise LatentcheckError(f"argument 'categories': expected {n} labels (one per row of M), got shape {cats.shape}")
    iu, ju = np.triu_indices(n, k=1)
    same = cats[iu] == cats[ju]
    vals = arr[iu, ju]
    within = float(vals[same].mean()) if same.any() else float("nan")
    across = float(vals[~same].mean()) if (~same).any() else float("nan")
    return {
        "within": within,
        "across": across,
        "difference": within - across,
        "n_within_pairs": int(same.sum()),
        "n_across_pairs": int((~same).sum()),
    }


def intra_instance_collapse(latents, mean=None) -> dict:
    """Intra-instance similarity of an instance's latent steps (paper §2), averaged over instances.

    ``latents`` is [N, K, H]; with ``mean`` [H] given, vectors are centred first. Returns arrays:
    ``adjacent`` [K-1] = mean over instances of cos(z_k, z_{k+1}); ``adjacent_per_instance`` [N, K-1];
    ``to_others`` [K] = mean over instances of the mean cosine of step k with the other steps;
    ``matrix`` [K, K] = the K x K step cosine matrix averaged over instances (heat map);
    ``all_pairs_per_instance`` [N] = off-diagonal mean of each instance's matrix and ``all_pairs``
    (float) its mean over instances.
    """
    arr = _as_array(latents, "latents", 3)
    n, k, h = arr.shape
    tol = DEFAULT_ZERO_TOL
    if mean is not None:
        mu = _as_array(mean, "mean", 1)
        if mu.shape != (h,):
            raise LatentcheckError(f"argument 'mean': expected shape ({h},), got {mu.shape}")
        tol = _centred_zero_tol(arr, mu)
        arr = arr - mu
    mats = np.stack([cosine_matrix(arr[i], zero_tol=tol) for i in range(n)])  # [N, K, K]
    adjacent = mats[:, np.arange(k - 1), np.arange(1, k)]  # [N, K-1]
    per_instance = np.array([mean_offdiag(m) for m in mats])
    to_others = (mats.sum(axis=2) - 1.0) / (k - 1) if k > 1 else np.full((n, k), np.nan)
    return {
        "adjacent": adjacent.mean(axis=0),
        "adjacent_per_instance": adjacent,
        "to_others": to_others.mean(axis=0),
        "matrix": mats.mean(axis=0),
        "all_pairs_per_instance": per_instance,
        "all_pairs": float(per_instance.mean()),
    }


def _centred_singular_values(X) -> np.ndarray:
    arr = _as_array(X, "X", 2)
    if arr.shape[0] < 2:
        raise LatentcheckError(f"argument 'X': need at least 2 rows to measure spread, got {arr.shape[0]}")
    return np.linalg.svd(arr - arr.mean(axis=0), compute_uv=False)


def effective_rank(X) -> float:
    """Effective rank (Roy & Vetterli 2007) of the centred data X [N, H]: exp of the Shannon entropy of
    the singular values normalised to sum 1. r orthogonal directions of equal variance give r.
    Returns 0.0 when the rows do not vary at all.
    """
    s = _centred_singular_values(X)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio(X) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the covariance eigenvalues of X [N, H]
    (lambda = squared singular values of the centred data / (N - 1)). Returns 0.0 for constant data.
    """
    lam = _centred_singular_values(X) ** 2
    denom = np.sum(lam**2)
    return 0.0 if denom <= 0 else float(lam.sum() ** 2 / denom)


class _CosineNearestCentroid(ClassifierMixin, BaseEstimator):
    """Nearest centroid by cosine: class centroid = normalised mean of the L2-normalised training rows;
    predict the class whose centroid direction has the largest cosine with the row."""

    def fit(self, X, y):
        unit = _unit_rows(np.asarray(X, dtype=np.float64))
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        centroids = np.stack([unit[y_idx == c].mean(axis=0) for c in range(len(self.classes_))])
        self.centroids_ = _unit_rows(centroids)
        return self

    def predict(self, X):
        unit = _unit_rows(np.asarray(X, dtype=np.float64))
        return self.classes_[np.argmax(unit @ self.centroids_.T, axis=1)]


def _unit_rows(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > DEFAULT_ZERO_TOL)


def nearest_centroid_accuracy(X, labels, n_splits: int = 5, seed: int = 0, metric: str = "cosine") -> dict:
    """Cross-validated nearest-centroid accuracy of ``labels`` from X [N, H] (task separability).

    ``metric="cosine"``: centroids are mean directions of L2-normalised rows, classified by cosine
    (zero rows match nothing in particular and go to the first class); ``metric="euclidean"``:
    sklearn ``NearestCentroid``. Folds: ``StratifiedKFold(n_splits, shuffle=True, random_state=seed)``,
    with n_splits lowered to the smallest class size. Centre X first (``mean_centred``) to correct
    anisotropy for the cosine metric. Returns a :class:`core.summaries.FoldAccuracy` as its dict:
    ``estimate`` = the mean fold accuracy (``cross_val_score``'s), ``std``, ``per_fold``, ``n_splits``,
    ``chance`` (the majority-class rate) and the Wilson interval of the pooled out-of-fold hits (``successes`` of
    ``n``).
    """
    arr = _as_array(X, "X", 2)
    y = np.asarray(labels)
    if y.shape != (arr.shape[0],):
        raise LatentcheckError(
            f"argument 'labels': expected {arr.shape[0]} labels (one per row of X), got shape {y.shape}"
        )
    if metric not in ("cosine", "euclidean"):
        raise LatentcheckError(f"argument 'metric': expected 'cosine' or 'euclidean', got {metric!r}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise LatentcheckError("argument 'labels': need at least 2 distinct labels")
    if counts.min() < 2:
        raise LatentcheckError(
            f"argument 'labels': label '{classes[np.argmin(counts)]}' has only {counts.min()} sample;"
            " need >= 2 per label"
        )
    if n_splits < 2:
        raise LatentcheckError(f"argument 'n_splits': must be >= 2, got {n_splits}")
    splits = int(min(n_splits, counts.min()))
    model = _CosineNearestCentroid() if metric == "cosine" else NearestCentroid()
    folds = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    hits = []  # (correct, size) per fold: cross_val_score's folds and scores, plus the counts the interval needs
    for train, test in folds.split(arr, y):
        fitted = clone(model).fit(arr[train], y[train])
        hits.append((int(np.sum(fitted.predict(arr[test]) == y[test])), len(test)))
    return FoldAccuracy.from_folds(hits, chance=float(counts.max() / counts.sum())).to_dict()


# ------------------------------------------------------------------------------ beyond raw cosine (issue #24)
def _paired(X, Y, name_x: str = "X", name_y: str = "Y") -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(X, name_x, 2), _as_array(Y, name_y, 2)
    if a.shape[0] != b.shape[0]:
        raise LatentcheckError(f"arguments '{name_x}' and '{name_y}': {a.shape[0]} vs {b.shape[0]} rows (one row per "
                               "instance in both)")
    if a.shape[0] < 3:
        raise LatentcheckError(f"need at least 3 instances, got {a.shape[0]}")
    return a, b


def linear_cka(X, Y) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) between two representations of the same n instances
    (X [n, p], Y [n, q]): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F). 1 for representations equal up to an
    orthogonal transform and isotropic scaling, ~0 for unrelated ones; insensitive to the shared mean direction that
    inflates raw cosine. nan when either side has no variance."""
    a, b = _paired(X, Y)
    a = a - a.mean(0)
    b = b - b.mean(0)
    num = np.linalg.norm(b.T @ a) ** 2
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(num / den) if den > 0 else float("nan")


def _centred_gram_cka(Ga: np.ndarray, Gb: np.ndarray, idx: np.ndarray) -> float:
    """Linear CKA of the instances ``idx`` (repeats allowed) from the uncentred Gram matrices X X^T and Y Y^T:
    the resampled Gram matrices double-centred (= the Gram matrices of the resampled, re-centred data)."""
    vals = []
    for G in (Ga, Gb):
        g = G[np.ix_(idx, idx)]
        c = g - g.mean(0, keepdims=True) - g.mean(1, keepdims=True) + g.mean()
        if np.linalg.norm(c) <= 1e-9 * max(np.linalg.norm(g), 1e-300):  # no variance left (rounding only)
            return float("nan")
        vals.append(c)
    a, b = vals
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def linear_cka_ci(X, Y, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """:func:`linear_cka` with a percentile-bootstrap interval over instances (resampled with replacement; each
    resample recomputes the CKA of the re-centred data, from the Gram matrices). Returns estimate, lo, hi."""
    from latentcheck.core.stats import bootstrap_ci

    a, b = _paired(X, Y)
    Ga, Gb = a @ a.T, b @ b.T
    d = bootstrap_ci(np.arange(a.shape[0], dtype=np.float64),
                     statistic=lambda ix: _centred_gram_cka(Ga, Gb, np.asarray(ix, dtype=np.int64)),
                     n_boot=n_boot, alpha=alpha, seed=seed)
    est = linear_cka(a, b)
    if not np.isfinite(est):
        return {"estimate": None, "lo": None, "hi": None}
    return {"estimate": est, "lo": d["lo"], "hi": d["hi"]}


def cka_matrix(As: Sequence, Bs: Sequence) -> np.ndarray:
    """Linear CKA of every pair (As[i], Bs[j]) of representations of the same n instances -> [len(As), len(Bs)],
    each equal to :func:`linear_cka` (computed in the kernel form <Ka, Kb>_F / (||Ka||_F ||Kb||_F) with centred Gram
    matrices K = Xc Xc^T, so many wide pairs cost n x n products; nan where a side has no variance)."""
    grams = []
    for side, name in ((As, "As"), (Bs, "Bs")):
        g = []
        for i, X in enumerate(side):
            raw = _as_array(X, f"{name}[{i}]", 2)
            a = raw - raw.mean(0)
            K = a @ a.T
            flat = np.linalg.norm(a) <= 1e-9 * max(float(np.linalg.norm(raw)), 1e-300)  # no variance (rounding)
            g.append((K, 0.0 if flat else float(np.linalg.norm(K))))
        grams.append(g)
    ns = {K.shape[0] for g in grams for K, _ in g}
    if len(ns) > 1:
        raise LatentcheckError(f"cka_matrix: every representation needs the same instances (rows: {sorted(ns)})")
    if ns and min(ns) < 3:
        raise LatentcheckError(f"need at least 3 instances, got {min(ns)}")
    out = np.full((len(As), len(Bs)), np.nan)
    for i, (Ka, na) in enumerate(grams[0]):
        for j, (Kb, nb) in enumerate(grams[1]):
            if na > 0 and nb > 0:
                out[i, j] = float(np.sum(Ka * Kb) / (na * nb))
    return out


def rsa(X, Y) -> float:
    """Representational similarity analysis: Spearman correlation between the two representations' dissimilarity
    matrices (1 - cosine, upper triangle). nan when either has constant dissimilarities."""
    from scipy.stats import spearmanr

    a, b = _paired(X, Y)
    iu = np.triu_indices(a.shape[0], k=1)
    da, db = (1.0 - cosine_matrix(a))[iu], (1.0 - cosine_matrix(b))[iu]
    if np.ptp(da) == 0 or np.ptp(db) == 0:
        return float("nan")
    return float(spearmanr(da, db).statistic)


def retrieval_accuracy(X, Y, n_perm: int = 1000, seed: int = 0, centre: bool = True) -> dict:
    """Instance retrieval: can row i of X pick out row i of Y among all n rows (nearest by cosine)? ``X`` and ``Y``
    may live in different spaces only if they have the same width (e.g. latents vs image-token states of one model).

    Returns ``accuracy`` (share of rows whose nearest Y is their own), ``chance`` (1/n), and a permutation null:
    ``p_value`` = (1 + #{permutations with accuracy >= observed}) / (1 + n_perm), where a permutation re-pairs the
    rows of Y at random (the instance labels carry no information under the null). With ``centre`` both sides are
    centred by their own mean first (anisotropy)."""
    a, b = _paired(X, Y)
    if a.shape[1] != b.shape[1]:
        raise LatentcheckError(f"retrieval needs one space: widths {a.shape[1]} and {b.shape[1]} differ")
    if centre:
        a, b = a - a.mean(0), b - b.mean(0)
    sims = _unit_rows(a) @ _unit_rows(b).T  # [n, n]
    n = a.shape[0]
    best = sims.argmax(1)
    observed = float(np.mean(best == np.arange(n)))
    rng = np.random.default_rng(seed)
    null = np.array([np.mean(best == rng.permutation(n)) for _ in range(n_perm)])
    return {"accuracy": observed, "chance": 1.0 / n, "n": int(n), "n_perm": int(n_perm),
            "null_mean": float(null.mean()) if n_perm else float("nan"),
            "p_value": float((1 + np.sum(null >= observed)) / (1 + n_perm)) if n_perm else float("nan")}
