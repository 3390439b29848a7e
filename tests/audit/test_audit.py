"""Tests for audit/audit.py: verdict rules on hand-built summaries, rules as data, and whole audits on tiny
checkpoints whose causal structure is fixed by their attention rules (toy-bypass: the latent span sees no input and
nothing sees the span)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
from pathlib import Path

import pytest
import torch

from latentcheck.audit.audit import AuditSettings, run_audit
from latentcheck.audit.verdicts import (DEFAULT_RULES, STAGE_FOLDERS, Verdict, comparison_cells, comparison_row, judge,
                                        load_audit, load_rules, merge_rules, verdict_encodes, verdict_overall,
                                        verdict_xz, verdict_zy, verdict_zy_text)
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.runner import CommonOptions
from latentcheck.core.summaries import AccuracyEffect, Proportion

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- hand-built summaries
Z975 = 1.959963984540054  # standard normal 97.5% quantile


def pi_summary(est, lo, hi, n=20, treatment="swap_image"):
    return {"trigger_rate": {"estimate": 1.0}, "latent_source": "fed-back latent vectors",
            "treatments": {treatment: {"n": n, "reference": "image_tokens",
                                       "sensitivity_ratio": {"estimate": est, "lo": lo, "hi": hi},
                                       "latent_rel_l2": {"estimate": 0.1}, "latent_cosine": {"estimate": 0.9},
                                       "refs": {"image_tokens": {"rel_l2": {"estimate": 0.2}}}},
                           "identity": {"n": n, "reference": "image_tokens",
                                        "sensitivity_ratio": {"estimate": None, "lo": None, "hi": None}}}}


def paired_effect(n01, n10, n, base=0.9, p_holm=None):
    """The AccuracyEffect record (as summary.json holds it) of n paired samples, round(base * n) right under the base
    condition; n10 of those turn wrong and n01 of the wrong ones turn right under the condition."""
    k = round(base * n)
    before = [1] * k + [0] * (n - k)
    after = [0] * n10 + [1] * (k - n10) + [1] * n01 + [0] * (n - k - n01)
    e = AccuracyEffect.paired(before, after, n_boot=200)
    return dataclasses.replace(e, delta=dataclasses.replace(e.delta, p_holm=p_holm)).to_dict()


def _row(label, n01, n10, n, degenerate=0.0):
    """One perturb-latent intervention row as the analysis writes it (score CI, McNemar p, discordant counts)."""
    return {"label": label, "n": n, "effect": paired_effect(n01, n10, n), "degenerate_rate": degenerate}


def pl_summary(deltas, nie, n=100, acc=0.9, acc_lo=0.8, chance=0.25, trigger=1.0, degenerate=None):
    """deltas: {label: (n01, n10)} discordant counts; nie: (n01, n10) of y01 vs y00, or None."""
    from latentcheck.core.stats import holm, paired_score_interval

    rows = [_row(lab, a, b, n, (degenerate or {}).get(lab, 0.0)) for lab, (a, b) in deltas.items()]
    for r, ph in zip(rows, holm([r["effect"]["delta"]["p_value"] for r in rows])):
        r["effect"]["delta"]["p_holm"] = ph
    med = {}
    if nie:
        ci = paired_score_interval(nie[0], nie[1], n)
        med = {"image": {"primary_outcome": "correct",
                         "correct": {"n": n, "te": {"estimate": -0.5, "lo": -0.6, "hi": -0.4},
                                     "nie": {**ci, "n01": nie[0], "n10": nie[1]},
                                     "nde": {"estimate": 0.0, "lo": -0.02, "hi": 0.02}}}}
    return {"baseline": {"n": n, "accuracy": {"estimate": acc, "lo": acc_lo, "hi": 0.95, "n": n, "method": "wilson",
                                              "successes": round(acc * n)},
                         "chance": chance, "trigger_rate": trigger}, "interventions": rows, "mediation": med}


def probe_summary(sites, chance=0.3, label="meta.answer_text"):
    """sites: {site: (accuracy, lo, hi, selectivity_lo)}."""
    out = {}
    for s, (a, lo, hi, slo) in sites.items():
        out[s] = {"n": 40, "chance": chance, "linear": {"estimate": a, "lo": lo, "hi": hi, "n": 40, "method": "wilson",
                                                        "successes": round(a * 40)},
                  "linear_control": {"estimate": chance, "n": 40},
                  "linear_selectivity": {"estimate": a - chance, "lo": slo, "hi": a - chance + 0.1}}
    return {"trained": {"labels": {label: {"sites": out}}}}


def test_rules_are_data_and_overrides_are_checked(tmp_path):
    r = merge_rules({"zy": {"equivalence_margin": 0.02}, "xz": {"dependent_above": 1}})
    assert r["zy"]["equivalence_margin"] == 0.02 and r["xz"]["dependent_above"] == 1.0
    assert DEFAULT_RULES["zy"]["equivalence_margin"] == 0.05  # the defaults are not mutated
    import tomllib

    from latentcheck.audit.verdicts import RULES_FILE

    assert DEFAULT_RULES == tomllib.loads(RULES_FILE.read_text())  # every rule lives in the one data file
    with pytest.raises(LatentcheckError, match="unknown section 'yz'"):
        merge_rules({"yz": {}})
    with pytest.raises(LatentcheckError, match="unknown setting zy.margin"):
        merge_rules({"zy": {"margin": 0.1}})
    with pytest.raises(LatentcheckError, match="zy.equivalence_margin must be float"):
        merge_rules({"zy": {"equivalence_margin": "small"}})
    (tmp_path / "r.toml").write_text("[encodes]\nchance_margin = 0.1\n")
    assert load_rules(tmp_path / "r.toml")["encodes"]["chance_margin"] == 0.1
    (tmp_path / "r.json").write_text(json.dumps({"xz": {"treatment": "swap_instance"}}))
    assert load_rules(tmp_path / "r.json")["xz"]["treatment"] == "swap_instance"
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(LatentcheckError, match="not valid JSON"):
        load_rules(tmp_path / "bad.json")


def test_xz_verdict_follows_the_ratio_ci():
    R = DEFAULT_RULES
    assert verdict_xz(pi_summary(0.4, 0.3, 0.5), R).verdict == "input-dependent"
    assert verdict_xz(pi_summary(0.0, 0.0, 0.0), R).verdict == "input-independent"
    v = verdict_xz(pi_summary(0.12, 0.05, 0.2), R)
    assert v.status == "inconclusive" and "straddles" in v.summary
    assert verdict_xz(pi_summary(math.nan, math.nan, math.nan), R).status == "untestable"
    assert verdict_xz(pi_summary(0.4, 0.3, 0.5, treatment="noise"), R).status == "untestable"  # rule's one missing
    assert verdict_xz(None, R).status == "untestable"
    # the threshold is read from the rules
    assert verdict_xz(pi_summary(0.4, 0.3, 0.5), merge_rules({"xz": {"dependent_above": 0.35}})).status == \
        "inconclusive"
    v = verdict_xz(pi_summary(0.4, 0.3, 0.5), R)
    assert v.evidence["ratio"] == 0.4 and "0.40 [0.30, 0.50]" in v.summary


def test_xz_ratio_below_its_resolution_reads_the_share_of_inputs_that_move_the_latents():
    """toy-bypass's case: latents within round-off on every sample. The ratio's bootstrap interval would be [0, 0];
    with the resolution floor it reaches resolution / mean reference change (1e-4 / 0.4 = 2.5e-4), and the verdict
    reads the Wilson interval of 'latents moved' (0 of n: upper end z^2 / (n + z^2)): input-independent at n = 100
    (0.037 <= 0.10), inconclusive at n = 20 (0.161; need >= 35 = ceil(9 z^2)). A ratio with sampling spread above
    the floor is read as before."""
    from latentcheck.audit.verdicts import min_n_for_zero_share
    from latentcheck.core.summaries import Proportion, Ratio

    def summary(n, num, den):
        s = pi_summary(0, 0, 0, n=n)
        tr = s["treatments"]["swap_image"]
        tr["sensitivity_ratio"] = Ratio.bootstrap(num, den, n_boot=200, resolution=1e-4).to_dict()
        tr["latents_moved"] = Proportion.of([x > 1e-4 for x in num]).to_dict()
        tr["move_resolution"] = 1e-4
        return s

    rng = np.random.default_rng(0)
    num100, den100 = rng.uniform(0, 2e-7, 100), np.full(100, 0.4)
    ratio = summary(100, num100, den100)["treatments"]["swap_image"]["sensitivity_ratio"]
    assert ratio["method"] == "paired_bootstrap_floored" and ratio["hi"] == pytest.approx(2.5e-4)
    assert ratio["lo"] < ratio["hi"] and ratio["resolution_floor"] == pytest.approx(2.5e-4)
    v = verdict_xz(summary(100, num100, den100), DEFAULT_RULES)
    assert v.verdict == "input-independent" and "0/100" in v.summary and "resolution floor" in v.summary
    assert v.evidence["moved_hi"] == pytest.approx(Z975 ** 2 / (100 + Z975 ** 2))
    v20 = verdict_xz(summary(20, num100[:20], den100[:20]), DEFAULT_RULES)
    assert v20.status == "inconclusive" and "need >= 35" in v20.summary
    assert all(x["verdict"] != "input-independent" for x in v20.evidence["threshold_sweep"])
    assert min_n_for_zero_share(0.10) == 35 == math.ceil(9 * Z975 ** 2)
    # genuine (if small) latent changes: not floored, the ratio's own interval decides
    num, den = rng.uniform(0.001, 0.01, 20), rng.uniform(0.3, 0.5, 20)
    s = summary(20, num, den)
    assert s["treatments"]["swap_image"]["sensitivity_ratio"]["method"] == "paired_bootstrap"
    assert verdict_xz(s, DEFAULT_RULES).verdict == "input-independent"


MEAN, SWAP = "shared:source=mean", "swap"


def test_zy_verdict_needs_a_drop_and_a_mediated_effect():
    R = DEFAULT_RULES
    drop = {MEAN: (0, 40), SWAP: (2, 30)}
    flat = {MEAN: (0, 0), SWAP: (1, 1)}
    v = verdict_zy(pl_summary(drop, (0, 30)), R)
    assert v.verdict == "causal" and "p_holm" in v.summary
    v = verdict_zy(pl_summary(flat, (0, 0)), R)
    assert v.verdict == "not causal" and "minimum detectable effect at 80% power" in v.summary
    assert v.evidence["deltas"][MEAN]["tost"]["equivalent"] and v.evidence["nie"]["mde"] > 0
    v = verdict_zy(pl_summary(drop, (5, 9)), R)
    assert v.status == "inconclusive" and "NIE CI includes 0" in v.summary
    # a significant but tiny drop is not "causal": the score CI must clear the minimum effect (0.05)
    v = verdict_zy(pl_summary({MEAN: (0, 6), SWAP: (0, 0)}, (0, 20)), R)
    assert v.status == "inconclusive" and "more than 0.05" in v.summary
    # wide CIs: no equivalence
    v = verdict_zy(pl_summary({MEAN: (10, 10), SWAP: (0, 0)}, (0, 0)), R)
    assert v.status == "inconclusive" and "too wide" in v.summary
    # off-distribution ablations (zero, noise) are reported but never decide
    v = verdict_zy(pl_summary({**flat, "zero": (0, 60), "noise_replace": (0, 55)}, (0, 0)), R)
    assert v.verdict == "not causal" and "off-distribution: zero" in v.summary and "zero" in v.evidence["secondary"]
    # a condition that degenerates too often is flagged and cannot make the verdict causal
    v = verdict_zy(pl_summary(drop, (0, 30), degenerate={MEAN: 0.5, SWAP: 0.4}), R)
    assert v.status == "inconclusive" and "[degenerate]" in v.summary
    # guards: a span that never runs, a model at chance, too few samples, no NIE for "not causal"
    assert "triggered" in verdict_zy(pl_summary(flat, (0, 0), trigger=0.1), R).summary
    assert verdict_zy(pl_summary(flat, (0, 0), acc=0.3, acc_lo=0.2), R).status == "untestable"
    assert verdict_zy(pl_summary(flat, (0, 0), n=5), R).status == "untestable"
    assert verdict_zy(pl_summary(flat, None), R).status == "inconclusive"
    off = merge_rules({"zy": {"require_above_chance": False}})
    assert verdict_zy(pl_summary(flat, (0, 0), acc=0.3, acc_lo=0.2), off).verdict == "not causal"


def test_null_needs_enough_samples():
    """0 of 10 flips: the score interval is +-0.28, not zero-width, and the verdict is inconclusive with the sample
    size equivalence would need; 0 of 100 flips: equivalence within +-5 points, with the MDE stated."""
    R = DEFAULT_RULES
    small = verdict_zy(pl_summary({MEAN: (0, 0), SWAP: (0, 0)}, (0, 0), n=10), R)
    d = small.evidence["deltas"][MEAN]
    assert d["lo"] == pytest.approx(-0.2775, abs=1e-4) and d["hi"] == pytest.approx(0.2775, abs=1e-4)
    assert small.status == "inconclusive" and "n too small for +-5 points: need >= 52" in small.summary
    big = verdict_zy(pl_summary({MEAN: (0, 0), SWAP: (0, 0)}, (0, 0), n=100), R)
    assert big.verdict == "not causal" and "minimum detectable effect" in big.summary
    # the margin is a reading: a stricter margin turns the same stored numbers inconclusive
    strict = merge_rules({"zy": {"equivalence_margin": 0.02}})
    assert verdict_zy(pl_summary({MEAN: (0, 0), SWAP: (0, 0)}, (0, 0), n=100), strict).status == "inconclusive"


def test_text_doz_verdict():
    def doz(n01, n10, n=100, base=0.9):
        """The intervene summary of n samples, round(base * n) right before do(Z); n10 of them turn wrong and n01
        of the wrong ones turn right (the effect is the typed record computed from those outcomes)."""
        return {"n_samples": n, "n_intervened": n, "imagination_rate": 1.0, "skip_reasons": {},
                "effect": paired_effect(n01, n10, n, base),
                "follows_corruption": Proportion.wilson(round(0.8 * n), n).to_dict(), "flip_rate": 0.8,
                "p_gold": None}

    R = DEFAULT_RULES
    assert verdict_zy_text(doz(0, 60), R, 0.25).verdict == "causal"
    v = verdict_zy_text(doz(0, 0), R, 0.25)
    assert v.verdict == "not causal" and "minimum detectable effect" in v.summary
    assert verdict_zy_text(doz(5, 15), R, 0.25).status == "inconclusive"
    assert "need >= 52" in verdict_zy_text(doz(0, 0, n=20), R, 0.25).summary
    assert verdict_zy_text(doz(0, 20, base=0.3), R, 0.25).status == "untestable"  # Wilson lo 0.22 <= chance
    assert verdict_zy_text({"n_samples": 5, "n_intervened": 0, "effect": None}, R, 0.25).status == "untestable"


def test_encodes_verdict_uses_the_best_latent_site_against_chance_and_control():
    R = DEFAULT_RULES
    s = probe_summary({"latent_0": (0.35, 0.25, 0.45, -0.05), "latent_1": (0.8, 0.7, 0.88, 0.35),
                       "image_tokens": (0.99, 0.95, 1.0, 0.6)})
    v = verdict_encodes(s, R)
    assert v.verdict == "encodes" and v.evidence["site"] == "latent_1"  # references never count as "latent"
    assert set(v.evidence["per_site"]) == {"latent_0", "latent_1", "image_tokens"}
    weak = probe_summary({"latent_0": (0.4, 0.33, 0.5, 0.05)})  # lo 0.33 < chance 0.30 + margin 0.05
    assert verdict_encodes(weak, R).verdict == "not detected"
    no_sel = probe_summary({"latent_0": (0.8, 0.7, 0.88, -0.01)})  # beats chance but not the control task
    assert verdict_encodes(no_sel, R).verdict == "not detected"
    other = probe_summary({"latent_0": (0.8, 0.7, 0.88, 0.3)}, label="answer")  # falls back to the next label
    assert verdict_encodes(other, R).evidence["label"] == "answer"
    assert verdict_encodes({"trained": {"skipped": "no captured states"}}, R).status == "untestable"
    mlp_only = probe_summary({"latent_0": (0.8, 0.7, 0.88, 0.3)})
    site = mlp_only["trained"]["labels"]["meta.answer_text"]["sites"]["latent_0"]
    for k in ("", "_control", "_selectivity"):
        site[f"mlp{k}"] = site.pop(f"linear{k}")
    assert verdict_encodes(mlp_only, R).evidence["method"] == "mlp"


def test_overall_verdict_is_the_chain():
    def v(status):
        return Verdict("x", status, status, "")

    assert verdict_overall({"xz": v("positive"), "zy": v("positive"), "encodes": v("negative")}).verdict == \
        "causally real"
    assert verdict_overall({"xz": v("positive"), "zy": v("negative"), "encodes": v("positive")}).verdict == \
        "not causally real"
    assert verdict_overall({"xz": v("negative"), "zy": v("untestable"), "encodes": v("positive")}).verdict == \
        "not causally real"
    assert verdict_overall({"xz": v("positive"), "zy": v("inconclusive"), "encodes": v("positive")}).status == \
        "inconclusive"
    assert verdict_overall({"xz": v("positive"), "zy": v("untestable"), "encodes": v("positive")}).status == \
        "untestable"


def test_judge_and_comparison_row_for_each_kind():
    R = DEFAULT_RULES
    sums = {"perturb_input": pi_summary(0.4, 0.3, 0.5),
            "perturb_latent": pl_summary({MEAN: (0, 40)}, (0, 30)),
            "probe": probe_summary({"latent_0": (0.8, 0.7, 0.88, 0.3)})}
    v = judge(sums, "latent", R)
    assert [v[k].verdict for k in ("xz", "zy", "encodes", "overall")] == \
        ["input-dependent", "causal", "encodes", "causally real"]
    entry = {"model": "m", "kind": "latent", "verdicts": {k: x.to_dict() for k, x in v.items()},
             "bench": {"accuracy": 0.9, "lo": 0.8, "hi": 0.95, "n": 50, "chance": 0.25, "benchmark": "generic"}}
    cells = comparison_cells(comparison_row(entry))
    assert cells["X -> Z sensitivity [CI]"] == "0.40 [0.30, 0.50]"
    d, n = v["zy"].evidence["deltas"][MEAN], v["zy"].evidence["nie"]
    assert cells["Z -> Y dAcc under intervention [CI]"] == f"{MEAN} {d['delta']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
    assert d["delta"] == -0.4 and d["hi"] < -0.3
    assert cells["NIE [CI]"] == f"-0.30 [{n['lo']:+.2f}, {n['hi']:+.2f}]" and cells["text do(Z) dAcc [CI]"] == "-"
    assert cells["bench acc [CI]"] == "0.90 [0.80, 0.95] (chance 0.25)"
    assert judge(sums, "plain", R)["zy"].status == "untestable"


# ---------------------------------------------------------------------------------------------- whole audits
@pytest.fixture(scope="module")
def bypass_audit(tiny_checkpoint, tmp_path_factory):
    """A whole audit of a random tiny toy-bypass model: its latents see no input and nothing reads them, so X -> Z
    and Z -> Y are null by construction (exact zeros), whatever the weights."""
    out = tmp_path_factory.mktemp("audit-bypass")
    ck = tiny_checkpoint("toy", "toy-bypass")
    opts = CommonOptions(model=str(ck), out=str(out), limit=8, quiet=True)
    # 8 samples: 0/8 latents moved bounds the share of inputs that move them by 0.32 (Wilson), so the X -> Z null
    # needs max_moved_share above that here (default 0.10 needs >= 35 samples)
    rules = merge_rules({"zy": {"require_above_chance": False, "min_samples": 4},
                         "xz": {"min_samples": 4, "max_moved_share": 0.5}})
    return run_audit(opts, AuditSettings(force_latent=True, report=False, n_boot=200), rules)


def test_audit_of_the_negative_control_finds_no_causal_latents(bypass_audit):
    r = bypass_audit
    assert r.kind == "latent" and r.exit_code == 0
    assert r.verdicts["xz"].verdict == "input-independent"
    # the span cannot see the input: no latent moves beyond round-off, the ratio's interval ends at its resolution
    # floor (not a zero-width [0, 0]) and the verdict reads the share that moved (0/8, Wilson [0, 0.32])
    ev = r.verdicts["xz"].evidence
    assert ev["ratio_method"] == "paired_bootstrap_floored" and ev["ratio_hi"] == ev["resolution_floor"] > 0
    assert ev["moved"] == 0 and ev["moved_n"] == 8 and ev["moved_hi"] == pytest.approx(Z975 ** 2 / (8 + Z975 ** 2))
    # every effect is exactly 0, but 8 samples cannot show equivalence within +-5 points: inconclusive, with CIs
    # that are not zero-width and the sample size that would be needed
    zy = r.verdicts["zy"]
    assert zy.verdict == "inconclusive" and "need >= 52" in zy.summary, zy.summary
    for d in zy.evidence["deltas"].values():
        assert d["delta"] == 0.0 and d["lo"] < 0 < d["hi"]
    assert zy.evidence["nie"]["estimate"] == 0.0 and zy.evidence["nie"]["lo"] < 0 < zy.evidence["nie"]["hi"]
    assert r.verdicts["overall"].verdict == "not causally real"  # X -> Z alone is negative


def test_audit_folder_layout_and_audit_json(bypass_audit):
    root = Path(bypass_audit.out)
    st = bypass_audit.stages
    assert st["text_doz"].status == "skipped" and "no text imagination" in st["text_doz"].reason
    for stage in ("perturb_input", "perturb_latent", "probe", "bench"):
        assert st[stage].status == "done", st[stage]
        folder = root / STAGE_FOLDERS[stage]
        assert (folder / "samples.jsonl").exists() and (folder / "summary.json").exists()
        assert st[stage].summary == f"{STAGE_FOLDERS[stage]}/summary.json"
    doc = load_audit(root)
    assert doc["kind"] == "single" and len(doc["models"]) == 1
    m = doc["models"][0]
    assert m["verdicts"]["zy"]["verdict"] == "inconclusive" and doc["rules"]["zy"]["min_samples"] == 4
    assert m["stages"]["perturb_latent"]["limit"] == 8 and doc["comparison"][0]["overall"] == "not causally real"
    # the audit's verdicts are the rules applied to the saved summaries
    sums = {s: json.loads((root / STAGE_FOLDERS[s] / "summary.json").read_text())
            for s in ("perturb_input", "perturb_latent", "probe")}
    again = judge(sums, "latent", doc["rules"], m["data_chance"])
    assert {k: v.verdict for k, v in again.items()} == {k: v["verdict"] for k, v in m["verdicts"].items()}


def test_mechanism_section_of_the_negative_control_is_exactly_null(bypass_audit):
    """The bypass span sees no input and nothing after it sees the span: the knockouts and the placeholder span change
    no answer (structural zeros, with intervals that are not zero-width), and the section lands in audit.json."""
    root = Path(bypass_audit.out)
    assert bypass_audit.stages["mechanism"].status == "done" and bypass_audit.stages["mechanism"].limit == 8
    row = load_audit(root)["models"][0]["mechanism"]
    for e in (row["flow"]["knockout_answer_span"], row["flow"]["knockout_span_image"], row["format"]["placeholder"]):
        assert e["estimate"] == 0.0 and e["lo"] < 0 < e["hi"], e
    assert row["n"]["mechanism_arms"] == 8 and [x["k"] for x in row["format"]["length"]] == [0, 1, 2, 8]
    assert (root / "mechanism" / "plots" / "mechanism_effects.png").exists()
    assert row["readout"]["attention_n"] == 8 and row["geometry"]["n"] == 8


def test_rereading_with_other_rules_changes_the_reading_not_the_result(bypass_audit):
    """A threshold changes how the stored results read (reread), never the stored files."""
    from latentcheck.audit.verdicts import reread

    root = Path(bypass_audit.out)
    before = {p: p.read_bytes() for p in sorted(root.rglob("*.json"))}
    same = reread(root, load_audit(root)["rules"])
    assert {k: v["verdict"] for k, v in same["models"][0]["verdicts"].items()} == \
        {k: v["verdict"] for k, v in load_audit(root)["models"][0]["verdicts"].items()}
    # requiring the ratio's upper bound below 0 (impossible) turns X -> Z inconclusive under the new reading
    other = reread(root, merge_rules({"xz": {"independent_below": 0.0, "min_samples": 4},
                                      "zy": {"require_above_chance": False, "min_samples": 4}}))
    assert other["models"][0]["verdicts"]["xz"]["verdict"] == "inconclusive" and other["reread"]
    assert {p: p.read_bytes() for p in sorted(root.rglob("*.json"))} == before
    sweep = load_audit(root)["models"][0]["verdicts"]["xz"]["evidence"]["threshold_sweep"]
    assert [x["threshold"] for x in sweep] == DEFAULT_RULES["xz"]["threshold_sweep"]


def test_text_imagination_audit_runs_its_own_stages(tiny_checkpoint, tmp_path):
    ck = tiny_checkpoint("toy", "toy-capimagine")
    opts = CommonOptions(model=str(ck), out=str(tmp_path / "ci"), limit=6, quiet=True)
    r = run_audit(opts, AuditSettings(force_latent=True, report=False, n_boot=100,
                                      stages=["perturb_input", "perturb_latent", "probe", "text_doz"]))
    assert r.kind == "text_imagination"
    assert r.stages["perturb_latent"].status == "skipped" and "text do(Z)" in r.stages["perturb_latent"].reason
    assert r.stages["text_doz"].status == "done" and "bench" not in r.stages
    probe = json.loads((tmp_path / "ci" / "probe" / "summary.json").read_text())
    assert "imagination-span hidden states" in probe["source"] and probe["n"] == 6
    # a random model never closes an imagination span on its own: the text do(Z) link cannot be tested
    assert r.verdicts["zy"].status == "untestable" and "closed imagination span" in r.verdicts["zy"].summary


def test_a_failing_stage_is_recorded_and_the_audit_completes(tiny_checkpoint, tmp_path, monkeypatch):
    from latentcheck.core.analysis import ANALYSES

    def broken(ctx):
        raise LatentcheckError("no labels to probe")

    monkeypatch.setitem(ANALYSES["probe"].kinds, "latent", broken)
    ck = tiny_checkpoint("toy", "toy-bypass")
    opts = CommonOptions(model=str(ck), out=str(tmp_path / "f"), limit=4, quiet=True)
    r = run_audit(opts, AuditSettings(force_latent=True, report=False, n_boot=50, stages=["probe", "bench"]))
    assert r.stages["probe"].status == "failed" and r.stages["probe"].reason == "no labels to probe"
    assert r.exit_code == 3 and r.verdicts["encodes"].status == "untestable"
    assert load_audit(tmp_path / "f")["models"][0]["stages"]["probe"]["status"] == "failed"
    with pytest.raises(LatentcheckError, match="no labels"):
        run_audit(CommonOptions(model=str(ck), out=str(tmp_path / "g"), limit=4, quiet=True, strict=True),
                  AuditSettings(report=False, stages=["probe"]))


def test_the_audit_loops_over_registered_analyses(tiny_checkpoint, tmp_path):
    """An analysis registered from outside the audit (as a plugin would: one spec) runs as one more stage, through
    the one driver, in its own folder, on the audit's model; the built-in verdicts do not depend on it."""
    from latentcheck.core.analysis import ANALYSES, Analysis, AnalysisSpec, RecordStage, register_analysis

    seen = {}

    class CountOptions(AnalysisSpec):
        command = "count-options"

        def stages(self, run):
            seen["lm"], seen["out"] = run.lm, run.opts.out
            return [RecordStage("samples", lambda tasks: [{"key": t.id, "options": len(t.options)} for t in tasks])]

        def summarise(self, run):
            records = run.records["samples"]
            return {"command": "count-options", "n": len(records), "options": sum(r["options"] for r in records)}

    register_analysis(Analysis("count_options", "count-options", "count-options",
                               {"latent": lambda ctx: CountOptions()}))
    try:
        ck = tiny_checkpoint("toy", "toy-bypass")
        opts = CommonOptions(model=str(ck), out=str(tmp_path / "a"), limit=3, quiet=True)
        r = run_audit(opts, AuditSettings(report=False, n_boot=50, stages=["bench", "count_options"]))
    finally:
        ANALYSES.remove("count_options")
    st = r.stages["count_options"]
    assert list(r.stages) == ["bench", "count_options"] and st.status == "done"
    assert st.summary == "count-options/summary.json" and st.counts["ok"] == 3
    assert json.loads((tmp_path / "a" / st.summary).read_text()) == {"command": "count-options", "n": 3,
                                                                     "options": 12, "schema": "latentcheck.summary/4"}
    assert seen["out"] == str(tmp_path / "a" / "count-options") and seen["lm"] is not None
    assert (tmp_path / "a" / "count-options" / "samples.jsonl").exists()  # its record stage ran through the driver
    assert r.verdicts["xz"].status == "untestable"  # no perturb-input stage ran


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(LatentcheckError, match="unknown audit stage"):
        AuditSettings(stages=["perturb_everything"])
    with pytest.raises(LatentcheckError, match="limit must be >= 2"):
        AuditSettings(limits={"bench": 1})
    with pytest.raises(LatentcheckError, match="no audit.json"):
        load_audit(tmp_path)
    with pytest.raises(LatentcheckError, match="no such file"):
        run_audit(CommonOptions(model="toy-latent", data=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "o")))


