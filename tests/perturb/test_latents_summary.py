"""perturb-latent's summary against a hand-counted case with a NON-zero effect (the sign of every delta matters)."""

from __future__ import annotations

import pytest

from latentcheck.perturb.latents import PlannedIntervention, summarise
from latentcheck.core.interventions import parse_spec

BASE = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # 8/10 correct
ZERO = [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]  # 3/10: six right->wrong, one wrong->right
D_LOGP = [-1.0] * 6 + [0.0, 0.0, 0.5, 0.0]


def _outcome(correct: int, d_logp: float | None = None) -> dict:
    o = {"correct": bool(correct), "answer": "A" if correct else "B", "triggered": True, "latent_count": 4,
         "degenerate": False, "logp_gold": -0.2 if correct else -2.0}
    if d_logp is not None:
        o.update({"flipped": False, "d_logp_gold": d_logp, "kl": abs(d_logp)})
    return o


def _records() -> list[dict]:
    return [{"type": "sample", "key": f"s{i}", "gold": "A", "n_options": 4, "category": None,
             "baseline": _outcome(b), "interventions": {"zero": {**_outcome(z, d), "flipped": b != z}},
             "mediation": {}} for i, (b, z, d) in enumerate(zip(BASE, ZERO, D_LOGP))]


def _est(x):
    return x["estimate"] if isinstance(x, dict) else x


def test_hand_counted_summary_with_a_drop():
    s = summarise(_records(), [PlannedIntervention(parse_spec("zero"))], seed=0, n_boot=500)
    assert s["baseline"]["accuracy"]["estimate"] == pytest.approx(0.8)
    assert s["baseline"]["accuracy"]["successes"] == 8 and s["baseline"]["accuracy"]["method"] == "wilson"
    (row,) = s["interventions"]
    eff = row["effect"]  # a core.summaries.AccuracyEffect
    assert eff["cond"]["estimate"] == pytest.approx(0.3) and eff["base"]["estimate"] == pytest.approx(0.8)
    assert eff["delta"]["estimate"] == pytest.approx(-0.5)  # intervened minus baseline: a DROP is negative
    assert eff["n10"] == 6 and eff["n01"] == 1  # right->wrong, wrong->right
    # exact two-sided binomial, 1 of 7 discordant; the only comparison of the run, so Holm leaves it unchanged
    assert eff["delta"]["p_value"] == pytest.approx(2 * (1 + 7) / 2 ** 7) == eff["delta"]["p_holm"]
    assert eff["delta"]["test"] == "mcnemar_exact" and eff["delta"]["method"] == "tango_score"
    assert _est(row["d_logp_gold"]) == pytest.approx(sum(D_LOGP) / 10)
    assert row["answer_flip_rate"] == pytest.approx(0.7)
    assert eff["flip_rate"] == pytest.approx(0.7) and eff["flips"] == 7
    lo, hi = eff["delta"]["lo"], eff["delta"]["hi"]
    assert lo < -0.5 < hi
