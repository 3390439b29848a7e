"""`latentcheck audit` and `latentcheck report` through Typer's CliRunner on tiny random checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from latentcheck.cli.app import app
from latentcheck.core.errors import LatentcheckError

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables one line per row (CliRunner is not a terminal: Rich would wrap at 80 columns)."""
    from latentcheck.cli.app import console, out_console

    for c in (console, out_console):
        monkeypatch.setattr(c, "width", 400)


def test_audit_one_model_prints_verdicts_and_writes_the_report_folder(tmp_path, tiny_checkpoint):
    ck = tiny_checkpoint("toy", "toy-bypass")
    out = tmp_path / "audit"
    res = CliRunner().invoke(app, ["audit", "-m", str(ck), "--limit", "6", "--force-latent", "-o", str(out),
                                   "--stage", "perturb-input,bench", "--n-boot", "100"])
    assert res.exit_code == 0, res.output
    # 6 samples of a span that sees no input: no latent moves beyond round-off, and 0/6 leaves up to 39% of inputs
    # that might move them (Wilson): inconclusive, with the share printed
    for text in ("X -> Z", "Z -> Y", "what latents encode", "overall", "inconclusive",
                 "sensitivity ratio (swap_image / image_tokens) 0.00 [",
                 "latents moved beyond 0.0001 in 0/6 samples", "report.html"):
        assert text in res.output, text
    # the floored ratio's interval has non-zero width and never prints as [0.00, 0.00]
    assert "image_tokens) 0.00 [0.00, 0.00]" not in res.output
    assert (out / "report.html").exists() and (out / "audit.json").exists()
    assert (out / "perturb-input" / "summary.json").exists() and (out / "bench" / "samples.jsonl").exists()
    assert not (out / "perturb-latent").exists()  # not among the chosen stages
    doc = json.loads((out / "audit.json").read_text())
    assert list(doc["models"][0]["stages"]) == ["perturb_input", "bench"]


def test_report_rerenders_from_saved_results_without_a_model(tmp_path, tiny_checkpoint, monkeypatch):
    ck = tiny_checkpoint("toy", "toy-bypass")
    out = tmp_path / "audit"
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "-m", str(ck), "--limit", "4", "--force-latent", "-o", str(out), "-q",
                              "--stage", "perturb_input", "--no-report", "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "X -> Z" not in res.output and not (out / "report.html").exists()  # --quiet: no tables
    import latentcheck.core.loader as loader

    monkeypatch.setattr(loader, "load_model", lambda *a, **k: pytest.fail("report loaded a model"))
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert "latents moved beyond 0.0001 in 0/4 samples" in res.output and (out / "report.html").exists()
    assert 'data-figure="perturb-input/inter_instance_raw"' in (out / "report.html").read_text()


