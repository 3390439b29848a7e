"""Data parallelism: 2 CPU processes (accelerate's torch.distributed launcher, gloo) give the records and summary of a
single process; the runner's block striding, shard merge and resume across process counts, simulated in-process."""

from __future__ import annotations

import json
import sys

import pytest

from latentcheck.core import runner
from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.export import EXPORTS
from latentcheck.core.records import read_results
from latentcheck.core.runner import CommonOptions, block_ranges, run_records
from latentcheck.core.tasks import BadRecord, Task
from robustness_helpers import (SUBPROCESS_ENV, canonical_provenance, canonical_records, canonical_summary,
                                write_tasks)


def run_main(monkeypatch, *args) -> int:
    from latentcheck.cli.app import main

    monkeypatch.setattr(sys, "argv", ["latentcheck", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return int(e.value.code or 0)


# --------------------------------------------------------------------------------- the real thing: 2 processes
def test_two_cpu_processes_equal_one_process(ck, tmp_path, monkeypatch):
    from latentcheck.cli.launch import run_launch

    # varied image sizes (padded batches) and bad lines, so shard order, merge order and batch composition all count
    data = write_tasks(tmp_path / "data", 13, sizes=True,
                       extra_lines=['{"id": "broken", ', json.dumps({"id": "x", "question": "Q?", "image": "no.png",
                                                                     "options": ["a", "b"], "answer": "A"})])
    args = ["perturb-latent", "--model", ck, "--profile", "toy-latent", "--data", data, "--force-latent",
            "-i", "zero", "-i", "noise:sigma=1", "--mediation", "image", "--batch-size", "2", "--n-boot", "200",
            "--no-plots", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_main(monkeypatch, *args, "--out", one) == 3  # error records -> exit code 3
    launched = run_launch(2, [*map(str, args), "--out", str(two)], cpu=True, env=SUBPROCESS_ENV)
    assert launched.rank_codes == {0: 3, 1: 3}, launched  # both ranks ran (rank 1 reports its shard's errors)
    assert launched.exit_code == 3
    assert canonical_records(two / "samples.jsonl") == canonical_records(one / "samples.jsonl")
    assert canonical_provenance(two / "samples.jsonl") == canonical_provenance(one / "samples.jsonl")
    assert canonical_summary(two / "summary.json") == canonical_summary(one / "summary.json")
    expected = ["samples.jsonl", "summary.json", "results.json", *EXPORTS]  # no shards
    assert sorted(p.name for p in two.iterdir()) == sorted(expected)


def test_probe_two_processes_equal_one_process(ck, tmp_path, monkeypatch):
    """The probe: two runner passes (capture, derived questions), a shared tensor store and a barrier."""
    from latentcheck.cli.launch import run_launch

    data = write_tasks(tmp_path / "data", 8, sizes=True)
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    for r, cat in zip(rows, ["a", "b"] * 4):
        r["meta"] = {"colour": r["answer"]}
        r["category"] = cat
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    derived = tmp_path / "data" / "derived.jsonl"
    derived.write_text("".join(json.dumps({"id": f"{r['id']}-d", "question": "Which?", "options": ["a", "b", "c"],
                                           "answer": "ABC"[i % 3], "meta": {"source_id": r["id"]}}) + "\n"
                               for i, r in enumerate(rows)))
    # batch size 1 -> blocks of 4: rank 0 and rank 1 get one block each in both passes
    args = ["probe", "--model", ck, "--profile", "toy-latent", "--data", data, "--derived", derived,
            "--batch-size", "1", "--splits", "2", "--label", "category", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_main(monkeypatch, *args, "--out", one) == 0
    launched = run_launch(2, [*map(str, args), "--out", str(two)], cpu=True, env=SUBPROCESS_ENV)
    assert launched.rank_codes == {0: 0, 1: 0} and launched.exit_code == 0, launched
    for sub in ("capture/samples.jsonl", "samples.jsonl"):
        assert canonical_records(two / sub) == canonical_records(one / sub), sub
    a = canonical_summary(one / "summary.json")
    b = json.loads(json.dumps(canonical_summary(two / "summary.json")).replace(str(two), str(one)))  # plot paths
    assert a["behavioural"]["n"] == 8 and a["capture"]["n"] == 8
    assert b == a


# --------------------------------------------------------------------------------- the runner, ranks simulated
def items(n: int = 11) -> list:
    out: list = [Task(id=f"k{i}", question="Q?") for i in range(n)]
    out.insert(5, BadRecord("d.jsonl:6", RecordError("d.jsonl:6", "<line>", "malformed JSON")))
    return out


class Recorder:
    """A process_block that records which tasks shared each call (the 'batch composition') and fails on 'k7'."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, tasks: list[Task]) -> list[dict]:
        ids = [t.id for t in tasks]
        self.calls.append(ids)
        return [{"key": i, "error": {"record": i, "field": "image", "message": "bad"}} if i == "k7"
                else {"key": i, "block": ids} for i in ids]


def simulate(monkeypatch, out, world: int, resume: bool = False, ranks=None, rec: Recorder | None = None):
    """Run run_records as ranks ``ranks`` (default: all, highest first, so rank 0 merges last) of ``world``."""
    rec = rec or Recorder()
    opts = CommonOptions(out=str(out), batch_size=1, resume=resume, quiet=True)
    monkeypatch.setattr(runner, "_wait_for_everyone", lambda w: None)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # (a launcher sets these; no process group is made here)
    monkeypatch.setenv("MASTER_PORT", "29500")
    results = []
    for r in ranks if ranks is not None else reversed(range(world)):
        monkeypatch.setattr(runner, "distributed", lambda r=r: (r, world))
        results.append(run_records("sim", opts, {"x": 1}, None, items(), rec, block_size=3))
    return results, rec


def test_a_rank_without_launcher_environment_stops_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "distributed", lambda: (1, 2))
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    rec = Recorder()
    with pytest.raises(LatentcheckError, match="without MASTER_ADDR and MASTER_PORT; start it with"):
        run_records("sim", CommonOptions(out=str(tmp_path), quiet=True), {}, None, items(), rec, block_size=3)
    assert rec.calls == [] and not any(tmp_path.iterdir())


def test_block_ranges_stride_whole_blocks():
    assert block_ranges(10, 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert block_ranges(10, 3, 0, 2) == [(0, 3), (6, 9)] and block_ranges(10, 3, 1, 2) == [(3, 6), (9, 10)]
    assert block_ranges(2, 3, 1, 2) == []


def test_simulated_two_ranks_merge_to_the_single_process_file(monkeypatch, tmp_path):
    (single,), rec1 = simulate(monkeypatch, tmp_path / "one", 1)
    results, rec2 = simulate(monkeypatch, tmp_path / "two", 2)
    assert [r.is_main for r in results] == [False, True]  # only rank 0 may summarise
    assert canonical_records(tmp_path / "two" / "samples.jsonl") == canonical_records(tmp_path / "one" /
                                                                                        "samples.jsonl")
    assert results[1].counts == single.counts == {"total": 12, "ok": 10, "errors": 2,
                                                  "errors_by_field": {"<line>": 1, "image": 1}}
    assert sorted(map(sorted, rec1.calls)) == sorted(map(sorted, rec2.calls))  # the same batches
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(["samples.jsonl", *EXPORTS])  # no shards
    _, recs = read_results(tmp_path / "one" / "samples.jsonl")
    assert [r["key"] for r in recs] == [*(f"k{i}" for i in range(5)), "error@d.jsonl:6",
                                        *(f"k{i}" for i in range(5, 11))]  # item order, errors in place


def test_resume_re_runs_only_the_interrupted_block_whole(monkeypatch, tmp_path):
    simulate(monkeypatch, tmp_path / "ref", 1)
    out = tmp_path / "run"
    simulate(monkeypatch, out, 1)
    path = out / "samples.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:5]) + b"\n" + lines[5][:10])  # k0..k3 kept, k4 torn (block k3,k4,bad)
    _, rec = simulate(monkeypatch, out, 1, resume=True)
    # blocks of 3 items: [k0 k1 k2] [k3 k4 bad] [k5 k6 k7] [k8 k9 k10]; k3 is re-run with k4 (the same batch)
    assert rec.calls == [["k3", "k4"], ["k5", "k6", "k7"], ["k8", "k9", "k10"]]
    assert canonical_records(path) == canonical_records(tmp_path / "ref" / "samples.jsonl")


def test_resume_across_process_counts_adopts_the_records_already_written(monkeypatch, tmp_path):
    ref = tmp_path / "ref" / "samples.jsonl"
    simulate(monkeypatch, tmp_path / "ref", 1)
    # a finished 2-process run resumed with 2 processes: nothing is recomputed
    out = tmp_path / "two"
    simulate(monkeypatch, out, 2)
    _, rec = simulate(monkeypatch, out, 2, resume=True)
    assert rec.calls == [] and canonical_records(out / "samples.jsonl") == canonical_records(ref)
    # an interrupted single-process run resumed with 2 processes: only the missing blocks run
    out = tmp_path / "one-then-two"
    simulate(monkeypatch, out, 1)
    path = out / "samples.jsonl"
    path.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[:8]) + b"\n")  # k0..k4, bad, k5 done
    _, rec = simulate(monkeypatch, out, 2, resume=True)
    assert sorted(rec.calls) == [["k5", "k6", "k7"], ["k8", "k9", "k10"]]
    assert canonical_records(path) == canonical_records(ref)
    # an interrupted 2-process run (rank 1 never ran) resumed with 1 process
    out = tmp_path / "two-then-one"
    monkeypatch.setattr(runner, "distributed", lambda: (0, 2))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    opts = CommonOptions(out=str(out), batch_size=1, quiet=True)
    with pytest.raises(LatentcheckError, match="results file not found"):  # rank 1's shard is missing: no merge
        run_records("sim", opts, {"x": 1}, None, items(), Recorder(), block_size=3)
    assert (out / "samples.rank0-of-2.jsonl").exists()
    _, rec = simulate(monkeypatch, out, 1, resume=True)
    assert sorted(rec.calls) == [["k3", "k4"], ["k8", "k9", "k10"]]  # rank 1's blocks only
    assert canonical_records(out / "samples.jsonl") == canonical_records(ref)
    assert sorted(p.name for p in out.iterdir()) == sorted(["samples.jsonl", *EXPORTS])  # the old shard is removed


def test_num_processes_option_parsing_and_child_exit_codes(monkeypatch, tmp_path):
    from latentcheck.cli.launch import RC_DIR_ENV, child_exit_code, launch_command, split_num_processes

    assert split_num_processes(["--num-processes", "3", "probe", "-q"]) == (3, ["probe", "-q"])
    assert split_num_processes(["probe", "--num-processes=2"]) == (2, ["probe"])
    assert split_num_processes(["probe", "--", "--num-processes", "2"]) == (None, ["probe", "--", "--num-processes",
                                                                                   "2"])
    for bad in (["--num-processes", "two"], ["--num-processes", "0"], ["--num-processes"]):
        with pytest.raises(LatentcheckError, match="--num-processes"):
            split_num_processes(bad)
    cmd = launch_command(2, ["probe", "-q"], port=29999)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd and "--cpu" not in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "29999"
    assert cmd[-4:] == ["-m", "latentcheck", "probe", "-q"]
    monkeypatch.delenv(RC_DIR_ENV, raising=False)
    assert child_exit_code(3) == 3  # not launched: unchanged
    monkeypatch.setenv(RC_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    # a completed run with error records exits 0 towards torch.distributed (which reads non-zero as a crash) and
    # reports 1 to the launcher; user errors keep their code so the launcher stops the other ranks
    assert child_exit_code(3) == 0 and (tmp_path / "rank1.rc").read_text() == "3"
    assert child_exit_code(2) == 2 and (tmp_path / "rank1.rc").read_text() == "2"
