"""Upstream layouts written by the tests (tiny), scored against official numbers computed by hand: the lmms-eval
MME-RealWorld-Lite parquet, VLMEvalKit's MME-RealWorld.tsv / VStarBench.tsv / BLINK.tsv, the MME-RealWorld-Base64
JSON, Mirage's VSP layout; error rows in the denominator; a partial HR-Bench run; hidden answers refused; the
Qwen2.5-VL wrapper prompt and the newer can_infer_option; export-tasks."""

from __future__ import annotations

import base64
import csv
import json
from dataclasses import replace

import pytest

from latentcheck.bench import get_benchmark
from latentcheck.bench.runner import run_bench
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.extract import EXTRACTORS, get_extractor, register_extractor
from latentcheck.core.records import read_results
from latentcheck.core.runner import CommonOptions
from latentcheck.core.tasks import BadRecord, Task, read_tasks

CHOICES = ["(A) 458", "(B) 457", "(C) 456", "(D) 455", "(E) This image doesn't feature the data."]


@register_extractor("test_always_a") if "test_always_a" not in EXTRACTORS else (lambda f: f)
def _always_a(text, options):
    """A stand-in 'model' whose answer is always A: correctness follows from the gold letters alone."""
    return "A"


def _tsv(path, rows):
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, delimiter="\t")
        w.writeheader()
        w.writerows(rows)
    return path


def _mme_rows(image_b64):
    """Three MME-RealWorld questions: gold B (Perception/Diagram and Table, diagram), E and A (Perception /
    Autonomous_Driving, objects_identify and Attribute/Color -> merged 'attribute')."""
    img = image_b64((10, 20, 30), (6, 4))
    return [
        {"index": 11, "question": "What is the data?", "choices": CHOICES, "answer": "B",
         "category": "Perception/Diagram and Table", "l2-category": "diagram", "image": img},
        {"index": 12, "question": "How many cars?", "choices": ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) 5"],
         "answer": "E", "category": "Perception/Autonomous_Driving", "l2-category": "objects_identify", "image": img},
        {"index": 13, "question": "Which colour?", "choices": ["(A) red", "(B) blue", "(C) green", "(D) grey",
                                                              "(E) none"],
         "answer": "A", "category": "Perception/Autonomous_Driving", "l2-category": "Attribute/Color", "image": img}]


REPLIES = ["The best answer is B", "E", "(C) green"]  # right, right (an E), wrong


def _check_mme_rating(bench, tasks):
    assert [t.id for t in tasks] == ["11", "12", "13"]
    assert tasks[0].options == ["458", "457", "456", "455", "This image doesn't feature the data."]
    s = bench.score([bench.record(t, r) for t, r in zip(tasks, REPLIES)])
    # by hand: overall 2/3; Diagram and Table 1/1; Autonomous_Driving 1/2 (objects_identify 1/1, attribute 0/1); one E
    assert s["accuracy"] == pytest.approx(2 / 3) and s["e_count"] == 1
    ad = s["tasks"]["Perception"]["subtasks"]["Autonomous_Driving"]
    assert ad["accuracy"] == pytest.approx(0.5)
    assert ad["categories"]["autonomous_driving/attribute" if "autonomous_driving/attribute" in ad["categories"]
                            else "attribute/attribute"]["accuracy"] == 0.0
    assert s["tasks"]["Perception"]["subtasks"]["Diagram and Table"]["accuracy"] == 1.0


def test_lmms_eval_mme_realworld_lite_parquet(tmp_path, image_b64):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _mme_rows(image_b64)
    table = pa.table({"index": [r["index"] for r in rows], "question": [r["question"] for r in rows],
                      "multi-choice options": [r["choices"] for r in rows], "answer": [r["answer"] for r in rows],
                      "category": [r["category"] for r in rows], "l2-category": [r["l2-category"] for r in rows],
                      "bytes": [r["image"] for r in rows]})
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(table, path)
    bench = get_benchmark("mme_realworld_lite")
    tasks = list(bench.load(path))
    assert all(isinstance(t, Task) for t in tasks) and tasks[0].load_image().size == (6, 4)
    _check_mme_rating(bench, tasks)