def test_audit_without_a_model_compares_the_zoo(tmp_path, tiny_checkpoint, monkeypatch):
    """No --model: the zoo's six audited models side by side (here tiny random stand-ins in $LATENTCHECK_ZOO)."""
    import shutil

    zoo = tmp_path / "zoo"
    for name in ("toy-latent", "toy-capimagine", "toy-mediated", "toy-vector", "toy-binding", "toy-bypass"):
        shutil.copytree(tiny_checkpoint("toy", name), zoo / name)
    monkeypatch.setenv("LATENTCHECK_ZOO", str(zoo))
    out = tmp_path / "audit"
    res = CliRunner().invoke(app, ["audit", "--limit", "4", "--force-latent", "-o", str(out), "--stage",
                                   "perturb_input", "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "comparison" in res.output
    doc = json.loads((out / "audit.json").read_text())
    assert doc["kind"] == "zoo" and [m["model"] for m in doc["models"]] == \
        ["toy-latent", "toy-capimagine", "toy-mediated", "toy-vector", "toy-binding", "toy-bypass"]
    assert [r["kind"] for r in doc["comparison"]] == ["latent", "text_imagination", "latent", "latent", "latent",
                                                      "latent"]
    # the binding control is audited on its own world's tasks
    keys = [json.loads(line).get("key") for line in (out / "toy-binding" / "perturb-input" / "samples.jsonl").open()]
    assert [k for k in keys if k] and all(k.startswith("toybind-") for k in keys if k)
    bypass = doc["comparison"][5]
    # 4 samples: the ratio is exactly 0, but a null needs >= 10 samples under the default rules
    assert bypass["xz"]["verdict"] == "inconclusive" and bypass["overall"] == "inconclusive"
    assert "n too small" in doc["models"][5]["verdicts"]["xz"]["summary"]
    for m in doc["models"]:
        assert (out / m["folder"] / "audit.json").exists() and (out / m["folder"] / "report.html").exists()
    html = (out / "report.html").read_text()
    assert 'data-figure="zoo/xz"' in html and html.count('id="model-') == 6


def test_audit_several_real_models_side_by_side(tmp_path, tiny_checkpoint):
    """`--model NAME=PATH` repeated (checkpoint folders, not zoo names): one audit per model in its own folder, the
    comparison table in the console and in the report, the names everywhere."""
    latent, bypass = tiny_checkpoint("toy", "toy-latent"), tiny_checkpoint("toy", "toy-bypass")
    out = tmp_path / "audit"
    res = CliRunner().invoke(app, ["audit", "-m", f"mine={latent}", "-m", str(bypass), "--limit", "4",
                                   "--force-latent", "-o", str(out), "--stage", "perturb_input", "--n-boot", "50",
                                   "--no-plots"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "audit.json").read_text())
    assert doc["kind"] == "side_by_side" and [m["model"] for m in doc["models"]] == ["mine", str(bypass)]
    assert doc["models"][0]["model_path"] == str(latent) and "model_path" not in doc["models"][1]
    assert [r["model"] for r in doc["comparison"]] == ["mine", str(bypass)]
    folders = [m["folder"] for m in doc["models"]]
    assert folders[0] == "mine" and len(set(folders)) == 2
    for m in doc["models"]:
        assert (out / m["folder"] / "audit.json").exists() and (out / m["folder"] / "perturb-input").is_dir()
    assert "comparison" in res.output and "mine" in res.output
    assert res.output.strip().splitlines()[-1].startswith(f"audit: mine: {doc['comparison'][0]['overall']}; ")
    html = (out / "report.html").read_text()
    assert '<h2 id="summary">Comparison</h2>' in html and html.count('id="model-') == 2 and ">mine</a>" in html
    for bad, message in ((["-m", "a=x", "-m", "a=y"], "given twice"), (["-m", "=x"], "expected NAME=MODEL")):
        r = CliRunner().invoke(app, ["audit", *bad, "-o", str(tmp_path / "bad")])
        assert isinstance(r.exception, LatentcheckError) and message in str(r.exception)


def test_user_errors_exit_2(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["audit", "-m", "toy-latent", "--stage", "perturb_everything", "-o", str(tmp_path)])
    assert isinstance(res.exception, LatentcheckError) and "unknown stage" in str(res.exception)
    (tmp_path / "rules.json").write_text('{"zy": {"margin": 1}}')
    res = runner.invoke(app, ["audit", "-m", "toy-latent", "--rules", str(tmp_path / "rules.json"), "-o",
                              str(tmp_path)])
    assert isinstance(res.exception, LatentcheckError) and "unknown setting zy.margin" in str(res.exception)
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert isinstance(res.exception, LatentcheckError) and res.exception.exit_code == 2
    assert "no audit.json" in str(res.exception)


def test_report_refuses_a_summary_of_an_older_schema_in_one_line(tmp_path):
    """`report` on an analysis folder whose summary.json has another summary schema: a user error (exit 2) naming
    the file and the schema found, nothing rendered."""
    (tmp_path / "summary.json").write_text(json.dumps({"command": "probe", "schema": "latentcheck.summary/2"}))
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert isinstance(res.exception, LatentcheckError) and res.exception.exit_code == 2
    msg = str(res.exception)
    assert "\n" not in msg and str(tmp_path / "summary.json") in msg and "latentcheck.summary/2" in msg
    assert not (tmp_path / "report.html").exists()
