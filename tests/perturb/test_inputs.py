"""perturb-input oracles: unchanged inputs give cosine 1 / zero change; visibility rules that cut (or keep) the image's
path to the latents give the expected pattern; latents forced to a known function of the image give hand-computed
similarities; the text-imagination 'latents' are the engine's hidden states of the imagination span."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentcheck.core.engine import Engine, Request
from latentcheck.core.prompts import build_prompt, task_text
from latentcheck.core.records import read_results
from latentcheck.core.runner import CommonOptions, TensorStore
from latentcheck.core.similarity import cosine
from latentcheck.core.tasks import Task
from latentcheck.toy.world import make_samples
from latentcheck.perturb.inputs import MOVE_RESOLUTION, _centred_pair_cosine, imagination_span, run_perturb_input

TOL = 1e-5


def write_tasks(folder, n=4, extra: list[dict] | None = None):
    """A task JSONL with PNG images, bboxes and two categories (toy-world scenes)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "tasks.jsonl", "w") as f:
        for s in make_samples(n, "test", 0):
            s.image.save(folder / f"{s.id}.png")
            f.write(json.dumps(s.task_record(image_path=f"{s.id}.png")) + "\n")
        for rec in extra or []:
            f.write(json.dumps(rec) + "\n")
    return str(folder / "tasks.jsonl")


def _run(tmp_path, lm, treatments, n=3, name="run", **kw):
    data = write_tasks(tmp_path / "data", n)
    opts = CommonOptions(data=data, out=str(tmp_path / name), quiet=True, batch_size=8)
    kw.setdefault("force_start", True)
    kw.setdefault("plots", False)
    kw.setdefault("n_boot", 200)
    res = run_perturb_input(opts, treatments, lm=lm, **kw)
    _, recs = read_results(res.results_path)
    return res, [r for r in recs if r["type"] == "sample"]


@pytest.mark.parametrize("family,profile", [("toy", "toy-latent"), ("lvr", "lvr"), ("toy", "toy-capimagine"),
                                            ("plain", "qwen2_5_vl")])
def test_unchanged_input_gives_cosine_one_and_zero_change(tmp_path, load_tiny, family, profile):
    lm = load_tiny(family, profile)
    res, recs = _run(tmp_path, lm, ["identity"], n=3, max_new_tokens=6)
    assert len(recs) == 3
    for r in recs:
        e = r["treatments"]["identity"]
        assert e["n_compared"] >= 1 and e["n_compared"] == r["original"]["latent_count"]
        assert np.allclose(e["latent_cosine"], 1.0, atol=TOL) and np.allclose(e["latent_rel_l2"], 0.0, atol=TOL)
        for ref in ("image_tokens", "question_tokens", "last_prompt_token"):
            assert abs(e["refs"][ref]["cosine"] - 1) < TOL and e["refs"][ref]["rel_l2"] < TOL
        assert e["option_probs"] == pytest.approx(r["original"]["option_probs"], abs=1e-5)
    t = res.summary["treatments"]["identity"]
    assert np.allclose(t["centred_latent_cosine_by_index"], 1.0, atol=1e-4)  # anisotropy-corrected: still 1
    assert all(abs(c - 1) < 1e-4 for c in t["centred_ref_cosine"].values())
    assert t["latent_rel_l2"]["estimate"] < TOL


def test_centred_cosine_of_identical_vectors_is_one():
    a = np.array([1.0, -2.0, 3.0])
    assert _centred_pair_cosine(a, a.copy(), np.zeros(3)) == 1.0
    assert _centred_pair_cosine(a, a.copy(), a.copy()) == 1.0  # both centre to zero: identical, not nan
    assert _centred_pair_cosine(a, -a, np.zeros(3)) == pytest.approx(-1.0)


