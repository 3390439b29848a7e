"""`latentcheck reproduce`: the zoo study end to end through the console entry point, resume, and unbound roles."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from latentcheck.core.runner import CommonOptions
from latentcheck.core.summaries import SUMMARY_SCHEMA, Score
from latentcheck.reproduce.run import run_study
from latentcheck.reproduce.study import load_study


def test_zoo_study_runs_end_to_end_prints_every_table_and_resumes(tmp_path):
    out = tmp_path / "zoo"
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "latentcheck", "reproduce", "zoo", "--limit", "4", "--n-boot", "50", "--out",
           str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    study = load_study("zoo")
    for t in study.tables:  # every table printed, each fitting 80 columns
        assert t.title in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    doc = json.loads((out / "reproduce.json").read_text())
    assert {k: v["status"] for k, v in doc["steps"].items()} == {s.id: "done" for s in study.steps}
    cells = [c for t in doc["tables"] for row in t["rows"] for c in row["cells"]]
    assert all(c["ours"] is not None for c in cells), [c["reason"] for c in cells if c["ours"] is None]
    html = (out / "report.html").read_text()
    assert all(f'id="{t.id}"' in html for t in study.tables) and "figures/table4.png" in html
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("steps/*/step.json")}
    r2 = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("steps/*/step.json")} == stamps  # nothing re-ran
    assert json.loads((out / "reproduce.json").read_text())["tables"] == doc["tables"]


def test_unbound_model_and_missing_data_skip_their_cells_with_the_reason(tmp_path):
    study_file = tmp_path / "s.toml"
    study_file.write_text("""
[study]
name = "partial"
[models.mine]
stands_for = "my checkpoint"
[models.toy]
default = "toy-direct"
[data.real]
benchmark = "vstar"
[[steps]]
id = "needs_model"
analysis = "bench"
model = "mine"
data = "real"
[[steps]]
id = "needs_data"
analysis = "bench"
model = "toy"
data = "real"
[[tables]]
id = "t"
columns = ["V*"]
[[tables.rows]]
label = "mine"
cells = [{ step = "needs_model", metric = "accuracy", paper = 80.0, provenance = "table" }]
[[tables.rows]]
label = "toy"
cells = [{ step = "needs_data", metric = "accuracy" }]
""")
    res = run_study(load_study(str(study_file)), CommonOptions(out=str(tmp_path / "run")),
                    data=[f"real={tmp_path / 'absent.jsonl'}"], report=False)
    assert res.exit_code == 0
    assert res.steps["needs_model"].status == "skipped" and "--model mine=PATH" in res.steps["needs_model"].reason
    assert res.steps["needs_data"].status == "skipped" and "absent.jsonl" in res.steps["needs_data"].reason
    (t,) = res.tables
    assert "not bound" in t.rows[0][1][0].reason and "does not exist" in t.rows[1][1][0].reason
    assert "Cells without a number:" in (tmp_path / "run" / "tables.md").read_text()


def test_resume_adopts_a_step_whose_analysis_was_run_by_hand(tmp_path):
    """A step's analysis launched by hand (e.g. data-parallel) into <out>/steps/<id>/run is read by --resume."""
    study_file = tmp_path / "s.toml"
    study_file.write_text("""
[study]
name = "adopt"
[models.mine]
[data.d]
[[steps]]
id = "b"
analysis = "bench"
model = "mine"
data = "d"
[[tables]]
id = "t"
columns = ["x"]
[[tables.rows]]
label = "mine"
cells = [{ step = "b", metric = "accuracy", paper = 50.0, provenance = "table" }]
""")
    run = tmp_path / "run" / "steps" / "b" / "run"
    run.mkdir(parents=True)
    # a results file of an older summary schema is not adopted: the step runs again (here its model is unbound)
    (run / "results.json").write_text(json.dumps({"scores": {"n": 10, "correct": 9, "accuracy": 0.9},
                                                  "schema": "latentcheck.summary/2"}))
    res = run_study(load_study(str(study_file)), CommonOptions(out=str(tmp_path / "run"), resume=True), report=False)
    assert res.steps["b"].status == "skipped" and "not bound" in res.steps["b"].reason
    (tmp_path / "run" / "steps" / "b" / "step.json").unlink()
    (run / "results.json").write_text(json.dumps({"scores": Score.micro({"n": 10, "correct": 9, "accuracy": 0.9}, 9,
                                                                        10).to_dict(), "schema": SUMMARY_SCHEMA}))
    res = run_study(load_study(str(study_file)), CommonOptions(out=str(tmp_path / "run"), resume=True), report=False)
    assert res.steps["b"].status == "done" and res.steps["b"].extra.get("adopted") is True
    cell = res.tables[0].rows[0][1][0]
    assert cell.ours.estimate == 90.0 and cell.excludes_paper is True


def test_probe_step_reads_its_derived_questions_from_a_data_role(tmp_path):
    """``options = { derived = ROLE }``: the file bound to that role is the probe's --derived; unbound, the step is
    skipped with the reason (not run without its derived questions)."""
    from latentcheck.core.runner import data_path
    from latentcheck.core.tasks import read_tasks

    tasks = data_path(CommonOptions(), "test")
    mine = tmp_path / "my_derived.jsonl"  # the toy world's derived questions, elsewhere (image paths made absolute)
    src = os.path.dirname(tasks)
    rows = [json.loads(x) for x in open(os.path.join(src, "derived_test.jsonl"), encoding="utf-8")]
    mine.write_text("".join(json.dumps({**r, "image": os.path.join(src, r["image"])}) + "\n" for r in rows))
    study_file = tmp_path / "s.toml"
    study_file.write_text("""
[study]
name = "probe"
[models.latent]
default = "toy-latent"
[data.src]
default = "toy:test"
[data.dq]
[[steps]]
id = "p"
analysis = "probe"
model = "latent"
data = "src"
limit = 2
options = { derived = "dq" }
""")
    study = load_study(str(study_file))
    res = run_study(study, CommonOptions(out=str(tmp_path / "unbound"), quiet=True), report=False, plots=False)
    assert res.steps["p"].status == "skipped" and "data role 'dq' is not bound" in res.steps["p"].reason
    res = run_study(study, CommonOptions(out=str(tmp_path / "run"), quiet=True), data=[f"dq={mine}"], report=False,
                    plots=False, n_boot=50)
    assert res.steps["p"].status == "done", res.steps["p"].reason
    summary = json.loads((tmp_path / "run" / "steps" / "p" / "run" / "summary.json").read_text())
    assert summary["derived"] == str(mine)
    sources = [t.id for t in read_tasks(tasks, limit=2)]
    n_derived = sum(t.meta.get("source_id") in sources for t in read_tasks(mine))
    assert summary["behavioural"]["n"] == n_derived > 0
