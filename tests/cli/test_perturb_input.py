"""`latentcheck perturb-input` through Typer's CliRunner on a tiny checkpoint folder and a task file with images."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from latentcheck.cli.app import app
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.records import read_results


def _write_tasks(folder, n=4):
    """Task JSONL with PIL-drawn images (a coloured square on grey), bboxes and two categories."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": (230, 0, 0), "green": (0, 170, 0), "blue": (0, 0, 230), "yellow": (250, 210, 0)}
    names = list(colours)
    with open(folder / "tasks.jsonl", "w") as f:
        for i in range(n):
            arr = np.full((112, 112, 3), 235, np.uint8)
            x, y = 10 + 20 * i, 30 + 10 * i
            arr[y:y + 24, x:x + 24] = colours[names[i % 4]]
            Image.fromarray(arr).save(folder / f"img{i}.png")
            f.write(json.dumps({"id": f"t{i}", "image": f"img{i}.png", "question": "What colour is the square?",
                                "options": names, "answer": names[i % 4], "bbox": [x, y, 24, 24],
                                "category": "colour" if i % 2 == 0 else "shape"}) + "\n")
    return str(folder / "tasks.jsonl")


def _args(ck, data, out, *extra):
    return ["perturb-input", "--model", str(ck), "--profile", "toy-latent", "--data", data, "--out", str(out),
            "--force-start", "-t", "identity", "-t", "noise:std=0.3;mask_target", "--n-boot", "200", *extra]


def test_cli_writes_records_summary_plots_and_resumes_without_duplicates(tmp_path, tiny_checkpoint):
    ck = tiny_checkpoint("toy", "toy-latent")
    data = _write_tasks(tmp_path / "data")
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, _args(ck, data, out, "--limit", "3"))
    assert res.exit_code == 0, res.output
    assert "perturb-input: toy-latent" in res.output and "mask_target" in res.output and "latent 3" in res.output
    _, recs = read_results(out / "samples.jsonl")
    assert [r["key"] for r in recs] == ["t0", "t1", "t2"]
    assert set(recs[0]["treatments"]) == {"identity", "noise:std=0.3", "mask_target"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == 3 and summary["config"]["treatments"] == ["identity", "noise:std=0.3",
                                                                            "mask_target"]
    for p in summary["plots"]:
        assert (out / p).exists() and (out / p).stat().st_size > 0
    assert {"plots/inter_instance_raw.png", "plots/sensitivity.png"} <= set(summary["plots"])
    # category ticks on the heat maps: each panel's rows labelled by the samples' categories (two per panel, x and y;
    # matplotlib's SVG keeps every drawn text as a comment)
    svg = (out / "plots" / "inter_instance_raw.svg").read_text()
    panels = len(summary["geometry"]["latent_index"]) + len(summary["geometry"]["refs"])
    assert svg.count("<!-- colour -->") == svg.count("<!-- shape -->") == 2 * panels > 0
    # simulate an interruption after the first record, then resume: every key once, in data order
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:2]))
    res = runner.invoke(app, _args(ck, data, out, "--limit", "3", "--resume", "--quiet"))
    assert res.exit_code == 0, res.output
    _, recs = read_results(out / "samples.jsonl")
    assert [r["key"] for r in recs] == ["t0", "t1", "t2"]
    assert json.loads((out / "summary.json").read_text())["n_samples"] == 3
    # resuming a complete run adds nothing
    res = runner.invoke(app, _args(ck, data, out, "--limit", "3", "--resume", "--quiet"))
    assert res.exit_code == 0
    _, recs = read_results(out / "samples.jsonl")
    assert len(recs) == 3


def test_cli_bad_treatment_lists_the_valid_ones(tmp_path):
    res = CliRunner().invoke(app, ["perturb-input", "-t", "blurr:radius=2", "--out", str(tmp_path / "x")])
    assert isinstance(res.exception, LatentcheckError) and res.exception.exit_code == 2
    msg = str(res.exception)
    assert "unknown treatment 'blurr'" in msg and "noise" in msg and "shuffle_patches" in msg
    res = CliRunner().invoke(app, ["perturb-input", "-t", "noise:sigma=2", "--out", str(tmp_path / "x")])
    assert "no parameter 'sigma'" in str(res.exception) and "std=" in str(res.exception)


def test_cli_lists_treatments():
    res = CliRunner().invoke(app, ["perturb-input", "--list-treatments"])
    assert res.exit_code == 0 and "crop_away_target" in res.output and "reorder_options" in res.output
