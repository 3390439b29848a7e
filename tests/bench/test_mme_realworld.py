"""MME-RealWorld JSON + image folder, Lite base64 TSV, prompts vs snapshots, official rating roll-up."""

from __future__ import annotations

import csv
import json

import pytest

from latentcheck.bench import get_benchmark
from latentcheck.bench.mme_realworld import (load_mme_realworld, load_mme_realworld_lite,
                                                       score_mme_realworld)
from latentcheck.core.tasks import BadRecord, Task

TEXT = "What is the data of Interest in Feb-23 in the table?"
CHOICES = ["(A) 458", "(B) 457", "(C) 456", "(D) 455", "(E) This image doesn't feature the data."]


@pytest.fixture
def mme_json(tmp_path, image_bytes):
    (tmp_path / "imgs" / "diagram_and_table").mkdir(parents=True)
    (tmp_path / "imgs" / "diagram_and_table" / "cons9.jpg").write_bytes(image_bytes((9, 9, 9), (20, 10), fmt="JPEG"))
    recs = [
        {"Question_id": "perception/diagram_and_table/diagram/0558", "Image": "diagram_and_table/cons9.jpg",
         "Text": TEXT, "Question Type": "Multiple Choice", "Answer choices": CHOICES, "Ground truth": "B",
         "Category": "diagram", "Subtask": "Diagram and Table", "Task": "Perception"},
        {"Question_id": "bad/1", "Image": "diagram_and_table/cons9.jpg", "Text": "Q?",
         "Answer choices": ["(A) x", "B) y"], "Ground truth": "A", "Category": "diagram",
         "Subtask": "Diagram and Table", "Task": "Perception"},
        {"Question_id": "bad/2", "Image": "diagram_and_table/cons9.jpg", "Text": "Q?", "Answer choices": CHOICES,
         "Category": "diagram", "Subtask": "Diagram and Table", "Task": "Perception"},
    ]
    path = tmp_path / "MME_RealWorld.json"
    path.write_text(json.dumps(recs))
    return path


def test_json_loader_fields_and_lazy_image(mme_json):
    out = list(load_mme_realworld(mme_json, image_root=mme_json.parent / "imgs"))
    t = out[0]
    assert isinstance(t, Task)
    assert (t.id, t.question, t.answer_letter, t.category) == (
        "perception/diagram_and_table/diagram/0558", TEXT, "B", "Perception/Diagram and Table")
    assert t.options == ["458", "457", "456", "455", "This image doesn't feature the data."]
    assert t.meta["task"] == "Perception" and t.meta["subtask"] == "Diagram and Table"
    assert t.meta["l2_category"] == "diagram" and t.meta["choices_raw"] == CHOICES
    assert t.image == "diagram_and_table/cons9.jpg" and t.load_image().size == (20, 10)
    bad = [r for r in out if isinstance(r, BadRecord)]
    assert [(b.where, b.error.field) for b in bad] == [("MME_RealWorld.json#2", "Answer choices"),
                                                       ("MME_RealWorld.json#3", "Ground truth")]


def _write_lite(path, image_b64):
    cols = ["index", "question", "multi-choice options", "answer", "category", "l2-category", "image",
            "A", "B", "C", "D", "E"]
    rows = [
        {"index": 11, "question": TEXT, "multi-choice options": repr(CHOICES), "answer": "B",
         "category": "Perception/Diagram and Table", "l2-category": "diagram", "image": image_b64((0, 0, 0), (6, 4))},
        {"index": 12, "question": "How many cars?", "multi-choice options": "", "answer": "E",
         "category": "Perception/Autonomous_Driving", "l2-category": "Objects_Identify",
         "image": image_b64((255, 255, 255), (5, 5)), "A": "1", "B": "2", "C": "3", "D": "4", "E": "none"},
        {"index": 13, "question": "Bad category", "multi-choice options": repr(CHOICES), "answer": "A",
         "category": "Perception", "l2-category": "x", "image": image_b64()},
    ]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, delimiter="\t")
        w.writeheader()
        w.writerows(rows)


