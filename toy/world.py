"""A synthetic V*-like "zoom-in" world: find one small object among distractors and answer about it.

Each 112x112 image holds 3 objects (pairwise distinct shapes and colours) in 3 distinct cells of a 4x4 grid of
28 px cells (aligned to Qwen2.5-VL's 2x2-merged 14 px patches). The question names the target by its shape and asks
for its colour or its quadrant. The reasoning step's intermediate image is a zoomed crop around the target.

Everything is a pure function of (seed, split, index): no disk access until :func:`write_world`.
Objects are painted with their exact RGB colour (no anti-aliasing, no noise on objects); only the background
carries seeded pixel noise, so "pixels of colour C" identifies an object exactly.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageDraw

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.tasks import LETTERS

WORLD_NAME = "latentcheck-toy-zoom"
WORLD_VERSION = "3"

IMAGE_SIZE = 112
CELL_SIZE = 28
GRID = IMAGE_SIZE // CELL_SIZE  # 4x4 cells
BACKGROUND_RGB = (235, 235, 235)
NOISE_STD = 4.0
N_OBJECTS = 3
OBJECT_SIZE_RANGE = (22, 26)  # inclusive, pixels (large enough for shape to survive a random frozen ViT)
MAX_OFFSET = 1  # inclusive, pixels, per axis

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 0, 0),
    "green": (0, 170, 0),
    "blue": (0, 0, 230),
    "yellow": (250, 210, 0),
}
# Distractors are drawn in these grey shades (None: in their own colours). Grey distractors make the target pop out,
# which a tiny model trained from scratch on a 2-core CPU learns in minutes; named-attribute binding among coloured
# distractors takes far longer (see docs/zoo.md).
DISTRACTOR_RGB: tuple[tuple[int, int, int], ...] | None = ((120, 120, 120), (165, 165, 165))
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
QUESTION_TYPES = ("colour", "shape")  # what the zoo is trained and evaluated on (content, not location)
ALL_QUESTION_TYPES = ("colour", "shape", "position")
# The task files ask these (the V*-style attribute question); the other trained type is asked as derived questions
# about the same target (the behavioural probe). Tiny models read colour reliably; shape is harder (docs/zoo.md).
MAIN_QUESTION_TYPES = ("colour",)
SPLITS = ("train", "val", "test")
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (("triangle", "yellow"), ("circle", "blue"))

CROP_SIZE = 56  # window side in the original image
CROP_OUTPUT_SIZE = 112  # side of the resized crop (the intermediate image)

SYSTEM_PROMPT = "You are a helpful assistant."
BOXED_INSTRUCTION = "Put your final answer within \\boxed{}."

_SPLIT_CODE = {name: i for i, name in enumerate(SPLITS)}
_QUESTION_TEMPLATES = {"colour": "What colour is the {shape}?", "shape": "What shape is the {colour} object?",
                       "position": "Where is the {shape}?"}
_OPTIONS = {"colour": COLOURS, "shape": SHAPES, "position": QUADRANTS}
_ANSWER_FIELD = {"colour": "colour", "shape": "shape", "position": "quadrant"}


@dataclass
class ToySample:
    """One generated sample: main image, zoomed crop, question with canonical options, answer letter, metadata."""

    id: str
    image: Image.Image
    crop: Image.Image
    question: str
    options: list[str]
    answer: str  # option letter
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question_type(self) -> str:
        return self.meta["question_type"]

    @property
    def bbox(self) -> list[int]:
        """Target bbox [x, y, w, h] in pixels of the main image."""
        return list(self.meta["target"]["bbox"])

    @property
    def caption(self) -> str:
        return self.meta["caption"]

    def task_record(self, image_path: str | None = None, crop_path: str | None = None) -> dict[str, Any]:
        """The sample as a record of the shared task schema (core/tasks.py)."""
        meta = copy.deepcopy(self.meta)
        if crop_path is not None:
            meta["crop"] = crop_path
        record = {"id": self.id, "image": image_path, "question": self.question, "options": list(self.options),
                  "answer": self.answer, "category": self.question_type, "bbox": self.bbox, "meta": meta}
        return {k: v for k, v in record.items() if v is not None}


def format_options(options: Iterable[str]) -> str:
    """Render options as ``"A. red\\nB. green\\n..."`` (the toy world's single option renderer)."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def quadrant_of_cell(row: int, col: int) -> str:
    """Quadrant name of a 4x4-grid cell."""
    return QUADRANTS[2 * int(row >= GRID // 2) + int(col >= GRID // 2)]


def caption_for(shape: str, colour: str, quadrant: str) -> str:
    """What a captioner would say about the zoomed region."""
    return f"the {shape} is {colour}, in the {quadrant}"


def sample_id(split: str, index: int) -> str:
    return f"toy-{split}-{index:06d}"


def _check_args(index: int, split: str, question_type: str) -> None:
    if split not in _SPLIT_CODE:
        raise LatentcheckError(f"toy world: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    if question_type not in _OPTIONS:
        raise LatentcheckError(f"toy world: unknown question type {question_type!r} "
                               f"(expected one of {', '.join(ALL_QUESTION_TYPES)})")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise LatentcheckError(f"toy world: sample index must be a non-negative integer, got {index!r}")


def _shape_mask(shape: str, cell: tuple[int, int], size: int, offset: tuple[int, int]) -> Image.Image:
    """A binary ("L") full-image mask of one object drawn centred in its cell (plus offset)."""
    mask = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask)
    row, col = cell
    x0 = col * CELL_SIZE + (CELL_SIZE - size) // 2 + offset[0]
    y0 = row * CELL_SIZE + (CELL_SIZE - size) // 2 + offset[1]
    x1, y1 = x0 + size - 1, y0 + size - 1  # inclusive corners
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        draw.polygon([(x0 + (size - 1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "cross":
        bar = max(4, round(size * 0.3))
        lo = (size - bar) // 2
        draw.rectangle([x0, y0 + lo, x1, y0 + lo + bar - 1], fill=255)
        draw.rectangle([x0 + lo, y0, x0 + lo + bar - 1, y1], fill=255)
    else:
        raise LatentcheckError(f"toy world: unknown shape {shape!r}")
    return mask


def _crop_box(bbox: list[int]) -> list[int]:
    """CROP_SIZE window centred on the bbox centre, clamped to the image: [x, y, w, h]."""
    cx, cy = bbox[0] + bbox[2] / 2, bbox[1] + bbox[3] / 2
    x = int(min(max(round(cx - CROP_SIZE / 2), 0), IMAGE_SIZE - CROP_SIZE))
    y = int(min(max(round(cy - CROP_SIZE / 2), 0), IMAGE_SIZE - CROP_SIZE))
    return [x, y, CROP_SIZE, CROP_SIZE]


def _pick_target(rng: np.random.Generator, question_type: str, split: str) -> tuple[str, str, int]:
    """Target (shape, colour, cell index): the asked attribute is drawn uniformly first."""
    allowed = [(s, c) for s in SHAPES for c in COLOURS if split != "train" or (s, c) not in HELDOUT_COMBOS]
    if question_type == "colour":
        colour = COLOURS[rng.integers(len(COLOURS))]
        shapes = [s for s, c in allowed if c == colour]
        shape = shapes[rng.integers(len(shapes))]
        cell = int(rng.integers(GRID * GRID))
    elif question_type == "shape":
        shape = SHAPES[rng.integers(len(SHAPES))]
        colours = [c for s, c in allowed if s == shape]
        colour = colours[rng.integers(len(colours))]
        cell = int(rng.integers(GRID * GRID))
    else:
        quadrant = int(rng.integers(len(QUADRANTS)))
        cells = [r * GRID + c for r in range(GRID) for c in range(GRID) if QUADRANTS.index(quadrant_of_cell(r, c))
                 == quadrant]
        cell = cells[rng.integers(len(cells))]
        shape, colour = allowed[rng.integers(len(allowed))]
    return shape, colour, cell


# The binding variant (a separate world, ``BINDING_WORLD_NAME``; version 3 above is unchanged and the shipped zoo is
# trained on it): every object is drawn in its own colour, the question names ONE of them (drawn uniformly among the
# objects, not always the same "target") and the options come in a seeded shuffled order (the answer letter moves
# too). A model must read the question to know which object is asked about and read the options to find the letter,
# so a question swap changes the right answer and question mediation tests something. Version 2 asks the shape of the
# object named by its colour (version 1 asked the colour of the object named by its shape, which the 2-layer zoo
# model binds far worse: docs/zoo.md).
BINDING_WORLD_NAME = "latentcheck-toy-binding"
BINDING_WORLD_VERSION = "2"
BINDING_MAIN_QUESTION_TYPES = ("shape",)
BINDING_CURRICULUM = (1, 2, 3)  # objects per training image, in turn (the zoo's toy-binding recipe)
VARIANTS = ("v3", "binding")


def main_question_types(variant: str = "v3") -> tuple[str, ...]:
    """The question type(s) a world's task files ask (the other trained type is the probe's derived question)."""
    return BINDING_MAIN_QUESTION_TYPES if variant == "binding" else MAIN_QUESTION_TYPES


def make_sample(index: int, split: str = "train", seed: int = 0, question_type: str | None = None,
                n_objects: int | None = None, variant: str = "v3") -> ToySample:
    """Generate sample ``index`` of ``split`` (deterministic per seed/split/index/question type/variant).

    ``question_type`` defaults to ``QUESTION_TYPES[index % 2]`` (colour and shape alternate). ``variant="binding"``:
    the binding world (coloured distractors, the asked object drawn among all objects, shuffled options).
    """
    if variant not in VARIANTS:
        raise LatentcheckError(f"toy world: unknown variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    if variant == "binding":
        return _binding_sample(index, split, seed, question_type or BINDING_MAIN_QUESTION_TYPES[0], n_objects)
    _check_args(index, split, question_type or QUESTION_TYPES[0])
    if question_type is None:
        question_type = QUESTION_TYPES[int(index) % len(QUESTION_TYPES)]
    index = int(index)
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], index, ALL_QUESTION_TYPES.index(question_type)])

    t_shape, t_colour, t_cell = _pick_target(rng, question_type, split)
    other_cells = [c for c in range(GRID * GRID) if c != t_cell]
    n_obj = N_OBJECTS if n_objects is None else int(n_objects)
    if not 1 <= n_obj <= len(SHAPES):
        raise LatentcheckError(f"toy world: n_objects must be between 1 and {len(SHAPES)}, got {n_obj}")
    d_cells = [other_cells[i] for i in rng.choice(len(other_cells), n_obj - 1, replace=False)]
    other_shapes = [s for s in SHAPES if s != t_shape]
    other_colours = [c for c in COLOURS if c != t_colour]
    d_shapes = [other_shapes[i] for i in rng.choice(len(other_shapes), n_obj - 1, replace=False)]
    d_colours = [other_colours[i] for i in rng.choice(len(other_colours), n_obj - 1, replace=False)]

    noise = rng.normal(0.0, NOISE_STD, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(np.rint(np.asarray(BACKGROUND_RGB, dtype=float) + noise), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")

    objects = []
    for i, (shape, colour, cell) in enumerate(zip([t_shape, *d_shapes], [t_colour, *d_colours], [t_cell, *d_cells])):
        row, col = divmod(int(cell), GRID)
        size = int(rng.integers(OBJECT_SIZE_RANGE[0], OBJECT_SIZE_RANGE[1] + 1))
        offset = (int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)), int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)))
        mask = _shape_mask(shape, (row, col), size, offset)
        fill = COLOUR_RGB[colour] if (i == 0 or DISTRACTOR_RGB is None) else DISTRACTOR_RGB[(i - 1) % len(DISTRACTOR_RGB)]
        image.paste(fill, (0, 0), mask)
        left, top, right, bottom = mask.getbbox()
        drawn = colour if fill == COLOUR_RGB[colour] else "grey"
        objects.append({"shape": shape, "colour": drawn, "rgb": list(fill), "cell": [row, col],
                        "quadrant": quadrant_of_cell(row, col),
                        "bbox": [left, top, right - left, bottom - top], "size": size, "offset": list(offset)})

    target = objects[0]
    crop_box = _crop_box(target["bbox"])
    cx, cy, cw, ch = crop_box
    crop = image.crop((cx, cy, cx + cw, cy + ch)).resize((CROP_OUTPUT_SIZE, CROP_OUTPUT_SIZE),
                                                         Image.Resampling.BICUBIC)

    options = list(_OPTIONS[question_type])
    answer_text = target[_ANSWER_FIELD[question_type]]
    sid = sample_id(split, index)
    meta = {
        "world": WORLD_NAME, "version": WORLD_VERSION, "split": split, "seed": int(seed), "index": index,
        "question_type": question_type, "target": target, "distractors": objects[1:],
        "heldout_combo": (target["shape"], target["colour"]) in HELDOUT_COMBOS,
        "caption": caption_for(target["shape"], target["colour"], target["quadrant"]),
        "crop_box": crop_box, "answer_text": answer_text,
    }
    return ToySample(id=sid, image=image, crop=crop,
                     question=_QUESTION_TEMPLATES[question_type].format(shape=target["shape"], colour=target["colour"]),
                     options=options, answer=LETTERS[options.index(answer_text)], meta=meta)


def make_samples(n: int, split: str = "train", seed: int = 0,
                 question_types: Iterable[str] = QUESTION_TYPES, variant: str = "v3") -> list[ToySample]:
    """Samples 0..n-1 of ``split``; sample i asks ``question_types[i % len(question_types)]``."""
    types = tuple(question_types)
    if not types:
        raise LatentcheckError("toy world: question_types must not be empty")
    if n < 0:
        raise LatentcheckError(f"toy world: number of samples must be >= 0, got {n}")
    return [make_sample(i, split, seed, types[i % len(types)], variant=variant) for i in range(n)]


def _binding_sample(index: int, split: str, seed: int, question_type: str, n_objects: int | None) -> ToySample:
    """One sample of the binding world (see ``BINDING_WORLD_NAME``): colour or shape questions only."""
    _check_args(index, split, question_type)
    if question_type not in QUESTION_TYPES:
        raise LatentcheckError(f"toy binding world: question type must be one of {', '.join(QUESTION_TYPES)}")
    index = int(index)
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], index, ALL_QUESTION_TYPES.index(question_type),
                                 0xB1D])
    n_obj = N_OBJECTS if n_objects is None else int(n_objects)
    if not 1 <= n_obj <= len(SHAPES):
        raise LatentcheckError(f"toy world: n_objects must be between 1 and {len(SHAPES)}, got {n_obj}")
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), n_obj, replace=False)]
    colours = [COLOURS[i] for i in rng.choice(len(COLOURS), n_obj, replace=False)]
    cells = [int(c) for c in rng.choice(GRID * GRID, n_obj, replace=False)]
    asked = int(rng.integers(n_obj))
    noise = rng.normal(0.0, NOISE_STD, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(np.rint(np.asarray(BACKGROUND_RGB, dtype=float) + noise), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    objects = []
    for shape, colour, cell in zip(shapes, colours, cells):
        row, col = divmod(cell, GRID)
        size = int(rng.integers(OBJECT_SIZE_RANGE[0], OBJECT_SIZE_RANGE[1] + 1))
        offset = (int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)), int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)))
        mask = _shape_mask(shape, (row, col), size, offset)
        image.paste(COLOUR_RGB[colour], (0, 0), mask)
        left, top, right, bottom = mask.getbbox()
        objects.append({"shape": shape, "colour": colour, "rgb": list(COLOUR_RGB[colour]), "cell": [row, col],
                        "quadrant": quadrant_of_cell(row, col), "bbox": [left, top, right - left, bottom - top],
                        "size": size, "offset": list(offset)})
    target = objects[asked]
    cx, cy, cw, ch = crop_box = _crop_box(target["bbox"])
    crop = image.crop((cx, cy, cx + cw, cy + ch)).resize((CROP_OUTPUT_SIZE, CROP_OUTPUT_SIZE),
                                                         Image.Resampling.BICUBIC)
    order_rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], index, 0x5F])  # a stream of its own
    options = [_OPTIONS[question_type][i] for i in order_rng.permutation(len(_OPTIONS[question_type]))]
    answer_text = target[_ANSWER_FIELD[question_type]]
    meta = {"world": BINDING_WORLD_NAME, "version": BINDING_WORLD_VERSION, "variant": "binding", "split": split,
            "seed": int(seed), "index": index, "question_type": question_type, "target": target,
            "asked_index": asked, "distractors": [o for i, o in enumerate(objects) if i != asked],
            "heldout_combo": False, "caption": caption_for(target["shape"], target["colour"], target["quadrant"]),
            "crop_box": crop_box, "answer_text": answer_text, "option_order": options}
    return ToySample(id=f"toybind-{split}-{index:06d}", image=image, crop=crop,
                     question=_QUESTION_TEMPLATES[question_type].format(shape=target["shape"],
                                                                       colour=target["colour"]),
                     options=options, answer=LETTERS[options.index(answer_text)], meta=meta)


