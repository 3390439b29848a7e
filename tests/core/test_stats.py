"""Statistics against hand-computed values and planted effects."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.stats import (
    accuracy_effect,
    bootstrap_ci,
    bootstrap_ratio,
    discrete_score_interval,
    discrete_score_statistic,
    INTERACTION_SUPPORT,
    mcnemar_exact,
    mediation_effects,
    paired_bootstrap_diff,
    paired_mde,
    paired_score_interval,
    paired_tost,
    equivalence_min_n,
    holm,
    tango_statistic,
    wilson_ci,
)

Z975 = 1.959963984540054  # standard normal 97.5% quantile


def _pairs(n00: int, n01: int, n10: int, n11: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired 0/1 arrays with the given 2x2 table (first digit = a, second = b)."""
    a = [0] * n00 + [0] * n01 + [1] * n10 + [1] * n11
    b = [0] * n00 + [1] * n01 + [0] * n10 + [1] * n11
    return np.array(a), np.array(b)


# ----------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    "n01, n10, expected",
    [
        (1, 8, 2 * (math.comb(9, 0) + math.comb(9, 1)) / 2**9),  # 0.0390625
        (8, 1, 2 * (math.comb(9, 0) + math.comb(9, 1)) / 2**9),  # symmetric
        (0, 5, 2 * math.comb(5, 0) / 2**5),  # 0.0625
        (2, 10, 2 * (math.comb(12, 0) + math.comb(12, 1) + math.comb(12, 2)) / 2**12),
        (3, 3, 1.0),  # 2 * P(X <= 3 | n=6) > 1 -> capped at 1
        (0, 0, 1.0),  # no discordant pair
    ],
)
def test_mcnemar_exact_matches_binomial_formula(n01, n10, expected):
    a, b = _pairs(n00=7, n01=n01, n10=n10, n11=11)
    res = mcnemar_exact(a, b)
    assert res["n01"] == n01 and res["n10"] == n10
    assert res["p_value"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_rejects_non_binary_and_mismatched_lengths():
    with pytest.raises(LatentcheckError, match="a_correct"):
        mcnemar_exact([0, 2, 1], [0, 1, 1])
    with pytest.raises(LatentcheckError, match="b_correct"):
        mcnemar_exact([0, 1, 1], [0, 1])


# ----------------------------------------------------------------------------- Wilson


def test_wilson_ci_matches_closed_form():
    k, n, z = 8, 10, Z975
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    lo, hi = wilson_ci(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-12)
    assert hi == pytest.approx(centre + half, abs=1e-12)
    # Published value for 8/10 (e.g. Newcombe 1998 style tables): about (0.490, 0.943)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)


def test_wilson_ci_zero_successes_and_all_successes():
    n, z = 20, Z975
    lo, hi = wilson_ci(0, n)
    assert lo == 0.0
    assert hi == pytest.approx(z**2 / (n + z**2), abs=1e-12)  # closed form at p = 0
    lo, hi = wilson_ci(n, n)
    assert hi == 1.0
    assert lo == pytest.approx(n / (n + z**2), abs=1e-12)
    assert wilson_ci(0, 0) == (0.0, 1.0)
    with pytest.raises(LatentcheckError):
        wilson_ci(5, 3)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_coverage_on_known_mean():
    rng = np.random.default_rng(123)
    true_mean, hits, n_sets = 1.0, 0, 200
    for s in range(n_sets):
        data = rng.normal(true_mean, 2.0, size=40)
        ci = bootstrap_ci(data, n_boot=500, seed=s)
        assert ci["estimate"] == pytest.approx(data.mean())
        assert ci["lo"] <= ci["estimate"] <= ci["hi"]
        hits += ci["lo"] <= true_mean <= ci["hi"]
    assert 0.88 <= hits / n_sets <= 0.99


def test_bootstrap_ci_is_deterministic_and_accepts_other_statistics():
    data = np.arange(25, dtype=float) ** 1.5
    assert bootstrap_ci(data, seed=7) == bootstrap_ci(data, seed=7)
    assert bootstrap_ci(data, seed=7) != bootstrap_ci(data, seed=8)
    med = bootstrap_ci(data, statistic=np.median, n_boot=300)
    assert med["estimate"] == pytest.approx(np.median(data))
    # A statistic without an `axis` argument falls back to one call per resample.
    rng_range = bootstrap_ci(data, statistic=lambda v: float(np.max(v) - np.min(v)), n_boot=200)
    assert rng_range["estimate"] == pytest.approx(data.max() - data.min())
    assert rng_range["hi"] <= data.max() - data.min() + 1e-12
    const = bootstrap_ci(np.full(10, 3.25))
    assert const == {"estimate": 3.25, "lo": 3.25, "hi": 3.25}


def test_paired_diff_identical_arrays_is_exactly_zero():
    a = np.random.default_rng(0).normal(size=50)
    res = paired_bootstrap_diff(a, a.copy())
    assert res == {"estimate": 0.0, "lo": 0.0, "hi": 0.0}


def test_paired_diff_uses_pairing():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 10.0, size=60)  # large between-sample spread
    b = a + 1.0 + rng.normal(0.0, 0.05, size=60)  # tiny within-pair noise
    res = paired_bootstrap_diff(a, b, seed=3)
    assert res["estimate"] == pytest.approx(np.mean(b) - np.mean(a))
    assert res["lo"] < 1.0 < res["hi"]
    # Unpaired resampling would give a width of ~ 2 * 1.96 * 10 * sqrt(2/60) ~ 7; pairing keeps it ~0.03.
    assert res["hi"] - res["lo"] < 0.1
    shifted = paired_bootstrap_diff(a, a + 0.5)
    assert shifted["estimate"] == pytest.approx(0.5) and shifted["hi"] - shifted["lo"] < 1e-12


