"""CPU fast paths against the code they replace: pixel values and mRoPE positions bit-identical, the matmul patch
embedding equal to the Conv3d at float-rounding level with the checkpoint's parameters untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latentcheck.core.fastpaths import (_qwen_pil_processor, image_inputs, linear_patch_embedding,
                                        qwen2_5_vl_positions)
from latentcheck.core.loader import build_processor, load_model
from latentcheck.core.prompts import build_prompt


def _images(seed: int, n: int, lo: int = 20, hi: int = 420):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        mode = ["RGB", "L", "RGBA", "P", "CMYK", "LA", "I;16", "F", "1", "YCbCr"][i % 10]
        out.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode))
    return out


@pytest.mark.parametrize("pixels", [None, (28 * 28 * 4, 28 * 28 * 16)])
def test_pixel_values_bit_identical_to_the_processor(tiny_checkpoint, pixels):
    kw = {} if pixels is None else {"min_pixels": pixels[0], "max_pixels": pixels[1]}
    proc = build_processor(tiny_checkpoint("plain", "qwen2_5_vl"), **kw)
    ip = proc.image_processor
    assert _qwen_pil_processor(ip)
    imgs = _images(1, 25)  # up- and down-scaled by smart resize, every PIL mode converted to RGB
    for chunk in (imgs[:1], imgs[1:4], imgs[4:]):
        ref = ip(images=chunk, return_tensors="pt")
        pv, grid = image_inputs(ip, chunk)
        assert pv.dtype == ref["pixel_values"].dtype and torch.equal(pv, ref["pixel_values"])
        assert torch.equal(grid, ref["image_grid_thw"])


def test_other_image_processors_are_called_as_is(tiny_checkpoint):
    ip = build_processor(tiny_checkpoint("plain", "qwen2_5_vl")).image_processor
    ip.do_normalize = False  # not the stock pipeline: the fast path must step aside
    assert not _qwen_pil_processor(ip)
    img = _images(2, 1)
    pv, _ = image_inputs(ip, img)
    assert torch.equal(pv, ip(images=img, return_tensors="pt")["pixel_values"])
    assert float(pv.min()) >= 0.0  # un-normalized values: the processor's own output, not the fast path's


def test_positions_identical_to_get_rope_index(load_tiny):
    from latentcheck.core.prompts import mrope_positions

    lm = load_tiny("plain", "qwen2_5_vl")
    inner = lm.model.model
    merge = inner.config.vision_config.spatial_merge_size
    imgs = _images(3, 6, lo=30, hi=200)
    cases = [imgs[:1], imgs[1:3], imgs[3:6]]  # one image, two, three of different grids
    for images in cases:
        p = build_prompt(lm, "k", "What is here? Describe the region.", images)
        mm = (p.input_ids == lm.tokens.image).int()
        ref, _ = inner.get_rope_index(p.input_ids[None], mm_token_type_ids=mm[None], image_grid_thw=p.image_grid_thw)
        fast = qwen2_5_vl_positions(p.input_ids, lm.tokens.image, p.image_grid_thw, merge)
        assert torch.equal(fast, ref[:, 0])
        assert torch.equal(p.positions, ref[:, 0]) and torch.equal(mrope_positions(lm.model, p.input_ids,
                                                                                   p.image_grid_thw,
                                                                                   lm.tokens.image), ref[:, 0])
    # image runs that do not match the grids: no silent guess
    p = build_prompt(lm, "k", "x", imgs[:1])
    assert qwen2_5_vl_positions(p.input_ids[:-3].clone(), lm.tokens.image, p.image_grid_thw * 2, merge) is None
    assert qwen2_5_vl_positions(p.input_ids, lm.tokens.image, None, merge) is None


def test_text_only_positions_count_up(load_tiny):
    lm = load_tiny("plain", "qwen2_5_vl")
    p = build_prompt(lm, "k", "no image here", None)
    assert torch.equal(p.positions, torch.arange(p.length).view(1, -1).expand(3, -1))


def test_matmul_patch_embedding_matches_conv3d(tiny_checkpoint):
    path = tiny_checkpoint("plain", "qwen2_5_vl")
    exact = load_model(str(path), fast_paths=False)
    fast = load_model(str(path))  # CPU: on by default
    assert exact.info["fast_paths"] == [] and fast.info["fast_paths"] == ["linear_patch_embedding"]
    assert type(exact.model.model.visual.patch_embed.proj).__name__ == "Conv3d"
    assert type(fast.model.model.visual.patch_embed.proj).__name__ == "MatmulPatchProjection"
    # the checkpoint's parameters are untouched: same state-dict keys, shapes and values
    sd_e, sd_f = exact.model.state_dict(), fast.model.state_dict()
    assert sd_e.keys() == sd_f.keys()
    assert all(torch.equal(sd_e[k], sd_f[k]) for k in sd_e)
    pv, grid = image_inputs(exact.processor.image_processor, _images(4, 5, lo=40, hi=300))
    with torch.no_grad():
        a = torch.cat(exact.model.model.get_image_features(pv, grid).pooler_output)
        b = torch.cat(fast.model.model.get_image_features(pv, grid).pooler_output)
        pa = exact.model.model.visual.patch_embed(pv)
        pb = fast.model.model.visual.patch_embed(pv)
    assert a.shape == b.shape and pa.shape == pb.shape
    assert float((pa - pb).abs().max()) <= 1e-5 * max(1.0, float(pa.abs().max()))
    assert float((a - b).abs().max()) <= 1e-4
    # ... and a replaced module is not replaced again
    assert not linear_patch_embedding(fast.model)


def test_matmul_projection_falls_back_to_the_convolution_for_other_shapes():
    from torch import nn

    from latentcheck.core.fastpaths import _matmul_patch_proj_class

    conv = nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 4, 4), bias=True)
    m = _matmul_patch_proj_class()(conv)
    one = torch.randn(5, 3, 2, 4, 4)  # one patch per row: the matmul
    many = torch.randn(2, 3, 4, 8, 12)  # several patches per row: the convolution itself
    with torch.no_grad():
        assert torch.allclose(m(one), conv(one), atol=1e-5) and m(one).shape == conv(one).shape
        assert torch.equal(m(many), conv(many))
    strided = nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(1, 2, 2))  # overlapping: never replaced

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = nn.Module()
            self.visual.patch_embed = nn.Module()
            self.visual.patch_embed.proj = strided

    assert not linear_patch_embedding(Holder())
