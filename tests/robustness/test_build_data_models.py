"""caption-imagine build-data's model passes (captioner / refiner on a local checkpoint) through the real CLI: a prompt
the model cannot take (longer than its positions, a lone surrogate its tokenizer refuses, an image its processor
refuses) is an error record naming the record, its line and the input field; the other records go on; exit code 3;
``--resume --retry-errors`` after fixing the input re-runs exactly those records and ends with the files a clean run
writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from robustness_helpers import run_cli

from latentcheck.core.errors import EXIT_ERROR_RECORDS, EXIT_OK
from latentcheck.toy.world import write_world


@pytest.fixture(scope="module")
def mirage(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("bd-models")
    write_world(root, n_train=5, n_val=1, n_test=1, seed=0)
    Image.new("RGB", (1000, 3)).save(root / "crops" / "thin.png")  # aspect ratio 333: the processor refuses it
    recs = [json.loads(x) for x in (root / "mirage_train.jsonl").read_text().splitlines()]
    return root, recs


def _write(path: Path, recs: list[dict], hostile: bool) -> None:
    lines = [json.dumps(r) for r in recs]
    if hostile:
        lines[1] = json.dumps({**recs[1], "text_input": recs[1]["text_input"] + " and why" * 6000})
        lines[2] = lines[2].replace("What colour", "What \\ud800 colour")  # a lone surrogate after json.loads
        lines[3] = json.dumps({**recs[3], "image_output": "crops/thin.png"})
    path.write_text("".join(x + "\n" for x in lines))


def _errors(drop_file: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in drop_file.read_text().splitlines()]
    return {r["where"]: r["error"] for r in rows if r["reason"] == "bad record"}


@pytest.mark.parametrize("role", ["captioner", "refiner"])
def test_model_pass_failures_are_error_records_and_retry_errors_reruns_them(role, mirage, tiny_checkpoint, tmp_path):
    root, recs = mirage
    ck = tiny_checkpoint("toy", "toy-capimagine")
    data = root / f"hostile-{role}.jsonl"
    _write(data, recs, hostile=True)
    models = ["-m", ck] if role == "captioner" else ["--captioner", "metadata", "--refine-model", ck]

    def build(out: Path, *extra: str):
        return run_cli("caption-imagine", "build-data", data, "-o", out / "d.jsonl", "--kind", "zoom", "--cache",
                       "none", "--max-new-tokens", 4, "-b", 8, "-q", *models, *extra)

    r = build(tmp_path / "a")
    assert r.returncode == EXIT_ERROR_RECORDS, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    errors = _errors(tmp_path / "a" / "d.dropped.jsonl")
    name = data.name
    what = "captioner" if role == "captioner" else "refine"
    long_q, surrogate = errors.pop(f"{name}:2"), errors.pop(f"{name}:3")
    assert long_q["record"] == f"{name}:2 (id=toy-train-000001)" and long_q["field"] == "text_input"
    assert long_q["message"].startswith(f"{what}: ") and "above the limit of 4096 (the model's 4096 positions)" \
        in long_q["message"]
    assert surrogate["record"] == f"{name}:3 (id=toy-train-000002)" and surrogate["field"] == "text_input"
    assert "tokenizer refused the text" in surrogate["message"]
    if role == "captioner":  # the refine pass sees only the question image: the thin crop is the captioner's input
        thin = errors.pop(f"{name}:4")
        assert thin["field"] == "image_output" and "aspect ratio must be smaller than 200" in thin["message"]
    assert errors == {}
    others = [json.loads(x) for f in ("d.jsonl", "d.dropped.jsonl")
              for x in (tmp_path / "a" / f).read_text().splitlines() if '"bad record"' not in x]
    assert {r.get("where") or r["meta"]["where"] for r in others} >= {f"{name}:1", f"{name}:5"}  # the batch went on

    _write(data, recs, hostile=False)  # the input is fixed: the three records are re-run in place
    r = build(tmp_path / "a", "--resume", "--retry-errors")
    assert r.returncode == EXIT_OK, r.stdout + r.stderr
    clean = tmp_path / "clean"
    r = build(clean)
    assert r.returncode == EXIT_OK, r.stdout + r.stderr
    for f in ("d.jsonl", "d.dropped.jsonl"):
        assert (tmp_path / "a" / f).read_text() == (clean / f).read_text(), f
    shutil.rmtree(tmp_path / "a")
