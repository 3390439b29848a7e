"""Trained probes on synthetic states with known structure: planted signals, shuffled labels, leaking groups."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import Task
from latentcheck.probe.trained import (ProbeConfig, default_labels, image_group, label_value, probe_site,
                                       run_trained_probes, similarity_stats)

FAST = ProbeConfig(n_splits=4, n_boot=300, mlp_hidden=(16,))


def planted(n=120, h=24, k=3, strength=4.0, seed=0):
    """X = noise + strength * one-hot(label) in the first k dims: linearly decodable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, h))
    X[:, :k] += strength * np.eye(k)[y]
    return X, y


def test_probe_finds_a_planted_linear_signal_and_its_control_stays_at_chance():
    X, y = planted()
    r = probe_site(X, y, groups=np.arange(len(y)), cfg=FAST)
    assert r["n"] == 120 and r["n_splits"] == 4 and r["chance"] == pytest.approx(1 / 3)
    for m in ("linear", "mlp"):
        assert r[m]["estimate"] >= 0.9 and r[m]["lo"] > r["chance"]
        # control task = the same probe on permuted labels: its Wilson interval covers chance
        c = r[f"{m}_control"]
        assert c["lo"] <= 1 / 3 <= c["hi"] and c["estimate"] < 0.5
        sel = r[f"{m}_selectivity"]
        assert sel["estimate"] == pytest.approx(r[m]["estimate"] - c["estimate"])
        assert sel["lo"] > 0.3


def test_probe_on_shuffled_labels_stays_at_chance():
    X, y = planted()
    y_shuffled = np.random.default_rng(1).permutation(y)
    r = probe_site(X, y_shuffled, groups=np.arange(len(y)), cfg=FAST)
    for m in ("linear", "mlp"):
        assert r[m]["lo"] <= 1 / 3 <= r[m]["hi"]
        assert r[f"{m}_selectivity"]["lo"] <= 0 <= r[f"{m}_selectivity"]["hi"]


def test_splits_by_image_stop_leaks_that_random_splits_would_reward():
    # 30 "images", 4 questions each; the states of one image are nearly identical and the label is random per
    # image, so the only way to score is to recognise the image.
    rng = np.random.default_rng(0)
    n_img, per, h = 30, 4, 64
    centres = rng.normal(size=(n_img, h))
    img_label = rng.integers(0, 2, n_img)
    X = np.repeat(centres, per, 0) + 0.01 * rng.normal(size=(n_img * per, h))
    y = np.repeat(img_label, per)
    groups = np.repeat([f"img{i}.png" for i in range(n_img)], per)
    # oracle: the same probe with random (image-blind) splits memorises the images
    from sklearn.model_selection import KFold, cross_val_score

    from latentcheck.probe.trained import _estimator

    leaky = cross_val_score(_estimator("linear", FAST), X, y, cv=KFold(4, shuffle=True, random_state=0)).mean()
    assert leaky > 0.9
    r = probe_site(X, y, groups, cfg=FAST)
    for m in ("linear", "mlp"):
        assert r[m]["estimate"] < 0.7 and r[m]["lo"] <= 0.5


def test_probe_site_skips_what_cannot_be_split_and_rejects_bad_input():
    X, y = planted(n=12)
    assert "skipped" in probe_site(X, np.zeros(12), np.arange(12), FAST)  # one class
    assert "skipped" in probe_site(X, y, np.zeros(12), FAST)  # one image
    assert "skipped" in probe_site(X[:4], y[:4], np.arange(4), FAST)  # too few samples
    with pytest.raises(LatentcheckError, match="do not match"):
        probe_site(X, y[:5], np.arange(12), FAST)
    X[0, 0] = np.nan
    with pytest.raises(LatentcheckError, match="nan"):
        probe_site(X, y, np.arange(12), FAST)


def _task(i, **kw):
    base = dict(id=f"t{i}", question="q?", options=["red", "green", "blue"], answer="B", category="colour",
                image=f"im{i}.png", base_dir="/data", meta={"target": {"colour": "red", "cell": [1, 2]}})
    base.update(kw)
    return Task(**base)