def test_visibility_none_cuts_the_image_out_of_the_latents_latents_only_keeps_it(tmp_path, load_tiny):
    lm = load_tiny("toy", "toy-latent")
    treatments = ["noise:std=0.3", "swap_image", "blank_image"]
    # image hidden from every position after the image block: latents and text states cannot change
    res, recs = _run(tmp_path, lm, treatments, n=3, name="none", image_visibility="none")
    for r in recs:
        for label in treatments:
            e = r["treatments"][label]
            assert np.allclose(e["latent_cosine"], 1.0, atol=TOL), label
            assert e["refs"]["question_tokens"]["rel_l2"] < TOL and e["refs"]["last_prompt_token"]["rel_l2"] < TOL
            assert e["refs"]["image_tokens"]["rel_l2"] > 1e-3  # the image itself did change
    for label in treatments:
        t = res.summary["treatments"][label]
        assert t["sensitivity_ratio"]["estimate"] < TOL
        # no latent moved beyond round-off: the ratio's interval is raised to its resolution floor (resolution /
        # mean image-token change, from the records) instead of a zero-width [0, 0], and 0/3 moved gets Wilson
        mean_ref = np.mean([r["treatments"][label]["refs"]["image_tokens"]["rel_l2"] for r in recs])
        assert t["sensitivity_ratio"]["method"] == "paired_bootstrap_floored"
        assert t["sensitivity_ratio"]["hi"] == pytest.approx(MOVE_RESOLUTION / mean_ref, rel=1e-6)
        assert t["sensitivity_ratio"]["hi"] > t["sensitivity_ratio"]["lo"]
        assert t["latents_moved"]["successes"] == 0 and t["latents_moved"]["n"] == 3
        assert t["latents_moved"]["hi"] == pytest.approx(1.959963984540054 ** 2 / (3 + 1.959963984540054 ** 2))
    # positive-control rule: only the latent span sees the image -> latents change, the text states do not
    res2, recs2 = _run(tmp_path, lm, treatments, n=3, name="latents_only", image_visibility="latents_only")
    for r in recs2:
        for label in treatments:
            e = r["treatments"][label]
            assert min(e["latent_rel_l2"]) > 1e-3, label
            assert e["refs"]["question_tokens"]["rel_l2"] < TOL
    for label in treatments:
        s = res2.summary["treatments"][label]["sensitivity_ratio"]
        cut = res.summary["treatments"][label]["sensitivity_ratio"]
        assert s["lo"] > 1e-3 and s["estimate"] > 100 * cut["estimate"]
        assert s["method"] == "paired_bootstrap" and res2.summary["treatments"][label]["latents_moved"]["successes"] == 3


def _colour_latents(v, k=4, h=128):
    """A known function of the image: latent j = [mean R, mean G, mean B, j + 1, 0, ...] (pixel means / 255)."""
    rgb = np.asarray(v.image, dtype=np.float64).reshape(-1, 3).mean(0) / 255 if v.image is not None else np.zeros(3)
    out = np.zeros((k, h), np.float32)
    out[:, :3] = rgb
    out[:, 3] = np.arange(1, k + 1)
    return out


def test_latents_forced_from_the_image_give_hand_computed_similarities(tmp_path, load_tiny):
    lm = load_tiny("toy", "toy-latent")
    res, recs = _run(tmp_path, lm, ["blank_image:value=0.2", "identity"], n=4, latent_override=_colour_latents,
                     plots=True)
    samples = {s.id: s for s in make_samples(4, "test", 0)}
    grey = np.full(3, 51 / 255)  # round(0.2 * 255)
    for r in recs:
        rgb = np.asarray(samples[r["key"]].image, dtype=np.float64).reshape(-1, 3).mean(0) / 255
        want = [cosine(np.r_[rgb, j + 1], np.r_[grey, j + 1]) for j in range(4)]
        got = r["treatments"]["blank_image:value=0.2"]["latent_cosine"]
        assert got == pytest.approx(want, abs=1e-6)
    # inter-instance matrices: cosine of the known latents across instances, in the stored row order
    geo = res.summary["geometry"]
    mats = np.load(tmp_path / "run" / "inter_instance.npz")
    keys = list(mats["keys"])
    for j in range(4):
        X = np.stack([np.r_[np.asarray(samples[k].image, dtype=np.float64).reshape(-1, 3).mean(0) / 255, j + 1]
                      for k in keys])
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        assert np.allclose(mats[f"latent{j}_raw"], U @ U.T, atol=1e-6)
        assert geo["latent_index"][j]["raw_mean"] == pytest.approx((U @ U.T)[~np.eye(4, dtype=bool)].mean(), abs=1e-6)
    # categories alternate colour/shape in the toy world: within/across means are reported
    assert geo["categories"] == sorted(geo["categories"]) and "within_across_raw" in geo["latent_index"][0]
    # the latents live in a 4-dim subspace: effective rank of the pooled latents is at most 4
    assert 1 < geo["latent_pooled"]["effective_rank"] <= 4 + 1e-9
    assert {"inter_instance_raw.png", "collapse_adjacent.png", "sensitivity.png"} <= \
        {p.split("/")[-1] for p in res.plots}


