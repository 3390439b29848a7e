"""Resume, end to end, for every long-running command: an interrupted run (results cut in the middle of a block, the
last line torn, no summary) resumed with --resume ends with the records and summary of an uninterrupted run.

What a SIGKILL leaves is reproduced by cutting the results file (test_resume_kill.py kills real processes): records of
finished blocks are complete, the block being written is partly there with a torn last line, and its tensors (saved
before its records) are on disk.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from robustness_helpers import canonical_records, canonical_summary, write_tasks


def run_main(monkeypatch, *args) -> int:
    from latentcheck.cli.app import main

    monkeypatch.setattr(sys, "argv", ["latentcheck", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return int(e.value.code or 0)


def interrupt(results: Path, keep: int) -> None:
    """Keep the provenance and ``keep`` records, then half of the next record without its newline."""
    lines = results.read_bytes().split(b"\n")
    results.write_bytes(b"\n".join(lines[:1 + keep]) + b"\n" + lines[1 + keep][: len(lines[1 + keep]) // 2])


def comparable_summary(path: Path, out: Path, drop: tuple[str, ...] = ()) -> dict:
    s = json.loads(json.dumps(canonical_summary(path)).replace(str(out), "<out>"))
    for key in drop:
        s.pop(key, None)
    return s


def probe_data(folder: Path) -> tuple[Path, Path]:
    data = write_tasks(folder, 8, sizes=True)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    derived = folder / "derived.jsonl"
    derived.write_text("".join(json.dumps({"id": f"{r['id']}-d", "question": "Which?", "options": ["a", "b", "c"],
                                           "answer": "ABC"[i % 3], "meta": {"source_id": r["id"]}}) + "\n"
                               for i, r in enumerate(rows)))
    return data, derived


CASES = {
    # command args, files to cut (relative to --out, records kept), summary file, summary keys that legitimately differ
    "perturb-input": (["perturb-input", "--force-start", "-t", "identity", "-t", "noise:std=0.3", "-t", "swap_image",
                       "--n-boot", "100", "--no-plots", "--save-tensors"],
                      [("samples.jsonl", 5)], "summary.json", ()),
    "probe": (["probe", "--splits", "2", "--label", "category"],
              [("capture/samples.jsonl", 5), ("samples.jsonl", 2)], "summary.json", ()),
    "bench": (["bench", "--max-new-tokens", "6", "--n-boot", "100", "-i", "zero"],
              [("samples.jsonl", 5)], "summary.json", ()),  # wall-time latency lives under "timing"
}


@pytest.mark.parametrize("command", list(CASES))
def test_interrupted_then_resumed_equals_uninterrupted(command, ck, tmp_path, monkeypatch):
    args, cuts, summary, volatile = CASES[command]
    if command == "probe":
        data, derived = probe_data(tmp_path / "data")
        args = [*args, "--derived", derived]
    else:
        data = write_tasks(tmp_path / "data", 9, sizes=True)
    common = ["--model", ck, "--profile", "toy-latent", "--data", data, "--batch-size", "2", "--quiet"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run_main(monkeypatch, *args, *common, "--out", ref) == 0
    shutil.copytree(ref, out)
    for name, keep in cuts:
        interrupt(out / name, keep)
    (out / summary).unlink()
    assert run_main(monkeypatch, *args, *common, "--out", out, "--resume") == 0
    for name, _ in cuts:
        assert canonical_records(out / name) == canonical_records(ref / name), name
    assert comparable_summary(out / summary, out, volatile) == comparable_summary(ref / summary, ref, volatile)
    if command == "bench":  # the scores themselves are not volatile
        got, want = (json.loads((d / summary).read_text())["conditions"] for d in (out, ref))
        assert {c: v["accuracy"] for c, v in got.items()} == {c: v["accuracy"] for c, v in want.items()}
