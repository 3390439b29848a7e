"""Tests for the result writer/reader (core/records.py) and the progress bar (core/progress.py)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.progress import progress_bar
from latentcheck.core.records import (
    RESUME_IGNORED_KEYS, SCHEMA_VERSION, IncompleteLineWarning, ResultWriter, SummaryCounter, iter_results,
    merge_shards, provenance, read_results, shard_path, strip_timing, write_json_atomic)

CONFIG = {"model": "toy", "seed": 3, "interventions": ["zero", "noise:0.5"], "quiet": False, "out": "r.jsonl"}


def prov(config: dict | None = None, command: str = "perturb-latent", **kw) -> dict:
    return provenance(command, CONFIG if config is None else config, model={"id": "toy", "weight_hash": "abc"},
                      argv=["latentcheck", command], **kw)


def sample(i: int) -> dict:
    return {"key": f"k{i}", "i": i, "correct": i % 3 == 0}


def write_run(path: Path, keys: range, **kw) -> None:
    with ResultWriter(path, prov(), **kw) as w:
        for i in keys:
            w.write(sample(i))


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ------------------------------------------------------------------------------------------------- provenance

def test_provenance_fields_and_only_timing_varies():
    a = prov()
    assert [k for k in a if k != "timing"] == ["type", "schema", "command", "config", "model", "versions", "threads",
                                          "argv"]
    assert a["type"] == "provenance" and a["schema"] == SCHEMA_VERSION
    assert a["config"] == CONFIG and a["model"]["weight_hash"] == "abc"
    assert a["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert a["versions"]["numpy"] == np.__version__
    assert "definitely-not-installed-pkg" not in a["versions"]
    assert list(a["timing"]) == ["started"]
    b = prov()
    assert strip_timing(a) == strip_timing(b)
    assert json.dumps(strip_timing(a)) == json.dumps(strip_timing(b))


def test_provenance_config_made_json_safe():
    p = provenance("x", {"path": Path("/a/b"), "sizes": (1, 2), "thr": np.float32(0.25)}, argv=[])
    assert p["config"] == {"path": "/a/b", "sizes": [1, 2], "thr": 0.25}


# ------------------------------------------------------------------------------------------- write / read back

def test_fresh_write_then_read_back(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, prov()) as w:
        w.write({"key": "a", "x": 1, "b": [1, 2]})
        w.write({"type": "sample", "key": "b", "x": 2})
        w.write_error("c", "data.jsonl:3", "image", "image file not found: c.png")
        assert w.done == {"a", "b", "c"}
    text = path.read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 4
    assert json.loads(lines[0])["type"] == "provenance"
    # "type" is added first, insertion order is kept
    assert lines[1] == '{"type": "sample", "key": "a", "x": 1, "b": [1, 2]}'
    assert json.loads(lines[3]) == {"type": "error", "key": "c", "record": "data.jsonl:3", "field": "image",
                                    "message": "image file not found: c.png"}
    p, records = read_results(path)
    assert strip_timing(p) == strip_timing(json.loads(lines[0]))
    assert [r["key"] for r in records] == ["a", "b", "c"]
    assert [r["type"] for r in records] == ["sample", "sample", "error"]


def test_numpy_and_nonfinite_values_serialise(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, prov()) as w:
        w.write({"key": "a", "f32": np.float32(0.5), "i64": np.int64(7), "flag": np.bool_(True),
                 "arr": np.array([[1, 2], [3, 4]], dtype=np.int16), "nan": float("nan"), "inf": np.inf,
                 "mixed": np.array([1.5, np.nan, -np.inf]), "tup": (1, 2), "set": {"b", "a"}})
    line = lines_of(path)[1]
    assert line == ('{"type": "sample", "key": "a", "f32": 0.5, "i64": 7, "flag": true, "arr": [[1, 2], [3, 4]], '
                    '"nan": null, "inf": null, "mixed": [1.5, null, null], "tup": [1, 2], "set": ["a", "b"]}')


def test_unserialisable_value_names_its_path(tmp_path):
    with ResultWriter(tmp_path / "r.jsonl", prov()) as w:
        with pytest.raises(TypeError, match=r"\$\.meta\.obj"):
            w.write({"key": "a", "meta": {"obj": object()}})
        w.write({"key": "a", "ok": 1})  # nothing was written for the failed record; the key is still free
    assert [r["key"] for r in read_results(tmp_path / "r.jsonl")[1]] == ["a"]


def test_duplicate_key_raises(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, prov()) as w:
        w.write(sample(1))
        with pytest.raises(RecordError, match="k1.*already written"):
            w.write(sample(1))
        with pytest.raises(RecordError, match="already written"):
            w.write_error("k1", "d:1", "image", "bad")
        with pytest.raises(RecordError, match="key"):
            w.write({"x": 1})  # no key field
    assert len(lines_of(path)) == 2
    with ResultWriter(path, prov(), resume=True) as w:  # also across a resume
        with pytest.raises(RecordError, match="already written"):
            w.write(sample(1))
    assert len(lines_of(path)) == 2


def test_fresh_run_refuses_existing_results_unless_overwrite(tmp_path):
    """A fresh run used to truncate a finished results file without asking."""
    path = tmp_path / "r.jsonl"
    write_run(path, range(5))
    before = path.read_bytes()
    with pytest.raises(LatentcheckError, match=r"already holds a 'perturb-latent' run \(5 records\); pass --resume to "
                                               r"continue it, or --overwrite to replace it"):
        write_run(path, range(2))
    assert path.read_bytes() == before  # nothing truncated
    write_run(path, range(2), overwrite=True)
    assert [r["i"] for r in read_results(path)[1]] == [0, 1]
    path.write_text("")  # an empty file holds no run
    write_run(path, range(1))


def test_second_writer_on_same_file_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, prov()) as w:
        w.write(sample(0))
        with pytest.raises(LatentcheckError, match="another latentcheck process"):
            ResultWriter(path, prov())
        w.write(sample(1))
    assert [r["i"] for r in read_results(path)[1]] == [0, 1]  # the refused writer truncated nothing


# ------------------------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize("tail", [b'{"type": "sample", "key": "k5", "i"',  # torn, no newline
                                  b'{"type": "sample", "key": "k5", "i": 5, "correct": false}',  # no newline
                                  b'{"type": "sample", "key": "k5\n'])  # newline but invalid JSON
def test_resume_repairs_torn_last_line_without_duplicates(tmp_path, tail):
    reference = tmp_path / "ref.jsonl"
    write_run(reference, range(10))
    path = tmp_path / "r.jsonl"
    write_run(path, range(5))
    with open(path, "ab") as fh:
        fh.write(tail)

    stream = iter_results(path)
    assert [r["i"] for r in stream] == [0, 1, 2, 3, 4]
    assert stream.broken_last_line == 7
    with pytest.warns(IncompleteLineWarning):
        _, records = read_results(path)
    assert len(records) == 5

    with ResultWriter(path, prov(), resume=True) as w:
        assert w.repaired and w.resumed == 5
        assert w.done == {f"k{i}" for i in range(5)}
        for i in range(10):
            if f"k{i}" not in w.done:
                w.write(sample(i))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, records = read_results(path)
    assert [r["key"] for r in records] == [f"k{i}" for i in range(10)]
    assert lines_of(path)[1:] == lines_of(reference)[1:]  # byte-identical to an uninterrupted run


def test_resume_of_missing_or_empty_file_is_a_fresh_run(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    with ResultWriter(path, prov(), resume=True) as w:
        assert w.done == set() and w.resumed == 0
        w.write(sample(0))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b'{"type": "prove')  # killed while writing the provenance
    with ResultWriter(empty, prov(), resume=True) as w:
        w.write(sample(0))
    for p in (path, empty):
        pv, records = read_results(p)
        assert pv["type"] == "provenance" and [r["i"] for r in records] == [0]


def test_resume_config_mismatch_names_the_option(tmp_path):
    path = tmp_path / "r.jsonl"
    write_run(path, range(3))
    with pytest.raises(LatentcheckError, match=r"option 'seed' was 3 and is now 4"):
        ResultWriter(path, prov({**CONFIG, "seed": 4}), resume=True)
    with pytest.raises(LatentcheckError, match=r"option 'limit' is now 10 but was not set"):
        ResultWriter(path, prov({**CONFIG, "limit": 10}), resume=True)
    with pytest.raises(LatentcheckError, match="written by 'perturb-latent', not 'probe'"):
        ResultWriter(path, prov(command="probe"), resume=True)
    # ignored options may change
    assert {"quiet", "out", "resume"} <= RESUME_IGNORED_KEYS
    changed = {**CONFIG, "quiet": True, "out": "other.jsonl", "resume": True}
    with ResultWriter(path, prov(changed), resume=True) as w:
        assert w.resumed == 3
    # a failed resume leaves the file untouched
    assert [r["i"] for r in read_results(path)[1]] == [0, 1, 2]


def test_resume_keeps_errors_unless_retry_errors(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultWriter(path, prov()) as w:
        w.write(sample(0))
        w.write_error("k1", "d.jsonl:2", "image", "missing")
        w.write(sample(2))
    with ResultWriter(path, prov(), resume=True) as w:
        assert w.done == {"k0", "k1", "k2"}
        assert w.counter.as_dict() == {"total": 3, "ok": 2, "errors": 1, "errors_by_field": {"image": 1}}
    with ResultWriter(path, prov(), resume=True, retry_errors=True) as w:
        assert w.done == {"k0", "k2"}
        w.write(sample(1))
    _, records = read_results(path)
    assert [(r["key"], r["type"]) for r in records] == [("k0", "sample"), ("k2", "sample"), ("k1", "sample")]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_corrupted_middle_line_is_reported(tmp_path):
    path = tmp_path / "r.jsonl"
    write_run(path, range(3))
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"broken\n'
    path.write_bytes(b"".join(lines))
    with pytest.raises(RecordError, match=r"r\.jsonl:3"):
        read_results(path)
    with pytest.raises(RecordError, match=r"r\.jsonl:3"):
        ResultWriter(path, prov(), resume=True)


def test_not_a_results_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": "a", "question": "q"}\n')
    with pytest.raises(LatentcheckError, match="not a latentcheck results file"):
        ResultWriter(path, prov(), resume=True)
    assert path.read_text() == '{"id": "a", "question": "q"}\n'


# ------------------------------------------------------------------------------------------------------ stdout

def test_stdout_mode(capsys):
    with ResultWriter("-", prov()) as w:
        w.write(sample(0))
        w.write_error("k1", "d:2", "question", "empty")
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["type"] for x in out] == ["provenance", "sample", "error"]
    assert json.loads(out[1]) == {"type": "sample", **sample(0)}
    with pytest.raises(LatentcheckError, match="stdout"):
        ResultWriter("-", prov(), resume=True)


# -------------------------------------------------------------------------------------- atomic json, timing

def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"acc": np.float64(0.75), "n": 4, "ci": [0.5, float("nan")]})
    assert json.loads(target.read_text()) == {"acc": 0.75, "n": 4, "ci": [0.5, None]}
    write_json_atomic(target, {"acc": 1.0})
    assert json.loads(target.read_text()) == {"acc": 1.0}
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"acc": 1.0}  # old content survives a failed write
    assert os.listdir(tmp_path) == ["summary.json"]


def test_strip_timing_is_recursive_and_copies():
    rec = {"key": "a", "timing": {"s": 1.0}, "branches": [{"timing": 2, "y": 1}, {"z": {"timing": 3, "w": 0}}]}
    assert strip_timing(rec) == {"key": "a", "branches": [{"y": 1}, {"z": {"w": 0}}]}
    assert rec["timing"] == {"s": 1.0}  # input untouched


def test_summary_counter():
    c = SummaryCounter.from_records([{"type": "sample"}, {"type": "error", "field": "image"},
                                     {"type": "error", "field": "image"}, {"type": "error", "field": "options"},
                                     {"type": "sample"}])
    assert c.as_dict() == {"total": 5, "ok": 2, "errors": 3, "errors_by_field": {"image": 2, "options": 1}}


# ------------------------------------------------------------------------------------------------------ shards

def test_shard_paths():
    assert shard_path("out.jsonl", 0, 2) == "out.rank0-of-2.jsonl"
    assert shard_path(Path("d/out.jsonl"), 1, 2) == Path("d/out.rank1-of-2.jsonl")
    assert shard_path("out.jsonl", 0, 1) == "out.jsonl"
    with pytest.raises(LatentcheckError):
        shard_path("out.jsonl", 2, 2)


def test_merge_shards_equals_single_process_run(tmp_path):
    n, world = 11, 3
    order = [f"k{i}" for i in range(n)]

    def record(i: int) -> dict:
        if i == 4:
            return {"type": "error", "key": "k4", "record": "d:5", "field": "image", "message": "missing"}
        return {**sample(i), "score": np.float32(i / 4), "timing": {"s": i * 0.1}}

    single = tmp_path / "single.jsonl"
    with ResultWriter(single, prov()) as w:
        for i in range(n):
            w.write(record(i))
    out = tmp_path / "out.jsonl"
    paths = []
    for rank in range(world):
        paths.append(shard_path(out, rank, world))
        with ResultWriter(paths[-1], prov(shard=(rank, world))) as w:
            for i in range(rank, n, world):  # a strided split, as VLMEvalKit's
                w.write(record(i))
    assert read_results(paths[1])[0]["shard"] == {"rank": 1, "world_size": 3}

    counter = merge_shards(list(reversed(paths)), out, order)
    assert counter.as_dict() == {"total": 11, "ok": 10, "errors": 1, "errors_by_field": {"image": 1}}
    assert lines_of(out)[1:] == lines_of(single)[1:]
    assert strip_timing(json.loads(lines_of(out)[0])) == strip_timing(json.loads(lines_of(single)[0]))

    with pytest.raises(LatentcheckError, match="missing.*'k11'"):
        merge_shards(paths, tmp_path / "m.jsonl", order + ["k11"])
    with pytest.raises(LatentcheckError, match="complete data-parallel run"):
        merge_shards(paths[:2], tmp_path / "m.jsonl", order)
    with pytest.raises(RecordError, match="not in the expected order"):
        merge_shards(paths, tmp_path / "m.jsonl", order[:-1])
    # a key written by two ranks
    with ResultWriter(paths[2], prov(shard=(2, world)), resume=True) as w:
        w.write(sample(0))
    with pytest.raises(RecordError, match="'k0'.*more than one"):
        merge_shards(paths, tmp_path / "m.jsonl", order)
    assert not (tmp_path / "m.jsonl").exists()


def test_merge_refuses_shards_with_different_config(tmp_path):
    out = tmp_path / "out.jsonl"
    paths = [shard_path(out, r, 2) for r in range(2)]
    for rank, seed in ((0, 3), (1, 4)):
        with ResultWriter(paths[rank], prov({**CONFIG, "seed": seed}, shard=(rank, 2))) as w:
            w.write(sample(rank))
    with pytest.raises(LatentcheckError, match="option 'seed'"):
        merge_shards(paths, out, ["k0", "k1"])


# ------------------------------------------------------------------------------------------- kill and resume

KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from latentcheck.core.records import ResultWriter, provenance

    out = sys.argv[1]
    prov = provenance("killtest", {"n": 200, "seed": 0}, argv=["killtest"])
    with ResultWriter(out, prov, resume=True, key="key") as w:
        for i in range(200):
            k = f"s{i:03d}"
            if k in w.done:
                continue
            w.write({"key": k, "i": i, "value": np.float64(i) / 7, "pad": "x" * (i % 50), "timing": time.time()})
            time.sleep(0.004)
""")


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "killed.jsonl"
    rng = random.Random(20240611)
    targets = sorted(rng.sample(range(5, 150), 3))
    plan = [(t, signal.SIGKILL) for t in targets] + [(targets[-1] + 3, signal.SIGINT)]
    for target, sig in plan:
        proc = subprocess.Popen([sys.executable, str(script), str(out)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while _count_lines(out) < target + 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.004))  # anywhere inside a write / sleep cycle
        proc.send_signal(sig)
        proc.wait(timeout=10)
        assert proc.returncode != 0, "the writer finished before it could be interrupted"
    assert _count_lines(out) < 201
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=30)

    reference = tmp_path / "clean.jsonl"
    subprocess.run([sys.executable, str(script), str(reference)], check=True, timeout=30)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, records = read_results(out)
    assert [r["key"] for r in records] == [f"s{i:03d}" for i in range(200)]
    assert all(r["value"] == i / 7 for i, r in enumerate(records))
    assert [strip_timing(json.loads(x)) for x in lines_of(out)] == \
        [strip_timing(json.loads(x)) for x in lines_of(reference)]


