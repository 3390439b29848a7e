"""Input treatments for the X -> Z analysis: controlled, seeded interventions on a task's image and question.

A treatment spec is ``name[:key=value,key=value]``; specs compose left to right with ``+``
(``noise:std=0.1+shuffle_patches:patch=28``). ``parse_treatments`` also splits ``;``-separated lists.
Unknown names, parameters or values raise a ``LatentcheckError`` that lists the valid ones.

Every treatment maps an :class:`InputVariant` (image, question, options, gold answer, target bbox) to a new one.
Randomness is seeded by (seed, treatment label, position in the composition, sample key), so a rerun gives the same
inputs. Swap treatments take a *partner* sample from :func:`partner_map` (a seeded single cycle over the samples, so
nobody is its own partner). A treatment that does not apply to a sample (no image, no bbox, no options) raises
:class:`NotApplicable`; the analysis records it as skipped for that sample.

Pixel conventions: ``std`` and fill ``value`` are fractions of the 0-255 range; bboxes are ``[x, y, w, h]`` pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from latentcheck.core.interventions import parse_params
from latentcheck.core.errors import LatentcheckError
from latentcheck.core.records import record_order_key
from latentcheck.core.registry import Registry
from latentcheck.core.tasks import LETTERS, Task, option_index

REFERENCES = ("image_tokens", "question_tokens", "last_prompt_token")


class NotApplicable(Exception):
    """The treatment cannot be applied to this sample (e.g. no bbox); the reason is recorded."""


@dataclass(frozen=True)
class Param:
    """One treatment parameter: default, meaning and allowed values."""

    default: Any
    doc: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    integer: bool = False
    in_label: bool = False  # always shown in the label (a strength), not only when it differs from the default

    def describe(self, name: str) -> str:
        rng = ""
        if self.choices:
            rng = f" one of {'|'.join(self.choices)}"
        elif self.minimum is not None or self.maximum is not None:
            lo = "-inf" if self.minimum is None else f"{self.minimum:g}"
            hi = "inf" if self.maximum is None else f"{self.maximum:g}"
            rng = f" in [{lo}, {hi}]"
        return f"{name}={_fmt(self.default)}{rng} ({self.doc})"


@dataclass
class InputVariant:
    """One concrete input: what the model is shown."""

    image: Any  # PIL.Image (RGB) or None
    question: str
    options: list[str] | None
    answer: str | None = None  # gold option letter in *this* variant's option order (or free text)
    bbox: list[float] | None = None  # target region in this variant's image (None once pixels moved)
    option_map: list[int] | None = None  # variant option i -> original option index (None: not comparable)
    partner: str | None = None  # key of the sample an input part was taken from
    category: str | None = None


@dataclass
class TreatmentContext:
    """What a treatment may use besides the variant: the sample key, the seed and the swap partner."""

    key: str
    seed: int = 0
    partner: InputVariant | None = None
    partner_key: str | None = None


@dataclass
class TreatmentDef:
    name: str
    doc: str
    changes: str  # none | image | question | options | instance
    reference: str  # reference state the sensitivity ratio divides by
    params: dict[str, Param]
    fn: Callable[..., InputVariant]
    needs_partner: bool = False


REGISTRY: Registry[TreatmentDef] = Registry("treatment")


def register(name: str, doc: str, changes: str, reference: str = "image_tokens", needs_partner: bool = False,
             **params: Param):
    """Decorator: register ``fn(variant, params, ctx, rng) -> InputVariant`` as an input treatment (its capabilities:
    what it ``changes``, the ``reference`` state its sensitivity ratio divides by, ``needs_partner``, typed
    ``params``). Duplicate names are an error."""
    def deco(fn):
        REGISTRY.add(name, TreatmentDef(name, doc, changes, reference, params, fn, needs_partner))
        return fn
    return deco


@dataclass
class TreatmentSpec:
    """One registered treatment with its (validated) parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def definition(self) -> TreatmentDef:
        return REGISTRY[self.name]

    @property
    def label(self) -> str:
        """``name[:k=v,...]`` with the parameters that differ from their defaults (and strengths, always)."""
        d = self.definition
        shown = {k: v for k, v in self.params.items() if k in d.params and (d.params[k].in_label or
                                                                               v != d.params[k].default)}
        p = ",".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        return self.name + (":" + p if p else "")


