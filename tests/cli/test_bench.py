"""`latentcheck bench` and `latentcheck bench compare` through Typer's CliRunner on tiny checkpoints."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from latentcheck.cli.app import app
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.records import provenance


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (28, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def tasks(tmp_path):
    rows = []
    for i in range(5):
        (tmp_path / f"i{i}.png").write_bytes(_png(i))
        rows.append({"id": f"t{i}", "image": f"i{i}.png", "question": "What colour is the circle?",
                     "options": ["red", "green", "blue", "yellow"], "answer": "ABCD"[i % 4],
                     "category": "colour" if i < 3 else "shape"})
    p = tmp_path / "tasks.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def _bench(*args):
    return CliRunner().invoke(app, ["bench", *args], catch_exceptions=True)


def _lines(folder):
    return [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]


def test_default_invocation_uses_toy_split_and_default_model(tiny_checkpoint, tasks, tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "toy-latent").symlink_to(tiny_checkpoint("toy", "toy-latent"))
    monkeypatch.setenv("LATENTCHECK_ZOO", str(zoo))
    monkeypatch.setattr("latentcheck.toy.zoo.default_data", lambda split="test", world="v3": tasks)
    out = tmp_path / "default"
    r = _bench("--limit", "3", "--max-new-tokens", "6", "--out", str(out))
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((out / "summary.json").read_text())
    assert res["benchmark"] == "generic" and res["variant"]["name"] == "profile"
    assert res["model"]["id"] == "toy-latent" and res["data"]["path"] == str(tasks)
    assert res["conditions"]["baseline"]["accuracy"]["n"] == 3
    assert "official score (generic)" in r.output and "summary.json" in r.output.replace("\n", "")


def test_interventions_and_resume(tiny_checkpoint, tasks, tmp_path):
    out = tmp_path / "iv"
    args = ["--model", str(tiny_checkpoint("toy", "toy-latent")), "--profile", "toy-latent", "--data", str(tasks),
            "-i", "identity", "-i", "scale:alpha=0", "--force-latent", "--max-new-tokens", "8", "--out", str(out),
            "-q", "-b", "2"]
    r = _bench(*args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((out / "summary.json").read_text())
    assert list(res["conditions"]) == ["baseline", "identity", "scale:alpha=0.0"]
    base, ident = res["conditions"]["baseline"], res["conditions"]["identity"]
    assert ident["accuracy"] == base["accuracy"] and ident["effect"]["n01"] == ident["effect"]["n10"] == 0
    assert set(base["per_category"]) == {"colour", "shape"}
    assert set(base["latency"]["per_category"]["shape"]) >= {"timing", "tokens", "latent_steps"}
    assert set(base["latency"]["per_category"]["shape"]["timing"]) == {"row_s", "row_decode_s"}
    # interrupted run: keep provenance + 2 samples, then --resume
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:3]))
    r = _bench(*args, "--resume")
    assert r.exit_code == 0, r.output + repr(r.exception)
    keys = [x["key"] for x in _lines(out) if x["type"] == "sample"]
    assert sorted(keys) == [f"t{i}" for i in range(5)]


def test_likelihood_vstar(tiny_checkpoint, tmp_path):
    root = tmp_path / "vstar"
    (root / "relative_position").mkdir(parents=True)
    (root / "relative_position" / "a.png").write_bytes(_png(1))
    (root / "relative_position" / "a.json").write_text(json.dumps({"question": "Is the dog left or right?",
                                                                   "options": ["left", "right"],
                                                                   "bbox": [[1, 1, 4, 4]]}))
    out = tmp_path / "ll"
    r = _bench("--benchmark", "vstar", "--data", str(root), "--scoring", "likelihood", "--model",
               str(tiny_checkpoint("toy", "toy-direct")), "--profile", "toy-direct", "--out", str(out), "-q")
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = [x for x in _lines(out) if x["type"] == "sample"][0]
    assert s["prompt"] == "Is the dog left or right?" and len(s["option_mean_ce"]) == 2
    assert s["pred"] == "AB"[int(np.argmin(s["option_mean_ce"]))]


def test_user_errors_exit_2(tmp_path):
    r = _bench("--benchmark", "vstar", "--out", str(tmp_path / "x"))
    assert isinstance(r.exception, LatentcheckError) and r.exception.exit_code == 2
    assert "--data is required" in str(r.exception)
    r = _bench("--benchmark", "nosuch", "--data", str(tmp_path), "--out", str(tmp_path / "x"))
    assert isinstance(r.exception, LatentcheckError) and "unknown benchmark" in str(r.exception)
    r = _bench("--list")
    assert r.exit_code == 0 and "hrbench4k" in r.output and "likelihood" in r.output


def test_compare_hand_counted(tmp_path):
    # A right: 1 0 0 0 1 ; B right: 1 1 1 1 0  -> n01 = 3 (ids 2,3,4), n10 = 1 (id 5); p = 2 * 5/16 = 0.625
    a, b = [1, 0, 0, 0, 1], [1, 1, 1, 1, 0]
    for name, col in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        lines = [json.dumps(provenance("bench", {}))] + [
            json.dumps({"type": "sample", "key": str(i), "id": str(i), "category": "x" if i < 3 else "y",
                        "pred": None, "correct": bool(c)}) for i, c in enumerate(col, 1)]
        (tmp_path / name / "samples.jsonl").write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(app, ["bench", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--n-boot", "200",
                                 "--json", str(tmp_path / "cmp.json")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert (cmp["overall"]["n01"], cmp["overall"]["n10"]) == (3, 1)
    assert cmp["overall"]["delta"]["p_value"] == pytest.approx(0.625)
    # category x = ids 1, 2: n01 = 1 (id 2); category y = ids 3, 4, 5: n01 = 2, n10 = 1
    assert (cmp["per_category"]["x"]["n01"], cmp["per_category"]["x"]["n10"]) == (1, 0)
    assert (cmp["per_category"]["y"]["n01"], cmp["per_category"]["y"]["n10"]) == (2, 1)
    assert "n01" in r.output and "McNemar" in r.output


def test_judge_model_option(tiny_checkpoint, tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTCHECK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "judged"
    ck = str(tiny_checkpoint("toy", "toy-direct"))
    r = _bench("--model", ck, "--profile", "toy-direct", "--data", str(tasks), "--limit", "3", "--max-new-tokens",
               "3", "--judge-model", ck, "--judge-profile", "toy-direct", "--judge-protocol", "monet",
               "--out", str(out), "-q")
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((out / "summary.json").read_text())
    assert res["judge"]["backend"]["backend"] == "local" and res["judge"]["protocol"] == "monet"
    assert (tmp_path / "cache" / "responses.sqlite").is_file()
    samples = [x for x in _lines(out) if x["type"] == "sample"]
    assert len(samples) == 3
    for s in samples:
        assert s["judge"]["used"] is (s["extracted"] is None)
        if s["judge"]["used"]:
            assert "reply" in s["judge"] and s["pred"] == s["judge"]["value"]
    assert res["conditions"]["baseline"]["latency"]["overall"]["judge_used"] == sum(s["judge"]["used"]
                                                                                    for s in samples)


def test_judge_url_option_reaches_a_real_server(transformers_server, tiny_checkpoint, tmp_path, monkeypatch):
    """--judge-url / --judge-model / --judge-cache through the CLI, against transformers serve on 127.0.0.1."""
    import csv

    import base64

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    img = base64.b64encode(_png(1)).decode()
    tsv = tmp_path / "hr_bench_4k.tsv"
    with open(tsv, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["index", "question", "answer", "category", "A", "B", "C", "D",
                                           "cycle_category", "image"], delimiter="\t")
        w.writeheader()
        w.writerows([{"index": i, "question": f"Q{i}?", "answer": "AB"[i % 2], "category": "single", "A": "1",
                      "B": "2", "C": "3", "D": "4", "cycle_category": "c0", "image": img} for i in range(2)])
    ck = str(tiny_checkpoint("toy", "toy-direct"))
    out = tmp_path / "judged"
    r = _bench("--model", ck, "--profile", "toy-direct", "--benchmark", "hrbench4k", "--data", str(tsv),
               "--no-verify", "--max-new-tokens", "3", "--judge-model", transformers_server.model, "--judge-url",
               transformers_server.base_url, "--judge-cache", str(tmp_path / "c.sqlite"), "--out", str(out))
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((out / "summary.json").read_text())
    assert res["judge"]["backend"] == {"backend": "openai", "model": transformers_server.model,
                                       "base_url": transformers_server.base_url}
    assert res["conditions"]["baseline"]["judge"]["asked"] == 2 and (tmp_path / "c.sqlite").is_file()
    assert "judge hrbench" in r.output and "rule-based score" in r.output
    r2 = _bench("--model", ck, "--profile", "toy-direct", "--benchmark", "hrbench4k", "--data", str(tsv),
                "--no-verify", "--judge-url", transformers_server.base_url, "--out", str(tmp_path / "x"))
    assert isinstance(r2.exception, LatentcheckError) and r2.exception.exit_code == 2
    assert "--judge-url needs --judge-model" in str(r2.exception)
