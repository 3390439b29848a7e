"""Fake-null guard end to end: a profile whose latent mode never triggers gives a loud warning in every analysis
and the audit's "not measurable" instead of a null verdict; plain profiles on latent checkpoints warn; the run
header names the protocol."""

from __future__ import annotations

import pytest

from latentcheck.audit.audit import AuditSettings, run_audit
from latentcheck.audit.verdicts import merge_rules
from latentcheck.core.runner import CommonOptions


def test_latent_mode_that_never_triggers_is_not_measurable(tmp_path, capsys):
    # the zoo's direct-answer model never emits <|latent_start|>: run under the latent protocol, nothing triggers
    opts = CommonOptions(model="toy-direct", profile="toy-latent", out=str(tmp_path / "audit"), limit=12)
    rules = merge_rules({"zy": {"require_above_chance": False}})
    r = run_audit(opts, AuditSettings(stages=["perturb_input", "perturb_latent"], report=False, n_boot=100,
                                      plots=False), rules, progress=lambda stage: None)
    err = capsys.readouterr().err
    assert "WARNING: perturb-input: latent mode triggered in 0% of 12 original samples" in err
    assert "WARNING: perturb-latent: latent mode triggered in 0% of 12 baseline samples" in err
    for link in ("xz", "zy"):
        v = r.verdicts[link]
        assert v.verdict == "not measurable", (link, v.summary)
        assert "not measurable: latent mode triggered in 0% of samples" in v.summary
    # every condition of both analyses reports its trigger rate and mean length
    import json
    from pathlib import Path

    for folder in ("perturb-input", "perturb-latent"):
        s = json.loads((Path(opts.out) / folder / "summary.json").read_text())
        block = s["latent_trigger"]
        assert block["warning"] and len(block["conditions"]) > 1
        for c in block["conditions"].values():  # a TriggerRate record: 0 of n triggered, Wilson [0, hi > 0]
            assert c["estimate"] == 0.0 and c["successes"] == 0 and c["method"] == "wilson"
            assert c["lo"] == 0.0 and c["hi"] > 0 and c["mean_length_all"] == 0.0 and c["mean_length"] is None


def test_forced_latent_mode_is_measurable(tmp_path, capsys):
    """The same model with the start token forced: trigger rate 1, no warning, the verdicts are judged."""
    opts = CommonOptions(model="toy-direct", profile="toy-latent", out=str(tmp_path / "audit"), limit=12)
    rules = merge_rules({"zy": {"require_above_chance": False}})
    r = run_audit(opts, AuditSettings(stages=["perturb_latent"], report=False, n_boot=100, plots=False,
                                      force_latent=True), rules, progress=lambda stage: None)
    assert "WARNING" not in capsys.readouterr().err
    assert r.verdicts["zy"].verdict != "not measurable"


def test_plain_profile_on_a_latent_checkpoint_warns_and_header_names_the_protocol(tiny_checkpoint, capsys):
    from latentcheck.core.runner import load_for, run_header

    lm = load_for(CommonOptions(model=str(tiny_checkpoint("monet", "monet")), profile="qwen2_5_vl", quiet=True))
    assert lm.info["warnings"] and "latent mode can never trigger" in lm.info["warnings"][0]
    assert "WARNING" in capsys.readouterr().err  # loud even under --quiet
    heads = {p: run_header(load_for(CommonOptions(model=str(tiny_checkpoint("monet", p)), profile=p)))
             for p in ("monet", "monet_sft")}
    assert "on_start" in heads["monet"] and "vLLM" in heads["monet"]
    assert "SFT" in heads["monet_sft"] and heads["monet"] != heads["monet_sft"]
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["plain"])
def test_plain_profiles_have_no_trigger_block(kind):
    from latentcheck.core.trigger import trigger_block

    assert trigger_block({"baseline": ([False], [0])}, "baseline", kind) is None


def test_a_checkpoint_running_its_own_declared_profile_does_not_warn(capsys):
    """The zoo's text-imagination model shares the toy tokenizer (it has latent tokens) but declares its profile:
    no false alarm in the default audit."""
    from latentcheck.core.runner import load_for

    lm = load_for(CommonOptions(model="toy-capimagine", quiet=True))
    assert lm.profile.kind == "text_imagination" and not lm.info.get("warnings")
    assert "WARNING" not in capsys.readouterr().err