def test_bootstrap_ratio_planted_and_zero_denominators():
    den = np.random.default_rng(2).uniform(0.5, 2.0, size=30)
    res = bootstrap_ratio(2.0 * den, den)
    assert res["estimate"] == pytest.approx(2.0)
    assert res["lo"] == pytest.approx(2.0) and res["hi"] == pytest.approx(2.0)
    assert res["n_undefined"] == 0
    zero_den = bootstrap_ratio([1.0, 2.0, 3.0], [1.0, -1.0, 0.0])  # mean(den) == 0
    assert zero_den["estimate"] == math.inf
    both_zero = bootstrap_ratio([1.0, -1.0], [2.0, -2.0])  # 0 / 0
    assert math.isnan(both_zero["estimate"]) and math.isnan(both_zero["lo"]) and math.isnan(both_zero["hi"])


def test_bootstrap_ratio_with_some_zero_denominator_resamples_reaches_infinity():
    # den = [0, 0, 1]: resamples that draw only zeros have mean(den) = 0 -> num/0 = +inf.
    res = bootstrap_ratio([1.0, 1.0, 1.0], [0.0, 0.0, 1.0], n_boot=4000, seed=0)
    assert res["estimate"] == pytest.approx(3.0)
    assert res["hi"] == math.inf  # P(all three draws are zeros) = 8/27 > 2.5%
    assert math.isfinite(res["lo"]) and res["lo"] >= 1.0


# ----------------------------------------------------------------------------- accuracy effect


def test_accuracy_effect_hand_counted():
    base, cond = _pairs(n00=3, n01=2, n10=6, n11=9)  # n = 20
    res = accuracy_effect(base, cond, n_boot=1000)
    assert res["n"] == 20
    assert res["acc_base"] == pytest.approx(15 / 20) and res["acc_cond"] == pytest.approx(11 / 20)
    assert res["delta"] == pytest.approx(11 / 20 - 15 / 20)
    assert res["delta_lo"] <= res["delta"] <= res["delta_hi"]
    assert res["flips"] == 8 and res["flip_rate"] == pytest.approx(8 / 20)
    assert (res["n01"], res["n10"]) == (2, 6)
    expected_p = 2 * sum(math.comb(8, i) for i in range(3)) / 2**8
    assert res["mcnemar_p"] == pytest.approx(expected_p)
    assert (res["acc_base_lo"], res["acc_base_hi"]) == pytest.approx(wilson_ci(15, 20))
    json.dumps(res)  # plain types only
    assert res["interval"] == "tango_score"
    assert (res["delta_lo"], res["delta_hi"]) == pytest.approx(
        (paired_score_interval(2, 6, 20)["lo"], paired_score_interval(2, 6, 20)["hi"]))
    assert res["delta_boot_lo"] <= res["delta"] <= res["delta_boot_hi"]
    assert res["mde"] == pytest.approx(paired_mde(20, 8 / 20))
    assert all(isinstance(v, (int, float)) for k, v in res.items() if k != "interval")


# ----------------------------------------------------------------------------- mediation