# ---------------------------------------------------------------------------------------------- the trained zoo
def _zoo_built(*names: str) -> bool:
    from latentcheck.core.errors import ModelLoadError
    from latentcheck.toy.zoo import zoo_model_path

    try:
        for n in names:
            zoo_model_path(n)
    except ModelLoadError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _zoo_built("toy-mediated", "toy-bypass", "toy-binding"),
                    reason="the trained toy zoo is not built")
def test_zoo_controls_come_out_as_designed(tmp_path):
    """Default rules, small limits: the positive control's latents mediate the answer, the negative control's do
    not, and the binding control (audited on its own world) is causally real too (docs/audit.md has the full default
    audit)."""
    from latentcheck.audit.audit import run_zoo_audit

    # perturb_input 40: toy-bypass's latents never move, and 0 of n bounds the share of inputs that move them by
    # z^2 / (n + z^2) <= 0.10 only from n = 35 on
    limits = {"perturb_input": 40, "perturb_latent": 64, "probe": 48, "text_doz": 16, "bench": 16}
    res = run_zoo_audit(CommonOptions(out=str(tmp_path), quiet=True, batch_size=16),
                        AuditSettings(limits=limits, report=False, n_boot=500,
                                      stages=["perturb_input", "perturb_latent", "probe"]),
                        models=["toy-mediated", "toy-bypass", "toy-binding"])
    v = {r.model: r.verdicts for r in res.results}
    assert [v["toy-binding"][k].verdict for k in ("xz", "zy", "overall")] == \
        ["input-dependent", "causal", "causally real"], {k: x.summary for k, x in v["toy-binding"].items()}
    assert v["toy-mediated"]["zy"].verdict == "causal", v["toy-mediated"]["zy"].summary
    assert v["toy-mediated"]["xz"].verdict == "input-dependent", v["toy-mediated"]["xz"].summary
    assert v["toy-bypass"]["zy"].verdict == "not causal", v["toy-bypass"]["zy"].summary
    assert v["toy-bypass"]["xz"].verdict == "input-independent", v["toy-bypass"]["xz"].summary
    assert v["toy-mediated"]["overall"].verdict == "causally real"
    assert v["toy-bypass"]["overall"].verdict == "not causally real"


