"""Fast re-expressions of slow input-preparation and model operations, each tested against the code it replaces.

* :func:`image_inputs` / :func:`qwen_pixel_values`: the Qwen2-VL PIL image processor's output, bit-identical (used by
  ``core.prompts.build_prompt`` and the zoo).
* :func:`qwen2_5_vl_positions`: Qwen2.5-VL's ``get_rope_index`` for one prompt, identical (``core.prompts``).
* :func:`linear_patch_embedding`: the vision patch-embedding Conv3d as one matmul, equal to float rounding; applied by
  the loader on CPU. It keeps the module's parameters (state-dict keys, shapes and tensors unchanged, so saving, LoRA
  and quantization see the original model) and changes only how the forward is computed.
"""

from __future__ import annotations

from typing import Any


def _matmul_patch_proj_class():
    import torch
    from torch import nn

    class MatmulPatchProjection(nn.Module):
        """A stride == kernel ``Conv3d`` patch embedding computed as one matrix product over flattened patches.

        Qwen2.5-VL's patch embedding feeds ``[N, C, T, P, P]`` patches to a Conv3d whose kernel equals its stride
        and the patch, so every output is one dot product of a whole patch with a filter: ``linear(x.flatten(1),
        W.flatten(1))``. On CPU this is ~7x faster than the Conv3d kernel; the results agree to float rounding.
        The Conv3d's ``weight`` Parameter is kept (same state-dict key and tensor).
        """

        def __init__(self, conv: nn.Conv3d):
            super().__init__()
            self.weight = conv.weight
            self.bias = conv.bias
            self.kernel_size = tuple(conv.kernel_size)
            self.in_channels = conv.in_channels
            self.out_channels = conv.out_channels

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if tuple(x.shape[2:]) != self.kernel_size:  # not one patch per row: the convolution itself
                return torch.nn.functional.conv3d(x, self.weight, self.bias, stride=self.kernel_size)
            n = x.shape[0]
            out = torch.nn.functional.linear(x.reshape(n, -1), self.weight.reshape(self.out_channels, -1), self.bias)
            return out.view(n, self.out_channels, 1, 1, 1)

        def extra_repr(self) -> str:
            return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size} (as linear)"

    return MatmulPatchProjection


def linear_patch_embedding(model: Any) -> bool:
    """Replace the vision tower's patch-embedding Conv3d by :class:`MatmulPatchProjection` when it is one (kernel ==
    stride, no padding, no dilation, one group). Returns True when replaced."""
    from torch import nn

    visual = getattr(getattr(model, "model", model), "visual", None)
    pe = getattr(visual, "patch_embed", None)
    conv = getattr(pe, "proj", None)
    if not isinstance(conv, nn.Conv3d):
        return False
    if (tuple(conv.kernel_size) != tuple(conv.stride) or any(conv.padding) or any(d != 1 for d in conv.dilation)
            or conv.groups != 1 or getattr(conv, "padding_mode", "zeros") != "zeros"):
        return False
    pe.proj = _matmul_patch_proj_class()(conv)
    return True


# ---------------------------------------------------------------------------------------------- image pixels
_PIXEL_LUTS: dict[tuple, Any] = {}


def _pixel_bounds(ip: Any) -> tuple[int, int] | None:
    """(min_pixels, max_pixels) the processor resizes to; None when its settings are ambiguous (``size`` and the
    legacy ``min_pixels`` / ``max_pixels`` attributes disagree) or missing."""
    size = ip.size
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    lo, hi = get("shortest_edge"), get("longest_edge")
    for attr, v in (("min_pixels", lo), ("max_pixels", hi)):
        legacy = getattr(ip, attr, None)
        if legacy is not None and legacy != v:
            return None
    return (int(lo), int(hi)) if lo and hi else None


def _qwen_pil_processor(ip: Any) -> bool:
    """Whether ``ip`` is the stock torchvision-free Qwen2-VL image processor with the standard pipeline (convert to
    RGB, smart resize, rescale, normalize, patchify) that :func:`qwen_pixel_values` reproduces."""
    return (type(ip).__name__ == "Qwen2VLImageProcessorPil" and bool(ip.do_resize) and bool(ip.do_rescale)
            and bool(ip.do_normalize) and bool(getattr(ip, "do_convert_rgb", True))
            and _pixel_bounds(ip) is not None)


