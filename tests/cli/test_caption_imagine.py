"""`latentcheck caption-imagine` end to end through the CLI: build-data -> train (and resume) -> run -> intervene on
tiny toy checkpoints with --limit."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from latentcheck.cli.app import app
from latentcheck.core.errors import LatentcheckError
from latentcheck.toy.world import write_world


def invoke(*args):
    return CliRunner().invoke(app, ["caption-imagine", *map(str, args)])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ci-cli")
    write_world(root / "w", n_train=6, n_val=3, n_test=4, seed=0)
    return root


def test_build_data_train_resume_run_intervene(world, tiny_checkpoint, tmp_path):
    w = world / "w"
    r = invoke("build-data", w / "interleaved_train.json", "-o", tmp_path / "d" / "train.jsonl", "--captioner",
               "metadata")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "kept" in r.output and len((tmp_path / "d" / "train.jsonl").read_text().splitlines()) == 6
    r = invoke("build-data", w / "interleaved_val.json", "-o", tmp_path / "d" / "val.jsonl", "-q", "--captioner",
               "metadata")
    assert r.exit_code == 0 and r.output.startswith("build-data: 3 read, 3 kept, 0 dropped, 0 errors -> ")
    assert len(r.output.strip().splitlines()) == 1  # --quiet: only the final line

    ck = tiny_checkpoint("toy", "toy-capimagine")
    common = ["--data", tmp_path / "d" / "train.jsonl", "--val", tmp_path / "d" / "val.jsonl", "-m", ck,
              "--steps", 3, "-b", 2, "--save-every", 1, "--warmup", 0, "-o", tmp_path / "t"]
    r = invoke("train", *common, "--stop-after", 2)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "--resume" in r.output and not (tmp_path / "t" / "model").exists()
    r = invoke("train", *common, "--resume")
    assert r.exit_code == 0, r.output + repr(r.exception)
    log = json.loads((tmp_path / "t" / "train_log.json").read_text())
    assert log["resumed_from"] == 2 and log["steps_done"] == 3 and len(log["losses"]) == 3
    assert [e["step"] for e in log["evals"]] == [1, 2, 3] and log["method"] == "full"
    assert (tmp_path / "t" / "model" / "config.json").exists()

    model = tmp_path / "t" / "model"
    r = invoke("run", "-m", model, "-d", w / "tasks_test.jsonl", "--limit", 2, "-o", tmp_path / "run")
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["n_samples"] == 2 and s["model"]["profile"] == "toy-capimagine"

    r = invoke("intervene", "-m", model, "-d", w / "tasks_test.jsonl", "--limit", 2, "-o", tmp_path / "int")
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = json.loads((tmp_path / "int" / "summary.json").read_text())
    assert s["n_samples"] == 2 and s["n_intervened"] + sum(s["skip_reasons"].values()) == 2


def test_intervene_on_a_tiny_checkpoint_and_bad_records_exit_1(world, tiny_checkpoint, tmp_path):
    w = world / "w"
    tasks = tmp_path / "tasks.jsonl"
    good = [json.loads(x) for x in (w / "tasks_test.jsonl").read_text().splitlines()[:2]]
    good = [json.dumps({**t, "image": str(w / t["image"])}) for t in good]
    tasks.write_text("\n".join(good + [json.dumps({"id": "x", "question": "Q?", "image": "nope/missing.png",
                                                   "options": ["a", "b"], "answer": "A"})]) + "\n")
    ck = tiny_checkpoint("toy", "toy-capimagine")
    r = invoke("intervene", "-m", ck, "-d", tasks, "--limit", 3, "-o", tmp_path / "int", "-q")
    assert r.exit_code == 3, r.output + repr(r.exception)  # completes, with one error record
    rows = [json.loads(x) for x in (tmp_path / "int" / "samples.jsonl").read_text().splitlines()[1:]]
    err = [x for x in rows if x["type"] == "error"]
    assert len(rows) == 3 and len(err) == 1 and err[0]["field"] == "image"


def test_user_errors(tiny_checkpoint, tmp_path):
    ck = tiny_checkpoint("toy", "toy-capimagine")
    r = invoke("intervene", "-m", ck, "--corrupter", "model", "-o", tmp_path)
    assert isinstance(r.exception, LatentcheckError) and "--corrupt-model" in str(r.exception)
    r = invoke("train", "--data", tmp_path / "none.jsonl", "-m", ck, "--method", "bogus", "-o", tmp_path)
    assert isinstance(r.exception, LatentcheckError) and r.exception.exit_code == 2
    r = invoke("build-data", tmp_path / "none.json", "-o", tmp_path / "x.jsonl")
    assert isinstance(r.exception, LatentcheckError) and "not found" in str(r.exception)
    # real data is captioned by a model unless reuse is asked for
    src = tmp_path / "one.json"
    src.write_text("[]")
    r = invoke("build-data", src, "-o", tmp_path / "x.jsonl")
    assert isinstance(r.exception, LatentcheckError) and "--captioner metadata" in str(r.exception)
