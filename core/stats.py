"""Statistics shared by every analysis: confidence intervals, paired effects, McNemar, mediation, equivalence.

Paired 0/1 differences (accuracy under a condition vs the baseline on the same samples) get Tango's score interval
(never zero-width), an equivalence test (TOST against a stated margin), the minimum detectable effect at 80% power and
Holm-adjusted p-values across the comparisons of a run (scipy / statsmodels where they have the method).

All resampling is a nonparametric percentile bootstrap over *samples* (instances); paired quantities
resample the sample indices jointly, so per-sample pairing is kept. Every function is deterministic
given ``seed`` and returns plain Python floats/ints (dicts are ``json.dumps``-able; an undefined
quantity is ``nan`` and an unbounded one ``inf``, which Python's json writes as ``NaN`` / ``Infinity``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
from scipy import stats as sps

from latentcheck.core.errors import LatentcheckError

# The values the per-sample mediation interaction y11 - y10 - y01 + y00 of 0/1 outcomes can take.
INTERACTION_SUPPORT = (-2.0, -1.0, 0.0, 1.0, 2.0)

# Max number of resampled values held in memory at once (n_boot x n index matrix is built in chunks).
_CHUNK_ELEMENTS = 2_000_000


# ----------------------------------------------------------------------------- validation helpers


def _as_vector(values, name: str) -> np.ndarray:
    """A non-empty, finite, 1-D float64 array, or a LatentcheckError naming the argument."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LatentcheckError(f"argument '{name}': not numeric ({exc})") from None
    if arr.ndim != 1:
        raise LatentcheckError(f"argument '{name}': expected a 1-D array of per-sample values, got shape {arr.shape}")
    if arr.size == 0:
        raise LatentcheckError(f"argument '{name}': is empty (need at least one sample)")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise LatentcheckError(f"argument '{name}': non-finite value {arr[bad[0]]} at sample {int(bad[0])}")
    return arr


def _as_binary(values, name: str) -> np.ndarray:
    """A 1-D array of 0/1 (bool accepted) as int64."""
    arr = _as_vector(values, name)
    bad = np.flatnonzero((arr != 0) & (arr != 1))
    if bad.size:
        raise LatentcheckError(
            f"argument '{name}': expected 0/1 correctness, got {arr[bad[0]]} at sample {int(bad[0])}"
        )
    return arr.astype(np.int64)


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        described = ", ".join(f"'{k}' has {v}" for k, v in lengths.items())
        raise LatentcheckError(f"paired arguments must have one value per sample each: {described}")
    return next(iter(lengths.values()))