@pytest.mark.slow
@pytest.mark.skipif(not _zoo_built("toy-latent"), reason="the trained toy zoo is not built")
def test_toy_latent_null_is_inconclusive_at_10_and_a_verdict_at_100(tmp_path):
    """toy-latent ignores its latents (0 flips): at n = 10 the audit says inconclusive (the score CI of 0/10 is
    +-0.28), at n = 100 it shows equivalence within +-5 points: not causal."""
    verdicts = {}
    for n in (10, 100):
        res = run_audit(CommonOptions(model="toy-latent", out=str(tmp_path / str(n)), quiet=True, batch_size=16),
                        AuditSettings(limits={"perturb_latent": n}, stages=["perturb_latent"], report=False,
                                      n_boot=200, plots=False, threads=1))
        verdicts[n] = res.verdicts["zy"]
    small = verdicts[10]
    assert small.status == "inconclusive" and "need >= 52" in small.summary, small.summary
    for d in small.evidence["deltas"].values():
        assert d["hi"] - d["lo"] > 0.4  # not zero-width
    assert verdicts[100].verdict == "not causal", verdicts[100].summary


def test_zoo_audit_fails_fast_when_a_model_is_missing(tmp_path, monkeypatch):
    from latentcheck.audit.audit import run_zoo_audit
    from latentcheck.core.errors import ModelLoadError

    monkeypatch.setenv("LATENTCHECK_ZOO", str(tmp_path / "empty-zoo"))
    monkeypatch.setenv("LATENTCHECK_CACHE", str(tmp_path / "cache"))
    import latentcheck.toy.zoo as zoo

    monkeypatch.setattr(zoo, "PACKAGED", tmp_path / "no-packaged-zoo")
    with pytest.raises(ModelLoadError, match="toy-mediated.*not built.*zoo build"):
        run_zoo_audit(CommonOptions(out=str(tmp_path / "o"), quiet=True), models=["toy-mediated"])
    assert not (tmp_path / "o" / "toy-mediated").exists()  # nothing ran
