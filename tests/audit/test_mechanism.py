"""The audit's mechanism section (issue #24 part 6): readers of both summary shapes, the row and its cells on
hand-built summaries, and the zoo's controls coming out as designed in the mechanism stage."""

from __future__ import annotations

import pytest

from latentcheck.audit.mechanism import (MECHANISM_TABLES, accuracy_of, effect_of, length_sweep_for, mechanism_cells,
                                         mechanism_row)

FLAT = {"label": "placeholder:source=mean,token=", "group": "spec", "n": 60, "acc_base": 0.9, "acc_base_lo": 0.8,
        "acc_base_hi": 0.95, "delta": -0.5, "delta_lo": -0.62, "delta_hi": -0.37, "interval": "tango_score",
        "mcnemar_p": 1e-6, "mde": 0.2, "accuracy": 0.4, "accuracy_lo": 0.28, "accuracy_hi": 0.53, "p_holm": 3e-6}
TYPED = {"n": 60, "base": {"estimate": 0.9, "lo": 0.8, "hi": 0.95, "n": 60, "method": "wilson", "successes": 54},
         "cond": {"estimate": 0.4, "lo": 0.28, "hi": 0.53, "n": 60, "method": "wilson", "successes": 24},
         "delta": {"estimate": -0.5, "lo": -0.62, "hi": -0.37, "n": 60, "method": "tango_score", "p_value": 1e-6,
                   "test": "mcnemar_exact"},
         "n01": 0, "n10": 30, "flips": 30, "flip_rate": 0.5}


def test_readers_take_the_flat_and_the_typed_shape_alike():
    for row in (FLAT, TYPED, {"label": "x", "effect": TYPED}):
        e = effect_of(row)
        assert (e["estimate"], e["lo"], e["hi"], e["n"]) == (-0.5, -0.62, -0.37, 60) and e["method"] == "tango_score"
        a = accuracy_of(row)
        assert (a["estimate"], a["lo"], a["hi"], a["successes"]) == (0.4, 0.28, 0.53, 24)
        assert accuracy_of(row, base=True)["estimate"] == 0.9
    assert effect_of(FLAT)["p_value"] == 1e-6 and effect_of(FLAT)["p_holm"] == 3e-6
    assert effect_of(None) is None and accuracy_of({}) is None


def test_length_sweep_leaves_out_the_own_length():
    assert length_sweep_for(4) == [0, 1, 2, 8]
    assert length_sweep_for(8) == [0, 1, 4, 16]
    assert length_sweep_for(1) == [0, 2]


def _summaries():
    eff = {"estimate": -0.7, "lo": -0.8, "hi": -0.55, "n": 60, "method": "tango_score"}
    mech = {"n": 60, "K": 4, "baseline_accuracy": {"estimate": 0.95, "lo": 0.86, "hi": 0.98, "n": 60},
            "arms": {"placeholder": {"effect": eff},
                     "knockout:query=answer,key=span,layers=all": {"effect": {**eff, "estimate": -0.72}},
                     "knockout:query=span,key=image,layers=all": {"effect": {**eff, "estimate": -0.55}}},
            "length": [{"k": 0, "accuracy": {"estimate": 0.2}, "effect": {**eff, "estimate": -0.75}},
                       {"k": 8, "accuracy": {"estimate": 0.4}, "effect": eff}],
            "erasure": {"label": "meta.answer_text", "reading": "encodes and uses", "probe_before": {"accuracy": 0.93},
                        "probe_after": {"accuracy": 0.22}, "chance": 0.38, "erased": {**eff, "estimate": -0.58},
                        "follows": {"rate": 0.42, "own_rate": 0.02}}}
    pl = {"counts": {"ok": 100}, "interventions": [{**FLAT, "label": "shared:source=mean"}],
          "layer_patching": {"image": {"rows": [{"label": "0", "effect": TYPED,
                                                  "follows_counterfactual": {"estimate": 1.0}}]}}}
    probe = {"capture": {"n": 100, "logit_lens": {"steps": [{"step": 0, "n": 100, "gold_mrr": 0.2, "gold_top1": 0.1},
                                                            {"step": 1, "n": 100, "gold_mrr": 0.3, "gold_top1": 0.2}],
                                                  "reference_last_prompt_token": {"gold_mrr": 0.25}},
                         "attention": {"n": 100, "contrasts_over_layers": {
                             "latent_share_vs_uniform": {"estimate": 0.2, "lo": 0.1, "hi": 0.3, "n": 100},
                             "start_share_vs_uniform": None, "latent_region_vs_answer_point": None}}}}
    pi = {"geometry": {"n": 64, "latent_vs_refs": {"image_tokens": {"n": 64, "linear_cka": 0.43, "rsa": 0.47,
                                                                    "retrieval": {"accuracy": 0.0, "chance": 1 / 64,
                                                                                  "p_value": 1.0}}},
                       "position_matched": {"best": [{"step": 0, "position": 9, "cka": 0.3},
                                                     {"step": 1, "position": 5, "cka": 0.35}],
                                            "pooled_cka": [0.4, 0.44],
                                            "target": {"mean_over_steps": {"estimate": 0.05, "lo": -0.07,
                                                                           "hi": 0.19, "n": 64}}}}}
    return {"mechanism": mech, "perturb_latent": pl, "probe": probe, "perturb_input": pi}


