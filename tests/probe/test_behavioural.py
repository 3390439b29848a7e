"""Behavioural probe: the image really leaves the answer's view, arms and statistics are what they claim."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentcheck.core.runner import TensorStore
from latentcheck.core.tasks import BadRecord, Task, read_tasks
from latentcheck.probe.behavioural import (BehaviouralContext, behavioural_block, capture_block, load_derived,
                                           noise_like, select_derived, summarise_behavioural)

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

OPTIONS = ["red", "green", "blue", "yellow"]


def _task(tid, image, base_dir, **kw):
    return Task(id=tid, question="What colour is the circle?", options=OPTIONS, answer="B", image=image,
                base_dir=str(base_dir), **kw)


def test_inserted_latents_are_the_answers_only_view_of_the_image(load_tiny, tmp_path):
    from latentcheck.core.engine import Engine

    lm = load_tiny("toy", "toy-latent")
    for seed in (1, 2):  # two different images of the same size (same number of image tokens)
        make_image(seed).save(tmp_path / f"im{seed}.png")
    src = _task("s", "im1.png", tmp_path)
    eng = Engine(lm)
    store = TensorStore(tmp_path / "tensors")
    cap = capture_block(eng, lm, [src], store)
    assert cap[0]["key"] == "s" and cap[0]["latent_count"] == lm.profile.latent.k
    z = store.load()["s"]["latents"]
    assert z.shape == (lm.profile.latent.k, 128)
    # the same derived question about image 1 and about image 2, both fed the source's latents
    derived = [Task(id=f"d{seed}", question="What shape is the red object?", options=["circle", "square"],
                    answer="A", image=f"im{seed}.png", base_dir=str(tmp_path), meta={"source_id": "s"})
               for seed in (1, 2)]
    ctx = BehaviouralContext(sources={"s": src}, latents={"s": z}, mean_latent=z.mean(0))
    r1, r2 = behavioural_block(eng, lm, derived, ctx)
    lp = {arm: [np.array(r["arms"][arm]["option_logprobs"]) for r in (r1, r2)]
          for arm in ("latents", "shared", "noise", "text_only", "image")}
    for arm in ("latents", "shared", "noise", "text_only"):  # the image is invisible to the answer
        assert np.abs(lp[arm][0] - lp[arm][1]).max() <= 1e-5, arm
    assert np.abs(lp["image"][0] - lp["image"][1]).max() > 1e-4  # ... unless it is visible
    # and the inserted vectors do reach the answer: other vectors, other option log-probs
    assert np.abs(lp["latents"][0] - lp["noise"][0]).max() > 1e-4
    assert r1["latent_count"] == len(z) and r1["source_id"] == "s" and r1["n_options"] == 2
    assert r1["arms"]["random"]["pred"] in ("A", "B")


def test_bad_derived_questions_become_error_records(load_tiny, tmp_path):
    from latentcheck.core.engine import Engine

    lm = load_tiny("toy", "toy-latent")
    make_image(1).save(tmp_path / "im1.png")
    src = _task("s", "im1.png", tmp_path)
    z = np.zeros((4, 128), dtype=np.float32)
    ctx = BehaviouralContext(sources={"s": src, "failed": src}, latents={"s": z}, mean_latent=z[0])
    bad = [Task(id="no-src", question="q?", options=["a", "b"], answer="A", image="im1.png", base_dir=str(tmp_path)),
           Task(id="unknown", question="q?", options=["a", "b"], answer="A", meta={"source_id": "zzz"}),
           Task(id="failed-src", question="q?", options=["a", "b"], answer="A", meta={"source_id": "failed"}),
           Task(id="open", question="q?", answer="cat", meta={"source_id": "s"}),
           Task(id="missing-img", question="q?", options=["a", "b"], answer="A", image="nope.png",
                base_dir=str(tmp_path), meta={"source_id": "s"})]
    recs = behavioural_block(Engine(lm), lm, bad, ctx)
    fields = {r["key"]: r["error"]["field"] for r in recs}
    assert fields == {"no-src": "meta.source_id", "unknown": "meta.source_id", "failed-src": "meta.source_id",
                      "open": "options", "missing-img": "image"}
    assert all(r["error"]["record"] == r["key"] for r in recs)


def _rec(key, arms, n_options=4, category="colour"):
    return {"type": "sample", "key": key, "n_options": n_options, "category": category,
            "arms": {a: {"pred": "A", "correct": c, "gen_pred": None, "gen_correct": 0} for a, c in arms.items()}}


def test_summary_statistics_match_hand_counts():
    # 8 questions; text_only right on 0-1, latents right on 0-4, image on all; random right on 0
    recs = []
    for i in range(8):
        recs.append(_rec(f"d{i}", {"random": int(i == 0), "text_only": int(i < 2), "latents": int(i < 5),
                                   "shared": int(i < 2), "noise": 0, "image": 1},
                         category="colour" if i % 2 else "shape"))
    recs.append({"type": "error", "key": "bad", "record": "bad", "field": "x", "message": "m"})
    s = summarise_behavioural(recs, n_boot=200)
    assert s["n"] == 8 and s["expected_chance"] == 0.25
    assert s["arms"]["latents"]["estimate"] == 5 / 8 and s["arms"]["image"]["estimate"] == 1.0
    assert s["arms"]["latents"]["successes"] == 5 and s["arms"]["latents"]["n"] == 8
    c = s["comparisons"]["latents_vs_text_only"]  # a core.summaries.AccuracyEffect
    assert (c["n01"], c["n10"], c["delta"]["estimate"]) == (3, 0, 3 / 8)
    assert c["delta"]["p_value"] == pytest.approx(0.25)  # exact two-sided: 2 * 0.5^3
    c = s["comparisons"]["noise_vs_random"]
    assert (c["n01"], c["n10"]) == (0, 1)
    assert s["vs_chance"]["image"]["estimate"] == pytest.approx(0.75)
    shape = s["by_category"]["shape"]["latents"]  # a Proportion: 3 of 4, Wilson (hand: [0.30064, 0.95441])
    assert (shape["estimate"], shape["successes"], shape["n"], shape["method"]) == (3 / 4, 3, 4, "wilson")
    assert shape["lo"] == pytest.approx(0.30064, abs=1e-5) and shape["hi"] == pytest.approx(0.95441, abs=1e-5)
    assert s["no_answer"]["latents"] == 0
    assert summarise_behavioural(recs, scoring="generate", n_boot=50)["arms"]["latents"]["estimate"] == 0.0
    assert "skipped" in summarise_behavioural(recs[-1:])


def test_noise_is_norm_matched_and_seeded():
    z = np.random.default_rng(0).normal(size=(3, 16)) * np.array([[1.0], [5.0], [0.1]])
    n1, n2, n3 = noise_like(z, "a", 0), noise_like(z, "a", 0), noise_like(z, "b", 0)
    assert np.allclose(np.linalg.norm(n1, axis=1), np.linalg.norm(z, axis=1), rtol=1e-5)
    assert np.array_equal(n1, n2) and not np.allclose(n1, n3)
    assert noise_like(z[:0], "a", 0).shape == (0, 16)


def test_derived_questions_from_file_sibling_and_toy_metadata(tmp_path):
    from latentcheck.toy.world import derived_questions, make_sample, write_world

    info = write_world(tmp_path / "w", n_train=0, n_val=0, n_test=4)
    data = info["paths"]["test"]["tasks"]
    sources = [t for t in read_tasks(data)]
    items, origin = load_derived(data, None, sources)
    assert origin.endswith("derived_test.jsonl") and len(items) == 4
    # regenerated from metadata when the sibling file is missing: same questions as the world writes
    moved = tmp_path / "w" / "copy.jsonl"
    moved.write_text((tmp_path / "w" / "tasks_test.jsonl").read_text())
    items2, origin2 = load_derived(str(moved), None, list(read_tasks(moved)))
    assert origin2.startswith("generated")
    want = derived_questions(make_sample(0, "test", 0), sources[0].image)[0]
    got = items2[0]
    assert (got.id, got.question, got.options, got.answer, got.meta["source_id"]) == (
        want["id"], want["question"], want["options"], want["answer"], "toy-test-000000")
    assert [(t.id, t.answer) for t in items2] == [(t.id, t.answer) for t in items]
    # non-toy data without --derived: none
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"id": "x", "question": "q?"}) + "\n")
    assert load_derived(str(plain), None, list(read_tasks(plain)))[0] is None
    # --limit keeps the derived questions of the selected sources, and the ones that must become errors
    keep = select_derived(items + [Task(id="orphan", question="q"), Task(id="u", question="q",
                                                                       meta={"source_id": "nowhere"})],
                          selected={"toy-test-000000"}, all_ids={t.id for t in sources})
    assert [t.id for t in keep] == ["toy-test-000000-shape", "orphan", "u"]
    assert select_derived([BadRecord("f:1", None)], set(), set())[0].where == "f:1"  # type: ignore[arg-type]
