"""results.json in lmms-eval's shape (core/lmms.py) and ``--log tensorboard|wandb`` (core/tracking.py).

The lmms-eval file is checked against the summary it is built from (every number equal, found again at its path);
the run loggers are checked by reading their files back with the trackers' own readers (TensorBoard's
EventAccumulator; W&B's protobuf records of an offline run)."""

from __future__ import annotations

import glob
import json
import math
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentcheck.cli.app import app
from latentcheck.core import tracking
from latentcheck.core.analysis import finish
from latentcheck.core.lmms import intervals, lmms_results
from latentcheck.core.summaries import AccuracyEffect, Proportion

LMMS_KEYS = {"results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples", "config"}


def _at(summary, name: str):
    node = summary
    for part in filter(None, name.split("/")):
        node = node[int(part)] if isinstance(node, list) else node[part.replace(";", ",")]
    return node


def _expected(summary, base: str, suffix: str | None):
    """The summary's number behind metric ``base`` (+ ``_lo`` / ``_hi``): a record, a v1 accuracy dict or a v1
    paired row (metric ``PATH/delta``)."""
    parent, _, last = base.rpartition("/")
    if last == "delta":
        row = _at(summary, parent)
        if isinstance(row, dict) and "delta_lo" in row:
            return row["delta"] if suffix is None else row[f"delta_{suffix}"]
    node = _at(summary, base)
    return node[suffix or ("estimate" if "estimate" in node else "accuracy")]


def assert_results_match_summary(lmms: dict, summary: dict, task: str) -> int:
    """Every metric of ``lmms["results"][task]`` is the summary's number at the metric's path; returns how many."""
    assert LMMS_KEYS <= set(lmms)
    row = lmms["results"][task]
    assert row["alias"] == task and lmms["versions"][task] == summary["schema"]
    n = 0
    for key, value in row.items():
        if key == "alias":
            continue
        name, _, filt = key.partition(",")
        assert filt == "none"
        if name.endswith("_stderr"):
            assert value == "N/A"
            continue
        base, suffix = name, None
        for s in ("_lo", "_hi"):
            if name.endswith(s) and name[: -len(s)] in lmms["higher_is_better"][task]:
                base, suffix = name[: -len(s)], s[1:]
        assert value == _expected(summary, base, suffix), key
        n += 1
    return n


def test_lmms_results_carry_the_summary_numbers_in_every_shape(tmp_path):
    acc = AccuracyEffect.paired([1, 0, 1, 1, 0, 1], [1, 1, 1, 0, 0, 1], seed=0, n_boot=200)
    summary = {
        "command": "demo",
        "baseline": Proportion.wilson(3, 4).to_dict(),  # a typed record
        "conditions": {"noise:sigma=1,seed=2": {"accuracy": 0.5, "lo": 0.2, "hi": 0.8, "n": 4, "correct": 2}},
        "paired": [{"label": "zero", "delta": -0.25, "delta_lo": -0.6, "delta_hi": 0.1, "mcnemar_p": 0.5}],
        "timing": {"total_s": {"estimate": 1.0, "lo": 0.0, "hi": 2.0}},  # skipped: not a result
        "schema": "latentcheck.summary/2",
    }
    summary["effect"] = acc.to_dict()  # nested records: base / cond / delta
    lmms = lmms_results("demo", summary, {"ok": 4, "errors": 1},
                        {"config": {"data": "tasks.jsonl", "batch_size": 2, "seed": 3, "limit": None},
                         "model": {"path": "/m", "profile": "toy-latent"}})
    row = lmms["results"]["demo"]
    assert row["baseline,none"] == 0.75 and row["baseline_lo,none"] == summary["baseline"]["lo"]
    assert row["conditions/noise:sigma=1;seed=2,none"] == 0.5  # ',' would break lmms-eval's METRIC,FILTER split
    assert row["conditions/noise:sigma=1;seed=2_hi,none"] == 0.8
    assert (row["paired/0/delta,none"], row["paired/0/delta_lo,none"]) == (-0.25, -0.6)
    assert not any(k.startswith("timing") for k in row)
    assert row["effect/delta,none"] == acc.delta.estimate and row["effect/cond_hi,none"] == acc.cond.hi
    assert lmms["higher_is_better"]["demo"]["conditions/noise:sigma=1;seed=2"] is True
    assert lmms["higher_is_better"]["demo"]["paired/0/delta"] is None
    assert lmms["n-samples"]["demo"] == {"original": 5, "effective": 4}
    assert lmms["config"]["model_args"] == "pretrained=/m,profile=toy-latent"
    assert (lmms["config"]["batch_size"], lmms["config"]["random_seed"]) == (2, 3)
    assert lmms["configs"]["demo"]["dataset_path"] == "tasks.jsonl"
    assert assert_results_match_summary(lmms, summary, "demo") == 3 * 6
    # finish writes summary.json and results.json side by side; results.json is never a summary
    res = finish("demo", tmp_path, dict(summary), {"ok": 4, "errors": 1})
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert res.lmms_path == str(tmp_path / "results.json") and res.paths()["results"] == res.lmms_path
    assert on_disk["results"] == json.loads(json.dumps(lmms["results"]))
    with pytest.raises(ValueError):
        finish("demo", tmp_path, dict(summary), {}, name="results.json")


