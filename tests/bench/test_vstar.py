"""V* loader (jsonl + JSON pairs), prompts vs hand-written snapshots, likelihood inputs, scoring."""

from __future__ import annotations

import json

import pytest

from latentcheck.bench import get_benchmark
from latentcheck.bench.vstar import load_vstar, parse_vstar_text, union_box
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import BadRecord, Task

SUFFIX = "Answer with the option's letter from the given choices directly."
Q1 = "What is the color of the woman's bag?"
Q2 = "Is the dog on the left or right side of the bench?"


@pytest.fixture
def vstar_dir(tmp_path, image_bytes):
    root = tmp_path / "vstar_bench"
    (root / "direct_attributes").mkdir(parents=True)
    (root / "relative_position").mkdir()
    (root / "direct_attributes" / "sa_1.jpg").write_bytes(image_bytes((0, 0, 255), (40, 30), fmt="JPEG"))
    (root / "direct_attributes" / "sa_1.json").write_text(json.dumps({
        "target_object": ["bag"], "bbox": [[10, 5, 8, 6]], "question": Q1,
        "options": ["black", "white", "red", "blue"]}))
    (root / "relative_position" / "sa_2.jpg").write_bytes(image_bytes((0, 255, 0), (50, 20), fmt="JPEG"))
    (root / "relative_position" / "sa_2.json").write_text(json.dumps({
        "target_object": ["dog", "bench"], "bbox": [[2, 3, 4, 5], [20, 1, 10, 4]], "question": Q2,
        "options": ["right", "left"]}))
    lines = [
        {"image": "direct_attributes/sa_1.jpg", "question_id": 0, "category": "direct_attributes", "label": "A",
         "text": f"{Q1}\n(A) black\n(B) white\n(C) red\n(D) blue\n{SUFFIX}"},
        {"image": "relative_position/sa_2.jpg", "question_id": 1, "category": "relative_position", "label": "B",
         "text": f"{Q2}\n(A) left\n(B) right\n{SUFFIX}"},
    ]
    (root / "test_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def test_parse_text_and_union_box():
    q, opts = parse_vstar_text(f"{Q2}\n(A) left\n(B) right\n{SUFFIX}")
    assert (q, opts) == (Q2, ["left", "right"])
    # boxes [2,3,4,5] -> x 2..6, y 3..8 ; [20,1,10,4] -> x 20..30, y 1..5 => union x 2..30, y 1..8
    assert union_box([[2, 3, 4, 5], [20, 1, 10, 4]]) == [2, 1, 28, 7]


def test_load_from_jsonl_joins_annotations(vstar_dir):
    tasks = list(load_vstar(vstar_dir))
    assert all(isinstance(t, Task) for t in tasks)
    t1, t2 = tasks
    assert (t1.id, t1.question, t1.options, t1.answer_letter, t1.category) == (
        "0", Q1, ["black", "white", "red", "blue"], "A", "direct_attributes")
    assert t1.bbox == [10.0, 5.0, 8.0, 6.0]
    assert t1.meta["target_object"] == ["bag"]
    assert (t2.options, t2.answer_letter, t2.category) == (["left", "right"], "B", "relative_position")
    assert t2.bbox == [2.0, 1.0, 28.0, 7.0]
    assert t2.meta["bboxes"] == [[2.0, 3.0, 4.0, 5.0], [20.0, 1.0, 10.0, 4.0]]
    img = t2.load_image()
    assert img.size == (50, 20)
    r, g, b = img.getpixel((25, 10))
    assert g > 200 and r < 60 and b < 60


def test_load_from_pairs_first_option_is_gold(vstar_dir):
    (vstar_dir / "test_questions.jsonl").unlink()
    tasks = list(load_vstar(vstar_dir))
    assert [t.id for t in tasks] == ["direct_attributes/sa_1", "relative_position/sa_2"]
    t2 = tasks[1]
    assert t2.options == ["right", "left"] and t2.answer_letter == "A"
    assert t2.image == "relative_position/sa_2.jpg" and t2.load_image().size == (50, 20)
    assert t2.meta["text"] == f"{Q2}\n(A) right\n(B) left\n{SUFFIX}"


def test_limit_and_single_file(vstar_dir):
    assert len(list(load_vstar(vstar_dir, limit=1))) == 1
    assert len(list(load_vstar(vstar_dir / "test_questions.jsonl"))) == 2


def test_bad_rows_name_row_and_field(vstar_dir):
    with open(vstar_dir / "test_questions.jsonl", "a") as fh:
        fh.write(json.dumps({"image": "direct_attributes/sa_1.jpg", "question_id": 7, "text": "Q?\n(A) x\n(B) y"})
                 + "\n")
        fh.write("{not json\n")
        fh.write(json.dumps({"image": "x/y.jpg", "question_id": 9, "label": "A", "text": "no options here"}) + "\n")
    out = list(load_vstar(vstar_dir))
    bad = [r for r in out if isinstance(r, BadRecord)]
    assert [(b.where, b.error.field) for b in bad] == [
        ("test_questions.jsonl:3", "label"), ("test_questions.jsonl:4", "<line>"), ("test_questions.jsonl:5", "text")]
    assert "test_questions.jsonl:3" in str(bad[0].error) and "'label'" in str(bad[0].error)
    assert sum(isinstance(r, Task) for r in out) == 2


def test_bad_bbox_in_annotation(vstar_dir):
    (vstar_dir / "direct_attributes" / "sa_1.json").write_text(json.dumps({
        "target_object": ["bag"], "bbox": [[10, 5, 0, 6]], "question": Q1, "options": ["a", "b"]}))
    out = list(load_vstar(vstar_dir))
    assert isinstance(out[0], BadRecord) and out[0].error.field == "bbox"


def test_missing_folder_is_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentcheckError, match="no test_questions.jsonl"):
        list(load_vstar(tmp_path / "empty"))


