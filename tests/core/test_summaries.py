"""Typed summary records (core/summaries.py): values against hand computations and core.stats, one CI shape,
round trips through summary.json, errors, and the one set of number formatters."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from latentcheck.core import stats
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.records import to_jsonable, write_json_atomic
from latentcheck.core.summaries import (RECORD_TYPES, SUMMARY_SCHEMA, AccuracyEffect, Effect, Estimate, Mediation,
                                        Proportion, Ratio, fmt_ci, fmt_num, fmt_p, fmt_pct, from_dict)

CI_SHAPE = ["estimate", "lo", "hi", "n", "method"]


def test_proportion_is_wilson_by_hand():
    # k=3, n=10, z=1.959964: centre=(0.3+z^2/20)/(1+z^2/10), half=z*sqrt(0.021+z^2/400)/(1+z^2/10)
    z = 1.959963984540054
    centre = (0.3 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.3 * 0.7 / 10 + z * z / 400) / (1 + z * z / 10)
    p = Proportion.wilson(3, 10)
    assert p.estimate == 0.3 and p.successes == 3 and p.n == 10 and p.method == "wilson"
    assert p.lo == pytest.approx(centre - half, abs=1e-12) and p.hi == pytest.approx(centre + half, abs=1e-12)
    assert p.lo == pytest.approx(0.10779, abs=1e-5) and p.hi == pytest.approx(0.60322, abs=1e-5)
    assert Proportion.of([True, False, 1, 0, 0, 0, 0, 0, 0, True]) == p
    empty = Proportion.wilson(0, 0)
    assert empty.estimate is None and empty.lo is None and empty.n == 0


def test_every_record_has_the_one_ci_shape_first():
    for rec in (Proportion.wilson(2, 5), Estimate.bootstrap([1.0, 2.0, 4.0], n_boot=50),
                Ratio.bootstrap([1.0, 2.0], [2.0, 2.0], n_boot=50), Effect.paired([0, 1, 1], [1, 1, 1], n_boot=50)):
        assert list(rec.to_dict())[:5] == CI_SHAPE
        assert rec.method in ("wilson", "percentile_bootstrap", "paired_bootstrap")


def test_records_equal_core_stats():
    a, b = [1, 0, 1, 1, 0, 1, 0, 1], [1, 1, 1, 0, 0, 0, 1, 1]
    e = AccuracyEffect.paired(a, b, seed=3, n_boot=300)
    d = stats.accuracy_effect(a, b, seed=3, n_boot=300)
    assert (e.base.estimate, e.base.lo, e.base.hi, e.base.successes) == (d["acc_base"], d["acc_base_lo"],
                                                                          d["acc_base_hi"], 5)
    assert (e.cond.estimate, e.cond.successes) == (d["acc_cond"], 5)
    assert (e.delta.estimate, e.delta.lo, e.delta.hi, e.delta.p_value) == (d["delta"], d["delta_lo"], d["delta_hi"],
                                                                           d["mcnemar_p"])
    assert e.delta.test == "mcnemar_exact" and (e.n01, e.n10, e.flips) == (2, 2, 4) and e.flip_rate == 0.5
    y = np.random.default_rng(0).integers(0, 2, size=(4, 12))
    m = Mediation.from_outcomes(*y, seed=1, n_boot=200)
    dm = stats.mediation_effects(*y, seed=1, n_boot=200)
    for k in ("te", "nie", "nde", "interaction"):
        assert (m[k].estimate, m[k].lo, m[k].hi) == (dm[k]["estimate"], dm[k]["lo"], dm[k]["hi"])
    assert m.proportion_mediated.n_undefined == dm["proportion_mediated"]["n_undefined"]


def test_round_trip_through_summary_json(tmp_path):
    rec = {"schema": SUMMARY_SCHEMA, "acc": AccuracyEffect.paired([1, 0, 1], [1, 1, 0], n_boot=50),
           "ratio": Ratio(estimate=math.inf, lo=1.0, hi=math.inf, n=3, n_undefined=1)}
    path = write_json_atomic(tmp_path / "summary.json", rec)
    back = json.loads(path.read_text())
    assert back["schema"] == "latentcheck.summary/4"
    assert back["acc"] == rec["acc"].to_dict()
    assert AccuracyEffect.from_dict(back["acc"]) == rec["acc"]
    assert back["ratio"]["estimate"] is None and back["ratio"]["hi"] is None  # inf -> null, as every record file
    assert from_dict("ratio", back["ratio"]).n_undefined == 1
    assert to_jsonable(rec["acc"]) == back["acc"]


def test_from_dict_errors_name_the_place():
    with pytest.raises(LatentcheckError, match=r"\$\.base: unknown Proportion field\(s\) accuracy"):
        AccuracyEffect.from_dict({**AccuracyEffect.paired([1, 0], [1, 1], n_boot=20).to_dict(),
                                  "base": {"accuracy": 0.5, "estimate": 0.5}})
    with pytest.raises(LatentcheckError, match="needs field 'estimate'"):
        Effect.from_dict({"lo": 0.1})
    with pytest.raises(LatentcheckError, match="unknown summary record kind"):
        from_dict("bogus", {})
    assert set(RECORD_TYPES) == {"estimate", "proportion", "trigger_rate", "fold_accuracy", "score", "ratio", "effect",
                                 "accuracy_effect", "mediation"}


def test_extending_a_record_keeps_old_readers_working():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class AdjustedEffect(Effect):
        kind = "adjusted_effect"
        p_holm: float | None = None
        mde: float | None = None

    e = AdjustedEffect(estimate=0.1, lo=0.02, hi=0.2, n=40, p_value=0.01, p_holm=0.03, mde=0.08)
    d = e.to_dict()
    assert list(d)[:5] == CI_SHAPE and d["p_holm"] == 0.03 and d["mde"] == 0.08
    assert AdjustedEffect.from_dict(d) == e
    assert dataclasses.replace(Effect.paired([0, 0, 1], [1, 1, 1], n_boot=20), p_value=0.5).p_value == 0.5
    assert e.excludes(0.0) and not e.within(-0.1, 0.1) and e.within(0.0, 0.25)


def test_formatters():
    assert fmt_num(0.12345) == "0.123" and fmt_num(0.12345, 2, signed=True) == "+0.12"
    assert fmt_num(None) == fmt_num(math.nan) == "-" and fmt_num(-math.inf) == "-inf"
    assert fmt_pct(0.5234) == "52.3" and fmt_pct(-0.05, signed=True) == "-5.0"
    assert fmt_p(0.031234) == "0.0312" and fmt_p(1.0) == "1"
    assert fmt_ci(0.52, 0.41, 0.63) == "0.52 [0.41, 0.63]" and fmt_ci(0.5) == "0.50"
    p = Proportion.wilson(3, 10)
    assert fmt_ci(p, pct=True, digits=1, n=True) == "30.0 [10.8, 60.3] (n=10)"
    assert fmt_ci(p.to_dict(), digits=3) == "0.300 [0.108, 0.603]"
    assert fmt_ci(Effect(estimate=-0.1, lo=-0.3, hi=math.inf, n=4), signed=True) == "-0.10 [-0.30, inf]"
    # an interval of non-zero width never prints as zero-width: rounding that would hide it switches to significant
    # digits (toy-bypass's floored X -> Z ratio); a truly zero-width one still prints as it is
    assert fmt_ci(0.0, 1.2e-9, 8.3e-4) == "0.00 [1.2e-09, 0.00083]"
    assert fmt_ci(0.0, 0.0, 8.3e-4) == "0.00 [0, 0.00083]"
    assert fmt_ci(0.0, 0.0, 0.0) == "0.00 [0.00, 0.00]"


def test_a_stored_summary_of_another_schema_is_refused_in_one_line(tmp_path):
    """read_summary is the one place a stored summary is read back: the current schema reads; /2 (or no schema key =
    /1) is refused with one line naming the file and the schema it has; not JSON is an error naming the file."""
    from latentcheck.core.errors import LatentcheckError
    from latentcheck.core.summaries import read_summary

    ok = write_json_atomic(tmp_path / "ok.json", {"schema": SUMMARY_SCHEMA, "acc": Proportion.wilson(3, 4)})
    assert read_summary(ok)["acc"]["successes"] == 3
    old = write_json_atomic(tmp_path / "old" / "summary.json",
                            {"schema": "latentcheck.summary/2", "accuracy": {"accuracy": 0.5, "lo": 0.1, "hi": 0.9}})
    with pytest.raises(LatentcheckError) as e:
        read_summary(old)
    msg = str(e.value)
    assert "\n" not in msg and str(old) in msg and "latentcheck.summary/2" in msg and SUMMARY_SCHEMA in msg
    v1 = write_json_atomic(tmp_path / "v1.json", {"accuracy": {"accuracy": 0.5}})
    with pytest.raises(LatentcheckError, match="latentcheck.summary/1"):
        read_summary(v1)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LatentcheckError, match="bad.json: not valid JSON"):
        read_summary(tmp_path / "bad.json")


def test_a_version_3_summary_is_refused_because_version_4_moved_its_numbers(tmp_path):
    """Version 4 typed what /3 left as plain dicts (the latent_trigger block, bench scores, probe by_category, the
    separability, perturb-latent curves): a /3 reader would misread a /4 file (the trigger rate it looks up under
    ``rate`` is now ``estimate``: the fake-null guard would see no rate and stay silent), and this version would
    misread a /3 file the same way -- so a /3 summary is refused in one line naming the file and both schemas."""
    from latentcheck.core.errors import LatentcheckError
    from latentcheck.core.summaries import read_summary
    from latentcheck.core.trigger import baseline_rate, trigger_block

    v3_block = {"baseline": "baseline", "conditions": {"baseline": {"n": 10, "triggered": 1, "rate": 0.1,
                                                                    "lo": 0.018, "hi": 0.404}}}
    v4_block = trigger_block({"baseline": ([True] + [False] * 9, [4] + [0] * 9)}, "baseline", "latent")
    assert baseline_rate(v4_block) == (0.1, 10) and v4_block["warning"]
    assert baseline_rate(v3_block) == (None, 10)  # what reading the other version's shape would give
    old = write_json_atomic(tmp_path / "v3" / "summary.json", {"schema": "latentcheck.summary/3",
                                                                "latent_trigger": v3_block})
    with pytest.raises(LatentcheckError) as e:
        read_summary(old)
    msg = str(e.value)
    assert "\n" not in msg and str(old) in msg and "latentcheck.summary/3 is not latentcheck.summary/4" in msg
    assert "--resume" in msg


def test_trigger_rate_record_by_hand():
    """3 of 4 samples triggered with lengths 4, 2, 0 (not triggered), 3: rate 0.75 with Wilson [0.30064, 0.95441],
    mean length over the triggered (4 + 2 + 3) / 3 = 3, over all 9 / 4 = 2.25; no samples: every number None."""
    from latentcheck.core.summaries import TriggerRate
    from latentcheck.core.trigger import trigger_stats

    t = trigger_stats([True, True, False, True], [4, 2, 0, 3])
    assert (t["estimate"], t["successes"], t["n"], t["method"]) == (0.75, 3, 4, "wilson")
    assert (t["lo"], t["hi"]) == pytest.approx((0.30064, 0.95441), abs=1e-5)
    assert (t["mean_length"], t["mean_length_all"]) == (3.0, 2.25)
    assert TriggerRate.from_dict(t) == TriggerRate.of_samples([True, True, False, True], [4, 2, 0, 3])
    empty = trigger_stats([], [])
    assert (empty["estimate"], empty["lo"], empty["hi"], empty["n"], empty["mean_length_all"]) == (None,) * 3 + (0, None)
