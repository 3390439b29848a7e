"""Attention mass (issue #24 part 3): the captured weights are the model's own attention (eager oracle), a planted
uniform attention gives the hand-computed masses, the bbox -> token mapping is exact against the real processor,
the summary matches hand-built records, and the zoo's controls look where they were built to look."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latentcheck.core.engine import Engine, Request
from latentcheck.core.prompts import build_prompt
from latentcheck.core.prompts import bbox_token_indices
from latentcheck.probe.attention import attention_record, summarise_attention

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

QUESTION = "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow"


def _trace(lm, seed=0):
    eng = Engine(lm)
    p = build_prompt(lm, "s", QUESTION, make_image(seed))
    tr = eng.generate([Request(p, force_latent=True)])[0][0]
    return eng, p, tr


@pytest.mark.parametrize("vis", ["all", "latents_only", "start_only"])
def test_captured_rows_equal_the_models_own_eager_attention(load_tiny, vis):
    lm = load_tiny("toy", "toy-latent")
    eng, p, tr = _trace(lm)
    K = lm.profile.latent.k
    rows = eng.replay_attention(p, tr, image_visibility=vis)
    P = p.length
    assert rows.labels == ["last_prompt_token", "start", *[f"latent_{j}" for j in range(K)], "answer_point"]
    assert rows.positions == [P - 1, *range(P, P + K + 1), P + K + 1]  # the end token is the answer point
    assert rows.weights.shape[:2] == (lm.model.config.text_config.num_hidden_layers, K + 3)
    # oracle: transformers' eager attention on the same replay inputs returns the full weight matrices
    emb, pos, m, _span, visual = eng._replay_inputs(p, eng.answer_point_ids(tr), tr, vis)
    cfg = eng.text_model.config
    own = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    try:
        additive = torch.zeros(m.shape).masked_fill(~m, float("-inf"))[None, None]
        with torch.no_grad():
            out = eng.text_model(inputs_embeds=emb, position_ids=pos, attention_mask=additive,
                                 output_attentions=True, **visual)
    finally:
        cfg._attn_implementation = own
    want = torch.stack([a[0].mean(0)[rows.positions] for a in out.attentions]).numpy()
    assert np.abs(want - rows.weights).max() < 1e-5
    assert np.allclose(rows.weights.sum(-1), 1.0, atol=1e-5)
    img = rows.weights[:, :, rows.image_positions].sum(-1)
    if vis == "latents_only":  # only span positions may see the image
        assert img[:, 0].max() == 0 and img[:, -1].max() == 0 and img[:, 1:-1].min() > 0
    if vis == "start_only":
        assert img[:, 1].min() > 0 and np.delete(img, 1, axis=1).max() == 0


def test_a_planted_uniform_attention_gives_the_hand_computed_mass(tiny_checkpoint):
    """Zero query projections: every score is 0, so each row attends uniformly to the keys it may see; the image
    mass is n_visible_image / n_visible and the region mass n_region / n_visible, at every layer."""
    from latentcheck.core.loader import load_model

    lm = load_model(str(tiny_checkpoint("toy", "toy-latent")), profile="toy-latent")  # own copy: weights edited
    with torch.no_grad():
        for layer in lm.model.model.language_model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.q_proj.bias.zero_()
    eng, p, tr = _trace(lm, seed=1)
    n_img = int(p.image_mask.sum())
    region = [0, 5]
    for vis in ("all", "latents_only"):
        rec = attention_record(eng.replay_attention(p, tr, image_visibility=vis), region)
        rows = eng.replay_attention(p, tr, image_visibility=vis)
        for j, (label, pos) in enumerate(zip(rows.labels, rows.positions)):
            sees_image = vis == "all" or label.startswith(("start", "latent_"))
            want_img = n_img / (pos + 1) if sees_image else 0.0
            want_reg = len(region) / (pos + 1) if sees_image else 0.0
            for layer in range(len(rec["image"])):
                assert rec["image"][layer][j] == pytest.approx(want_img, abs=1e-6), (vis, label)
                assert rec["region"][layer][j] == pytest.approx(want_reg, abs=1e-6), (vis, label)
    assert rec["n_image"] == n_img and rec["region_tokens"] == region


@pytest.mark.parametrize("size,bbox,want", [
    ((112, 112), [28, 28, 28, 28], [5]),  # exactly one cell of the 4x4 grid (no resize)
    ((112, 112), [0, 28, 25, 25], [4]),  # a toy-world target (inside cell row 1, column 0)
    ((200, 100), [50, 20, 30, 10], [1, 2, 8, 9]),  # resized to 196x112 (7x4 cells): x 49..78.4, y 22.4..33.6
    ((300, 170), [101, 40, 60, 70], [13, 14, 15, 23, 24, 25, 33, 34, 35]),  # resized to 280x168 (10x6 cells)
])
def test_bbox_maps_onto_the_merged_token_grid_exactly(load_tiny, size, bbox, want):
    """Hand-computed cells, and the real processor agrees: only the merged tokens the mapping names change when the
    bbox's pixels change (the processor's 2x2 merge groups are consecutive rows of pixel_values)."""
    ip = load_tiny("toy", "toy-latent").processor.image_processor
    W, H = size
    a = np.zeros((H, W, 3), np.uint8)
    enc0 = ip(images=[Image.fromarray(a)], return_tensors="pt")
    x, y, w, h = bbox
    a[y:y + h, x:x + w] = 255
    enc = ip(images=[Image.fromarray(a)], return_tensors="pt")
    grid = enc["image_grid_thw"][0].tolist()
    got = bbox_token_indices(bbox, size, grid, ip.patch_size, ip.merge_size)
    assert got == want
    group = ip.merge_size ** 2
    diff = np.abs(enc["pixel_values"].numpy() - enc0["pixel_values"].numpy()).reshape(-1, group, enc[
        "pixel_values"].shape[1]).max(axis=(1, 2))
    assert [i for i in range(len(diff)) if diff[i] > 0.05] == want


def test_bbox_mapping_edges():
    assert bbox_token_indices([0, 0, 112, 112], (112, 112), (1, 8, 8), 14, 2) == list(range(16))
    assert bbox_token_indices([200, 200, 10, 10], (112, 112), (1, 8, 8), 14, 2) == []  # outside the image
    assert bbox_token_indices([27.9, 0, 0.2, 1], (112, 112), (1, 8, 8), 14, 2) == [0, 1]  # straddles a cell edge
    assert bbox_token_indices([0, 0, 28, 28], (112, 112), (2, 8, 8), 14, 2) == [0, 16]  # every temporal frame


def test_summary_on_hand_built_records():
    labels = ["last_prompt_token", "start", "latent_0", "latent_1", "answer_point"]
    # one layer; image mass per row and region mass per row
    r1 = {"labels": labels, "n_image": 16, "region_tokens": [3], "image": [[0.5, 0.4, 0.2, 0.4, 0.0]],
          "region": [[0.1, 0.1, 0.1, 0.3, 0.0]]}
    r2 = {"labels": labels, "n_image": 16, "region_tokens": [3, 4], "image": [[0.3, 0.2, 0.0, 0.0, 0.0]],
          "region": [[0.0, 0.1, 0.0, 0.0, 0.0]]}
    s = summarise_attention([{"attention": r1}, {"attention": r2}], n_boot=200)
    layer = s["layers"][0]
    assert layer["image"]["latent_mean"]["estimate"] == pytest.approx((0.3 + 0.0) / 2)
    assert layer["region"]["latent_mean"]["estimate"] == pytest.approx((0.2 + 0.0) / 2)
    # region share: only r1's latents attend to the image (r2's are 0/0 and leave the mean)
    assert layer["region_share"]["latent_mean"]["estimate"] == pytest.approx(0.2 / 0.3)
    assert layer["region_share"]["latent_mean"]["n"] == 1
    assert layer["region_share"]["answer_point"]["estimate"] is None
    assert s["uniform_region_share"]["estimate"] == pytest.approx((1 / 16 + 2 / 16) / 2)
    c = s["contrasts"]
    assert c["latent_share_vs_uniform"][0]["estimate"] == pytest.approx(0.2 / 0.3 - 1 / 16)
    assert c["latent_region_vs_answer_point"][0]["estimate"] == pytest.approx(0.1)
    assert c["latent_region_vs_last_prompt_token"][0]["estimate"] == pytest.approx(((0.1 + 0.3) / 2 - 0.1 + 0.0 - 0.0) / 2)
    assert s["steps"]["image"] == [[0.1, 0.2]] and s["steps"]["region"] == [[0.05, 0.15]]


@pytest.mark.parametrize("model", ["toy-vector", "toy-latent", "toy-mediated"])
def test_zoo_controls_look_where_they_were_built_to_look(tmp_path, model):
    """toy-vector: only the latent-start position may see the image, and it looks at the target more than uniform;
    toy-mediated: the latent steps look at the target region more than uniform, the answer cannot see the image;
    toy-latent: the answer point itself looks at the target (the bypass), more than its latents do."""
    from latentcheck.core.runner import CommonOptions
    from latentcheck.probe.behavioural import ProbeOptions, run_probe

    res = run_probe(CommonOptions(model=model, out=str(tmp_path / model), limit=24, quiet=True),
                    ProbeOptions(behavioural=False, trained=False, n_boot=300))
    a = res.summary["capture"]["attention"]
    assert a["n"] == a["n_region"] == 24 and a["uniform_region_share"]["estimate"] == pytest.approx(1 / 16)
    first = a["layers"][0]
    assert any(p.endswith("attention_image.png") for p in res.summary["plots"])
    if model == "toy-vector":
        assert all(e["image"]["latent_mean"]["hi"] == 0 for e in a["layers"])
        assert all(e["image"]["answer_point"]["hi"] == 0 for e in a["layers"])
        assert first["region_share"]["start"]["lo"] > 1 / 16
    if model == "toy-mediated":
        assert a["contrasts"]["latent_share_vs_uniform"][0]["lo"] > 0
        assert all(e["image"]["answer_point"]["hi"] == 0 for e in a["layers"])
    if model == "toy-latent":
        assert a["contrasts"]["latent_region_vs_answer_point"][0]["hi"] < 0
        assert first["region_share"]["answer_point"]["lo"] > first["region_share"]["latent_mean"]["hi"]