@dataclass
class Treatment:
    """A composition of treatment specs, applied left to right."""

    parts: list[TreatmentSpec]

    @property
    def label(self) -> str:
        return "+".join(p.label for p in self.parts)

    @property
    def changes(self) -> list[str]:
        return [p.definition.changes for p in self.parts if p.definition.changes != "none"] or ["none"]

    @property
    def needs_partner(self) -> bool:
        return any(p.definition.needs_partner for p in self.parts)

    @property
    def reference(self) -> str:
        """Reference state for the sensitivity ratio: the prompt state the treatment acts on directly."""
        refs = [p.definition.reference for p in self.parts if p.definition.changes != "none"]
        if "last_prompt_token" in refs:  # e.g. no_image: the perturbed prompt has no image tokens
            return "last_prompt_token"
        return refs[0] if refs else "image_tokens"

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "parts": [{"name": p.name, "params": dict(p.params)} for p in self.parts],
                "changes": self.changes, "reference": self.reference}


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


# ------------------------------------------------------------------------------------------------ parsing
def valid_names() -> str:
    return ", ".join(sorted(REGISTRY))


def describe_treatments() -> list[dict[str, str]]:
    """Every treatment with its documentation and parameters (for --list-treatments and error messages)."""
    return [{"name": d.name, "doc": d.doc, "params": "; ".join(p.describe(k) for k, p in d.params.items()) or "-",
             "changes": d.changes} for d in sorted(REGISTRY.values(), key=lambda d: d.name)]


def _coerce(name: str, key: str, param: Param, raw: Any) -> Any:
    valid = f"valid: {param.describe(key)}"
    if param.choices is not None:
        value = str(raw).strip()
        if value not in param.choices:
            raise LatentcheckError(f"treatment {name!r}: parameter {key!r} must be one of "
                                   f"{', '.join(param.choices)}, got {raw!r}")
        return value
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise LatentcheckError(f"treatment {name!r}: parameter {key!r} must be a number, got {raw!r} ({valid})") \
            from None
    if not np.isfinite(value):
        raise LatentcheckError(f"treatment {name!r}: parameter {key!r} must be finite, got {raw!r} ({valid})")
    if param.integer:
        if not value.is_integer():
            raise LatentcheckError(f"treatment {name!r}: parameter {key!r} must be an integer, got {raw!r} ({valid})")
        value = int(value)
    if (param.minimum is not None and value < param.minimum) or (param.maximum is not None and value > param.maximum):
        raise LatentcheckError(f"treatment {name!r}: parameter {key!r} = {raw!r} is out of range ({valid})")
    return value


def validate(name: str, params: dict[str, Any]) -> TreatmentSpec:
    """A spec with defaults filled in; errors list the valid names / parameters."""
    if name not in REGISTRY:
        raise LatentcheckError(f"unknown treatment {name!r}; valid treatments: {valid_names()}")
    d = REGISTRY[name]
    bad = sorted(set(params) - set(d.params))
    if bad:
        valid = "; ".join(p.describe(k) for k, p in d.params.items()) or "none (it takes no parameters)"
        raise LatentcheckError(f"treatment {name!r} has no parameter {bad[0]!r}; valid parameters: {valid}")
    out = {k: p.default for k, p in d.params.items()}
    for k, v in params.items():
        out[k] = _coerce(name, k, d.params[k], v)
    return TreatmentSpec(name, out)


def _parse_one(text: str) -> TreatmentSpec:
    name, _, ps = text.strip().partition(":")
    name = name.strip()
    if not name:
        raise LatentcheckError(f"empty treatment name in {text!r}; valid treatments: {valid_names()}")
    d = REGISTRY.get(name)
    params: dict[str, Any] = parse_params(ps, d.params if d is not None else None, text, "treatment")
    return validate(name, params)


def parse_treatment(text: str) -> Treatment:
    """Parse ``name[:k=v,...][+name[:k=v,...]]...``."""
    parts = [p for p in text.split("+")]
    if not text.strip() or any(not p.strip() for p in parts):
        raise LatentcheckError(f"bad treatment spec {text!r} (expected e.g. noise:std=0.2 or "
                               f"mask_target+noise:std=0.1); valid treatments: {valid_names()}")
    return Treatment([_parse_one(p) for p in parts])


def parse_treatments(items: list[str] | str) -> list[Treatment]:
    """Parse several specs (each item may be a ';'-separated list); duplicate labels are an error."""
    if isinstance(items, str):
        items = [items]
    out: list[Treatment] = []
    seen: set[str] = set()
    for it in items:
        for part in str(it).split(";"):
            if part.strip():
                t = parse_treatment(part)
                if t.label in seen:
                    raise LatentcheckError(f"treatment {t.label!r} is given twice")
                seen.add(t.label)
                out.append(t)
    if not out:
        raise LatentcheckError(f"no treatments given; valid treatments: {valid_names()}")
    return out


