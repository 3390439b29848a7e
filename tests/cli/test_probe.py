"""`latentcheck probe` end to end through the CLI on a tiny checkpoint folder."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from latentcheck.cli.app import app

COLOURS = {"red": (230, 0, 0), "green": (0, 170, 0), "blue": (0, 0, 230), "yellow": (250, 210, 0)}
SHAPES = ["circle", "square", "triangle", "cross"]


def write_data(folder, n=8):
    """n images (a coloured square on noise), a colour question about each, one derived shape question each, and
    one derived record without a source id."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tasks, derived = [], []
    names = list(COLOURS)
    for i in range(n):
        colour, shape = names[i % 4], SHAPES[(i // 2) % 4]
        px = rng.integers(200, 255, (112, 112, 3), dtype=np.uint8)
        px[28:56, 28:56] = COLOURS[colour]
        Image.fromarray(px).save(folder / f"im{i}.png")
        tasks.append({"id": f"t{i}", "image": f"im{i}.png", "question": f"What colour is the {shape}?",
                      "options": names, "answer": colour, "category": "warm" if i % 4 in (0, 3) else "cold",
                      "meta": {"colour": colour}})
        derived.append({"id": f"t{i}-shape", "image": f"im{i}.png", "question": f"What shape is the {colour} object?",
                        "options": SHAPES, "answer": shape, "category": "shape", "meta": {"source_id": f"t{i}"}})
    derived.append({"id": "orphan", "question": "What shape?", "options": SHAPES, "answer": "A"})
    (folder / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    (folder / "derived.jsonl").write_text("".join(json.dumps(t) + "\n" for t in derived))
    return folder / "tasks.jsonl", folder / "derived.jsonl"


def lines(path):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0]["type"] == "provenance"
    return rows[1:]


def invoke(args):
    return CliRunner().invoke(app, ["probe", *args], catch_exceptions=False)


def test_probe_cli_writes_records_summary_plots_resumes_and_reprobes_from_cache(tiny_checkpoint, tmp_path):
    ck = tiny_checkpoint("toy", "toy-latent")
    data, derived = write_data(tmp_path / "data")
    out = tmp_path / "run"
    args = ["--model", str(ck), "--data", str(data), "--derived", str(derived), "--out", str(out), "--limit", "6",
            "--label", "category", "--splits", "2", "--batch-size", "4", "--quiet"]
    r = invoke(args + ["--label", "meta.colour"])
    assert r.exit_code == 3, r.output  # the orphan derived record is an error record; the run completes
    recs = lines(out / "samples.jsonl")
    assert sorted(x["key"] for x in recs) == sorted([f"t{i}-shape" for i in range(6)] + ["orphan"])
    err = next(x for x in recs if x["type"] == "error")
    assert (err["key"], err["field"]) == ("orphan", "meta.source_id")
    ok = [x for x in recs if x["type"] == "sample"]
    assert all(set(x["arms"]) == {"latents", "shared", "noise", "text_only", "image", "random"} for x in ok)
    assert all(x["latent_count"] == 4 for x in ok)
    assert [x["key"] for x in lines(out / "capture" / "samples.jsonl")] == [f"t{i}" for i in range(6)]
    s = json.loads((out / "summary.json").read_text())
    beh = s["behavioural"]
    assert beh["n"] == 6 and beh["expected_chance"] == 0.25
    for arm, acc in beh["arms"].items():  # accuracies recomputed from the records
        assert acc["successes"] == sum(x["arms"][arm]["correct"] for x in ok) and acc["method"] == "wilson"
    assert "latents_vs_text_only" in beh["comparisons"] and "latents_vs_random" in beh["comparisons"]
    assert s["capture"]["n"] == 6 and s["errors"] == 1
    assert set(s["trained"]["labels"]) == {"category", "meta.colour"}
    assert s["trained"]["sites"][:4] == ["latent_0", "latent_1", "latent_2", "latent_3"]
    site = s["trained"]["labels"]["category"]["sites"]["latent_0"]
    assert site["n"] == 6 and {"linear", "mlp", "linear_control", "linear_selectivity"} <= set(site)
    assert s["similarity"]["K"] == 4
    for name in ("behavioural.png", "probe_category.png", "probe_meta.colour.png", "similarity.png"):
        assert (out / "plots" / name).stat().st_size > 1000

    # an interrupted run: keep the first two records of each file, resume -> every key exactly once
    for f in (out / "samples.jsonl", out / "capture" / "samples.jsonl"):
        f.write_text("".join(f.read_text().splitlines(keepends=True)[:3]))
    r = invoke(args + ["--resume"])  # labels are not part of the per-record config: fewer labels may resume
    assert r.exit_code == 3, r.output
    keys = [x["key"] for x in lines(out / "samples.jsonl")]
    assert len(keys) == len(set(keys)) == 7
    cap = [x["key"] for x in lines(out / "capture" / "samples.jsonl")]
    assert sorted(cap) == [f"t{i}" for i in range(6)]
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["behavioural"]["arms"] == s["behavioural"]["arms"]  # deterministic: same answers after resuming
    assert s2["trained"]["labels"]["category"] == s["trained"]["labels"]["category"]

    # trained probes again from the cached states, without the model (a missing checkpoint path is never read)
    r = invoke(["--from-cache", str(out), "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "re"),
                "--label", "category", "--splits", "2"])
    assert r.exit_code == 0, r.output
    s3 = json.loads((tmp_path / "re" / "summary.json").read_text())
    assert s3["trained"]["labels"]["category"] == s["trained"]["labels"]["category"]
    assert s3["behavioural"]["arms"] == s["behavioural"]["arms"]
    assert "Trained probes" in r.output and (tmp_path / "re" / "plots" / "probe_category.png").exists()


def test_probe_cli_user_errors(tiny_checkpoint, tmp_path):
    r = CliRunner().invoke(app, ["probe", "--from-cache", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "no captured states" in str(r.exception)
    r = CliRunner().invoke(app, ["probe", "--scoring", "vote", "--from-cache", str(tmp_path)])
    assert r.exit_code != 0 and "--scoring" in str(r.exception)
