"""Tests for the synthetic zoom-in toy world (toy/world.py)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import Task, read_tasks
from latentcheck.toy import world as W


@pytest.fixture(scope="module")
def train_samples():
    return W.make_samples(400, "train", seed=0)


@pytest.fixture(scope="module")
def test_samples():
    return W.make_samples(200, "test", seed=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("toyworld")
    return out, W.write_world(out, n_train=6, n_val=4, n_test=5, seed=3)


def _objects(sample):
    return [sample.meta["target"], *sample.meta["distractors"]]


# ---------------------------------------------------------------- determinism

def test_same_seed_gives_identical_pixels_and_records():
    a, b = W.make_sample(7, "val", seed=11), W.make_sample(7, "val", seed=11)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(np.asarray(a.crop), np.asarray(b.crop))
    assert a.task_record("x.png") == b.task_record("x.png")
    assert (a.question, a.options, a.answer, a.meta) == (b.question, b.options, b.answer, b.meta)


def test_different_seed_split_or_index_differs():
    base = np.asarray(W.make_sample(7, "val", seed=11).image)
    for other in (W.make_sample(7, "val", seed=12), W.make_sample(7, "test", seed=11),
                  W.make_sample(8, "val", seed=11)):
        assert not np.array_equal(base, np.asarray(other.image))


def test_write_world_is_deterministic(tmp_path, written):
    _, first = written
    W.write_world(tmp_path, n_train=6, n_val=4, n_test=5, seed=3)
    for split in W.SPLITS:
        for kind in ("tasks", "derived", "interleaved", "mirage"):
            assert Path(first["paths"][split][kind]).read_text() == (tmp_path / Path(
                first["paths"][split][kind]).name).read_text()
    a = np.asarray(Image.open(Path(first["out_dir"]) / "images/test/toy-test-000004.png"))
    b = np.asarray(Image.open(tmp_path / "images/test/toy-test-000004.png"))
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- geometry

def test_image_and_crop_sizes(train_samples):
    s = train_samples[0]
    assert s.image.size == (112, 112) and s.image.mode == "RGB"
    assert s.crop.size == (112, 112)


def test_bboxes_match_drawn_pixels_and_stay_in_cell(train_samples):
    for s in train_samples[:80]:
        pix = np.asarray(s.image)
        for obj in _objects(s):
            x, y, w, h = obj["bbox"]
            rgb = np.array(obj["rgb"])
            if obj["colour"] != "grey":
                assert tuple(rgb) == W.COLOUR_RGB[obj["colour"]]
            # the bbox centre pixel has the object's colour
            assert tuple(pix[y + h // 2, x + w // 2]) == tuple(rgb), (s.id, obj)
            # every pixel of that exact colour lies inside the bbox, and they span it exactly
            ys, xs = np.nonzero(np.all(pix == rgb, axis=-1))
            assert xs.min() == x and xs.max() == x + w - 1 and ys.min() == y and ys.max() == y + h - 1
            # the bbox lies inside the object's cell
            row, col = obj["cell"]
            assert col * 28 <= x and x + w <= (col + 1) * 28
            assert row * 28 <= y and y + h <= (row + 1) * 28
            assert W.OBJECT_SIZE_RANGE[0] - 1 <= max(w, h) <= W.OBJECT_SIZE_RANGE[1]


@pytest.mark.parametrize("shape", W.SHAPES)
def test_every_size_and_offset_fits_its_cell_and_covers_its_centre(shape):
    """Exhaustive over every size and offset in a corner and an inner cell."""
    for cell in ((0, 0), (2, 3)):
        for size in range(W.OBJECT_SIZE_RANGE[0], W.OBJECT_SIZE_RANGE[1] + 1):
            for dx in range(-W.MAX_OFFSET, W.MAX_OFFSET + 1):
                for dy in range(-W.MAX_OFFSET, W.MAX_OFFSET + 1):
                    m = np.asarray(W._shape_mask(shape, cell, size, (dx, dy))) > 0
                    ys, xs = np.nonzero(m)
                    x, y, w, h = xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
                    assert (w, h) == (size, size)
                    assert cell[1] * 28 <= x and x + w <= cell[1] * 28 + 28
                    assert cell[0] * 28 <= y and y + h <= cell[0] * 28 + 28
                    assert m[y + h // 2, x + w // 2]


def test_background_is_noisy_light_grey(train_samples):
    pix = np.asarray(train_samples[1].image).astype(float)
    mask = np.ones(pix.shape[:2], bool)
    for obj in _objects(train_samples[1]):
        x, y, w, h = obj["bbox"]
        mask[y:y + h, x:x + w] = False
    bg = pix[mask]
    assert abs(bg.mean() - 235) < 1.0
    assert 2.5 < bg.std() < 5.5
    assert bg.min() > 200


def test_objects_have_distinct_shapes_colours_cells(train_samples):
    for s in train_samples:
        objs = _objects(s)
        assert len(objs) == 3
        assert len({o["shape"] for o in objs}) == 3
        assert len({tuple(o["rgb"]) for o in objs}) == 3
        # the target is the only coloured object; distractors are grey (it pops out)
        assert objs[0]["colour"] in W.COLOUR_RGB and all(o["colour"] == "grey" for o in objs[1:])
        assert len({tuple(o["cell"]) for o in objs}) == 3


def test_crop_box_contains_target_and_crop_shows_it(train_samples):
    for s in train_samples[:80]:
        cx, cy, cw, ch = s.meta["crop_box"]
        x, y, w, h = s.bbox
        assert (cw, ch) == (56, 56)
        assert 0 <= cx and cx + cw <= 112 and 0 <= cy and cy + ch <= 112
        assert cx <= x and x + w <= cx + cw and cy <= y and y + h <= cy + ch
        # the target's centre, mapped into the 2x-zoomed crop, shows the target's colour
        mx, my = 2 * (x + w // 2 - cx), 2 * (y + h // 2 - cy)
        got = np.asarray(s.crop)[my, mx].astype(int)
        assert np.abs(got - np.array(W.COLOUR_RGB[s.meta["target"]["colour"]])).max() < 40, s.id


# ---------------------------------------------------------------- questions and answers

def test_answers_match_target_attributes(train_samples):
    for s in train_samples:
        t = s.meta["target"]
        gold = s.options["ABCD".index(s.answer)]
        if s.question_type == "shape":
            assert s.question == f"What shape is the {t['colour']} object?"
            assert s.options == ["circle", "square", "triangle", "cross"]
            assert gold == t["shape"]
        elif s.question_type == "colour":
            assert s.question == f"What colour is the {t['shape']}?"
            assert s.options == ["red", "green", "blue", "yellow"]
            assert gold == t["colour"]
        else:
            assert s.question == f"Where is the {t['shape']}?"
            assert s.options == ["top left", "top right", "bottom left", "bottom right"]
            x, y, w, h = t["bbox"]  # quadrant from pixel geometry, independently of the cell bookkeeping
            vertical = "top" if y + h / 2 < 56 else "bottom"
            horizontal = "left" if x + w / 2 < 56 else "right"
            assert gold == f"{vertical} {horizontal}"
        assert s.caption == f"the {t['shape']} is {t['colour']}, in the {t['quadrant']}"


def test_question_types_alternate_and_can_be_restricted():
    assert [s.question_type for s in W.make_samples(4, "val")] == ["colour", "shape"] * 2
    assert {s.question_type for s in W.make_samples(5, "val", question_types=("position",))} == {"position"}


def test_answer_letters_are_balanced(train_samples):
    for qtype in W.QUESTION_TYPES:
        letters = [s.answer for s in train_samples if s.question_type == qtype]
        assert len(letters) == 200
        freq = Counter(letters)
        for letter in "ABCD":
            assert abs(freq[letter] / len(letters) - 0.25) < 0.08, (qtype, freq)


def test_heldout_combos_absent_from_train_targets_present_in_test(train_samples, test_samples):
    heldout = {("triangle", "yellow"), ("circle", "blue")}
    train_targets = {(s.meta["target"]["shape"], s.meta["target"]["colour"]) for s in train_samples}
    assert not train_targets & heldout
    assert not any(s.meta["heldout_combo"] for s in train_samples)
    test_hits = [s for s in test_samples if (s.meta["target"]["shape"], s.meta["target"]["colour"]) in heldout]
    assert {(s.meta["target"]["shape"], s.meta["target"]["colour"]) for s in test_hits} == heldout
    assert all(s.meta["heldout_combo"] for s in test_hits)
    assert sum(s.meta["heldout_combo"] for s in test_samples) == len(test_hits)
    # natural frequency: 2 of 16 combos
    assert 0.05 < len(test_hits) / len(test_samples) < 0.22


def test_derived_questions_ask_the_other_type_about_the_same_target():
    s = W.make_sample(0, "test", seed=5, question_type="colour")
    (d,) = W.derived_questions(s, image="images/test/x.png")
    t = s.meta["target"]
    assert d["category"] == "shape" and d["meta"]["source_id"] == s.id
    assert d["question"] == f"What shape is the {t['colour']} object?"
    assert d["options"]["ABCD".index(d["answer"])] == t["shape"]
    assert d["id"] != s.id and d["image"] == "images/test/x.png"
    s2 = W.make_sample(1, "test", seed=5, question_type="shape")
    (d2,) = W.derived_questions(s2)
    assert d2["category"] == "colour" and d2["options"]["ABCD".index(d2["answer"])] == s2.meta["target"]["colour"]


def test_format_options():
    assert W.format_options(W.COLOURS) == "A. red\nB. green\nC. blue\nD. yellow"
    assert W.format_options(["x", "y"]) == "A. x\nB. y"


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(LatentcheckError, match="split"):
        W.make_sample(0, "dev")
    with pytest.raises(LatentcheckError, match="question type"):
        W.make_sample(0, "train", question_type="size")
    with pytest.raises(LatentcheckError, match="index"):
        W.make_sample(-1, "train")
    with pytest.raises(LatentcheckError, match="n_val"):
        W.write_world(tmp_path, 1, -2, 1)


# ---------------------------------------------------------------- written files

def test_written_tasks_validate_and_images_load(written):
    out, info = written
    assert info["counts"] == {"train": 6, "val": 4, "test": 5}
    for split, n in info["counts"].items():
        tasks = list(read_tasks(info["paths"][split]["tasks"], strict=True))
        assert len(tasks) == n and all(isinstance(t, Task) for t in tasks)
        for t in tasks:
            assert t.category == t.meta["question_type"] and t.meta["split"] == split
            assert t.load_image().size == (112, 112)
            assert t.bbox == [float(v) for v in t.meta["target"]["bbox"]]
            assert (out / t.meta["crop"]).is_file()
            regenerated = W.make_sample(t.meta["index"], split, 3, t.meta["question_type"])
            assert np.array_equal(np.asarray(t.load_image()), np.asarray(regenerated.image))
        derived = list(read_tasks(info["paths"][split]["derived"], strict=True))
        assert len(derived) == n == info["derived_counts"][split]
        ids = {t.id for t in tasks}
        by_id = {t.id: t for t in tasks}
        for d in derived:
            src = by_id[d.meta["source_id"]]
            assert d.meta["source_id"] in ids and d.category != src.category
            assert d.image == src.image and d.meta["target"] == src.meta["target"]


def test_interleaved_monet_format(written):
    out, info = written
    records = json.loads(Path(info["paths"]["train"]["interleaved"]).read_text())
    assert isinstance(records, list) and len(records) == 6
    for r in records:
        system, user, assistant = r["data"]
        assert [system["role"], user["role"], assistant["role"]] == ["system", "user", "assistant"]
        assert user["content"][0]["type"] == "image" and (out / user["content"][0]["image_file_name"]).is_file()
        assert user["content"][1]["text"].endswith("Put your final answer within \\boxed{}.")
        assert "\nA. " in user["content"][1]["text"]
        text1, image, text2 = assistant["content"]
        assert "<abs_vis_token></abs_vis_token>" in text1["text"]
        assert image["type"] == "image" and image["image_file_name"].startswith("crops/train/")
        assert (out / image["image_file_name"]).is_file()
        meta = r["metadata"]
        expected = f"<observation>{meta['caption']}</observation> The answer is \\boxed{{{meta['answer']}}}."
        assert text2["text"] == expected


def test_interleaved_mirage_format(written):
    out, info = written
    lines = Path(info["paths"]["val"]["mirage"]).read_text().splitlines()
    assert len(lines) == 4
    tasks = {t.id: t for t in read_tasks(info["paths"]["val"]["tasks"], strict=True)}
    for line in lines:
        r = json.loads(line)
        assert r["text_input"].count("<image>") == 1
        assert r["text_output"].count("<output_image>") == 1
        assert r["text_output"].endswith(f"The answer is \\boxed{{{tasks[r['id']].answer}}}.")
        assert all((out / p).is_file() for p in r["image_input"]) and (out / r["image_output"]).is_file()


def test_manifest(written):
    out, info = written
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["seed"] == 3 and manifest["image_size"] == 112 and manifest["cell_size"] == 28
    assert sorted(map(tuple, manifest["heldout_combos"])) == sorted(W.HELDOUT_COMBOS)
    assert manifest["version"] == W.WORLD_VERSION and manifest["counts"] == info["counts"]


def test_n_objects_override_for_the_training_curriculum():
    one = W.make_sample(3, "train", n_objects=1)
    assert one.meta["distractors"] == [] and one.answer == W.make_sample(3, "train").answer
    with pytest.raises(LatentcheckError, match="n_objects"):
        W.make_sample(0, "train", n_objects=9)


def test_binding_world_questions_bind_to_one_of_several_coloured_objects():
    """The binding variant (v2): every object in its own colour, the question names one of them by its colour (not
    always the same one) and asks its shape, options in a seeded shuffled order; version 3 (the zoo's world) is
    unchanged."""
    from latentcheck.core.tasks import LETTERS
    from latentcheck.toy.world import (BINDING_WORLD_NAME, BINDING_WORLD_VERSION, COLOUR_RGB, SHAPES,
                                       main_question_types, make_sample, make_samples)

    assert main_question_types("binding") == ("shape",) and main_question_types() == ("colour",)
    samples = make_samples(60, "test", 0, main_question_types("binding"), variant="binding")
    asked, answers, orders = set(), set(), set()
    for s in samples:
        objs = [s.meta["target"], *s.meta["distractors"]]
        assert s.meta["world"] == BINDING_WORLD_NAME and s.meta["version"] == BINDING_WORLD_VERSION == "2"
        assert len({o["colour"] for o in objs}) == len({o["shape"] for o in objs}) == len(objs) == 3
        assert all(o["colour"] in COLOUR_RGB for o in objs)  # no grey distractors
        assert s.question == f"What shape is the {s.meta['target']['colour']} object?"
        assert sorted(s.options) == sorted(SHAPES) and s.options[LETTERS.index(s.answer)] == s.meta["target"]["shape"]
        orders.add(tuple(s.options))
        px = np.asarray(s.image).reshape(-1, 3)
        for o in objs:  # each object is drawn in its exact colour
            assert (px == np.asarray(COLOUR_RGB[o["colour"]])).all(1).any()
        asked.add(s.meta["asked_index"])
        answers.add(s.answer)
    assert asked == {0, 1, 2} and answers == set("ABCD") and len(orders) > 10
    # asking about another object of the same image (its colour) changes the right answer on every sample
    assert all(s.meta["distractors"][0]["shape"] != s.meta["target"]["shape"] for s in samples)
    assert make_sample(3, "test", 0, variant="binding").meta == samples[3].meta  # deterministic, shape by default
    assert [make_sample(i, "train", 0, variant="binding", n_objects=1).meta["distractors"] for i in range(3)] == \
        [[], [], []]
    v3 = make_sample(3, "test", 0, "colour")
    assert v3.meta["version"] == "3" and v3.options == ["red", "green", "blue", "yellow"]


def test_binding_world_files_and_the_default_data_of_a_binding_model(tmp_path, monkeypatch):
    """write_world(variant="binding") writes the binding world's tasks (its ids, shuffled options, manifest name);
    without --data, a model trained on the binding world (a zoo spec with world "binding", or a folder whose zoo card
    says so) gets the
    binding world's task file and every other model the zoom world's (v3)."""
    from latentcheck.core.runner import CommonOptions, data_path
    from latentcheck.toy import zoo
    from latentcheck.toy.world import BINDING_WORLD_NAME, make_sample, write_world

    out = write_world(tmp_path / "w", n_train=0, n_val=0, n_test=6, variant="binding")
    recs = [json.loads(line) for line in open(out["paths"]["test"]["tasks"])]
    assert [r["id"] for r in recs] == [f"toybind-test-{i:06d}" for i in range(6)]
    assert [(r["question"], r["options"]) for r in recs] == [
        (s.question, s.options) for s in (make_sample(i, "test", 0, "shape", variant="binding") for i in range(6))]
    assert json.loads(open(out["manifest"]).read())["name"] == BINDING_WORLD_NAME
    monkeypatch.setenv("LATENTCHECK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "ZOO_SIZES", {"train": 6, "val": 1, "test": 3})
    monkeypatch.setitem(zoo.ZOO, "toy-bind-test", dataclasses.replace(zoo.ZOO["toy-mediated"], world="binding"))
    binding = data_path(CommonOptions(model="toy-bind-test"))
    assert "toyworld-binding-v2" in binding and json.loads(open(binding).readline())["id"].startswith("toybind-")
    assert "toyworld-v3" in data_path(CommonOptions(model="toy-latent"))
    card_dir = tmp_path / "my-binding-model"
    card_dir.mkdir()
    (card_dir / "zoo_card.json").write_text(json.dumps({"world": "binding"}))
    assert data_path(CommonOptions(model=str(card_dir))) == binding
    assert data_path(CommonOptions(model="toy-latent", data="x.jsonl")) == "x.jsonl"