def derived_questions(sample: ToySample, image: str | None = None) -> list[dict[str, Any]]:
    """The other question type(s) about the same target, as task dicts with ``meta.source_id`` = the sample id."""
    target = sample.meta["target"]
    derived = []
    for qtype in QUESTION_TYPES:
        if qtype == sample.question_type:
            continue
        options = list(_OPTIONS[qtype])
        answer_text = target[_ANSWER_FIELD[qtype]]
        meta = copy.deepcopy(sample.meta)
        meta.update(question_type=qtype, answer_text=answer_text, source_id=sample.id,
                    source_question_type=sample.question_type, derived=True)
        record = {"id": f"{sample.id}-{qtype}", "image": image,
                  "question": _QUESTION_TEMPLATES[qtype].format(shape=target["shape"], colour=target["colour"]),
                  "options": options,
                  "answer": LETTERS[options.index(answer_text)], "category": qtype, "bbox": list(target["bbox"]),
                  "meta": meta}
        derived.append({k: v for k, v in record.items() if v is not None})
    return derived


def _user_text(sample: ToySample) -> str:
    return f"{sample.question}\n{format_options(sample.options)}\n{BOXED_INSTRUCTION}"


def monet_record(sample: ToySample, image_path: str, crop_path: str) -> dict[str, Any]:
    """One Monet-SFT-style interleaved sample (latent-models.md §10.1); paths relative to the dataset root."""
    shape = sample.meta["target"]["shape"]
    return {
        "data": [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "image", "image_file_name": image_path},
                                         {"type": "text", "text": _user_text(sample)}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": f"I will zoom in on the {shape}. <abs_vis_token></abs_vis_token>"},
                {"type": "image", "image_file_name": crop_path},
                {"type": "text", "text": f"<observation>{sample.caption}</observation> "
                                         f"The answer is \\boxed{{{sample.answer}}}."}]},
        ],
        "metadata": {"id": sample.id, "split": sample.meta["split"], "question_type": sample.question_type,
                     "caption": sample.caption, "answer": sample.answer, "answer_text": sample.meta["answer_text"],
                     "target": copy.deepcopy(sample.meta["target"]), "crop_box": list(sample.meta["crop_box"]),
                     "heldout_combo": sample.meta["heldout_combo"]},
    }