def test_vlmevalkit_mme_realworld_tsv(tmp_path, image_b64):
    """VLMEvalKit's generated MME-RealWorld.tsv: 'multi-choice options' is the text "The choices are listed
    below:\\n(A) ...", with A-E columns beside it (it was rejected row by row before)."""
    rows = []
    for r in _mme_rows(image_b64):
        row = {"index": r["index"], "image": r["image"], "question": r["question"],
               "multi-choice options": "The choices are listed below:\n" + "\n".join(r["choices"])}
        row.update({"ABCDE"[i]: c[4:] for i, c in enumerate(r["choices"])})
        row.update({"answer": r["answer"], "category": r["category"], "l2-category": r["l2-category"]})
        rows.append(row)
    bench = get_benchmark("mme_realworld")
    tasks = list(bench.load(_tsv(tmp_path / "MME-RealWorld.tsv", rows)))
    assert all(isinstance(t, Task) for t in tasks)
    assert bench.prompt(tasks[0]).startswith("What is the data? The choices are listed below:\n(A) 458\n(B) 457")
    _check_mme_rating(bench, tasks)


def test_mme_realworld_base64_json(tmp_path, image_b64):
    data = [{"index": r["index"], "image": r["image"], "question": r["question"],
             "multi-choice options": r["choices"], "answer": r["answer"], "category": r["category"],
             "l2-category": r["l2-category"]} for r in _mme_rows(image_b64)]
    path = tmp_path / "MME-RealWorld-Lite.json"
    path.write_text(json.dumps(data))
    bench = get_benchmark("mme_realworld")
    tasks = list(bench.load(path))
    assert all(isinstance(t, Task) for t in tasks) and tasks[2].load_image().size == (6, 4)
    _check_mme_rating(bench, tasks)


def test_unknown_layout_is_one_line_error(tmp_path):
    bad = tmp_path / "mme.csv"
    bad.write_text("a,b\n1,2\n")
    for name, expected in (("mme_realworld", "MME_RealWorld.json"), ("vstar", "VStarBench.tsv"),
                           ("blink", "BLINK.tsv")):
        with pytest.raises(LatentcheckError, match=expected) as e:
            list(get_benchmark(name).load(bad))
        assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_vlmevalkit_vstarbench_tsv(tmp_path, image_b64):
    img = image_b64((1, 2, 3), (8, 6))
    rows = [{"index": 0, "question": "What is the colour of the bag?", "A": "black", "B": "white", "C": "red",
             "D": "blue", "answer": "A", "category": "direct_attributes", "image": img},
            {"index": 1, "question": "Is the dog left or right of the bench?", "A": "left", "B": "right",
             "answer": "B", "category": "relative_position", "image": "0"}]  # VLMEvalKit shared-image reference
    bench = get_benchmark("vstar")
    tasks = list(bench.load(_tsv(tmp_path / "VStarBench.tsv", rows)))
    assert [(t.id, t.options, t.answer_letter, t.category) for t in tasks] == [
        ("0", ["black", "white", "red", "blue"], "A", "direct_attributes"),
        ("1", ["left", "right"], "B", "relative_position")]
    assert tasks[1].load_image().size == (8, 6)
    assert bench.prompt(tasks[1], "vlmevalkit") == ("Question: Is the dog left or right of the bench?\nOptions:\n"
                                                    "A. left\nB. right\nPlease select the correct answer from the "
                                                    "options above. \n")
    assert bench.likelihood_inputs(tasks[1]) == ("Is the dog left or right of the bench?", ["left", "right"], 1)


