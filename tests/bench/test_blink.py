"""BLINK parquet per sub-task (multi-image), sub-task selection, prompts vs snapshots, macro vs micro scoring."""

from __future__ import annotations

import pytest

from latentcheck.bench import get_benchmark
from latentcheck.bench.blink import load_blink, score_blink
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import BadRecord, Task, decode_image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

JIGSAW_Q = ("Given the first image with the lower right corner missing, can you tell which one of the second image "
            "or the third image is the missing part? Imagine which image would be more appropriate to place in the "
            "missing spot. You can also carefully observe and compare the edges of the images.")
JIGSAW_PROMPT = JIGSAW_Q + "\nSelect from the following choices.\n\n(A) the second image\n(B) the third image"
MV_Q = "Is the camera moving left or right when shooting the video?"
MV_PROMPT = MV_Q + " Select from the following options.\n(A) left\n(B) right"
IMG_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _write(path, rows):
    schema = pa.schema([("idx", pa.string()), ("question", pa.string()), ("sub_task", pa.string())]
                       + [(f"image_{k}", IMG_TYPE) for k in range(1, 5)]
                       + [("choices", pa.list_(pa.string())), ("answer", pa.string()), ("prompt", pa.string()),
                          ("explanation", pa.string())])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def _row(idx, sub_task, question, prompt, images, choices, answer):
    row = {"idx": idx, "question": question, "sub_task": sub_task, "choices": choices, "answer": answer,
           "prompt": prompt, "explanation": ""}
    for k in range(1, 5):
        row[f"image_{k}"] = {"bytes": images[k - 1], "path": f"{idx}_{k}.png"} if k <= len(images) else None
    return row


@pytest.fixture
def blink_dir(tmp_path, image_bytes):
    red, green, blue = image_bytes((255, 0, 0), (8, 8)), image_bytes((0, 255, 0), (4, 4)), image_bytes((0, 0, 255))
    _write(tmp_path / "Jigsaw" / "val-00000-of-00001.parquet", [
        _row("val_Jigsaw_1", "Jigsaw", JIGSAW_Q, JIGSAW_PROMPT, [red, green, blue],
             ["the second image", "the third image"], "(A)"),
        _row("val_Jigsaw_2", "Jigsaw", JIGSAW_Q, JIGSAW_PROMPT, [red, green, blue],
             ["the second image", "the third image"], "(B)"),
        _row("val_Jigsaw_3", "Jigsaw", JIGSAW_Q, JIGSAW_PROMPT, [red], ["only one choice"], "(A)"),
    ])
    _write(tmp_path / "Multi-view_Reasoning" / "val-00000-of-00001.parquet", [
        _row("val_Multi-view_Reasoning_1", "Multi-view_Reasoning", MV_Q, MV_PROMPT, [green, red], ["left", "right"],
             "(B)"),
    ])
    return tmp_path


def test_loads_multi_image_rows(blink_dir):
    out = list(load_blink(blink_dir, subtasks=["Jigsaw", "Multi-view_Reasoning"]))
    tasks = [t for t in out if isinstance(t, Task)]
    assert [t.id for t in tasks] == ["val_Jigsaw_1", "val_Jigsaw_2", "val_Multi-view_Reasoning_1"]
    j1 = tasks[0]
    assert (j1.category, j1.options, j1.answer_letter) == ("Jigsaw", ["the second image", "the third image"], "A")
    assert j1.meta["n_images"] == 3 and len(j1.meta["images"]) == 3 and j1.meta["images"][0] is j1.image
    assert j1.load_image().getpixel((0, 0)) == (255, 0, 0)
    assert decode_image(j1.meta["images"][1], j1.id).size == (4, 4)
    assert tasks[2].meta["n_images"] == 2 and tasks[2].answer_letter == "B"
    bad = [r for r in out if isinstance(r, BadRecord)]
    assert [(b.where, b.error.field) for b in bad] == [("val-00000-of-00001.parquet#3", "choices")]


def test_subtask_selection(blink_dir):
    only_mv = list(get_benchmark("blink:Multi-view_Reasoning").load(blink_dir))
    assert [t.id for t in only_mv] == ["val_Multi-view_Reasoning_1"]
    single_file = blink_dir / "Jigsaw" / "val-00000-of-00001.parquet"
    assert len([t for t in load_blink(single_file, limit=1)]) == 1
    with pytest.raises(LatentcheckError, match="unknown BLINK sub-task"):
        get_benchmark("blink:Jigsawz")
    with pytest.raises(LatentcheckError, match="no val parquet"):
        list(load_blink(blink_dir, subtasks=["Counting"]))


def test_prompts_match_snapshots(blink_dir, snapshot):
    bench = get_benchmark("blink", subtasks=["Jigsaw"])
    t = next(iter(bench.load(blink_dir)))
    assert bench.prompt(t) == snapshot("blink_official.txt")
    assert bench.prompt(t, "lmms-eval") == snapshot("blink_lmms_eval.txt")


def _r(sub_task, ok):
    return {"id": f"{sub_task}{ok}", "category": sub_task, "correct": ok, "meta": {"sub_task": sub_task}}


def test_macro_vs_micro():
    # Jigsaw 2/3, Multi-view 0/1 -> macro (2/3 + 0)/2 = 1/3 ; micro 2/4 = 1/2
    s = score_blink([_r("Jigsaw", True), _r("Jigsaw", True), _r("Jigsaw", False), _r("Multi-view_Reasoning", False)])
    assert s["per_subtask"]["Jigsaw"]["accuracy"] == pytest.approx(2 / 3)
    assert s["per_subtask"]["Multi-view_Reasoning"]["accuracy"] == 0.0
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["micro_accuracy"] == pytest.approx(1 / 2)


def test_records_keep_images_out(blink_dir):
    bench = get_benchmark("blink:Jigsaw")
    t1, t2 = bench.load(blink_dir, limit=2)
    r1, r2 = bench.record(t1, "(A) the second image"), bench.record(t2, "The third image fits best.")
    assert (r1["pred"], r1["correct"], r2["pred"], r2["correct"]) == ("A", True, "B", True)
    assert r1["meta"] == {"sub_task": "Jigsaw"}
    assert bench.record(t2, "the answer is B", "lmms-eval")["pred"] == "T"  # lmms-eval's leading-letter rule