def mirage_record(sample: ToySample, image_path: str, crop_path: str) -> dict[str, Any]:
    """One Mirage-style JSONL record (latent-models.md §10.2); ``<output_image>`` marks where the crop goes."""
    shape = sample.meta["target"]["shape"]
    return {
        "id": sample.id,
        "text_input": f"<image>\n{_user_text(sample)}",
        "text_output": (f"<think>I will zoom in on the {shape}.</think><output_image>"
                        f"<think>{sample.caption}.</think>The answer is \\boxed{{{sample.answer}}}."),
        "image_input": [image_path],
        "image_output": crop_path,
        "answer": sample.answer,
        "caption": sample.caption,
    }


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_world(out_dir: str | os.PathLike, n_train: int, n_val: int, n_test: int, seed: int = 0,
                variant: str = "v3") -> dict[str, Any]:
    """Write images, crops, task/derived JSONL and interleaved (Monet, Mirage) files; return counts and paths.

    All paths inside the written files are relative to ``out_dir`` (where the JSON/JSONL files live).
    ``variant="binding"``: the binding world's samples (its own ids, ``toybind-*``, and manifest name).
    """
    if variant not in VARIANTS:
        raise LatentcheckError(f"toy world: unknown variant {variant!r} (expected one of {', '.join(VARIANTS)})")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise LatentcheckError(f"toy world: n_{split} must be a non-negative integer, got {n!r}")
    root = Path(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LatentcheckError(f"toy world: cannot create output folder {root}: {e.strerror}") from None
    paths: dict[str, dict[str, str]] = {}
    derived_counts: dict[str, int] = {}
    heldout_counts: dict[str, int] = {}
    for split, n in counts.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "crops" / split).mkdir(parents=True, exist_ok=True)
        tasks, derived, monet, mirage = [], [], [], []
        for sample in make_samples(n, split, seed, main_question_types(variant), variant=variant):
            image_rel = f"images/{split}/{sample.id}.png"
            crop_rel = f"crops/{split}/{sample.id}.png"
            sample.image.save(root / image_rel)
            sample.crop.save(root / crop_rel)
            tasks.append(sample.task_record(image_rel, crop_rel))
            for d in derived_questions(sample, image_rel):
                d["meta"]["crop"] = crop_rel
                derived.append(d)
            monet.append(monet_record(sample, image_rel, crop_rel))
            mirage.append(mirage_record(sample, image_rel, crop_rel))
        files = {"tasks": root / f"tasks_{split}.jsonl", "derived": root / f"derived_{split}.jsonl",
                 "interleaved": root / f"interleaved_{split}.json", "mirage": root / f"mirage_{split}.jsonl"}
        _write_jsonl(files["tasks"], tasks)
        _write_jsonl(files["derived"], derived)
        _write_jsonl(files["mirage"], mirage)
        files["interleaved"].write_text(json.dumps(monet, ensure_ascii=False, indent=1), encoding="utf-8")
        paths[split] = {k: str(v) for k, v in files.items()}
        derived_counts[split] = len(derived)
        heldout_counts[split] = sum(t["meta"]["heldout_combo"] for t in tasks)
    manifest = {
        "name": WORLD_NAME if variant == "v3" else BINDING_WORLD_NAME,
        "version": WORLD_VERSION if variant == "v3" else BINDING_WORLD_VERSION, "seed": seed, "counts": counts,
        "derived_counts": derived_counts, "heldout_target_counts": heldout_counts,
        "image_size": IMAGE_SIZE, "cell_size": CELL_SIZE, "grid": GRID, "n_objects": N_OBJECTS,
        "object_size_range": list(OBJECT_SIZE_RANGE), "max_offset": MAX_OFFSET, "noise_std": NOISE_STD,
        "crop_size": CROP_SIZE, "crop_output_size": CROP_OUTPUT_SIZE,
        "shapes": list(SHAPES), "colours": {c: list(COLOUR_RGB[c]) for c in COLOURS}, "quadrants": list(QUADRANTS),
        "question_types": list(QUESTION_TYPES), "main_question_types": list(main_question_types(variant)),
        "heldout_combos": [list(c) for c in HELDOUT_COMBOS],
    }
    manifest_path = root / "world.json"
    manifest_path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return {"out_dir": str(root), "counts": counts, "derived_counts": derived_counts,
            "heldout_target_counts": heldout_counts, "paths": paths, "manifest": str(manifest_path)}
