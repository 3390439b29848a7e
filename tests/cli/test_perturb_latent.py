"""`latentcheck perturb-latent` end to end through the CLI on a tiny checkpoint folder."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from latentcheck.cli.app import app
from latentcheck.core.errors import LatentcheckError

OPTIONS = ["red", "green", "blue", "yellow"]


def write_data(folder, n=4, extra=()):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        lines.append({"id": f"t{i}", "image": f"im{i}.png", "question": "What colour is the circle?",
                      "options": OPTIONS, "answer": "ABCD"[i % 4]})
    path = folder / "tasks.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in list(lines) + list(extra)))
    return path


def records(out):
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "provenance"
    return lines[1:]


def invoke(args):
    return CliRunner().invoke(app, ["perturb-latent", *args], catch_exceptions=True)


def test_cli_run_writes_results_summary_plots_and_resumes(tiny_checkpoint, tmp_path):
    folder = tiny_checkpoint("toy", "toy-latent")
    data = write_data(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--model", str(folder), "--profile", "toy-latent", "--data", str(data), "--out", str(out),
            "--limit", "3", "--force-latent", "-i", "zero;index_mean", "-i", "swap", "--sigma-sweep", "0.5,1",
            "--per-index", "zero", "--n-boot", "100", "--batch-size", "2"]
    r = invoke(args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    recs = records(out)
    assert [x["key"] for x in recs] == ["t0", "t1", "t2"]
    labels = {"zero", "index_mean", "swap", "noise:sigma=0.5", "noise:sigma=1.0", "zero@0", "zero@1", "zero@2",
              "zero@3"}
    assert set(recs[0]["interventions"]) == labels
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"]["n"] == 3 and summary["counts"]["ok"] == 3
    assert {x["label"] for x in summary["interventions"]} == labels
    assert summary["curves"]["sigma_sweep"]["x"] == [0.5, 1.0]
    assert summary["curves"]["per_index:zero"]["x"] == [0, 1, 2, 3]
    assert summary["calibration"]["n_samples"] == 3 and (out / "latent_stats.npz").exists()
    assert summary["mediation"]["image"]["correct"]["n"] == 3
    for name in ("accuracy", "sigma_sweep", "per_index_zero", "mediation_image"):
        png = out / summary["plots"][name]
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG", name
    assert "perturb-latent" in r.output and "mediation" in r.output

    # resume after a completed run: nothing is duplicated
    r = invoke(args + ["--resume"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert [x["key"] for x in records(out)] == ["t0", "t1", "t2"]

    # resume after an interruption (only the first record survived): the missing ones are recomputed, same results
    full = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    before = records(out)
    (out / "samples.jsonl").write_text("".join(full[:2]))
    r = invoke(args + ["--resume", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    after = records(out)
    assert [x["key"] for x in after] == ["t0", "t1", "t2"]
    assert after[0] == before[0]
    for a, b in zip(after[1:], before[1:]):
        assert a["partner"] == b["partner"]
        for label in labels:
            assert a["interventions"][label]["answer"] == b["interventions"][label]["answer"]
            np.testing.assert_allclose(a["interventions"][label]["option_logprobs"],
                                       b["interventions"][label]["option_logprobs"], atol=1e-4)
    assert json.loads((out / "summary.json").read_text())["baseline"]["n"] == 3


def test_cli_bad_records_become_errors_and_exit_1(tiny_checkpoint, tmp_path):
    folder = tiny_checkpoint("toy", "toy-latent")
    bad = [{"id": "missing-image", "image": "nope.png", "question": "What colour is the circle?", "options": OPTIONS,
            "answer": "A"},
           {"id": "open", "image": "im0.png", "question": "What colour is the circle?", "answer": "red"}]
    data = write_data(tmp_path / "data", n=2, extra=bad)
    out = tmp_path / "run"
    r = invoke(["--model", str(folder), "--data", str(data), "--out", str(out), "--force-latent", "-i", "zero",
                "--mediation", "none", "--no-plots", "--n-boot", "50", "--quiet"])
    assert r.exit_code == 3, r.output + repr(r.exception)
    errors = {x["key"]: x for x in records(out) if x["type"] == "error"}
    assert errors["missing-image"]["field"] == "image" and "not found" in errors["missing-image"]["message"]
    assert errors["open"]["field"] == "options"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["errors"] == 2 and summary["baseline"]["n"] == 2


def test_cli_user_errors_and_list(tiny_checkpoint, tmp_path):
    folder = tiny_checkpoint("toy", "toy-latent")
    data = write_data(tmp_path / "data", n=2)
    r = invoke(["--model", str(folder), "--data", str(data), "--out", str(tmp_path / "x"), "-i", "zeroo"])
    assert isinstance(r.exception, LatentcheckError) and "unknown intervention" in str(r.exception)
    assert r.exception.exit_code == 2
    r = invoke(["--list"])
    assert r.exit_code == 0 and "noise_replace" in r.output and "swap" in r.output