def test_mediation_exact_planted_binary_outcomes():
    n = 100
    y00 = np.ones(n)
    y01 = np.r_[np.ones(90), np.zeros(10)]  # NIE = -0.10
    y10 = np.r_[np.ones(50), np.zeros(50)]  # NDE = -0.50
    y11 = np.r_[np.ones(40), np.zeros(60)]  # TE  = -0.60
    res = mediation_effects(y00, y11, y01, y10, n_boot=500)
    assert res["n"] == n
    assert res["te"]["estimate"] == pytest.approx(-0.6)
    assert res["nie"]["estimate"] == pytest.approx(-0.1)
    assert res["nde"]["estimate"] == pytest.approx(-0.5)
    assert res["proportion_mediated"]["estimate"] == pytest.approx(1 / 6)
    # -0.6 - (-0.5) - (-0.1) = 0, but note per sample y11 - y10 - y01 + y00 is not 0 everywhere
    assert res["interaction"]["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert res["total_nie"]["estimate"] == pytest.approx(-0.1)  # y11 - y10
    assert res["total_nde"]["estimate"] == pytest.approx(-0.5)  # y11 - y01
    assert res["proportion_mediated_total"]["estimate"] == pytest.approx(1 / 6)
    assert res["te"]["method"] == "tango_score"
    assert (res["te"]["lo"], res["te"]["hi"]) == pytest.approx(
        tuple(paired_score_interval(0, 60, 100)[k] for k in ("lo", "hi")))
    for key in ("te", "nie", "nde", "proportion_mediated"):
        assert res[key]["lo"] <= res[key]["estimate"] <= res[key]["hi"]
    json.dumps(res)


def test_mediation_noisy_planted_effects_recovered():
    rng = np.random.default_rng(5)
    n, te, nie, nde = 3000, -2.0, -0.5, -1.5  # additive: TE = NDE + NIE, no interaction
    y00 = rng.normal(0.0, 1.0, size=n)
    y01 = y00 + nie + rng.normal(0.0, 0.3, size=n)
    y10 = y00 + nde + rng.normal(0.0, 0.3, size=n)
    y11 = y00 + te + rng.normal(0.0, 0.3, size=n)
    res = mediation_effects(y00, y11, y01, y10, n_boot=500, seed=1)
    for key, truth in (("te", te), ("nie", nie), ("nde", nde), ("proportion_mediated", nie / te)):
        assert res[key]["lo"] <= truth <= res[key]["hi"], key
        assert res[key]["hi"] - res[key]["lo"] < 0.1, key
    assert res["interaction"]["lo"] <= 0.0 <= res["interaction"]["hi"]


def test_mediation_zero_total_effect_and_bad_input():
    y = np.array([1.0, 0.0, 1.0, 1.0])
    res = mediation_effects(y, y, y, y, n_boot=100)
    # 0/1 outcomes: score intervals, never zero-width (no discordant pair of 4: +-z^2/(4 + z^2))
    w = 1.959963984540054 ** 2 / (4 + 1.959963984540054 ** 2)
    assert res["te"]["estimate"] == 0.0 and (res["te"]["lo"], res["te"]["hi"]) == pytest.approx((-w, w))
    assert (res["te"]["boot_lo"], res["te"]["boot_hi"]) == (0.0, 0.0)  # the bootstrap column collapses
    # the interaction contrast is 0 on every sample: the multinomial score interval +-2 z^2 / (4 + z^2)
    assert res["interaction"]["method"] == "multinomial_score"
    assert (res["interaction"]["lo"], res["interaction"]["hi"]) == pytest.approx((-2 * w, 2 * w))
    assert (res["interaction"]["boot_lo"], res["interaction"]["boot_hi"]) == (0.0, 0.0)
    real = mediation_effects(y + 0.5, y + 0.5, y + 0.5, y + 0.5, n_boot=100)  # non-binary: bootstrap only
    assert real["te"] == {"estimate": 0.0, "lo": 0.0, "hi": 0.0, "method": "paired_bootstrap"}
    assert math.isnan(res["proportion_mediated"]["estimate"])
    with pytest.raises(LatentcheckError, match="y10"):
        mediation_effects(y, y, y, y[:3])
    with pytest.raises(LatentcheckError, match="y01"):
        mediation_effects(y, y, [1.0, np.nan, 0.0, 1.0], y)


# ----------------------------------------------------------------------------- score interval, TOST, MDE, Holm


def test_score_interval_zero_discordant_hand_computed():
    """No discordant pair: Tango's statistic is sqrt(n d / (1 - d)), so the bound is z^2 / (n + z^2) (0/10: 0.278)."""
    z = 1.959963984540054
    for n in (10, 100):
        res = paired_score_interval(0, 0, n)
        assert res["estimate"] == 0.0
        assert (res["lo"], res["hi"]) == pytest.approx((-z * z / (n + z * z), z * z / (n + z * z)), abs=1e-9)
    assert paired_score_interval(0, 0, 10)["hi"] == pytest.approx(0.2775, abs=1e-4)  # not zero-width


def test_score_interval_matches_r_propcis():
    """R: PropCIs::scoreci.mp(25, 28, 618, 0.90) = [-0.0148, 0.0247]; scoreci.mp(7, 1, 21, 0.95) = [-0.517, -0.026]
    (estimand (arg2 - arg1)/n, i.e. our n01 = arg2, n10 = arg1)."""
    a = paired_score_interval(28, 25, 618, alpha=0.10)
    assert (round(a["lo"], 4), round(a["hi"], 4)) == (-0.0148, 0.0247)
    b = paired_score_interval(1, 7, 21)
    assert (round(b["lo"], 3), round(b["hi"], 3)) == (-0.517, -0.026)


def test_score_interval_boundaries_are_score_test_boundaries():
    """At each bound the score statistic, with the restricted MLE found by a generic optimiser, equals -+z."""
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm

    n01, n10, n = 3, 11, 40
    res = paired_score_interval(n01, n10, n)

    def z_stat(d):  # restricted MLE of q = P(1 -> 0) under P(0 -> 1) - q = d, by direct maximisation
        rest = n - n01 - n10
        nll = lambda q: -(n01 * np.log(q + d) + n10 * np.log(q) + rest * np.log(1 - 2 * q - d))
        lo_q = max(1e-12, -d + 1e-12)
        q = minimize_scalar(nll, bounds=(lo_q, (1 - d) / 2 - 1e-12), method="bounded",
                            options={"xatol": 1e-12}).x
        return (n01 - n10 - n * d) / np.sqrt(n * (2 * q + d * (1 - d)))

    assert z_stat(res["lo"]) == pytest.approx(norm.ppf(0.975), abs=1e-4)
    assert z_stat(res["hi"]) == pytest.approx(-norm.ppf(0.975), abs=1e-4)
    assert tango_statistic(n01, n10, n, res["lo"]) == pytest.approx(norm.ppf(0.975), abs=1e-8)


@pytest.mark.parametrize("n01,n10,n", [(25, 28, 618), (1, 7, 21), (0, 0, 10), (3, 0, 10), (10, 0, 10), (5, 5, 10),
                                        (2, 1, 100), (0, 1, 5)])
def test_discrete_score_interval_is_tango_on_a_paired_difference(n01, n10, n):
    """On the support -1..1 of a paired 0/1 difference the multinomial score interval IS Tango's (pinned to R above)."""
    values = [1] * n01 + [-1] * n10 + [0] * (n - n01 - n10)
    a, b = paired_score_interval(n01, n10, n), discrete_score_interval(values, (-1, 0, 1))
    assert (b["lo"], b["hi"]) == pytest.approx((a["lo"], a["hi"]), abs=1e-9)
    assert b["estimate"] == pytest.approx(a["estimate"]) and b["method"] == "multinomial_score"


def test_interaction_interval_all_zero_hand_computed():
    """Every per-sample interaction contrast 0 (support -2..2): the restricted MLE under mean m puts mass m/2 on 2, the
    variance is m (2 - m), so Z = sqrt(n) m / sqrt(m (2 - m)) = z gives m = 2 z^2 / (n + z^2): +-0.555 at n = 10,
    +-0.074 at n = 100 (twice Tango's bound: the contrast can move by 2). Never zero-width."""
    for n in (10, 100):
        res = discrete_score_interval(np.zeros(n), INTERACTION_SUPPORT)
        bound = 2 * Z975 ** 2 / (n + Z975 ** 2)
        assert (res["lo"], res["hi"]) == pytest.approx((-bound, bound), abs=1e-9)
    assert discrete_score_interval(np.zeros(10), INTERACTION_SUPPORT)["hi"] == pytest.approx(0.5551, abs=1e-4)


def test_discrete_score_boundaries_are_score_test_boundaries():
    """At each bound, the score statistic with the restricted MLE found by a generic constrained optimiser (SLSQP over
    the whole simplex, unobserved categories included) equals -+z; the statistic is monotone across the interval."""
    from scipy.optimize import minimize
    from scipy.stats import norm

    sup = np.array(INTERACTION_SUPPORT)
    values = np.array([0] * 30 + [1] * 6 + [-1] * 2 + [2] * 2)  # no -2: an unobserved category
    counts = np.array([np.sum(values == v) for v in sup], dtype=float)
    res = discrete_score_interval(values, sup)

    def z_generic(m):
        obs = counts > 0
        nll = lambda p: -np.sum(counts[obs] * np.log(np.clip(p[obs], 1e-300, None)))
        cons = [{"type": "eq", "fun": lambda p: p.sum() - 1}, {"type": "eq", "fun": lambda p: p @ sup - m}]
        best = None
        for start in (counts / counts.sum() * 0.9 + 0.02, np.full(5, 0.2)):
            r = minimize(nll, start, method="SLSQP", bounds=[(0, 1)] * 5, constraints=cons,
                         options={"ftol": 1e-15, "maxiter": 1000})
            best = r if best is None or r.fun < best.fun else best
        var = best.x @ (sup - m) ** 2
        return np.sqrt(len(values)) * (values.mean() - m) / np.sqrt(var)

    z = norm.ppf(0.975)
    assert z_generic(res["lo"]) == pytest.approx(z, abs=1e-3)
    assert z_generic(res["hi"]) == pytest.approx(-z, abs=1e-3)
    assert discrete_score_statistic(counts, sup, res["lo"]) == pytest.approx(z, abs=1e-8)
    grid = np.linspace(res["lo"], res["hi"], 25)
    stats = [discrete_score_statistic(counts, sup, m) for m in grid]
    assert all(a > b for a, b in zip(stats, stats[1:]))
    with pytest.raises(LatentcheckError, match="not in the support"):
        discrete_score_interval([0, 3], sup)


def test_tost_needs_enough_samples():
    """0 flips: at n=10 equivalence within +-5 points is impossible (need >= 52), at n=100 it is shown."""
    small, big = paired_tost(0, 0, 10, 0.05), paired_tost(0, 0, 100, 0.05)
    assert not small["equivalent"] and small["min_n"] == 52 and small["hi"] > 0.05
    assert big["equivalent"] and big["p_value"] < 0.05 and -0.05 < big["lo"] < big["hi"] < 0.05
    assert equivalence_min_n(0.05) == 52  # 1.6449^2 * 0.95 / 0.05 = 51.4
    assert not paired_tost(0, 0, 51, 0.05)["equivalent"] and paired_tost(0, 0, 52, 0.05)["equivalent"]


def test_tost_false_equivalence_rate_just_beyond_margin():
    """Seeded simulation at the default n (100): a true drop of 6 points (margin 5) is declared equivalent in at most
    ~5% of runs, whether every discordant pair is a drop or some flips go the other way; a true null with no flips is
    always declared equivalent at n = 100."""
    rng = np.random.default_rng(0)
    n, reps = 100, 2000
    for p_drop, p_gain in ((0.06, 0.0), (0.07, 0.01)):  # delta = p_gain - p_drop = -0.06 both times
        hits = 0
        for _ in range(reps):
            n10, n01, _rest = rng.multinomial(n, [p_drop, p_gain, 1 - p_drop - p_gain])
            hits += paired_tost(int(n01), int(n10), n, 0.05)["equivalent"]
        assert hits / reps <= 0.06, (p_drop, p_gain, hits / reps)
    assert paired_tost(0, 0, n, 0.05)["equivalent"]


def test_mde_hand_computed():
    """Connor's formula with psi = max(observed, delta): sqrt(n) d = z_.975 sqrt(psi) + z_.8 sqrt(psi - d^2)."""
    from scipy.stats import norm

    za, zb = norm.ppf(0.975), norm.ppf(0.8)
    for n, psi in ((10, 0.0), (100, 0.0), (100, 0.3)):
        d = paired_mde(n, psi)
        p = max(psi, d)
        assert np.sqrt(n) * d == pytest.approx(za * np.sqrt(p) + zb * np.sqrt(p - d * d), abs=1e-7)
    assert paired_mde(10) > 0.5 and 0.07 < paired_mde(100) < 0.08
    assert paired_mde(100, 0.3) > paired_mde(100)  # more discordance, less power


def test_holm_hand_computed():
    """p = (0.01, 0.04, 0.03, 0.005): sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04, 0.06) = 0.06."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.2, float("nan"), 0.01])  # nan is not a hypothesis: m = 2
    assert out[0] == pytest.approx(0.2) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