def _check_boot(n_boot: int, alpha: float) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise LatentcheckError(f"argument 'n_boot': must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise LatentcheckError(f"argument 'alpha': must be in (0, 1), got {alpha!r}")


# ----------------------------------------------------------------------------- bootstrap core


def _resample_blocks(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield [rows, n] blocks of resampled indices (n_boot rows in total), deterministic given seed."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_boot:
        take = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(take, n))
        done += take


def _bootstrap_means(columns: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of each column of ``columns`` [n, m] over jointly resampled rows -> [n_boot, m]."""
    n = columns.shape[0]
    out = [columns[idx].mean(axis=1) for idx in _resample_blocks(n, n_boot, seed)]
    return np.concatenate(out, axis=0)


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval. nan samples (undefined resamples) are dropped; if any remaining sample is
    infinite, the interval uses non-interpolating quantiles so +-inf passes through cleanly."""
    finite_or_inf = samples[~np.isnan(samples)]
    if finite_or_inf.size == 0:
        return math.nan, math.nan
    q = [alpha / 2.0, 1.0 - alpha / 2.0]
    method = "linear" if np.all(np.isfinite(finite_or_inf)) else "inverted_cdf"
    lo, hi = np.quantile(finite_or_inf, q, method=method)
    return float(lo), float(hi)


def _ratio(num: np.ndarray | float, den: np.ndarray | float):
    """num / den with IEEE semantics: x/0 = +-inf, 0/0 = nan (no warnings)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.divide(num, den)


# ----------------------------------------------------------------------------- public API


def wilson_ci(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    With z = Phi^-1(1 - alpha/2) and p = k/n:
    centre = (p + z^2/2n) / (1 + z^2/n), half-width = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n).
    ``n == 0`` returns the uninformative interval (0.0, 1.0).
    """
    if int(successes) != successes or int(n) != n or n < 0 or not 0 <= successes <= n:
        raise LatentcheckError(f"wilson_ci: need integers 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if not 0.0 < alpha < 1.0:
        raise LatentcheckError(f"argument 'alpha': must be in (0, 1), got {alpha!r}")
    if n == 0:
        return 0.0, 1.0
    z = float(sps.norm.ppf(1.0 - alpha / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always contains p; clamping removes rounding (0/n gave lo = 5.6e-17 > p, n/n gave hi < 1)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def mean_of_proportions_ci(counts, alpha: float = 0.05, dependent: bool = False) -> dict:
    """Interval for the unweighted mean of K proportions ``k_i / n_i`` (``counts``: (k_i, n_i) pairs, n_i >= 1) --
    a benchmark's macro average over sub-tasks, or HR-Bench's average over cycle groups. Never zero-width.

    - groups of different samples (``dependent=False``): MOVER with Wilson limits (Zou & Donner 2008, Newcombe's
      method for sums of independent proportions): with Wilson limits (l_i, u_i) of each p_i and m = mean p_i,
      lo = m - sqrt(sum (p_i - l_i)^2) / K, hi = m + sqrt(sum (u_i - p_i)^2) / K (``method = "mover_wilson"``);
    - groups that repeat the same questions (``dependent=True``): Bonferroni -- each p_i's Wilson interval at
      alpha / K, and the mean of the lower / upper limits, which covers the mean whatever the groups' dependence
      (``method = "bonferroni_wilson"``; conservative).

    Returns ``{"estimate", "lo", "hi", "n" (sum n_i), "k" (number of groups), "method"}``."""
    pairs = [(int(k), int(n)) for k, n in counts]
    if not pairs:
        raise LatentcheckError("mean_of_proportions_ci: need at least one group")
    if any(n < 1 for _, n in pairs):
        raise LatentcheckError("mean_of_proportions_ci: every group needs n >= 1")
    K = len(pairs)
    ps = [k / n for k, n in pairs]
    m = sum(ps) / K
    if dependent:
        lims = [wilson_ci(k, n, alpha / K) for k, n in pairs]
        lo, hi, method = sum(l for l, _ in lims) / K, sum(u for _, u in lims) / K, "bonferroni_wilson"
    else:
        lims = [wilson_ci(k, n, alpha) for k, n in pairs]
        lo = m - math.sqrt(sum((p - l) ** 2 for p, (l, _) in zip(ps, lims))) / K
        hi = m + math.sqrt(sum((u - p) ** 2 for p, (_, u) in zip(ps, lims))) / K
        method = "mover_wilson"
    return {"estimate": m, "lo": max(0.0, min(m, lo)), "hi": min(1.0, max(m, hi)), "n": sum(n for _, n in pairs),
            "k": K, "method": method}


def bootstrap_ci(
    values,
    statistic: Callable = np.mean,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap CI of ``statistic(values)``.

    ``statistic`` is called as ``statistic(resamples, axis=1)`` on a [rows, n] block when it accepts
    ``axis`` (np.mean, np.median, ...), otherwise once per resample. Returns dict(estimate, lo, hi).
    """
    x = _as_vector(values, "values")
    _check_boot(n_boot, alpha)
    estimate = float(statistic(x))
    parts = []
    for idx in _resample_blocks(len(x), n_boot, seed):
        block = x[idx]
        try:
            res = np.asarray(statistic(block, axis=1), dtype=np.float64)
            if res.shape != (block.shape[0],):
                raise TypeError
        except TypeError:
            res = np.array([statistic(row) for row in block], dtype=np.float64)
        parts.append(res)
    lo, hi = _interval(np.concatenate(parts), alpha)
    return {"estimate": estimate, "lo": lo, "hi": hi}


def paired_bootstrap_diff(a, b, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """CI of mean(b) - mean(a) for samples paired by index (indices resampled jointly).

    Returns dict(estimate, lo, hi). Identical arrays give exactly 0 with a zero-width interval.
    """
    a_arr, b_arr = _as_vector(a, "a"), _as_vector(b, "b")
    _same_length(a=a_arr, b=b_arr)
    _check_boot(n_boot, alpha)
    diff = b_arr - a_arr
    boot = _bootstrap_means(diff[:, None], n_boot, seed)[:, 0]
    lo, hi = _interval(boot, alpha)
    return {"estimate": float(diff.mean()), "lo": lo, "hi": hi}


def bootstrap_ratio(num, den, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """CI of mean(num) / mean(den) with paired resampling (e.g. a sensitivity ratio =
    mean latent change / mean reference-state change over the same samples).

    Division follows IEEE rules: mean(den) == 0 gives +-inf (or nan when mean(num) is 0 too).
    Resamples whose ratio is 0/0 are dropped from the interval and counted in ``n_undefined``;
    resamples with a zero denominator and non-zero numerator count as +-inf, so the interval then
    reaches +-inf. If the point estimate itself is nan, lo and hi are nan too.
    Returns dict(estimate, lo, hi, n_undefined).
    """
    num_arr, den_arr = _as_vector(num, "num"), _as_vector(den, "den")
    _same_length(num=num_arr, den=den_arr)
    _check_boot(n_boot, alpha)
    estimate = float(_ratio(num_arr.mean(), den_arr.mean()))
    means = _bootstrap_means(np.stack([num_arr, den_arr], axis=1), n_boot, seed)
    ratios = _ratio(means[:, 0], means[:, 1])
    lo, hi = (math.nan, math.nan) if math.isnan(estimate) else _interval(ratios, alpha)
    return {"estimate": estimate, "lo": lo, "hi": hi, "n_undefined": int(np.isnan(ratios).sum())}


def mcnemar_exact(a_correct, b_correct) -> dict:
    """Two-sided exact McNemar test on paired 0/1 outcomes.

    n01 = #(a wrong, b right), n10 = #(a right, b wrong). Under H0 the discordant pairs split
    Binomial(n01 + n10, 1/2); p = min(1, 2 P(X <= min(n01, n10))). p = 1 when there is no discordant pair.
    Returns dict(n01, n10, p_value).
    """
    a_arr, b_arr = _as_binary(a_correct, "a_correct"), _as_binary(b_correct, "b_correct")
    _same_length(a_correct=a_arr, b_correct=b_arr)
    n01 = int(np.sum((a_arr == 0) & (b_arr == 1)))
    n10 = int(np.sum((a_arr == 1) & (b_arr == 0)))
    m = n01 + n10
    p = 1.0 if m == 0 else float(sps.binomtest(min(n01, n10), m, 0.5, alternative="two-sided").pvalue)
    return {"n01": n01, "n10": n10, "p_value": min(1.0, p)}


def accuracy_effect(
    base_correct,
    cond_correct,
    seed: int = 0,
    n_boot: int = 2000,
    alpha: float = 0.05,
) -> dict:
    """Effect of a condition on accuracy over the same samples (paired 0/1 correctness).

    Returns n; acc_base / acc_cond with Wilson intervals (``*_lo``, ``*_hi``); delta = acc_cond - acc_base
    with Tango's score interval (``delta_lo``, ``delta_hi``; ``interval`` names the method; never zero-width) and
    the paired percentile bootstrap as a second column (``delta_boot_lo``, ``delta_boot_hi``); McNemar exact p
    (``mcnemar_p``, with ``n01`` = wrong->right and ``n10`` = right->wrong); ``flips`` = n01 + n10 samples whose
    correctness changed and ``flip_rate``; ``mde`` = minimum detectable |delta| at 80% power (``paired_mde``).
    Equivalence (TOST) needs a margin, which is a reading of the result: ``paired_tost(n01, n10, n, margin)``.
    """
    base, cond = _as_binary(base_correct, "base_correct"), _as_binary(cond_correct, "cond_correct")
    n = _same_length(base_correct=base, cond_correct=cond)
    k_base, k_cond = int(base.sum()), int(cond.sum())
    base_lo, base_hi = wilson_ci(k_base, n, alpha)
    cond_lo, cond_hi = wilson_ci(k_cond, n, alpha)
    boot = paired_bootstrap_diff(base, cond, n_boot=n_boot, alpha=alpha, seed=seed)
    mc = mcnemar_exact(base, cond)
    flips = mc["n01"] + mc["n10"]
    delta = paired_score_interval(mc["n01"], mc["n10"], n, alpha)
    return {
        "n": n,
        "acc_base": k_base / n,
        "acc_base_lo": base_lo,
        "acc_base_hi": base_hi,
        "acc_cond": k_cond / n,
        "acc_cond_lo": cond_lo,
        "acc_cond_hi": cond_hi,
        "delta": delta["estimate"],
        "delta_lo": delta["lo"],
        "delta_hi": delta["hi"],
        "interval": delta["method"],
        "delta_boot_lo": boot["lo"],
        "delta_boot_hi": boot["hi"],
        "mde": paired_mde(n, flips / n, alpha),
        "mcnemar_p": mc["p_value"],
        "n01": mc["n01"],
        "n10": mc["n10"],
        "flips": flips,
        "flip_rate": flips / n,
    }


def mediation_effects(y00, y11, y01, y10, seed: int = 0, n_boot: int = 2000, alpha: float = 0.05) -> dict:
    """Natural direct / indirect effects of the input X on the outcome Y through the latents Z.

    ``y_xz[i]`` is sample i's outcome (0/1 correctness or a real value such as log p(gold)) when the
    model reads input x (0 original, 1 counterfactual) while its latents come from the run on input z
    (0 original run, 1 counterfactual run). Following Pearl (2001) and Vig et al. (2020), but as
    differences of means rather than Vig's probability ratios:

    - TE  = E[y11 - y00]  total effect: change the input, latents follow;
    - NIE = E[y01 - y00]  natural indirect effect: original input, counterfactual latents;
    - NDE = E[y10 - y00]  natural direct effect: counterfactual input, original latents;
    - proportion_mediated = NIE / TE (nan when TE == 0 and NIE == 0, +-inf when only TE == 0);
    - interaction = TE - NDE - NIE = E[y11 - y10 - y01 + y00] (0 when effects add up).

    Also (VanderWeele 2013): ``total_nie`` = E[y11 - y10] = TE - NDE (indirect effect with the input changed),
    ``total_nde`` = E[y11 - y01] = TE - NIE, and ``proportion_mediated_total`` = total NIE / TE
    (``proportion_mediated`` is the pure one, NIE / TE).

    Intervals: a percentile bootstrap over one shared set of resampled sample indices (all four outcomes of a sample
    move together). For 0/1 outcomes, TE / NIE / NDE / total NIE / total NDE are paired differences and get Tango's
    score interval instead (``paired_score_interval``; never zero-width), the bootstrap kept as ``boot_lo`` /
    ``boot_hi``; the interaction's per-sample contrast takes the values -2..2 and gets the multinomial score
    interval (``discrete_score_interval``, method ``multinomial_score``; never zero-width). Each effect is dict(estimate, lo, hi, method);
    the proportions also have ``n_undefined`` (resamples with TE = NIE = 0, see ``bootstrap_ratio``).
    """
    arrs = {name: _as_vector(v, name) for name, v in (("y00", y00), ("y11", y11), ("y01", y01), ("y10", y10))}
    n = _same_length(**arrs)
    _check_boot(n_boot, alpha)
    base = arrs["y00"]
    pairs = {"te": ("y00", "y11"), "nie": ("y00", "y01"), "nde": ("y00", "y10"), "total_nie": ("y10", "y11"),
             "total_nde": ("y01", "y11")}
    columns = np.stack([arrs[b] - arrs[a] for a, b in pairs.values()]
                       + [arrs["y11"] - arrs["y10"] - arrs["y01"] + base], axis=1)
    names = (*pairs, "interaction")
    point = columns.mean(axis=0)
    boot = _bootstrap_means(columns, n_boot, seed)
    binary = all(np.all((a == 0) | (a == 1)) for a in arrs.values())
    result: dict = {"n": n}
    for j, name in enumerate(names):
        lo, hi = _interval(boot[:, j], alpha)
        result[name] = {"estimate": float(point[j]), "lo": lo, "hi": hi, "method": "paired_bootstrap"}
        if binary and name in pairs:
            a, b = (arrs[y].astype(np.int64) for y in pairs[name])
            n01, n10 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
            sc = paired_score_interval(n01, n10, n, alpha)
            result[name].update(lo=sc["lo"], hi=sc["hi"], method=sc["method"], boot_lo=lo, boot_hi=hi, n01=n01,
                                n10=n10, mde=paired_mde(n, (n01 + n10) / n, alpha))
    if binary:
        inter = result["interaction"]
        sc = discrete_score_interval(columns[:, -1], INTERACTION_SUPPORT, alpha)
        inter.update(lo=sc["lo"], hi=sc["hi"], method=sc["method"], boot_lo=inter["lo"], boot_hi=inter["hi"])
    for key, j in (("proportion_mediated", 1), ("proportion_mediated_total", 3)):
        pm_estimate = float(_ratio(point[j], point[0]))
        pm_boot = _ratio(boot[:, j], boot[:, 0])
        pm_lo, pm_hi = (math.nan, math.nan) if math.isnan(pm_estimate) else _interval(pm_boot, alpha)
        result[key] = {"estimate": pm_estimate, "lo": pm_lo, "hi": pm_hi, "method": "paired_bootstrap",
                       "n_undefined": int(np.isnan(pm_boot).sum())}
    return result


# ----------------------------------------------------------------------------- paired proportions: score interval,
# equivalence (TOST), minimum detectable effect, multiplicity


def _z(alpha: float) -> float:
    return float(sps.norm.ppf(1.0 - alpha))


def tango_statistic(n01: int, n10: int, n: int, delta: float) -> float:
    """Tango's (1998) score statistic for H0: p_cond - p_base = ``delta`` on paired 0/1 outcomes.

    ``n01`` = pairs wrong -> right (base 0, cond 1), ``n10`` = right -> wrong, ``n`` = all pairs. With q the
    restricted MLE of P(right -> wrong) under H0 (root of 2n q^2 + B q - n10 delta (1 - delta) = 0,
    B = -(n01 + n10) + (2n - n01 + n10) delta), Z = (n01 - n10 - n delta) / sqrt(n (2q + delta (1 - delta))).
    """
    b, c = float(n01), float(n10)
    a2 = 2.0 * n
    bb = -(b + c) + (2.0 * n - b + c) * delta
    cc = -c * delta * (1.0 - delta)
    q = (-bb + math.sqrt(max(bb * bb - 4.0 * a2 * cc, 0.0))) / (2.0 * a2)
    var = n * (2.0 * q + delta * (1.0 - delta))
    num = b - c - n * delta
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def paired_score_interval(n01: int, n10: int, n: int, alpha: float = 0.05) -> dict:
    """Tango's score interval for the paired difference p_cond - p_base = (n01 - n10) / n.

    The set of delta whose two-sided score test (``tango_statistic``) does not reject at ``alpha``; found by root
    finding (the statistic decreases in delta). It is never zero-width for n >= 1: with no discordant pair it is
    +-z^2 / (n + z^2) (0/10 flips: +-0.278). Equals R's ``PropCIs::scoreci.mp(n10, n01, n)``.
    Returns dict(estimate, lo, hi, method="tango_score").
    """
    if int(n) != n or n < 1 or not (0 <= n01 and 0 <= n10 and n01 + n10 <= n):
        raise LatentcheckError(f"paired_score_interval: need 0 <= n01 + n10 <= n, n >= 1; got n01={n01!r}, "
                               f"n10={n10!r}, n={n!r}")
    if not 0.0 < alpha < 1.0:
        raise LatentcheckError(f"argument 'alpha': must be in (0, 1), got {alpha!r}")
    from scipy.optimize import brentq

    z = _z(alpha / 2.0)
    est = (n01 - n10) / n
    eps = 1e-12

    def f(d: float) -> float:
        return tango_statistic(n01, n10, n, d)

    lo = -1.0 if f(-1.0 + eps) <= z else brentq(lambda d: f(d) - z, -1.0 + eps, est, xtol=1e-12)
    hi = 1.0 if f(1.0 - eps) >= -z else brentq(lambda d: f(d) + z, est, 1.0 - eps, xtol=1e-12)
    return {"estimate": est, "lo": float(lo), "hi": float(hi), "method": "tango_score"}


def _restricted_mle(counts: np.ndarray, support: np.ndarray, mu: float) -> np.ndarray:
    """Maximum-likelihood category probabilities over ``support`` given ``counts``, restricted to mean ``mu``.

    Lagrange: an observed category gets p_k = n_k / (n (1 + t c_k)) with c_k = x_k - mu and t the root of
    sum_k n_k c_k / (1 + t c_k) = 0 (decreasing in t). Unobserved categories carry no likelihood but may carry mass:
    when the root would leave the range where every support point keeps 1 + t c >= 0, t stops at the edge set by
    the most extreme unobserved point, which takes the remaining mass (e.g. no discordant pair in Tango's case)."""
    from scipy.optimize import brentq

    n = counts.sum()
    c = support - mu
    obs = counts > 0
    t_lo = max((-1.0 / ck for ck in c if ck > 0), default=-math.inf)
    t_hi = min((-1.0 / ck for ck in c if ck < 0), default=math.inf)

    def g(t: float) -> float:
        return float(np.sum(counts[obs] * c[obs] / (1.0 + t * c[obs])))

    g0 = g(0.0)
    if g0 == 0.0:
        return counts / n
    edge = t_lo if g0 < 0 else t_hi  # the root lies on the side where g changes sign
    binding = int(np.argmax(c)) if g0 < 0 else int(np.argmin(c))
    inner = edge * (1.0 - 1e-12)  # just inside the edge
    if counts[binding] > 0 or (g(inner) > 0) == (g0 < 0):
        a, b = (inner, 0.0) if g0 < 0 else (0.0, inner)
        t = brentq(g, a, b, xtol=1e-15, rtol=1e-14, maxiter=500)
        p = np.zeros_like(c)
        p[obs] = counts[obs] / (n * (1.0 + t * c[obs]))
        return p / p.sum()
    p = np.zeros_like(c)
    p[obs] = counts[obs] / (n * (1.0 + edge * c[obs]))
    p[binding] = max(0.0, 1.0 - p.sum())
    return p


def discrete_score_statistic(counts, support, mu: float) -> float:
    """Score statistic for H0: E[X] = ``mu`` of a variable on a known finite ``support`` with category ``counts``:
    Z = sqrt(n) (mean - mu) / sqrt(sum_k p~_k (x_k - mu)^2), with p~ the restricted MLE (``_restricted_mle``).
    On the support (-1, 0, 1) of a paired 0/1 difference this is Tango's statistic (``tango_statistic``)."""
    counts = np.asarray(counts, dtype=np.float64)
    support = np.asarray(support, dtype=np.float64)
    n = counts.sum()
    mean = float(np.dot(counts, support) / n)
    p = _restricted_mle(counts, support, mu)
    var = float(np.dot(p, (support - mu) ** 2))
    num = math.sqrt(n) * (mean - mu)
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def discrete_score_interval(values, support, alpha: float = 0.05) -> dict:
    """Score interval for the mean of per-sample values that take finitely many known values (``support``): the
    multinomial generalisation of Tango's interval (same restricted-MLE score test, inverted by root finding).

    Used for the mediation interaction contrast y11 - y10 - y01 + y00 of 0/1 outcomes (support -2..2). Never
    zero-width for n >= 1: with every value 0 on the support -2..2 it is +-2 z^2 / (n + z^2) (the extreme support
    point, 2, carries the restricted mass; on -1..1 this is Tango's +-z^2 / (n + z^2)).
    Returns dict(estimate, lo, hi, method="multinomial_score").
    """
    x = _as_vector(values, "values")
    sup = np.unique(np.asarray(support, dtype=np.float64))
    if sup.size < 2:
        raise LatentcheckError(f"discrete_score_interval: the support needs at least two values, got {support!r}")
    off = ~np.isin(x, sup)
    if off.any():
        raise LatentcheckError(f"discrete_score_interval: value {x[off][0]} is not in the support {sup.tolist()}")
    if not 0.0 < alpha < 1.0:
        raise LatentcheckError(f"argument 'alpha': must be in (0, 1), got {alpha!r}")
    from scipy.optimize import brentq

    counts = np.array([np.sum(x == v) for v in sup], dtype=np.float64)
    z = _z(alpha / 2.0)
    est = float(x.mean())
    lo_s, hi_s = float(sup[0]), float(sup[-1])
    eps = 1e-9 * (hi_s - lo_s)

    def f(mu: float) -> float:
        return discrete_score_statistic(counts, sup, mu)

    lo = lo_s if est <= lo_s + eps or f(lo_s + eps) <= z else \
        brentq(lambda m: f(m) - z, lo_s + eps, est, xtol=1e-12)
    hi = hi_s if est >= hi_s - eps or f(hi_s - eps) >= -z else \
        brentq(lambda m: f(m) + z, est, hi_s - eps, xtol=1e-12)
    return {"estimate": est, "lo": float(lo), "hi": float(hi), "method": "multinomial_score"}


def paired_counts(base_correct, cond_correct) -> tuple[int, int, int]:
    """(n01, n10, n) of paired 0/1 outcomes: n01 = base 0 -> cond 1, n10 = base 1 -> cond 0."""
    a, b = _as_binary(base_correct, "base_correct"), _as_binary(cond_correct, "cond_correct")
    n = _same_length(base_correct=a, cond_correct=b)
    return int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0))), n


def equivalence_min_n(margin: float, alpha: float = 0.05) -> int:
    """Fewest pairs at which equivalence within +-``margin`` can be shown at all: even with no discordant pair the
    (1 - 2 alpha) score interval +-z^2/(n + z^2) must fit inside the margin, i.e. n > z^2 (1 - margin) / margin."""
    if not 0.0 < margin < 1.0:
        raise LatentcheckError(f"equivalence margin must be in (0, 1), got {margin!r}")
    z2 = _z(alpha) ** 2
    return int(math.floor(z2 * (1.0 - margin) / margin)) + 1


def paired_tost(n01: int, n10: int, n: int, margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided score tests (TOST) of |p_cond - p_base| < ``margin`` on paired 0/1 outcomes.

    p = max(P(Z >= z(-margin)), P(Z <= z(+margin))) with Tango's statistic; ``equivalent`` iff p < alpha, which is
    the (1 - 2 alpha) score interval (``lo``, ``hi``, also returned) lying inside +-margin. ``min_n`` =
    ``equivalence_min_n`` (below it no outcome can show equivalence); ``n_for_power`` = pairs needed for 80% power
    to show equivalence when the true difference is 0 and the discordant rate is the observed one (at least min_n).
    """
    if not 0.0 < margin < 1.0:
        raise LatentcheckError(f"equivalence margin must be in (0, 1), got {margin!r}")
    z_lower = tango_statistic(n01, n10, n, -margin)  # H0: delta <= -margin, rejected for large Z
    z_upper = tango_statistic(n01, n10, n, margin)  # H0: delta >= +margin, rejected for small Z
    p = max(float(sps.norm.sf(z_lower)), float(sps.norm.cdf(z_upper)))
    ci = paired_score_interval(n01, n10, n, 2.0 * alpha)
    min_n = equivalence_min_n(margin, alpha)
    psi = (n01 + n10) / n
    need = int(math.ceil((_z(alpha) + _z(0.1)) ** 2 * psi / margin ** 2)) if psi > 0 else 0
    return {"margin": margin, "alpha": alpha, "p_value": min(1.0, p), "equivalent": bool(p < alpha),
            "lo": ci["lo"], "hi": ci["hi"], "min_n": min_n, "n_for_power": max(min_n, need), "n": n}


def paired_mde(n: int, discordant_rate: float = 0.0, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect: the smallest true paired difference |delta| that a two-sided test at ``alpha``
    detects with probability ``power`` with ``n`` pairs (Connor 1987: sqrt(n) delta = z_(1-alpha/2) sqrt(psi) +
    z_power sqrt(psi - delta^2)), where the discordant rate psi is the observed one but at least delta (a change of
    delta needs at least that many flips). With psi = 0 observed this is the best case: delta = k^2 / (n + k^2)-like,
    e.g. 0.62 at n = 10 and 0.077 at n = 100 (alpha 0.05, power 0.8)."""
    if int(n) != n or n < 1:
        raise LatentcheckError(f"paired_mde: n must be a positive integer, got {n!r}")
    from scipy.optimize import brentq

    za, zb = _z(alpha / 2.0), _z(1.0 - power)

    def gap(d: float) -> float:
        psi = max(discordant_rate, d)
        return math.sqrt(n) * d - (za * math.sqrt(psi) + zb * math.sqrt(max(psi - d * d, 0.0)))

    if gap(1.0) < 0:
        return 1.0
    return float(brentq(gap, 1e-9, 1.0, xtol=1e-10))


def holm(p_values) -> list[float]:
    """Holm (1979) step-down adjusted p-values (statsmodels ``multipletests(method="holm")``), same order; nan
    entries stay nan and are not counted among the hypotheses."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return [float(x) for x in out]