def test_lite_tsv_loader(tmp_path, image_b64):
    path = tmp_path / "mme_realworld_lite.tsv"
    _write_lite(path, image_b64)
    out = list(load_mme_realworld_lite(path))
    t11, t12, bad = out
    assert t11.options[0] == "458" and t11.answer_letter == "B" and t11.meta["subtask"] == "Diagram and Table"
    assert t11.load_image().size == (6, 4)
    assert t12.options == ["1", "2", "3", "4", "none"] and t12.answer_letter == "E"
    assert t12.meta["task"] == "Perception" and t12.meta["l2_category"] == "Objects_Identify"
    assert isinstance(bad, BadRecord) and (bad.where, bad.error.field) == ("mme_realworld_lite.tsv#3", "category")


@pytest.mark.parametrize("variant, snap", [("official", "mme_rw_official.txt"), ("vlmevalkit", "mme_rw_official.txt"),
                                           ("lmms-eval", "mme_rw_lmms_eval.txt"),
                                           ("official-script", "mme_rw_official_script.txt")])
def test_prompts_match_snapshots(mme_json, tmp_path, image_b64, snapshot, variant, snap):
    t = next(iter(get_benchmark("mme_realworld").load(mme_json)))
    assert get_benchmark("mme_realworld").prompt(t, variant) == snapshot(snap)
    lite = tmp_path / "lite.tsv"
    _write_lite(lite, image_b64)
    t_lite = next(iter(get_benchmark("mme_realworld_lite").load(lite)))
    assert get_benchmark("mme_realworld_lite").prompt(t_lite, variant) == snapshot(snap)


def _r(task, subtask, cat, pred, correct):
    return {"id": f"{cat}-{pred}-{correct}", "pred": pred, "correct": correct,
            "meta": {"task": task, "subtask": subtask, "l2_category": cat}}


def test_rating_roll_up_hand_computed():
    res = [
        _r("Perception", "Autonomous_Driving", "Objects_Identify", "D", True),
        _r("Perception", "Autonomous_Driving", "Objects_Identify", "E", False),
        _r("Perception", "Monitoring", "Vehicle/counting", "E", True),
        _r("Perception", "Monitoring", "Person/attribute/color", "A", True),
        _r("Perception", "Monitoring", "person/attribute/orientation", "B", False),  # merged with the one above
        _r("Reasoning", "Diagram and Table", "diagram", "A", False),
        _r("Reasoning", "Diagram and Table", "diagram", None, False),
    ]
    s = score_mme_realworld(res)
    p = s["tasks"]["Perception"]
    ad = p["subtasks"]["Autonomous_Driving"]
    mon = p["subtasks"]["Monitoring"]
    assert ad["categories"] == {"objects_identify": {"n": 2, "correct": 1, "accuracy": 0.5, "e_count": 1}}
    assert (ad["accuracy"], ad["e_count"]) == (0.5, 1)
    assert set(mon["categories"]) == {"vehicle/counting", "person/attribute"}
    assert mon["categories"]["person/attribute"] == {"n": 2, "correct": 1, "accuracy": 0.5, "e_count": 0}
    assert mon["accuracy"] == pytest.approx(2 / 3) and mon["e_count"] == 1
    assert (p["n"], p["correct"], p["e_count"]) == (5, 3, 2) and p["accuracy"] == pytest.approx(3 / 5)
    r = s["tasks"]["Reasoning"]
    assert (r["n"], r["accuracy"]) == (2, 0.0)
    assert s["accuracy"] == pytest.approx(3 / 7) and s["e_count"] == 2 and s["n"] == 7


def test_record_uses_official_extraction(mme_json):
    bench = get_benchmark("mme_realworld")
    t = next(iter(bench.load(mme_json)))
    rec = bench.record(t, "The best answer is B")
    assert rec["pred"] == "B" and rec["correct"]
    assert rec["meta"] == {"task": "Perception", "subtask": "Diagram and Table", "l2_category": "diagram"}
    assert bench.record(t, "Best answer: C")["pred"] == "B"  # official quirk kept
    s = bench.score([rec, bench.record(t, "E")])
    assert s["accuracy"] == 0.5 and s["e_count"] == 1
