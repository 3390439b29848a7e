"""Statistics do not depend on the order of the records (issue 19, point 7): every summary is computed over the records
in the canonical record-id order (``core.records.record_order_key``, natural order over mixed int / str ids, applied
in ``core.runner.load_records``), and whatever else feeds a statistic from the set of samples (swap / mediation
partners, calibration samples, the geometry subset, the probe's mean latent, trained-probe splits) is drawn in that
order too. The same tasks in a shuffled file therefore give the same summary.json, bootstrap bounds included, while the
results file keeps the input order.

Batch size 1 so that no sample shares a padded batch with another (batch composition moves floats in the last bits,
which is the engine's business, not the statistics')."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from robustness_helpers import task_row, write_tasks

from latentcheck.core.records import read_results, record_order_key, strip_timing
from latentcheck.toy.world import write_world

IDS = [3, "t10", 10, "t2", "b", 7, "t1", "a10", "a9", 12]  # mixed int / str ids; natural order differs from both


def test_record_order_key_is_natural_total_and_never_crashes():
    ids = ["t10", "t2", 3, "3", 10, "t02", "error@x.jsonl:12", "error@x.jsonl:5", 10 ** 5000, 10 ** 4999, -4, ""]
    ordered = sorted(ids, key=record_order_key)
    assert ordered.index(3) < ordered.index(10) < ordered.index(10 ** 4999) < ordered.index(10 ** 5000)
    assert ordered.index("t2") < ordered.index("t10") and ordered.index("t02") < ordered.index("t10")
    assert ordered.index("error@x.jsonl:5") < ordered.index("error@x.jsonl:12")
    assert ordered.index(3) < ordered.index("3")  # equal-looking ids of different types: a fixed tie-break
    for _ in range(5):  # total: any input order sorts the same
        assert sorted(random.sample(ids, len(ids)), key=record_order_key) == ordered


def _files(folder: Path) -> tuple[Path, Path]:
    path = write_tasks(folder, len(IDS))
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    for r, rid in zip(rows, IDS):
        r["id"] = rid
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    shuffled = rows[:]
    random.Random(4).shuffle(shuffled)
    assert [r["id"] for r in shuffled] != IDS
    other = folder / "shuffled.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in shuffled))
    return path, other


def _summary(out: Path, data: Path, name: str) -> dict:
    """summary.json without timing and without what names the file (path, digest, the output folder)."""
    text = (out / name).read_text().replace(str(data), "DATA").replace(str(out), "OUT")
    s = strip_timing(json.loads(text))

    def drop(o):
        if isinstance(o, dict):
            return {k: drop(v) for k, v in o.items() if k not in ("md5", "sha256", "data_sha256", "started", "finished")}
        if isinstance(o, list):
            return [drop(v) for v in o]
        return o
    return drop(s)


def _diff(a, b, path="$") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


COMMANDS = {
    # (not -i swap: it feeds the partner's latents, and a partner outside the block is decoded alone rather than with
    # its own interventions' forks, which moves its latents in the last float bits: batch composition, see above)
    "perturb-latent": (["-i", "zero", "-i", "noise:sigma=0.5", "-i", "shared:source=mean", "--force-latent",
                        "--n-boot", "200", "--no-plots"], "summary.json"),
    "perturb-input": (["--force-start", "--n-boot", "200", "--no-plots", "--max-matrix", "6"], "summary.json"),
    "bench": (["--n-boot", "200", "--max-new-tokens", "4", "-i", "zero", "--force-latent"], "summary.json"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_shuffled_file_gives_the_same_summary(command, ck, tmp_path, monkeypatch, capsys):
    from test_bad_input import run_main

    data, shuffled = _files(tmp_path / "d")
    extra, name = COMMANDS[command]
    summaries = []
    for f in (data, shuffled):
        out = tmp_path / f.stem
        code, err = run_main(monkeypatch, capsys, command, "--model", ck, "--profile", "toy-latent", "--data", f,
                             "--out", out, "--quiet", "--batch-size", "1", *extra)
        assert code == 0, err
        _, recs = read_results(out / "samples.jsonl")
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        assert [r["key"] for r in recs] == [str(r["id"]) for r in rows]  # the results file keeps the input order
        summaries.append(_summary(out, f, name))
    assert _diff(*summaries) == [], "\n".join(_diff(*summaries))


def test_probe_shuffled_file_gives_the_same_summary(ck, tmp_path, monkeypatch, capsys):
    """The probe: capture, behavioural arms (mean latent), trained probes (grouped, stratified, seeded splits)."""
    from test_bad_input import run_main

    write_world(tmp_path / "w", n_train=1, n_val=1, n_test=16, seed=0)
    data = tmp_path / "w" / "tasks_test.jsonl"
    rows = data.read_text().splitlines()
    random.Random(1).shuffle(rows)
    shuffled = tmp_path / "w" / "tasks_shuffled.jsonl"
    shuffled.write_text("".join(x + "\n" for x in rows))
    summaries = []
    for f in (data, shuffled):
        out = tmp_path / f.stem
        code, err = run_main(monkeypatch, capsys, "probe", "--model", ck, "--profile", "toy-latent", "--data", f,
                             "--derived", tmp_path / "w" / "derived_test.jsonl", "--out", out, "--quiet",
                             "--batch-size", "1")
        assert code == 0, err
        summaries.append(_summary(out, f, "summary.json"))
    assert "labels" in summaries[0]["trained"] and summaries[0]["behavioural"]["n"] > 0
    assert _diff(*summaries) == [], "\n".join(_diff(*summaries))
