"""The runner's preparation stage: prefetching overlaps block i+1's preparation with block i's processing, and the
records (order, errors, resume) are the same as without it."""

from __future__ import annotations

import threading

import pytest

from latentcheck.core.errors import RecordError
from latentcheck.core.records import iter_results, strip_timing
from latentcheck.core.runner import CommonOptions, run_records
from latentcheck.core.tasks import BadRecord, Task


def _items(n: int = 10) -> list:
    out: list = [Task(id=f"k{i}", question="Q?") for i in range(n)]
    out.insert(4, BadRecord("d.jsonl:5", RecordError("d.jsonl:5", "<line>", "malformed JSON")))
    return out


class Stages:
    """prepare/process hooks that log the order of events; ``overlap`` makes block i's processing wait (with a
    timeout) until block i+1's preparation has started, which only a prefetching runner can satisfy."""

    def __init__(self, overlap: bool = False, fail_prepare: str | None = None):
        self.events: list[str] = []
        self.started: dict[int, threading.Event] = {}
        self.overlap = overlap
        self.fail_prepare = fail_prepare
        self.waited_ok: list[bool] = []

    FIRST = {"k0": 0, "k3": 1, "k5": 2, "k8": 3}  # blocks of 3 items: [k0-k2] [k3, bad, k4] [k5-k7] [k8, k9]

    def _block(self, tasks: list[Task]) -> int:
        return self.FIRST[tasks[0].id]

    def prepare(self, tasks: list[Task]):
        b = self._block(tasks)
        self.started.setdefault(b, threading.Event()).set()
        self.events.append(f"prepare {b} on {threading.current_thread().name.split('_')[0]}")
        if self.fail_prepare and any(t.id == self.fail_prepare for t in tasks):
            raise RuntimeError("prepare failed")
        return [(t.id, t.id.upper()) for t in tasks]

    def process(self, prepared) -> list[dict]:
        b = self.FIRST[prepared[0][0]]
        if self.overlap and b < 3:
            self.waited_ok.append(self.started.setdefault(b + 1, threading.Event()).wait(timeout=20))
        self.events.append(f"process {b}")
        return [{"key": k, "prepared": v, "block": b} for k, v in prepared]


def _run(tmp_path, name, stages: Stages, prefetch: bool, resume: bool = False, items=None):
    opts = CommonOptions(out=str(tmp_path / name), batch_size=1, quiet=True, resume=resume)
    return run_records("sim", opts, {"x": 1}, None, items if items is not None else _items(), stages.process,
                       block_size=3, prepare_block=stages.prepare, prefetch=prefetch)


def test_prefetch_prepares_the_next_block_while_this_one_is_processed(tmp_path):
    st = Stages(overlap=True)
    res = _run(tmp_path, "pf", st, prefetch=True)
    assert st.waited_ok == [True, True, True]  # every wait was released by the next block's preparation
    assert all("on latentcheck-prepare" in e for e in st.events if e.startswith("prepare"))
    for b in range(3):
        assert st.events.index(f"prepare {b + 1} on latentcheck-prepare") < st.events.index(f"process {b}")
    inline = Stages()
    res_inline = _run(tmp_path, "inline", inline, prefetch=False)
    assert [e.split(" on ")[0] for e in inline.events] == [f"{s} {b}" for b in range(4) for s in ("prepare", "process")]
    a = [strip_timing(r) for r in iter_results(res.results_path)]
    b = [strip_timing(r) for r in iter_results(res_inline.results_path)]
    assert a == b and [r["key"] for r in a] == [f"k{i}" for i in range(4)] + ["error@d.jsonl:5"] + \
        [f"k{i}" for i in range(4, 10)]
    assert a[0]["prepared"] == "K0" and a[4]["type"] == "error" and a[4]["field"] == "<line>"


def test_prefetch_error_surfaces_at_its_block_after_earlier_records_are_written(tmp_path):
    st = Stages(fail_prepare="k7")
    with pytest.raises(RuntimeError, match="prepare failed"):
        _run(tmp_path, "err", st, prefetch=True)
    done = [r["key"] for r in iter_results(str(tmp_path / "err" / "samples.jsonl"))]
    assert done == ["k0", "k1", "k2", "k3", "error@d.jsonl:5", "k4"]  # blocks 0 and 1 kept
    # resume: only what is missing is prepared and processed again, the file is complete and has no duplicate
    st2 = Stages()
    res = _run(tmp_path, "err", st2, prefetch=True, resume=True)
    assert sorted({e.split(" on ")[0] for e in st2.events}) == ["prepare 2", "prepare 3", "process 2", "process 3"]
    keys = [r["key"] for r in iter_results(res.results_path)]
    assert keys == [f"k{i}" for i in range(4)] + ["error@d.jsonl:5"] + [f"k{i}" for i in range(4, 10)]
