"""Decoding options, defined once in cli/options.py, on every analysis command, and what they change."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from latentcheck.cli.app import app

COMMANDS = [["perturb-input"], ["perturb-latent"], ["probe"], ["bench"], ["audit"], ["caption-imagine", "run"],
            ["caption-imagine", "intervene"]]
FLAGS = ["--greedy", "--temperature", "--top-p", "--top-k", "--repetition-penalty", "--max-new-tokens", "--system"]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_analysis_command_takes_the_decoding_options(cmd):
    res = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert res.exit_code == 0
    for flag in FLAGS:
        assert flag in res.output, (cmd, flag)


def test_decoding_options_map_onto_the_profile():
    from latentcheck.cli.options import decoding
    from latentcheck.core.errors import LatentcheckError

    assert decoding(temperature=0.7, top_k=5) == {"do_sample": True, "temperature": 0.7, "top_k": 5}
    assert decoding(temperature=0) == {"do_sample": False} == decoding(greedy=True)
    assert decoding(repetition_penalty=1.2, max_new_tokens=9) == {"repetition_penalty": 1.2, "max_new_tokens": 9}
    with pytest.raises(LatentcheckError):
        decoding(greedy=True, temperature=0.5)


def test_apply_options_reaches_engine_and_prompt(tiny_checkpoint):
    from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper

    from latentcheck.core.engine import Engine
    from latentcheck.core.errors import LatentcheckError
    from latentcheck.core.loader import load_model
    from latentcheck.core.prompts import build_prompt
    from latentcheck.core.runner import CommonOptions, apply_options

    lm = load_model(str(tiny_checkpoint("plain", "qwen2_5_vl")), profile="qwen2_5_vl")
    opts = CommonOptions(decoding={"do_sample": True, "temperature": 0.5, "top_k": 7, "repetition_penalty": 1.2},
                         system="Answer tersely.")
    apply_options(lm, opts)
    assert lm.profile.decoding.temperature == 0.5 and lm.profile.decoding.top_k == 7
    kinds = [type(p) for p in Engine(lm).processors]
    assert kinds == [RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper]
    assert "Answer tersely." in build_prompt(lm, "k", "What?").text
    assert lm.describe()["decoding"]["top_k"] == 7 and lm.describe()["system_prompt"] == "Answer tersely."
    with pytest.raises(LatentcheckError, match="decoding"):
        apply_options(lm, CommonOptions(decoding={"top_k": -1}))


def test_cli_decoding_options_are_recorded(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["perturb-latent", "--limit", "2", "--out", str(out), "--quiet", "-i", "zero",
                                   "--temperature", "0.7", "--top-p", "0.9", "--system", "Be brief."])
    assert res.exit_code == 0, res.output
    prov = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert prov["config"]["decoding"] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert prov["config"]["system"] == "Be brief."
    assert prov["model"]["decoding"]["do_sample"] and prov["model"]["decoding"]["temperature"] == 0.7
    assert prov["model"]["system_prompt"] == "Be brief."