def test_row_and_cells_on_hand_built_summaries():
    row = mechanism_row(_summaries())
    assert row["n"] == {"mechanism_arms": 60, "perturb_latent": 100, "probe": 100, "geometry": 64}
    assert row["format"]["markers_only"]["estimate"] == -0.75 and row["content"]["effect"]["estimate"] == -0.5
    assert row["flow"]["knockout_answer_span"]["estimate"] == -0.72
    assert row["flow"]["layer_patching"][0]["effect"]["estimate"] == -0.5
    assert row["readout"]["lens_best_step"]["step"] == 1 and row["readout"]["lens_reference_mrr"] == 0.25
    assert row["geometry"]["best_position"] == {"step": 1, "position": 5, "cka": 0.35}
    c = mechanism_cells("m", row)
    assert set(c) >= {col for cols in MECHANISM_TABLES.values() for col in cols}
    assert c["span length K': accuracy"] == "0: 0.20; 4: 0.95; 8: 0.40"  # the own K = the baseline
    assert c["markers only (K'=0) dAcc"] == "-0.75 [-0.80, -0.55]"
    assert c["span patched per layer: dAcc / follows"] == "L0 -0.50 [-0.62, -0.37] / 1.00"
    assert c["logit lens: gold MRR (best step) vs prompt"] == "0.300 (step 1) vs 0.250"
    assert c["best position CKA (pooled)"] == "0.35 at 5 (0.44)"
    assert c["reading"] == "encodes and uses" and c["follows steering (own)"] == "0.42 (0.02)"
    empty = mechanism_cells("t", mechanism_row({"perturb_input": _summaries()["perturb_input"]}))
    assert empty["knockout answer->span dAcc"] == "-" and empty["CKA / RSA with image tokens"] == "0.43 / 0.47"


@pytest.mark.parametrize("model", ["toy-vector", "toy-mediated", "toy-latent", "toy-bypass"])
def test_zoo_controls_come_out_as_designed_in_the_mechanism_stage(tmp_path, model):
    """60 samples (the default mechanism limit): the answer reads the span in the two image-through-the-span
    controls (knockout and placeholder drop them) and not in toy-bypass (equivalent to 0 within +-7 points), whose
    span-length effect is format only; LEACE: toy-mediated and toy-vector encode and use the answer attribute,
    toy-latent encodes it unused, toy-bypass does not encode it."""
    pytest.importorskip("concept_erasure")
    from latentcheck.audit.audit import AuditSettings, run_audit
    from latentcheck.core.runner import CommonOptions

    r = run_audit(CommonOptions(model=model, out=str(tmp_path / model), quiet=True),
                  AuditSettings(stages=["mechanism"], report=False, n_boot=300, threads=1))
    row = r.entry["mechanism"]
    assert row["n"]["mechanism_arms"] == 60
    f, fl, er = row["format"], row["flow"], row["erasure"]
    if model in ("toy-vector", "toy-mediated"):
        assert fl["knockout_answer_span"]["hi"] < -0.5 and f["placeholder"]["hi"] < -0.5
        assert er["reading"] == "encodes and uses", er
    if model == "toy-bypass":
        for e in (fl["knockout_answer_span"], fl["knockout_span_image"], f["placeholder"]):
            assert e["estimate"] == 0.0 and -0.07 < e["lo"] < 0 < e["hi"] < 0.07
        assert f["markers_only"]["hi"] < -0.2  # format: removing the span's positions still costs accuracy
        assert er["reading"] == "does not encode", er
    if model == "toy-latent":
        assert er["reading"] == "encodes, unused", er
