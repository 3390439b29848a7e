"""Hostile-but-fair input (issue 19): records that used to crash a whole run with a traceback (exit 1, no record
named, and `--resume` crashed again at the same place) are now error records naming the record, line and field, for
every command, and the run completes with exit code 3.

The cases live in robustness_helpers.hostile_cases; docs/robustness.md's table is checked against them
(test_robustness_doc.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from latentcheck.core.errors import RecordError
from latentcheck.core.records import read_results
from robustness_helpers import HOSTILE_HEAD, run_cli, write_hostile


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, list]:
    return write_hostile(tmp_path_factory.mktemp("hostile"))


def _latent_args(ck, data, out, *extra):
    return ["perturb-latent", "--model", ck, "--profile", "toy-latent", "--force-latent", "-i", "zero",
            "--mediation", "none", "--batch-size", "2", "--n-boot", "100", "--no-plots", "--quiet", "--data", data,
            "--out", out, *extra]


def _check_records(recs: list[dict], expected: list) -> None:
    got = recs[HOSTILE_HEAD:HOSTILE_HEAD + len(expected)]
    assert len(got) == len(expected)
    for (kind, exp), r in zip(expected, got):
        if exp is None:
            assert r["type"] == "sample", (kind, r)
        else:
            assert r["type"] == "error", (kind, r)
            assert (r["record"], r["field"], r["message"]) == exp, kind
    assert [r["key"] for r in recs[:HOSTILE_HEAD]] == [f"t{i}" for i in range(HOSTILE_HEAD)]
    assert recs[-1]["key"] == f"t{HOSTILE_HEAD}" and recs[-1]["type"] == "sample"


def test_hostile_records_are_error_records_and_resume_does_not_crash_again(ck, hostile, tmp_path):
    """The real CLI in a subprocess: every hostile record is an error record in its place, the valid ones (and the
    raw base64 image) are samples, exit code 3; a FIFO does not hang, /dev/zero is not read. `--resume` of the
    finished run completes again with the same file (it used to crash at the same record)."""
    data, expected = hostile
    out = tmp_path / "run"
    done = run_cli(*_latent_args(ck, data, out), timeout=240)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    _, recs = read_results(out / "samples.jsonl")
    _check_records(recs, expected)
    before = (out / "samples.jsonl").read_bytes()
    again = run_cli(*_latent_args(ck, data, out, "--resume"), timeout=240)
    assert again.returncode == 3, again.stderr
    assert (out / "samples.jsonl").read_bytes() == before


@pytest.mark.parametrize("command", ["perturb-input", "probe", "bench"])
def test_other_commands_turn_hostile_records_into_the_same_error_records(command, ck, hostile, tmp_path, monkeypatch,
                                                                         capsys):
    from test_bad_input import run_main

    data, expected = hostile
    out = tmp_path / command
    common = ["--model", ck, "--profile", "toy-latent", "--data", data, "--out", out, "--quiet", "--batch-size", "2"]
    extra = {"perturb-input": ["-t", "identity", "--force-start", "--n-boot", "50", "--no-plots"],
             "probe": ["--no-behavioural", "--no-trained"],
             "bench": ["--n-boot", "50", "--max-new-tokens", "4"]}[command]
    code, err = run_main(monkeypatch, capsys, command, *common, *extra)
    assert code == 3, err
    _, recs = read_results(out / ("capture" if command == "probe" else "") / "samples.jsonl")
    _check_records(recs, expected)


def test_max_prompt_tokens_makes_long_prompts_error_records(tiny_checkpoint):
    from latentcheck.core.loader import load_model
    from latentcheck.core.prompts import build_prompt

    ck = str(tiny_checkpoint("toy", "toy-latent"))
    lm = load_model(ck, profile="toy-latent", max_prompt_tokens=40)
    assert build_prompt(lm, "short", "Q?").length <= 40
    with pytest.raises(RecordError, match=r"record long: field 'question': the prompt is \d+ tokens, above the limit "
                                          r"of 40 \(--max-prompt-tokens\)"):
        build_prompt(lm, "long", "word " * 40)
    assert lm.describe()["max_prompt_tokens"] == 40


def test_image_bytes_are_capped_before_reading_and_the_cap_can_be_raised(tmp_path, monkeypatch):
    from latentcheck.core.tasks import decode_image

    big = tmp_path / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(300 << 20)  # sparse
    with pytest.raises(RecordError, match="image file is 314572800 bytes, above the limit of 268435456 bytes"):
        decode_image(str(big), "r")
    monkeypatch.setenv("LATENTCHECK_MAX_IMAGE_BYTES", str(400 << 20))  # raised: now it is read, and is no image
    with pytest.raises(RecordError, match="corrupt or unreadable image"):
        decode_image(str(big), "r")


def test_stdin_with_bad_bytes_names_the_line(tmp_path, monkeypatch):
    import io

    from latentcheck.core.tasks import BadRecord, read_tasks

    good = json.dumps({"id": "a", "question": "Q?"}).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(good + b"\n\xff\xfe\n" + good.replace(b'"a"', b'"b"'))))
    items = list(read_tasks("-"))
    assert [type(x).__name__ for x in items] == ["Task", "BadRecord", "Task"]
    bad = items[1]
    assert isinstance(bad, BadRecord) and (bad.where, bad.error.field) == ("<stdin>:2", "<line>")
    assert bad.error.message == "not valid UTF-8 (byte 0xff at byte column 1)"
