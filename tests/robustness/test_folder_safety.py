"""The --out folder: nothing is destroyed before the run holds the results file's lock, a fresh run never replaces
another run's results without --overwrite, and `--resume --retry-errors` reruns error records in place while a
changed input line is detected and reported (issue 19, points 3 and 4)."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest
from PIL import Image

from latentcheck.core.records import read_results
from robustness_helpers import canonical_records, canonical_summary, task_row, write_tasks
from test_bad_input import run_main


def _pi_args(ck, data, out, *extra):
    return ["perturb-input", "--model", ck, "--profile", "toy-latent", "--data", data, "--out", out, "--quiet",
            "--batch-size", "2", "-t", "identity", "--force-start", "--n-boot", "50", "--no-plots", *extra]


def _pl_args(ck, data, out, *extra):
    return ["perturb-latent", "--model", ck, "--profile", "toy-latent", "--force-latent", "-i", "zero",
            "--mediation", "none", "--batch-size", "2", "--n-boot", "50", "--no-plots", "--quiet", "--data", data,
            "--out", out, *extra]


@pytest.mark.parametrize("command", ["perturb-input", "probe"])
def test_a_second_run_on_a_busy_folder_destroys_nothing(command, ck, tmp_path, monkeypatch, capsys):
    """Before: a second perturb-input (or probe) on the same --out deleted the first run's tensors before it reached
    the writer's lock, and the first run ended with an empty geometry section. Now the lock comes first: the
    second run stops with exit 2, even with --overwrite, and the tensors are untouched."""
    data = write_tasks(tmp_path / "data", 4)
    out = tmp_path / "out"
    args = _pi_args(ck, data, out) if command == "perturb-input" else \
        ["probe", "--model", ck, "--profile", "toy-latent", "--data", data, "--out", out, "--quiet", "--batch-size",
         "2", "--no-behavioural", "--no-trained"]
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    results = out / ("capture" if command == "probe" else "") / "samples.jsonl"
    tensors = sorted((out / ("capture" if command == "probe" else "") / "tensors").rglob("*.npz"))
    assert tensors
    snapshot = {p: p.read_bytes() for p in tensors}
    records = results.read_bytes()
    # the first run is still running: it holds its results file's lock (as ResultWriter takes it)
    with open(results, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        for extra in ([], ["--overwrite"]):
            code, err = run_main(monkeypatch, capsys, *args, *extra)
            assert code == 2 and "is being written by another latentcheck process" in err, err
            assert {p: p.read_bytes() for p in tensors if p.exists()} == snapshot
    assert results.read_bytes() == records


def test_a_fresh_run_refuses_a_folder_with_results_unless_overwrite(ck, tmp_path, monkeypatch, capsys):
    """Before: a fresh run without --resume truncated a finished results file without asking."""
    data = write_tasks(tmp_path / "data", 2)
    out = tmp_path / "out"
    assert run_main(monkeypatch, capsys, *_pl_args(ck, data, out))[0] == 0
    before = (out / "samples.jsonl").read_bytes()
    code, err = run_main(monkeypatch, capsys, *_pl_args(ck, data, out))
    assert code == 2
    assert (f"error: {out}/samples.jsonl already holds a 'perturb-latent' run (2 records); pass --resume to "
            "continue it, or --overwrite to replace it") in err
    assert (out / "samples.jsonl").read_bytes() == before
    code, err = run_main(monkeypatch, capsys, *_pi_args(ck, data, out))  # another command: refused too
    assert code == 2 and "already holds a 'perturb-latent' run" in err
    assert run_main(monkeypatch, capsys, *_pi_args(ck, data, out, "--overwrite"))[0] == 0
    assert read_results(out / "samples.jsonl")[0]["command"] == "perturb-input"


def test_retry_errors_reruns_error_records_in_place(ck, tmp_path, monkeypatch, capsys):
    """Before: after fixing the input, --resume kept the old error record (and a fixed line became an extra record).
    Now --resume --retry-errors reruns them where they were; the file equals a clean run of the fixed input."""
    folder = tmp_path / "data"
    bad_line = '{"id": "t5", "question": "Q?", '
    data = write_tasks(folder, 5, extra_lines=[json.dumps(task_row(9, image="later.png")), bad_line,
                                               json.dumps(task_row(6, image="im0.png"))])
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, *_pl_args(ck, data, out))
    assert code == 3, err
    _, recs = read_results(out / "samples.jsonl")
    assert [r["key"] for r in recs] == ["t0", "t1", "t2", "t3", "t4", "t9", "error@tasks.jsonl:7", "t6"]
    assert [r["type"] for r in recs][5:7] == ["error", "error"]

    # fix both: the image appears, the malformed line is repaired (its record key changes from error@... to t5)
    Image.open(folder / "im1.png").save(folder / "later.png")
    lines = data.read_text().splitlines()
    lines[6] = json.dumps(task_row(5, image="im2.png"))
    data.write_text("\n".join(lines) + "\n")
    code, err = run_main(monkeypatch, capsys, *_pl_args(ck, data, out, "--resume"))
    assert code == 2 and "the input changed since these records were written: 'error@tasks.jsonl:7' (no longer in " \
                         "the input)" in err, err
    code, err = run_main(monkeypatch, capsys, *_pl_args(ck, data, out, "--resume", "--retry-errors"))
    assert code == 0, err
    _, recs = read_results(out / "samples.jsonl")
    assert [r["key"] for r in recs] == ["t0", "t1", "t2", "t3", "t4", "t9", "t5", "t6"]  # in place
    clean = tmp_path / "clean"
    assert run_main(monkeypatch, capsys, *_pl_args(ck, data, clean))[0] == 0
    assert canonical_records(out / "samples.jsonl") == canonical_records(clean / "samples.jsonl")
    # every statistic (bootstrap CIs included) equals the clean run's: the retried records are back in input order
    # (before, retried records were appended at the end and 54 CI bounds moved)
    assert _summary(out) == _summary(clean)


def _summary(out: Path) -> dict:
    return json.loads(json.dumps(canonical_summary(out / "summary.json")).replace(str(out), "<out>"))


def test_a_changed_input_line_for_an_existing_id_is_reported(ck, tmp_path, monkeypatch, capsys):
    data = write_tasks(tmp_path / "data", 3)
    out = tmp_path / "out"
    assert run_main(monkeypatch, capsys, *_pl_args(ck, data, out))[0] == 0
    lines = data.read_text().splitlines()
    lines[1] = json.dumps(task_row(1, question="What shape is the circle?"))
    data.write_text("\n".join(lines) + "\n")
    code, err = run_main(monkeypatch, capsys, *_pl_args(ck, data, out, "--resume"))
    assert code == 2
    assert "the input changed since these records were written: 't1' (its input line changed)" in err
    assert "Traceback" not in err
    code, err = run_main(monkeypatch, capsys, *_pl_args(ck, data, out, "--resume", "--retry-errors"))
    assert code == 0, err
    _, recs = read_results(out / "samples.jsonl")
    assert [r["key"] for r in recs] == ["t0", "t1", "t2"]
    clean = tmp_path / "clean"
    assert run_main(monkeypatch, capsys, *_pl_args(ck, data, clean))[0] == 0
    assert canonical_records(out / "samples.jsonl") == canonical_records(clean / "samples.jsonl")