def test_vlmevalkit_blink_tsv_multi_image(tmp_path, image_b64):
    a, b, c = image_b64((255, 0, 0), (4, 4)), image_b64((0, 255, 0), (5, 4)), image_b64((0, 0, 255), (6, 4))
    rows = [{"index": 7, "question": "Which image is the missing part?", "A": "the second image",
             "B": "the third image", "answer": "(B)", "category": "Jigsaw", "image": repr([a, b, c])},
            {"index": 8, "question": "Is the camera moving left or right?", "A": "left", "B": "right",
             "answer": "A", "category": "Multi-view Reasoning", "image": a},
            {"index": 9, "question": "Counting?", "A": "1", "B": "2", "answer": "A", "category": "Counting",
             "image": a}]
    bench = get_benchmark("blink:Jigsaw,Multi-view_Reasoning")
    tasks = list(bench.load(_tsv(tmp_path / "BLINK.tsv", rows)))
    assert [(t.id, t.category, t.answer_letter, t.meta["n_images"]) for t in tasks] == [
        ("7", "Jigsaw", "B", 3), ("8", "Multi-view_Reasoning", "A", 1)]
    from latentcheck.bench.runner import task_images

    assert [im.size for im in task_images(tasks[0])] == [(4, 4), (5, 4), (6, 4)]
    assert bench.prompt(tasks[0]) == ("Which image is the missing part?\nSelect from the following choices.\n"
                                      "(A) the second image\n(B) the third image")
    s = bench.score([bench.record(tasks[0], "(B)"), bench.record(tasks[1], "B")])
    assert s["accuracy"] == pytest.approx(0.5) and s["per_subtask"]["Jigsaw"]["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------- through the runner
def _opts(tmp_path, data, name="run", **kw) -> CommonOptions:
    return CommonOptions(data=str(data), out=str(tmp_path / name), quiet=True, **kw)


def _always_a_bench(name: str, variant: str):
    b = get_benchmark(name)
    v = b.variant(variant)
    return replace(b, variants={**b.variants, variant: replace(v, extractor="test_always_a", mode="generate")})


def test_vstar_error_row_counts_in_the_official_denominator(load_tiny, tmp_path, image_bytes):
    """5 V* questions; the model 'answers' A; one image is missing. Official (the sample is wrong): 2/5 = 40.0 overall,
    direct_attributes 1/3, relative_position 1/2. Dropping the error row would give 2/4 = 50.0."""
    root = tmp_path / "vstar_bench"
    for cat in ("direct_attributes", "relative_position"):
        (root / cat).mkdir(parents=True)
    lines = []
    for i, (cat, label, n_opt) in enumerate([("direct_attributes", "A", 4), ("direct_attributes", "B", 4),
                                             ("direct_attributes", "A", 4), ("relative_position", "A", 2),
                                             ("relative_position", "B", 2)]):
        if i != 2:  # sa_2.png is missing
            (root / cat / f"sa_{i}.png").write_bytes(image_bytes((i * 40, 0, 0), (28, 28)))
        opts = ["black", "white", "red", "blue"][:n_opt]
        text = f"Q{i}?\n" + "\n".join(f"({'ABCD'[k]}) {o}" for k, o in enumerate(opts)) + \
            "\nAnswer with the option's letter from the given choices directly."
        lines.append({"image": f"{cat}/sa_{i}.png", "question_id": i, "category": cat, "label": label,
                      "text": text})
    (root / "test_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    res = run_bench(_opts(tmp_path, root), _always_a_bench("vstar", "generate"), "generate",
                    lm=load_tiny("toy", "toy-direct"), decoding={"max_new_tokens": 1})
    assert res["scores"]["estimate"] == res["scores"]["official"]["accuracy"] == pytest.approx(2 / 5)
    assert (res["scores"]["successes"], res["scores"]["n"], res["scores"]["aggregation"]) == (2, 5, "micro")
    assert res["scores"]["official"]["per_category"]["direct_attributes"]["accuracy"] == pytest.approx(1 / 3)
    assert res["scores"]["official"]["per_category"]["relative_position"]["accuracy"] == pytest.approx(1 / 2)
    assert res["errors"]["counted_wrong"] == ["2"] and res["exit_code"] == 3
    _, recs = read_results(res["results_path"])
    err = [r for r in recs if r["type"] == "error"]
    assert len(err) == 1 and err[0]["field"] == "image" and err[0]["category"] == "direct_attributes"
    assert res["official"]["comparable"] is False  # a variant, not the likelihood protocol
    assert "variant 'generate' is not the official protocol" in res["official"]["reasons"]


def _hr_rows(image_b64):
    img = image_b64((9, 9, 9), (28, 28))
    spec = [("c0", "single", "A"), ("c0", "single", "B"), ("c0", "cross", "A"), ("c0", "cross", "A"),
            ("c1", "single", "A"), ("c1", "single", "A"), ("c1", "cross", "B"), ("c1", "cross", "A")]
    return [{"index": i, "question": f"Q{i}?", "answer": gold, "category": cat, "A": "1", "B": "2", "C": "3",
             "D": "4", "cycle_category": cyc, "image": img} for i, (cyc, cat, gold) in enumerate(spec)]


def test_hrbench_full_and_partial_run_vlmevalkit_average(load_tiny, tmp_path, image_b64):
    """Model answers A. Full (8 rows, 2 cycle groups of 2 single + 2 cross): c0 all 3/4 single 1/2 cross 2/2; c1 all
    3/4 single 2/2 cross 1/2 -> all 3/4, single 3/4, cross 3/4. Partial (--limit 5: c0 whole + one c1 single): c1 all 1
    single 1 (no cross) -> VLMEvalKit averages over ALL groups: all (3/4 + 1)/2 = 7/8, single (1/2 + 1)/2 = 3/4,
    cross (1 + 0)/2 = 1/2; plain 4/5; flagged not comparable."""
    tsv = _tsv(tmp_path / "hr_bench_4k.tsv", _hr_rows(image_b64))
    bench = _always_a_bench("hrbench4k", "official")
    lm = load_tiny("toy", "toy-direct")
    full = run_bench(_opts(tmp_path, tsv, "full"), bench, "official", lm=lm, verify=False,
                     decoding={"max_new_tokens": 1})
    s = full["scores"]["official"]
    assert full["scores"]["estimate"] == s["accuracy"] == pytest.approx(3 / 4)
    assert full["scores"]["aggregation"] == "group_average" and full["scores"]["method"] == "bonferroni_wilson"
    assert s["average"] == pytest.approx({"all": 0.75, "single": 0.75, "cross": 0.75})
    assert s["not_comparable"] == []
    part = run_bench(_opts(tmp_path, tsv, "part", limit=5), bench, "official", lm=lm, verify=False,
                     decoding={"max_new_tokens": 1})
    p = part["scores"]["official"]
    assert part["scores"]["estimate"] == p["accuracy"] == pytest.approx(7 / 8)
    assert p["average"] == pytest.approx({"all": 7 / 8, "single": 0.75, "cross": 0.5})
    assert p["plain_accuracy"] == pytest.approx(4 / 5) and p["n_per_cycle"] == {"c0": 4, "c1": 1}
    reasons = " ".join(part["official"]["reasons"])
    assert "partial run" in reasons and "--limit 5" in reasons and "LLM judge" in reasons
    assert part["official"]["comparable"] is False and part["official"]["judge_required"] is True


def test_hidden_answers_are_refused(load_tiny, tmp_path, image_bytes):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "Jigsaw").mkdir()
    img = {"bytes": image_bytes((1, 1, 1), (28, 28)), "path": None}
    n = 2
    pq.write_table(pa.table({"idx": [f"test_Jigsaw_{i}" for i in range(n)], "question": ["q"] * n,
                             "sub_task": ["Jigsaw"] * n, "image_1": [img] * n, "image_2": [img] * n,
                             "image_3": [None] * n, "image_4": [None] * n, "choices": [["a", "b"]] * n,
                             "answer": ["hidden"] * n, "prompt": ["q\n(A) a\n(B) b"] * n}),
                   tmp_path / "Jigsaw" / "test-00000-of-00001.parquet")
    with pytest.raises(LatentcheckError, match="gold answer.*refusing"):
        run_bench(_opts(tmp_path, tmp_path / "Jigsaw" / "test-00000-of-00001.parquet"), "blink",
                  lm=load_tiny("toy", "toy-direct"))