def test_label_values_and_groups():
    t = _task(0)
    assert label_value(t, "answer") == "B"
    assert label_value(t, "category") == "colour"
    assert label_value(t, "meta.target.colour") == "red"
    assert label_value(t, "meta.target.size") is None and label_value(t, "meta.x.y") is None
    assert label_value(_task(1, options=None, answer="a cat"), "answer") == "a cat"
    with pytest.raises(RecordError) as e:
        label_value(t, "meta.target.cell")
    assert e.value.record == "t0" and e.value.field == "meta.target.cell"
    with pytest.raises(LatentcheckError, match="unknown label"):
        label_value(t, "colour")
    # two questions about one image share a group; a task without image is its own group
    assert image_group(_task(0)) == image_group(_task(5, image="/data/im0.png")) == "/data/im0.png"
    assert image_group(_task(0)) != image_group(_task(1))
    assert image_group(_task(2, image=None)) == "id:t2"
    assert default_labels([_task(0)]) == ["category", "answer"]
    assert default_labels([_task(0, meta={"world": "latentcheck-toy-zoom"})])[:3] == [
        "meta.target.colour", "meta.target.shape", "meta.target.quadrant"]
    # the binding world too: the asked attribute's value, not only the (shuffled) option letter
    assert default_labels([_task(0, meta={"world": "latentcheck-toy-binding"})])[-1] == "meta.answer_text"


def test_run_trained_probes_reads_each_latent_index_and_reference():
    rng = np.random.default_rng(0)
    n, h = 90, 16
    colours = np.array(["red", "green", "blue"])[np.arange(n) % 3]
    onehot = (colours[:, None] == np.array(["red", "green", "blue"])[None]).astype(float)
    tensors, tasks = {}, {}
    for i in range(n):
        lat = rng.normal(size=(3, h))
        lat[1, :3] += 4 * onehot[i]  # only latent 1 carries the colour
        ref = rng.normal(size=h)
        tensors[f"t{i}"] = {"latents": lat, "image_tokens": ref, "question_tokens": np.zeros(0)}
        tasks[f"t{i}"] = _task(i, meta={"target": {"colour": str(colours[i])}})
    res = run_trained_probes(tensors, tasks, ["meta.target.colour"], ProbeConfig(n_splits=3, n_boot=200,
                                                                                 methods=("linear",)))
    assert res["sites"] == ["latent_0", "latent_1", "latent_2", "latent_mean", "image_tokens"]
    sites = res["labels"]["meta.target.colour"]["sites"]
    assert sites["latent_1"]["linear"]["estimate"] >= 0.9
    for s in ("latent_0", "latent_2", "image_tokens"):
        assert sites[s]["linear"]["lo"] <= 1 / 3 <= sites[s]["linear"]["hi"]
    with pytest.raises(LatentcheckError, match="ids"):
        run_trained_probes(tensors, {"other": _task(0)}, ["answer"])


def test_similarity_stats_on_hand_built_latents():
    # two categories; every instance of a category has the same latents (plus a shared offset), so the
    # raw inter-instance cosine is high, the centred one splits by category, and separability is perfect.
    # Centring on the mean of all latents (offset + 0.75 a + 0.75 b): index 0 gives 0.25a - 0.75b for A and
    # -0.75a + 0.25b for B, cosine (-0.1875 - 0.1875) / 0.625 = -0.6; index 1 gives 1.25a - 0.75b vs
    # -0.75a + 1.25b, cosine (-0.9375 - 0.9375) / 2.125 = -15/17.
    h, K = 8, 2
    offset = 10 * np.ones(h)
    a, b = np.eye(h)[0], np.eye(h)[1]
    tensors, tasks = {}, {}
    for i in range(10):
        v = a if i % 2 == 0 else b
        tensors[f"t{i}"] = {"latents": np.stack([offset + v, offset + 2 * v]), "image_tokens": v}
        tasks[f"t{i}"] = _task(i, category="A" if i % 2 == 0 else "B")
    sim = similarity_stats(tensors, tasks)
    assert sim["K"] == 2 and sim["n_with_latents"] == 10
    assert min(sim["inter_raw"]) > 0.95
    for k, across in zip(range(K), (-0.6, -15 / 17)):
        wa = sim["within_across"][k]
        assert wa["within"] == pytest.approx(1.0) and wa["across"] == pytest.approx(across)
        assert sim["separability"][k]["estimate"] == 1.0
    assert sim["effective_rank"][0] == pytest.approx(1.0)  # one direction of variation (a - b)
    assert sim["references"]["image_tokens"]["separability"]["estimate"] == 1.0