# ---------------------------------------------------------------------------------------------------- progress

class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_logs_lines_off_a_tty_and_is_silent_when_quiet(monkeypatch, capsys):
    import re

    monkeypatch.setenv("LATENTCHECK_PROGRESS_INTERVAL", "0")
    with progress_bar(3, "scoring") as bar:  # pytest's captured stderr is not a TTY: log lines, no bar
        for _ in range(3):
            bar.advance()
    assert bar.completed == 3 and bar.enabled
    lines = capsys.readouterr().err.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"
    assert re.fullmatch(stamp + r" scoring: 0/3 \(0%\), started, elapsed 0s", lines[0]), lines
    assert [re.match(stamp + r" scoring: (\d)/3", ln).group(1) for ln in lines] == ["0", "1", "2", "3", "3"]
    assert "ETA" in lines[1] and "/s" in lines[1] and lines[-1].split(", ")[1] == "done"
    assert "\x1b" not in "".join(lines)  # plain text for a log file
    monkeypatch.setenv("LATENTCHECK_PROGRESS_INTERVAL", "3600")
    with progress_bar(5, "scoring", completed=2) as bar:  # resumed: starts at 2; nothing between start and end
        bar.advance(3)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and " 2/5 (40%), started" in lines[0] and " 5/5 (100%), done" in lines[1]
    with progress_bar(3, "scoring", quiet=True) as bar:
        bar.advance(2)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_draws_on_stderr_tty_only(monkeypatch, capsys):
    fake = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    with progress_bar(4, "scoring samples", completed=1) as bar:
        bar.advance(3)
    assert bar.enabled and bar.completed == 4
    assert "scoring samples" in fake.getvalue() and "4/4" in fake.getvalue()
    assert capsys.readouterr().out == ""
    fake2 = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake2)
    with progress_bar(4, "scoring samples", quiet=True) as bar:
        bar.advance()
    assert fake2.getvalue() == ""