# ---------------------------------------------------------------------------------------------- VSP (Mirage layout)
def _mirage_repo(tmp_path, image_bytes):
    root = tmp_path / "Mirage"
    data = root / "data" / "vsp_spatial_planning"
    (data / "imgs_test" / "level3" / "img").mkdir(parents=True)
    (data / "imgs_test" / "level3" / "img" / "0.png").write_bytes(image_bytes((0, 0, 200), (28, 28)))
    line = {"text_input": "Here is the map: <image>\nFind a safe path. Put it in \\boxed{}.",
            "image_input": "./data/vsp_spatial_planning/imgs_test/level3/img/0.png", "map_id": 0,
            "map_desc": [[1, 0, 0], [0, -1, 0], [0, 0, 2]]}
    (data / "test_direct.jsonl").write_text(json.dumps(line) + "\n")
    return root, data / "test_direct.jsonl"


def test_vsp_real_layout_resolves_against_the_repository_root(tmp_path, image_bytes):
    root, jsonl = _mirage_repo(tmp_path, image_bytes)
    (t,) = get_benchmark("vsp").load(jsonl)
    assert t.base_dir == str(root.resolve()) and t.load_image().size == (28, 28)
    # an explicit --image-root wins; a wrong one makes the image an error naming the path
    (t2,) = get_benchmark("vsp").with_options(image_root=str(tmp_path)).load(jsonl)
    with pytest.raises(Exception, match="image file not found"):
        t2.load_image()


