"""Prompt construction from a task and a profile: the exact token ids a model sees, plus the positions of the image
and question tokens (for the reference hidden states), and where a bbox lies on the image-token grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from latentcheck.core.errors import RecordError
from latentcheck.core.tasks import LETTERS, Task


@dataclass
class Prompt:
    """One prepared prompt (unpadded)."""

    key: str
    input_ids: Any  # LongTensor [L]
    pixel_values: Any = None  # [n_patches, D] or None
    image_grid_thw: Any = None  # [n_images, 3] or None
    image_mask: Any = None  # BoolTensor [L]
    question_mask: Any = None  # BoolTensor [L]
    text: str = ""  # the rendered chat text (image pad not yet expanded)
    image_embeds: Any = None  # optional cached merged visual tokens [n_image_tokens, H] (frozen vision tower)
    positions: Any = None  # LongTensor [3, L]: mRoPE positions of the unpadded prompt (see mrope_positions)
    deepstack_embeds: Any = None  # Qwen3-VL: cached DeepStack features (list over layers of [n_image_tokens, H])

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])


def mrope_positions(model, input_ids, image_grid_thw, image_token: int | None):
    """3 x L mRoPE positions of one unpadded prompt (Qwen2.5-VL ``get_rope_index``; text-only: 0..L-1 on all three
    axes). Model-free work (config only), so it is done with the rest of the input preparation; Qwen2.5-VL models
    take the identical numpy version (core/fastpaths.py)."""
    import torch

    L = int(input_ids.shape[0])
    if image_grid_thw is None:
        return torch.arange(L, device=input_ids.device).view(1, L).expand(3, L)
    inner = model.model
    if type(inner).__name__ == "Qwen2_5_VLModel":
        from latentcheck.core.fastpaths import qwen2_5_vl_positions

        pos = qwen2_5_vl_positions(input_ids, image_token, image_grid_thw,
                                   inner.config.vision_config.spatial_merge_size)
        if pos is not None:
            return pos
    mm = (input_ids == image_token).int()
    pos, _ = inner.get_rope_index(input_ids[None], mm_token_type_ids=mm[None], image_grid_thw=image_grid_thw)
    return pos[:, 0]


def format_options(options: list[str], fmt: str) -> str:
    return "\n".join(fmt.format(letter=LETTERS[i], option=o) for i, o in enumerate(options))


def task_text(task: Task, profile, question: str | None = None) -> str:
    """The user text for a task under a profile: question + rendered options + suffix."""
    q = question if question is not None else task.question
    p = profile.prompt
    if task.options:
        body = p.question_template.format(question=q, options=format_options(task.options, p.options_format))
    else:
        body = q
    return body + p.suffix


def build_prompt(lm, key: str, user_text: str, image=None, assistant_prefix: str = "",
                 system: str | None = None, image_placeholder: str | None = None) -> Prompt:
    """Tokenize one prompt exactly as the model expects it (chat template, expanded image pads).

    A per-record failure is a RecordError naming ``key``: an image the processor refuses (field ``image``), text the
    tokenizer refuses, or a prompt longer than ``lm.max_prompt_tokens`` (the model's positions, or
    ``--max-prompt-tokens``; field ``question``).

    ``image`` is a PIL image, a list of them (multi-image benchmarks), or None. ``assistant_prefix`` is text the
    assistant turn starts with (e.g. a corrupted imagination). ``system`` overrides the profile's system prompt.
    ``image_placeholder`` (e.g. VSP's ``<image>``): when the user text contains it, the image(s) go there if the
    profile says ``prompt.image_at_placeholder`` (Mirage), else the placeholder is removed and the images go where
    the profile puts them.
    """
    import torch

    prof = lm.profile
    proc = lm.processor
    tok = lm.tokenizer
    images = [] if image is None else (list(image) if isinstance(image, (list, tuple)) else [image])
    text_only = getattr(proc, "image_processor", None) is None
    if images and text_only:
        raise RecordError(key, "image", "the model is a text-only causal LM and cannot take images")
    split = None
    if image_placeholder and image_placeholder in user_text:
        if images and prof.prompt.image_at_placeholder:
            before, _, after = user_text.partition(image_placeholder)
            split = (prof.prompt.image_text_prefix + before, after.replace(image_placeholder, ""))
        user_text = user_text.replace(image_placeholder, "")
    text_item = prof.prompt.image_text_prefix + user_text if images else user_text
    content: list[dict] | str = []
    if split is not None:
        content += [{"type": "text", "text": split[0]}] if split[0] else []
        content += [{"type": "image"} for _ in images]
        content += [{"type": "text", "text": split[1]}] if split[1] else []
    elif prof.prompt.image_first:
        content += [{"type": "image"} for _ in images]
        content.append({"type": "text", "text": text_item})
    else:
        content.append({"type": "text", "text": text_item})
        content += [{"type": "image"} for _ in images]
    if text_only:
        content = text_item  # text chat templates render string contents
    messages = []
    system = prof.prompt.system if system is None else system
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    if prof.prompt.generation_header == "mirage":
        text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        text += "<|im_start|>assistant"
    else:
        text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if split is not None:  # the question spans both pieces; the image tokens inside are masked out below
        q_end = text.rfind(split[1]) + len(split[1]) if split[1] else text.rfind("<|vision_end|>") + 14
        q_start = text.rfind(split[0], 0, q_end) if split[0] else text.rfind("<|vision_start|>", 0, q_end)
    else:
        q_start = text.rfind(text_item)
        q_end = q_start + len(text_item)
    text += assistant_prefix
    rendered = text
    pixel_values = grid = None
    if images:
        from latentcheck.core.fastpaths import image_inputs

        try:
            pixel_values, grid = image_inputs(proc.image_processor, images)
        except (ValueError, TypeError, OSError, IndexError, ZeroDivisionError, RuntimeError) as e:
            # e.g. Qwen2.5-VL's "absolute aspect ratio must be smaller than 200", an image smaller than one patch
            raise RecordError(key, "image", f"the image processor refused the image ({e.__class__.__name__}: "
                              f"{str(e)[:200]})") from None
        pad = "<|image_pad|>"
        start = 0
        for g in grid:
            n_img = int(g.prod()) // (proc.image_processor.merge_size ** 2)
            i = text.find(pad, start)
            text = text[:i] + pad * n_img + text[i + len(pad):]
            start = i + len(pad) * n_img
            shift = len(pad) * (n_img - 1)
            q_start += shift if q_start > i else 0
            q_end += shift if q_end > i else 0
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except (ValueError, TypeError, UnicodeError, RuntimeError, OverflowError) as e:
        raise RecordError(key, "question", f"the tokenizer refused the text ({e.__class__.__name__}: "
                          f"{str(e)[:200]})") from None
    ids = list(enc["input_ids"])
    limit = getattr(lm, "max_prompt_tokens", None)
    if limit is not None and len(ids) > limit:
        raise RecordError(key, "question", f"the prompt is {len(ids)} tokens, above the limit of {limit} "
                          f"({getattr(lm, 'prompt_limit_source', 'max prompt tokens')})")
    offsets = list(enc["offset_mapping"])
    input_ids = torch.tensor(ids, dtype=torch.long)
    image_mask = input_ids == lm.tokens.image if lm.tokens.image is not None else torch.zeros_like(input_ids, dtype=torch.bool)
    qmask = torch.tensor([s >= q_start and e <= q_end and e > s for s, e in offsets], dtype=torch.bool)
    if split is not None:
        qmask &= ~image_mask
    return Prompt(key=key, input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid,
                  image_mask=image_mask, question_mask=qmask, text=rendered,
                  positions=mrope_positions(lm.model, input_ids, grid, lm.tokens.image))


def option_token_ids(lm, n_options: int) -> list[int]:
    """Token id of each option letter as the first answer token after the profile's answer prefix."""
    tok = lm.tokenizer
    prefix = lm.profile.answer_prefix
    base = tok.encode(prefix, add_special_tokens=False) if prefix else []
    ids = []
    for letter in LETTERS[:n_options]:
        full = tok.encode(prefix + letter, add_special_tokens=False)
        if full[: len(base)] != base or len(full) <= len(base):
            full = base + tok.encode(letter, add_special_tokens=False)
        ids.append(full[len(base)])
    return ids


def bbox_token_indices(bbox: Sequence[float], image_size: tuple[int, int], grid_thw: Sequence[int],
                       patch_size: int, merge_size: int) -> list[int]:
    """Indices (0-based, row-major, as the processor orders an image's merged tokens) of the merged visual tokens whose
    cell overlaps the bbox with positive area.

    ``bbox`` = [x, y, w, h] in pixels of the original image of ``image_size`` = (width, height); ``grid_thw`` = the
    processor's (t, h, w) patch grid of that image. The processor resizes the whole image (no crop, no padding) to
    (h * patch_size) x (w * patch_size) pixels, and each merged token covers a (patch_size * merge_size)^2 pixel cell
    of the resized image, so the bbox is scaled by the resize factors and every cell it overlaps counts. Temporal
    frames (t > 1) repeat the grid."""
    x, y, w, h = (float(v) for v in bbox)
    W, H = (float(v) for v in image_size)
    t, gh, gw = (int(v) for v in grid_thw)
    if gh % merge_size or gw % merge_size:
        raise ValueError(f"patch grid {gh}x{gw} is not a multiple of the merge size {merge_size}")
    rows, cols = gh // merge_size, gw // merge_size
    cell = float(patch_size * merge_size)
    sx, sy = gw * patch_size / W, gh * patch_size / H  # resized / original pixels
    x0, x1 = max(0.0, x * sx), min(cols * cell, (x + w) * sx)
    y0, y1 = max(0.0, y * sy), min(rows * cell, (y + h) * sy)
    if x1 <= x0 or y1 <= y0:
        return []
    c0, c1 = int(math.floor(x0 / cell)), int(math.ceil(x1 / cell))  # cells [c0, c1) overlap with positive width
    r0, r1 = int(math.floor(y0 / cell)), int(math.ceil(y1 / cell))
    per_frame = [r * cols + c for r in range(r0, r1) for c in range(c0, c1)]
    return [f * rows * cols + i for f in range(t) for i in per_frame]


def region_token_indices(lm, prompt, bbox: Sequence[float] | None, image) -> list[int] | None:
    """The merged-token indices of ``bbox`` ([x, y, w, h] pixels of ``image``, a PIL image) within the prompt's
    first image (:func:`bbox_token_indices` with the model's processor geometry); None without a bbox or image."""
    if bbox is None or image is None or prompt.image_grid_thw is None:
        return None
    ip = lm.processor.image_processor
    return bbox_token_indices(bbox, image.size, [int(v) for v in prompt.image_grid_thw[0]],
                              int(ip.patch_size), int(ip.merge_size))