DEFAULT_TREATMENTS = ["identity", "swap_instance", "swap_image", "swap_question", "blank_image", "noise:std=0.05",
                      "noise:std=0.2", "noise:std=0.5", "mask_target", "crop_away_target", "shuffle_patches:patch=28",
                      "no_image", "reorder_options"]


# ------------------------------------------------------------------------------------------------ applying
def original_variant(task: Task, image) -> InputVariant:
    """The untreated input of a task (``image``: the decoded PIL image or None)."""
    letter = task.answer_letter if task.options else task.answer
    return InputVariant(image=image, question=task.question, options=list(task.options) if task.options else None,
                        answer=letter, bbox=list(task.bbox) if task.bbox else None,
                        option_map=list(range(len(task.options))) if task.options else None,
                        category=task.category)


def _rng(ctx: TreatmentContext, spec: TreatmentSpec, position: int) -> np.random.Generator:
    h = hashlib.sha256(f"{ctx.seed}|{spec.label}|{position}|{ctx.key}".encode()).hexdigest()
    return np.random.default_rng(int(h[:16], 16))


def apply_treatment(treatment: Treatment, variant: InputVariant, ctx: TreatmentContext) -> InputVariant:
    """Apply the parts of ``treatment`` in order; raises NotApplicable when a part does not apply."""
    out = variant
    for i, spec in enumerate(treatment.parts):
        d = spec.definition
        if d.needs_partner and ctx.partner is None:
            raise NotApplicable("no usable partner sample (swaps need at least 2 samples with readable inputs)")
        out = d.fn(out, spec.params, ctx, _rng(ctx, spec, i))
    return out


def partner_map(keys: list[str], seed: int = 0) -> dict[str, str]:
    """Seeded swap partners: one random cycle through all keys, so no key is its own partner (needs >= 2 keys). The
    cycle is drawn over the keys in the canonical record-id order, so the input file's order does not matter."""
    if len(keys) < 2:
        return {}
    keys = sorted(keys, key=record_order_key)
    h = hashlib.sha256(f"{seed}|partners".encode()).hexdigest()
    order = np.random.default_rng(int(h[:16], 16)).permutation(len(keys))
    return {keys[order[i]]: keys[order[(i + 1) % len(keys)]] for i in range(len(keys))}


def _need_image(v: InputVariant, name: str) -> np.ndarray:
    if v.image is None:
        raise NotApplicable(f"{name}: the input has no image")
    return np.asarray(v.image.convert("RGB"), dtype=np.uint8).copy()


def _image(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8), "RGB")


def _grey(value: float) -> int:
    return int(round(float(value) * 255))