def test_text_imagination_latents_are_the_hidden_states_of_the_span(tmp_path, load_tiny):
    lm = load_tiny("toy", "toy-capimagine")
    res, recs = _run(tmp_path, lm, ["identity"], n=2, max_new_tokens=6, save_tensors=True, max_latents=3)
    stored = TensorStore(tmp_path / "run" / "tensors").load()
    task = Task(id=recs[0]["key"], question=make_samples(1, "test", 0)[0].question,
                options=make_samples(1, "test", 0)[0].options)
    prompt = build_prompt(lm, task.id, task_text(task, lm.profile), make_samples(1, "test", 0)[0].image,
                          assistant_prefix="<imagine>")
    tr = Engine(lm, capture_hidden=True).run([Request(prompt, max_new_tokens=6)])[0][0]
    end = tr.token_ids.index(lm.tokens.imagination_end[0]) if lm.tokens.imagination_end[0] in tr.token_ids \
        else len(tr.token_ids)
    want = tr.hidden[:end][:3]
    assert np.allclose(stored[task.id]["orig.latents"], want, atol=1e-5)
    # span detection when the model writes the markers itself
    s, e = lm.tokens.imagination_start[0], lm.tokens.imagination_end[0]
    assert imagination_span(lm, [5, s, 20, 21, 22, e, 30], False) == (2, 5, True, True)
    assert imagination_span(lm, [5, 20, 21], False)[2] is False
    assert imagination_span(lm, [20, 21, 22], True) == (0, 3, True, False)


def test_bounded_tensors_skips_and_bad_records(tmp_path, load_tiny):
    lm = load_tiny("toy", "toy-latent")
    no_bbox = {"id": "z-nobox", "image": "toy-test-000000.png", "question": "What colour is the circle?",
               "options": ["red", "green"], "answer": "A"}
    broken = {"id": "z-broken", "image": "missing.png", "question": "q?", "options": ["a", "b"], "answer": "A"}
    data = write_tasks(tmp_path / "data", 3, extra=[no_bbox, broken])
    opts = CommonOptions(data=data, out=str(tmp_path / "run"), quiet=True)
    res = run_perturb_input(opts, ["mask_target"], lm=lm, force_start=True, max_matrix=2, plots=False, n_boot=100)
    assert res.counts["ok"] == 4 and res.counts["errors"] == 1
    _, recs = read_results(res.results_path)
    err = [r for r in recs if r["type"] == "error"][0]
    assert err["key"] == "z-broken" and err["field"] == "image"
    nb = [r for r in recs if r.get("key") == "z-nobox"][0]
    assert "bbox" in nb["treatments"]["mask_target"]["skipped"]
    t = res.summary["treatments"]["mask_target"]
    assert t["n"] == 3 and t["n_skipped"] == 1
    assert res.summary["geometry"]["n"] == 2  # only --max-matrix samples kept for the matrices: the first
    # two in record-id order (toy-test-000000, -000001; the z- ids sort after them)
    assert len(TensorStore(tmp_path / "run" / "tensors").load()) == 2