def test_interval_walker_finds_nothing_in_plain_numbers():
    assert list(intervals({"n": 3, "rate": 0.5, "nested": {"x": [1, 2]}})) == []


# ------------------------------------------------------------------------------------------------- run loggers
def _cli_run(tiny_checkpoint, tmp_path, log: str | None):
    from tests.cli.test_perturb_latent import write_data

    folder = tiny_checkpoint("toy", "toy-latent")
    data = write_data(tmp_path / "data", n=3)
    out = tmp_path / "run"
    args = ["perturb-latent", "--model", str(folder), "--profile", "toy-latent", "--data", str(data), "--out",
            str(out), "--force-latent", "-i", "zero", "--n-boot", "50", "--batch-size", "2", "--no-plots"]
    r = CliRunner().invoke(app, args + (["--log", log] if log else []), catch_exceptions=True)
    tracking.close()  # the console script closes at exit; the in-process runner does not exit
    assert r.exit_code == 0, r.output + repr(r.exception)
    return out


def test_perturb_latent_results_json_equals_its_summary(tiny_checkpoint, tmp_path):
    out = _cli_run(tiny_checkpoint, tmp_path, None)
    summary = json.loads((out / "summary.json").read_text())
    lmms = json.loads((out / "results.json").read_text())
    assert assert_results_match_summary(lmms, summary, "perturb-latent") >= 3
    assert lmms["n-samples"]["perturb-latent"] == {"original": 3, "effective": 3}
    assert lmms["configs"]["perturb-latent"]["options"]["batch_size"] == 2


def test_log_tensorboard_read_back_with_event_accumulator(tiny_checkpoint, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = _cli_run(tiny_checkpoint, tmp_path, "tensorboard")
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    progress = [t for t in scalars if t.startswith("progress/") and not t.endswith("_fraction")]
    assert progress, scalars
    done = [e.value for e in acc.Scalars(max(progress, key=lambda t: acc.Scalars(t)[-1].value))]
    assert done == sorted(done) and done[-1] >= 3  # per-stage progress up to every sample
    lmms = json.loads((out / "results.json").read_text())
    finals = tracking.final_metrics(lmms)["perturb-latent"]
    assert finals and all(f"perturb-latent/{k}" in scalars for k in finals)
    for k, v in finals.items():
        assert math.isclose(acc.Scalars(f"perturb-latent/{k}")[-1].value, v, rel_tol=1e-6, abs_tol=1e-7)
    text = acc.Tensors("config/perturb-latent/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"batch_size": 2' in text and "tasks.jsonl" in text


def _wandb_records(run_dir: Path):
    """The records of an offline W&B run (``run-*.wandb``: a LevelDB-style log of wandb's own protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))[0]).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_log_wandb_offline(tiny_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = _cli_run(tiny_checkpoint, tmp_path, "wandb")
    import wandb

    wandb.teardown()  # the offline run file is complete once wandb's service has flushed (at exit for the CLI)
    recs = _wandb_records(out)
    history = [{i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    config = {i.key: json.loads(i.value_json) for r in recs if r.WhichOneof("record_type") == "config"
              for i in r.config.update}
    progress = [v for h in history for k, v in h.items() if k.startswith("progress/") and not k.endswith("fraction")]
    assert progress and max(progress) >= 3
    finals = tracking.final_metrics(json.loads((out / "results.json").read_text()))["perturb-latent"]
    logged = {k: v for h in history for k, v in h.items() if k.startswith("perturb-latent/")}
    assert logged == {f"perturb-latent/{k}": pytest.approx(v) for k, v in finals.items()}
    assert config["perturb-latent"]["options"]["batch_size"] == 2


def test_log_rejects_unknown_backend(tmp_path):
    from latentcheck.core.errors import LatentcheckError

    with pytest.raises(LatentcheckError, match="valid: tensorboard, wandb"):
        tracking.configure("mlflow", tmp_path)
    assert tracking.active() is None