def _bbox_pixels(bbox: list[float], pad: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer [x0, y0, x1, y1) covering the (padded) bbox, clipped to the image."""
    x, y, w, h = bbox
    x0, y0 = int(np.floor(x - pad)), int(np.floor(y - pad))
    x1, y1 = int(np.ceil(x + w + pad)), int(np.ceil(y + h + pad))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        raise NotApplicable(f"bbox {bbox} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


@register("identity", "leave the input unchanged (control: must give cosine 1 and zero change)", "none")
def _identity(v, p, ctx, rng):
    return v


@register("swap_instance", "replace the whole input (image, question, options) by another sample's - the paper's "
          "inter-instance comparison", "instance", needs_partner=True)
def _swap_instance(v, p, ctx, rng):
    q = ctx.partner
    return replace(q, option_map=None, partner=ctx.partner_key)


@register("swap_image", "show another sample's image, keep the question", "image", needs_partner=True)
def _swap_image(v, p, ctx, rng):
    if ctx.partner.image is None or v.image is None:
        raise NotApplicable("swap_image: this sample or its partner has no image")
    return replace(v, image=ctx.partner.image, bbox=ctx.partner.bbox, partner=ctx.partner_key)


@register("swap_question", "ask another sample's question (with its options), keep the image", "question",
          reference="question_tokens", needs_partner=True)
def _swap_question(v, p, ctx, rng):
    q = ctx.partner
    return replace(v, question=q.question, options=q.options, answer=q.answer, option_map=None, bbox=None,
                   partner=ctx.partner_key)


@register("blank_image", "replace the image by a uniform grey image of the same size", "image",
          value=Param(0.5, "grey level as a fraction of 255", minimum=0.0, maximum=1.0))
def _blank(v, p, ctx, rng):
    arr = _need_image(v, "blank_image")
    arr[:] = _grey(p["value"])
    return replace(v, image=_image(arr), bbox=None)


@register("noise", "add seeded Gaussian pixel noise (then clip to 0-255)", "image",
          std=Param(0.1, "noise standard deviation as a fraction of 255", minimum=0.0, in_label=True))
def _noise(v, p, ctx, rng):
    arr = _need_image(v, "noise").astype(np.float64)
    arr = arr + rng.normal(0.0, float(p["std"]) * 255.0, size=arr.shape)
    return replace(v, image=_image(np.clip(np.rint(arr), 0, 255)))


@register("mask_target", "fill the target bbox (plus pad pixels) with a uniform grey", "image",
          value=Param(0.5, "grey level as a fraction of 255", minimum=0.0, maximum=1.0),
          pad=Param(0.0, "pixels added around the bbox", minimum=0.0))
def _mask_target(v, p, ctx, rng):
    if v.bbox is None:
        raise NotApplicable("mask_target: no target bbox")
    arr = _need_image(v, "mask_target")
    x0, y0, x1, y1 = _bbox_pixels(v.bbox, p["pad"], arr.shape[1], arr.shape[0])
    arr[y0:y1, x0:x1] = _grey(p["value"])
    return replace(v, image=_image(arr))


@register("crop_away_target", "crop the image to its largest side strip (left/right/above/below) that does not "
          "contain the target bbox", "image",
          pad=Param(0.0, "pixels added around the bbox", minimum=0.0),
          min_side=Param(28, "smallest allowed strip side in pixels (else not applicable)", minimum=1, integer=True))
def _crop_away(v, p, ctx, rng):
    if v.bbox is None:
        raise NotApplicable("crop_away_target: no target bbox")
    arr = _need_image(v, "crop_away_target")
    H, W = arr.shape[:2]
    x0, y0, x1, y1 = _bbox_pixels(v.bbox, p["pad"], W, H)
    strips = {"left": (0, 0, x0, H), "right": (x1, 0, W, H), "above": (0, 0, W, y0), "below": (0, y1, W, H)}
    ok = {k: s for k, s in strips.items() if s[2] - s[0] >= p["min_side"] and s[3] - s[1] >= p["min_side"]}
    if not ok:
        raise NotApplicable(f"crop_away_target: no strip of at least {p['min_side']} px outside the target")
    a, b, c, d = max(ok.values(), key=lambda s: ((s[2] - s[0]) * (s[3] - s[1]), -s[0], -s[1]))
    return replace(v, image=_image(arr[b:d, a:c]), bbox=None)


@register("shuffle_patches", "cut the image into patch x patch tiles and permute them (seeded, never the identity; "
          "edge pixels that do not fill a tile stay in place)", "image",
          patch=Param(28, "tile side in pixels", minimum=1, integer=True, in_label=True))
def _shuffle(v, p, ctx, rng):
    arr = _need_image(v, "shuffle_patches")
    s = int(p["patch"])
    ny, nx = arr.shape[0] // s, arr.shape[1] // s
    n = ny * nx
    if n < 2:
        raise NotApplicable(f"shuffle_patches: image {arr.shape[1]}x{arr.shape[0]} has fewer than 2 tiles of {s} px")
    perm = rng.permutation(n)
    while np.array_equal(perm, np.arange(n)):
        perm = rng.permutation(n)
    tiles = [arr[(i // nx) * s:(i // nx + 1) * s, (i % nx) * s:(i % nx + 1) * s].copy() for i in range(n)]
    out = arr.copy()
    for dst, src in enumerate(perm):
        out[(dst // nx) * s:(dst // nx + 1) * s, (dst % nx) * s:(dst % nx + 1) * s] = tiles[src]
    return replace(v, image=_image(out), bbox=None)


@register("no_image", "remove the image from the prompt entirely", "image", reference="last_prompt_token")
def _no_image(v, p, ctx, rng):
    if v.image is None:
        raise NotApplicable("no_image: the input has no image")
    return replace(v, image=None, bbox=None)


@register("reorder_options", "permute the answer options (a seeded random permutation that moves at least "
          "one option, or reversed); the gold answer follows its option", "options", reference="question_tokens",
          mode=Param("random", "how to reorder", choices=("random", "reverse")))
def _reorder(v, p, ctx, rng):
    if not v.options:
        raise NotApplicable("reorder_options: the question has no options")
    n = len(v.options)
    if p["mode"] == "reverse":
        perm = np.arange(n)[::-1]
    else:
        perm = rng.permutation(n)
        while np.array_equal(perm, np.arange(n)):
            perm = rng.permutation(n)
    options = [v.options[i] for i in perm]
    answer = v.answer
    if answer is not None:
        gi = option_index(answer, v.options)
        answer = LETTERS[int(np.where(perm == gi)[0][0])] if gi is not None else answer
    omap = [v.option_map[i] for i in perm] if v.option_map is not None else None
    return replace(v, options=options, answer=answer, option_map=omap)
