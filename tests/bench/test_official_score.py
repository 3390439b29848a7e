"""The official number as a typed Score (core/summaries.py): exactly the benchmark authors' value, with the interval
its aggregation allows -- Wilson for a pooled accuracy, MOVER-Wilson for BLINK's macro mean over sub-tasks,
Bonferroni-Wilson for HR-Bench's mean over cycle groups (which repeat the same questions). Values hand-computed
(z = 1.959964 at 95%; z = 2.241403 at alpha/2 = 0.025 for two Bonferroni groups)."""

from __future__ import annotations

import pytest

from latentcheck.bench.registry import get_benchmark
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.stats import mean_of_proportions_ci
from latentcheck.core.summaries import Proportion, Score


def _r(i, correct, **meta):
    return {"id": str(i), "category": meta.pop("category", None), "pred": "A", "gold": "A" if correct else "B",
            "correct": correct, "meta": meta}


def test_micro_score_is_the_official_accuracy_with_its_wilson_interval():
    """V*: 3 of 4 right -> the scorer's 0.75, Wilson [0.30064, 0.95441] (centre (0.75 + z^2/8) / (1 + z^2/4))."""
    rs = [_r(0, True, category="a"), _r(1, True, category="a"), _r(2, False, category="b"), _r(3, True, category="b")]
    bench = get_benchmark("vstar")
    s = bench.official_score(rs)
    assert s.estimate == bench.score(rs)["accuracy"] == 0.75 and s.official == bench.score(rs)
    assert (s.aggregation, s.method, s.successes, s.n, s.metric) == ("micro", "wilson", 3, 4, "accuracy")
    assert s.lo == pytest.approx(0.30064, abs=1e-5) and s.hi == pytest.approx(0.95441, abs=1e-5)


def test_blink_total_is_a_macro_mean_with_a_mover_wilson_interval():
    """Sub-task X 2/2, Y 1/4: Total = (1 + 1/4) / 2 = 0.625 (the official macro mean; micro 3/6 would be 0.5).
    Wilson 2/2 = [2 / (2 + z^2), 1] = [0.34238, 1]; 1/4 = [0.04558, 0.69936]. MOVER: lo = 0.625 - sqrt((1 - 0.34238)^2
    + (0.25 - 0.04558)^2) / 2 = 0.28067, hi = 0.625 + sqrt(0 + (0.69936 - 0.25)^2) / 2 = 0.84968."""
    rs = [_r(0, True, sub_task="X"), _r(1, True, sub_task="X")] + [_r(2 + i, i == 0, sub_task="Y") for i in range(4)]
    bench = get_benchmark("blink")
    s = bench.official_score(rs)
    assert s.estimate == bench.score(rs)["accuracy"] == 0.625 and s.official["micro_accuracy"] == 0.5
    assert (s.aggregation, s.method, s.n) == ("macro", "mover_wilson", 6)
    assert {g: (p.successes, p.n) for g, p in s.parts.items()} == {"X": (2, 2), "Y": (1, 4)}
    assert s.lo == pytest.approx(0.28067, abs=1e-5) and s.hi == pytest.approx(0.84968, abs=1e-5)


def test_hrbench_cycle_average_gets_a_bonferroni_interval_valid_under_dependence():
    """Two cycle groups of the same questions, 3/4 each: the official cycle average 0.75; each group's Wilson interval
    at alpha / 2 (z = 2.241403): centre (0.75 + z^2/8) / (1 + z^2/4) = 0.610817, half-width 0.351794 -> the mean of
    the limits [0.25902, 0.96261] (wider than the Wilson interval of 6 of 8 pooled rows, [0.40927, 0.92852]), never
    narrower than the dependence allows."""
    rs = [_r(i, i % 4 != 3, cycle_category=f"c{i // 4}", category="single") for i in range(8)]
    bench = get_benchmark("hrbench4k")
    s = bench.official_score(rs)
    assert s.estimate == bench.score(rs)["accuracy"] == 0.75
    assert (s.aggregation, s.method, s.n, len(s.parts)) == ("group_average", "bonferroni_wilson", 8, 2)
    assert s.lo == pytest.approx(0.25902, abs=1e-5) and s.hi == pytest.approx(0.96261, abs=1e-5)
    pooled = Proportion.wilson(6, 8)
    assert (pooled.lo, pooled.hi) == pytest.approx((0.40927, 0.92852), abs=1e-5) and s.lo < pooled.lo < pooled.hi < s.hi


def test_a_score_round_trips_and_its_official_number_is_never_recomputed():
    rs = [_r(0, True, sub_task="X"), _r(1, False, sub_task="Y")]
    s = get_benchmark("blink").official_score(rs)
    back = Score.from_dict(s.to_dict())
    assert back == s and back.parts["X"].successes == 1
    # the official value is taken, not recomputed: a scorer's number stands as it is
    odd, ref = Score.micro({"accuracy": 0.123}, 1, 2), Proportion.wilson(1, 2)
    assert odd.estimate == 0.123 and (odd.lo, odd.hi, odd.n) == (ref.lo, ref.hi, 2)


def test_mean_of_proportions_ci_edges():
    """Never zero-width at the edges (all right / all wrong); one group = its Wilson interval; bad groups refused."""
    all_right = mean_of_proportions_ci([(5, 5), (3, 3)])
    assert all_right["estimate"] == 1.0 and all_right["hi"] == 1.0 and all_right["lo"] < 1.0
    all_wrong = mean_of_proportions_ci([(0, 5), (0, 3)], dependent=True)
    assert all_wrong["estimate"] == 0.0 and all_wrong["lo"] == 0.0 and all_wrong["hi"] > 0.0
    one = mean_of_proportions_ci([(3, 4)])
    assert (one["lo"], one["hi"]) == pytest.approx((0.30064, 0.95441), abs=1e-5)
    for bad in ([], [(1, 0)]):
        with pytest.raises(LatentcheckError):
            mean_of_proportions_ci(bad)