@pytest.mark.parametrize("variant, snap", [
    ("generate", "vstar_official.txt"), ("official", "vstar_likelihood.txt"), ("likelihood", "vstar_likelihood.txt"),
    ("lmms-eval", "vstar_lmms_eval.txt"),
    ("vlmevalkit", "vstar_vlmevalkit.txt"), ("lvr", "vstar_lvr.txt")])
def test_prompts_match_snapshots(vstar_dir, snapshot, variant, snap):
    bench = get_benchmark("vstar")
    t_jsonl = next(iter(bench.load(vstar_dir)))
    assert bench.prompt(t_jsonl, variant) == snapshot(snap)
    (vstar_dir / "test_questions.jsonl").unlink()
    t_pair = next(iter(bench.load(vstar_dir)))  # same order (black first) -> same text
    assert bench.prompt(t_pair, variant) == snapshot(snap)


def test_likelihood_inputs_and_generation_flag(vstar_dir):
    bench = get_benchmark("vstar")
    assert bench.supports_likelihood and bench.variant("likelihood").mode == "likelihood"
    t2 = list(bench.load(vstar_dir))[1]
    prompt, options, gold = bench.likelihood_inputs(t2)
    assert (prompt, options, gold) == (Q2, ["left", "right"], 1)
    rec = bench.record(t2, None, "likelihood", pred="B")  # the runner's argmin choice, as a letter
    assert rec["correct"] and rec["gold"] == "B"
    with pytest.raises(LatentcheckError, match="likelihood"):
        bench.record(t2, "B", "likelihood")


def test_scoring_per_category_and_micro(vstar_dir):
    bench = get_benchmark("vstar")
    t1, t2 = list(bench.load(vstar_dir))  # gold: t1 A (direct_attributes), t2 B (relative_position)
    res = [bench.record(t1, "The answer is (A).", "generate"), bench.record(t1, "A", "generate"),
           bench.record(t1, "C", "generate"), bench.record(t2, "(B) right", "generate"),
           bench.record(t2, "A", "generate")]
    assert [r["correct"] for r in res] == [True, True, False, True, False]
    s = bench.score(res)
    assert s["per_category"]["direct_attributes"]["accuracy"] == pytest.approx(2 / 3)
    assert s["per_category"]["relative_position"]["accuracy"] == pytest.approx(1 / 2)
    assert s["accuracy"] == pytest.approx(3 / 5) and s["n"] == 5