def image_inputs(ip: Any, images: list) -> tuple[Any, Any]:
    """``(pixel_values [n_patches, D] float32 tensor, image_grid_thw [n_images, 3])`` for PIL images: bit-identical
    to ``ip(images=images, return_tensors="pt")`` (tests/core/test_fastpaths.py), ~2x faster for the stock Qwen2-VL
    PIL processor; any other processor is called as is."""
    import torch

    if not _qwen_pil_processor(ip):
        out = ip(images=images, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]
    pv, grid = qwen_pixel_values(ip, images)
    return torch.from_numpy(pv), torch.from_numpy(grid)


def qwen_pixel_values(ip: Any, images: list) -> tuple[Any, Any]:
    """The Qwen2-VL PIL image processor's output computed directly: PIL resize (the processor's resample) to the
    smart-resize size, then rescale + normalize through a per-channel uint8 lookup table built with the processor's
    own float64 -> float32 operations (so every value is bit-identical), then the processor's patch layout."""
    import numpy as np
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    p, m, tps = int(ip.patch_size), int(ip.merge_size), int(ip.temporal_patch_size)
    lo, hi = _pixel_bounds(ip)
    key = (float(ip.rescale_factor), tuple(ip.image_mean), tuple(ip.image_std))
    lut = _PIXEL_LUTS.get(key)
    if lut is None:
        v = (np.arange(256, dtype=np.uint8).astype(np.float64) * ip.rescale_factor).astype(np.float32)
        mean, std = np.array(ip.image_mean, dtype=np.float32), np.array(ip.image_std, dtype=np.float32)
        lut = _PIXEL_LUTS[key] = np.stack([(v - mean[c]) / std[c] for c in range(3)])
    patches, grids = [], []
    for img in images:
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        rh, rw = smart_resize(h, w, factor=p * m, min_pixels=lo, max_pixels=hi)
        if (rw, rh) != (w, h):
            img = img.resize((rw, rh), resample=ip.resample)
        gh, gw = rh // p, rw // p
        a = np.asarray(img).reshape(gh // m, m, p, gw // m, m, p, 3).transpose(0, 3, 1, 4, 6, 2, 5)
        x = np.empty((gh // m, gw // m, m, m, 3, tps, p, p), dtype=np.float32)
        for c in range(3):  # (gh', gw', m, m, [C], [T], p, p): the frame repeated over the temporal patch
            x[:, :, :, :, c] = lut[c][a[:, :, :, :, c]][:, :, :, :, None]
        patches.append(x.reshape(gh * gw, 3 * tps * p * p))
        grids.append([1, gh, gw])
    return np.concatenate(patches, 0), np.array(grids, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- mRoPE positions
def qwen2_5_vl_positions(input_ids: Any, image_token: int, image_grid_thw: Any, spatial_merge_size: int) -> Any:
    """Qwen2.5-VL ``get_rope_index`` for one unpadded prompt with images (no video), in numpy: text runs count up on
    all three axes; the i-th run of image tokens takes grid i: (start + t, start + h, start + w) over the merged
    grid, and the text after it continues at start + max(H, W) // merge. Returns a LongTensor [3, L], identical to
    the model's (tests/core/test_fastpaths.py); None when the image runs do not match the grids (the model's own
    function then raises its error)."""
    import numpy as np
    import torch

    ids = input_ids.cpu().numpy() if hasattr(input_ids, "cpu") else np.asarray(input_ids)
    L = ids.shape[0]
    is_img = ids == image_token
    change = np.flatnonzero(np.diff(is_img.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [L]]).tolist()
    grids = image_grid_thw.tolist() if image_grid_thw is not None else []
    pos = np.empty((3, L), dtype=np.int64)
    cur, gi = 0, 0
    for s, e in zip(bounds[:-1], bounds[1:]):
        if not is_img[s]:
            pos[:, s:e] = np.arange(cur, cur + e - s)[None]
            cur += e - s
            continue
        if gi >= len(grids):
            return None
        t, hh, ww = grids[gi]
        gi += 1
        h, w = hh // spatial_merge_size, ww // spatial_merge_size
        if t * h * w != e - s:
            return None
        tt, hg, wg = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
        pos[:, s:e] = np.stack([tt, hg, wg]).reshape(3, -1) + cur
        cur += max(hh, ww) // spatial_merge_size
    return torch.from_numpy(pos).to(input_ids.device if hasattr(input_ids, "device") else "cpu")
