"""HR-Bench TSV / parquet loading (streamed, big base64 fields, lazy images), MD5, prompts, cycle averaging."""

from __future__ import annotations

import csv
import hashlib
import types

import pytest

from latentcheck.bench import get_benchmark, verify_md5
from latentcheck.bench.hrbench import load_hrbench, score_hrbench
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import BadRecord, Task

COLUMNS = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]
Q = "What is the number on the red bus?"


def _rows(image_b64):
    big = image_b64(size=(300, 300), noise=True)  # ~360 kB of base64: above csv's default 128 kB field limit
    return [
        {"index": 0, "question": Q, "answer": "B", "category": "single", "A": "12", "B": "15", "C": "21",
         "D": "51", "cycle_category": "cycle_1", "image": image_b64((255, 0, 0), (16, 12))},
        {"index": 1, "question": "Which sign is closer?", "answer": "A", "category": "cross", "A": "left",
         "B": "right", "C": "both", "D": "none", "cycle_category": "cycle_1", "image": big},
        {"index": 2, "question": "Bad answer row", "answer": "E", "category": "single", "A": "1", "B": "2",
         "C": "3", "D": "4", "cycle_category": "cycle_2", "image": image_b64()},
        {"index": 3, "question": "No cycle", "answer": "A", "category": "single", "A": "1", "B": "2", "C": "3",
         "D": "4", "cycle_category": "", "image": image_b64()},
    ]


def _write_tsv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, delimiter="\t")
        w.writeheader()
        w.writerows(rows)


def test_tsv_streams_lazily_with_big_fields(tmp_path, image_b64):
    tsv = tmp_path / "hr_bench_4k.tsv"
    _write_tsv(tsv, _rows(image_b64))
    stream = load_hrbench(tsv)
    assert isinstance(stream, types.GeneratorType)
    out = list(stream)
    t0, t1 = out[0], out[1]
    assert isinstance(t0, Task) and isinstance(t1, Task)
    assert (t0.id, t0.question, t0.options, t0.answer_letter, t0.category) == ("0", Q, ["12", "15", "21", "51"], "B",
                                                                             "single")
    assert t0.meta["cycle_category"] == "cycle_1"
    assert t0.image.startswith("data:image/png;base64,")  # undecoded until asked
    img = t0.load_image()
    assert img.size == (16, 12) and img.getpixel((3, 3)) == (255, 0, 0)
    assert t1.load_image().size == (300, 300)
    bad = [r for r in out if isinstance(r, BadRecord)]
    assert [(b.where, b.error.field) for b in bad] == [("hr_bench_4k.tsv#3", "answer"),
                                                       ("hr_bench_4k.tsv#4", "cycle_category")]


def test_parquet_matches_tsv(tmp_path, image_b64):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = _rows(image_b64)[:2]
    table = pa.table({c: [str(r[c]) if c != "index" else r[c] for r in rows] for c in COLUMNS})
    path = tmp_path / "hr_bench_4k.parquet"
    pq.write_table(table, path)
    tasks = list(load_hrbench(path, limit=1))
    assert len(tasks) == 1 and tasks[0].answer_letter == "B" and tasks[0].load_image().size == (16, 12)


def test_md5_checked_for_tsv(tmp_path, image_b64):
    tsv = tmp_path / "hr_bench_4k.tsv"
    _write_tsv(tsv, _rows(image_b64)[:1])
    actual = hashlib.md5(tsv.read_bytes()).hexdigest()
    bench = get_benchmark("hrbench4k")
    with pytest.raises(LatentcheckError) as e:
        bench.load(tsv)
    assert "f6b041b03d49543494b8a56d2e35be65" in str(e.value) and actual in str(e.value)
    assert len(list(bench.load(tsv, verify=False))) == 1
    assert verify_md5(tsv, actual.upper()) == actual
    assert get_benchmark("hrbench8k").md5 == "274c9c7f89329b804a4723178a00219c"


def test_prompts_match_snapshots(tmp_path, image_b64, snapshot):
    tsv = tmp_path / "hr.tsv"
    _write_tsv(tsv, _rows(image_b64)[:1])
    bench = get_benchmark("hrbench8k")
    t = next(iter(bench.load(tsv, verify=False)))
    assert bench.prompt(t) == snapshot("hrbench_official.txt")
    assert bench.prompt(t, "vlmevalkit") == snapshot("hrbench_official.txt")
    assert bench.prompt(t, "lmms-eval") == snapshot("hrbench_lmms_eval.txt")


def _r(cycle, cat, ok):
    return {"id": f"{cycle}-{cat}-{ok}", "category": cat, "correct": ok, "meta": {"cycle_category": cycle}}


def test_cycle_averaging_with_unequal_groups():
    # cycle c1: single T, T ; cross F     -> all 2/3, single 1, cross 0
    # cycle c2: single F                  -> all 0,   single 0
    # averages: all (2/3 + 0)/2 = 1/3, single (1 + 0)/2 = 1/2, cross 0 (only c1); plain row accuracy 2/4
    res = [_r("c1", "single", True), _r("c1", "single", True), _r("c1", "cross", False), _r("c2", "single", False)]
    s = score_hrbench(res)
    assert s["per_cycle"]["c1"] == pytest.approx({"all": 2 / 3, "single": 1.0, "cross": 0.0})
    assert s["per_cycle"]["c2"] == pytest.approx({"all": 0.0, "single": 0.0})
    assert s["average"] == pytest.approx({"all": 1 / 3, "single": 0.5, "cross": 0.0})
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["plain_accuracy"] == pytest.approx(0.5)


def test_cycle_averaging_equals_plain_accuracy_for_equal_groups():
    res = [_r("c1", "single", True), _r("c1", "cross", False), _r("c2", "single", True), _r("c2", "cross", True)]
    s = score_hrbench(res)
    assert s["accuracy"] == pytest.approx(s["plain_accuracy"]) == pytest.approx(3 / 4)


def test_scoring_needs_cycle_category():
    with pytest.raises(LatentcheckError, match="cycle_category"):
        score_hrbench([{"id": "x", "category": "single", "correct": True, "meta": {}}])


def test_record_through_exact_matching(tmp_path, image_b64):
    tsv = tmp_path / "hr.tsv"
    _write_tsv(tsv, _rows(image_b64)[:2])
    bench = get_benchmark("hrbench4k")
    t0, t1 = bench.load(tsv, verify=False)
    recs = [bench.record(t0, "The answer is B"), bench.record(t1, "I think it is 15 or maybe left")]
    assert [r["pred"] for r in recs] == ["B", "A"]  # second: can_infer_text finds only "left"
    assert recs[0]["meta"] == {"cycle_category": "cycle_1"} and "image" not in recs[0]
    assert bench.score(recs)["accuracy"] == pytest.approx(1.0)


def test_vlmevalkit_shared_image_reference(tmp_path, image_b64):
    rows = _rows(image_b64)[:2]
    rows[1]["image"] = "0"  # VLMEvalKit convention: short cell = index of the row holding the image
    extra = dict(rows[0], index=5, image="99")  # dangling reference
    tsv = tmp_path / "hr.tsv"
    _write_tsv(tsv, rows + [extra])
    t0, t1, bad = load_hrbench(tsv)
    assert t1.image == t0.image and t1.load_image().size == (16, 12)
    assert isinstance(bad, BadRecord) and bad.error.field == "image" and "'99'" in str(bad.error)