def test_vsp_image_at_placeholder_for_mirage_else_first(load_tiny, tmp_path, image_bytes):
    from latentcheck.bench.runner import task_images
    from latentcheck.core.prompts import build_prompt

    _, jsonl = _mirage_repo(tmp_path, image_bytes)
    bench = get_benchmark("vsp")
    (t,) = bench.load(jsonl)
    v = bench.variant("official")
    mirage = load_tiny("mirage", "mirage")
    assert mirage.profile.prompt.image_at_placeholder is True
    p = build_prompt(mirage, t.id, bench.prompt(t), task_images(t), image_placeholder=v.image_placeholder)
    assert "Here is the map: <|vision_start|><|image_pad|><|vision_end|>\nFind a safe path." in p.text
    assert "<image>" not in p.text
    q = mirage.tokenizer.decode(p.input_ids[p.question_mask])
    assert q.startswith("Here is the map: ") and "<|image_pad|>" not in q and q.endswith("\\boxed{}.")
    direct = load_tiny("toy", "toy-direct")
    p2 = build_prompt(direct, t.id, bench.prompt(t), task_images(t), image_placeholder=v.image_placeholder)
    assert "<|vision_end|>Here is the map: \nFind a safe path." in p2.text and "<image>" not in p2.text


# ---------------------------------------------------------------------------------------------- named variants
def test_qwen2_5_vl_wrapper_prompt_and_latest_can_infer():
    t = Task(id="1", question="What is the colour of the car?", options=["red", "blue"], answer="B")
    b = get_benchmark("hrbench4k")
    assert b.prompt(t, "vlmevalkit-qwen2_5_vl") == ("Question: What is the colour of the car?\nOptions:\nA. red\n"
                                                   "B. blue\nPlease select the correct answer from the options above.")
    assert b.prompt(t, "vlmevalkit").endswith("above. \n")  # the generic one keeps the space and newline
    cn = Task(id="2", question="汽车是什么颜色？", options=["红", "蓝"], answer="B")
    assert b.prompt(cn, "vlmevalkit-qwen2_5_vl").endswith("B. 蓝\n请直接回答选项字母。")
    old, new = get_extractor("vlmeval_exact"), get_extractor("vlmeval_exact_latest")
    cot = "Let me look at the car closely. The paint is blue. The correct answer is **B**. It is not red at all here."
    assert old(cot, ["red", "blue"]) is None and new(cot, ["red", "blue"]) == "B"
    assert old("B", ["red", "blue"]) == new("B", ["red", "blue"]) == "B"
    assert new("Z", ["red", "blue"]) is None and new("Cannot determine the answer", ["red", "blue"]) is None
    assert b.variant("vlmevalkit-latest").extractor == "vlmeval_exact_latest"


# ---------------------------------------------------------------------------------------------- export-tasks
def test_export_tasks_round_trip(tmp_path, image_b64):
    from typer.testing import CliRunner

    from latentcheck.cli.app import app

    a, b = image_b64((255, 0, 0), (4, 4)), image_b64((0, 255, 0), (5, 4))
    rows = [{"index": 7, "question": "Which image?", "A": "the second image", "B": "the third image",
             "answer": "B", "category": "Jigsaw", "image": repr([a, b])},
            {"index": 8, "question": "Left or right?", "A": "left", "B": "right", "answer": "Z",
             "category": "Jigsaw", "image": a}]
    tsv = _tsv(tmp_path / "BLINK.tsv", rows)
    out = tmp_path / "exported" / "blink.jsonl"
    r = CliRunner().invoke(app, ["bench", "export-tasks", "--benchmark", "blink", "--data", str(tsv), "--out",
                                 str(out)])
    assert r.exit_code == 3 and "skipped BLINK.tsv#2" in r.output and "answer" in r.output  # bad gold: listed
    (t,) = [x for x in read_tasks(out) if not isinstance(x, BadRecord)]
    assert (t.id, t.options, t.answer_letter, t.category) == ("7", ["the second image", "the third image"], "B",
                                                             "Jigsaw")
    assert t.meta["benchmark"] == "blink" and t.meta["sub_task"] == "Jigsaw"
    assert t.meta["prompt_official"].startswith("Which image?\nSelect from the following choices.")
    assert len(t.meta["images"]) == 2 and t.load_image().size == (4, 4)
    second = (out.parent / t.meta["images"][1]).read_bytes()
    assert second == base64.b64decode(b)
