"""Hostile-but-fair input at the entry points that came after the first robustness tests (issue 19): `latentcheck
reproduce` (a bad study file: one line naming file, section and key, exit 2; a bad data file: the step fails or writes
error records, exit 3), bench with an LLM judge (the same error records; the judge is asked only about samples),
`latentcheck report` on a corrupt summary.json (one line, exit 2) and the Python API given bad in-memory tasks (error
records naming the row and the field, no crash). The study-file and report cases feed docs/robustness.md's second
generated table (test_robustness_doc.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from robustness_helpers import (HOSTILE_HEAD, REPORT_CASES, STUDY_CASES, run_cli, study_case_file, task_row,
                                write_hostile, write_tasks)

from latentcheck.core.errors import EXIT_CANNOT_RUN, EXIT_ERROR_RECORDS
from latentcheck.core.records import read_results


def _one_line_error(r, code: int, message: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines[0] == f"error: {message}", lines[0]


@pytest.mark.parametrize("kind", [k for k, _, _ in STUDY_CASES])
def test_bad_study_file_is_one_line_naming_file_section_and_key(kind, tmp_path):
    path, message = study_case_file(tmp_path, kind)
    r = run_cli("reproduce", path, "--out", tmp_path / "out", "-q", timeout=120)
    _one_line_error(r, EXIT_CANNOT_RUN, message)
    assert not (tmp_path / "out" / "steps").exists()  # nothing ran


def test_bad_data_files_of_a_study_fail_their_step_or_become_error_records(tmp_path):
    """--data bound to a folder: the step fails with the reason in the tables; bound to the hostile task file: the step
    runs and writes one error record per hostile record; both exit 3 (the study completed, with failures)."""
    study, _ = study_case_file(tmp_path, "valid study")
    (tmp_path / "adir").mkdir()
    r = run_cli("reproduce", study, "--data", f"d={tmp_path / 'adir'}", "--out", tmp_path / "o1", "-q", timeout=300)
    assert r.returncode == EXIT_ERROR_RECORDS and "Traceback" not in r.stderr, r.stderr[-2000:]
    state = json.loads((tmp_path / "o1" / "steps" / "pl" / "step.json").read_text())
    assert state["status"] == "failed" and "data file is a folder" in state["reason"]
    data, expected = write_hostile(tmp_path / "h")
    study.write_text(study.read_text().replace("limit = 3", "limit = 0"))  # every record
    r = run_cli("reproduce", study, "--data", f"d={data}", "--out", tmp_path / "o2", "-q", timeout=600)
    assert r.returncode == EXIT_ERROR_RECORDS and "Traceback" not in r.stderr, r.stderr[-2000:]
    _, recs = read_results(tmp_path / "o2" / "steps" / "pl" / "run" / "samples.jsonl")
    errors = [(r["record"], r["field"], r["message"]) for r in recs if r["type"] == "error"]
    assert errors == [exp for _, exp in expected if exp is not None]


def test_bench_with_a_judge_turns_hostile_records_into_error_records(ck, tiny_checkpoint, tmp_path, monkeypatch,
                                                                     capsys):
    from test_bad_input import run_main

    monkeypatch.setenv("LATENTCHECK_CACHE", str(tmp_path / "cache"))
    data, expected = write_hostile(tmp_path / "h")
    judge = tiny_checkpoint("toy", "toy-direct")
    out = tmp_path / "bench"
    code, err = run_main(monkeypatch, capsys, "bench", "--model", ck, "--profile", "toy-latent", "--data", data,
                         "--out", out, "--quiet", "--batch-size", "2", "--n-boot", "50", "--max-new-tokens", "4",
                         "--judge-model", judge, "--judge-profile", "toy-direct", "--judge-protocol", "monet")
    assert code == EXIT_ERROR_RECORDS, err
    _, recs = read_results(out / "samples.jsonl")
    errors = [(r["record"], r["field"], r["message"]) for r in recs if r["type"] == "error"]
    assert errors == [exp for _, exp in expected if exp is not None]
    samples = [r for r in recs if r["type"] == "sample"]
    assert len(samples) == HOSTILE_HEAD + 2  # the valid head, the raw base64 image, the last valid task
    for s in samples:  # the judge read every sample whose reply the rule could not extract, and only those
        j = s["conditions"]["baseline"]["judge"] if "conditions" in s else s["judge"]
        assert j["used"] is (s.get("extracted", s.get("conditions", {}).get("baseline", {}).get("extracted")) is None)
    res = json.loads((out / "summary.json").read_text())
    assert res["judge"]["protocol"] == "monet"


@pytest.mark.parametrize("kind", [k for k, _, _ in REPORT_CASES])
def test_report_on_a_corrupt_summary_is_one_line_exit_2(kind, tmp_path):
    content, message = next((c, m) for k, c, m in REPORT_CASES if k == kind)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").write_bytes(content)
    r = run_cli("report", folder, timeout=120)
    _one_line_error(r, EXIT_CANNOT_RUN, message.format(path=folder / "summary.json"))
    assert not (folder / "report.html").exists()


def test_python_api_turns_bad_in_memory_tasks_into_error_records(ck, tmp_path):
    """Rows a notebook may hand over: a circular reference, a dict nested too deep for JSON, a tuple key, a row that
    is not a mapping, a lone surrogate, an unreadable in-memory image; each is its row's error record naming the
    field, the valid rows are samples, exit code 3 -- nothing raises."""
    from latentcheck import perturb_latent

    folder = tmp_path / "imgs"
    write_tasks(folder, 2)
    good = [dict(task_row(i), image=str(folder / f"im{i}.png")) for i in range(2)]
    circular = dict(task_row(2, image=str(folder / "im0.png")), meta={})
    circular["meta"]["self"] = circular["meta"]
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["x"] = {}
        node = node["x"]
    tuple_key = dict(task_row(4, image=str(folder / "im0.png")))
    tuple_key[("a", 1)] = "tuple key"
    rows = [good[0], circular, dict(task_row(3, image=str(folder / "im0.png")), meta=deep), tuple_key, 42,
            dict(task_row(5, image=str(folder / "im0.png")), question="colour\ud800?"),
            dict(task_row(6), image=b"not an image"), good[1]]
    res = perturb_latent(ck, rows, interventions=["zero"], mediation=[], profile="toy-latent", force_latent=True,
                         n_boot=50, plots=False, batch_size=2, out=tmp_path / "run")
    assert res.exit_code == EXIT_ERROR_RECORDS
    recs = res.records()
    assert [r["type"] for r in recs] == ["sample"] + ["error"] * 6 + ["sample"]
    got = [(r["record"], r["field"]) for r in recs if r["type"] == "error"]
    assert got == [("tasks.jsonl:2", "meta"), ("tasks.jsonl:3", "meta"), ("tasks.jsonl:4", "('a', 1)"),
                   ("tasks.jsonl:5", "<record>"), ("tasks.jsonl:6 (id=t5)", "question"),
                   ("tasks.jsonl:7 (id=t6)", "image")]
    assert all(r["message"] for r in recs if r["type"] == "error")
