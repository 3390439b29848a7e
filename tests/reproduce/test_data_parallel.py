"""`latentcheck --num-processes 2 reproduce zoo`: two CPU processes (accelerate's launcher, gloo), each loading each
model once and running a share of every step, give the single-process study: the same sample records, summaries and
tables; an interrupted step resumes under two processes and re-runs nothing else."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from latentcheck.core.records import strip_timing

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "80"}
# batch size 1 -> blocks of 4 samples; --limit 8 -> two blocks, one per process
STEPS = ["xz_latent", "zy_latent", "doz_capimagine", "bench_latent"]
ARGS = ["reproduce", "zoo", "--limit", "8", "--batch-size", "1", "--n-boot", "50", "--no-plots", "--no-report",
        "--quiet", *[a for s in STEPS for a in ("--step", s)]]


def _records(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["type"] == "provenance"
    return [json.dumps(strip_timing(json.loads(x)), sort_keys=True) for x in lines[1:]]


def _summary(path: Path, out: Path) -> dict:
    return strip_timing(json.loads(path.read_text().replace(str(out), "<out>")))


def _same_study(one: Path, two: Path, steps=STEPS) -> None:
    for sid in steps:
        run1, run2 = one / "steps" / sid / "run", two / "steps" / sid / "run"
        assert _records(run2 / "samples.jsonl") == _records(run1 / "samples.jsonl"), sid
        assert _summary(run2 / "summary.json", two) == _summary(run1 / "summary.json", one), sid
        assert not list(run2.glob("samples.rank*")), sid  # shards merged and removed
    d1, d2 = (json.loads((o / "reproduce.json").read_text()) for o in (one, two))
    assert d2["tables"] == d1["tables"]
    assert {k: v["status"] for k, v in d2["steps"].items() if k in steps} == dict.fromkeys(steps, "done")


@pytest.mark.slow
def test_two_cpu_processes_give_the_single_process_study_and_resume(tmp_path):
    import subprocess

    from latentcheck.cli.launch import run_launch

    one, two = tmp_path / "one", tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "latentcheck", *ARGS, "--out", str(one)], env=ENV,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    launched = run_launch(2, [*ARGS, "--out", str(two)], cpu=True, env=ENV)
    assert launched.rank_codes == {0: 0, 1: 0} and launched.exit_code == 0, launched  # both processes ran it all
    _same_study(one, two)
    # interrupt one step: its state and summary gone, only its first block of records written
    zy = two / "steps" / "zy_latent"
    (zy / "step.json").unlink()
    (zy / "run" / "summary.json").unlink()
    lines = (zy / "run" / "samples.jsonl").read_text().splitlines(keepends=True)
    (zy / "run" / "samples.jsonl").write_text("".join(lines[:5]))  # provenance + 4 records
    stamps = {p: p.stat().st_mtime_ns for p in two.glob("steps/*/step.json")}
    launched = run_launch(2, [*ARGS, "--out", str(two), "--resume"], cpu=True, env=ENV)
    assert launched.exit_code == 0, launched
    assert {p: p.stat().st_mtime_ns for p in two.glob("steps/*/step.json") if p in stamps} == stamps  # no re-run
    _same_study(one, two)
