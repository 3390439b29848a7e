"""CapImagine data construction (paper §5.2): interleaved "thinking with images" data -> text-imagination SFT records.

Each intermediate image of a reasoning chain is replaced by a text description of what it adds: a caption of the
zoomed/highlighted region for zoom steps, a description of the difference for edit (manipulation) steps. An optional
refine pass rewrites the whole chain so the descriptions read naturally; an optional judge pass keeps or drops each
instance. No model is called here: captioner / refiner / judge are objects passed in (see ``TextGenerator``).

Input formats (``fmt``):

* ``"monet-sft"`` — Monet-SFT-125K style: a JSON list (or JSONL, one sample per line) of
  ``{"data": [turns], "metadata": {...}}``; a turn is ``{"role", "content": [items]}``, an item is
  ``{"type": "text", "text"}`` or ``{"type": "image", "image_file_name": <path relative to the dataset root>}``.
  Question = text of the first user turn, question image = its first image; all assistant turns after it are merged
  into one chain; each assistant image is one reasoning step; the system turn is ignored. As in Monet's loader
  (src/task.py), a sample whose assistant image directly follows (same turn) a text item *without*
  ``<abs_vis_token></abs_vis_token>`` is dropped (reason ``"assistant image not preceded by <abs_vis_token>"``).
  The toy world's ``interleaved_{split}.json`` (toy/world.py) is this format.
* ``"mirage"`` — Mirage JSONL: ``text_input`` (literal ``<image>`` placeholders, removed from the question),
  ``text_output`` (``<output_image>`` marks each auxiliary image; without it the single auxiliary image goes before
  the text, as in Mirage's non-CoT collate), ``image_input`` (str or list; the first is the question image, others
  go to ``meta.extra_images``), ``image_output`` (str or list, one per ``<output_image>``). Every other key of the
  line is the sample's metadata (e.g. ``caption``, ``answer``).
* ``"auto"`` — ``.jsonl`` -> mirage, anything else -> monet-sft.

Image paths are resolved against ``dataset_root``; without one, against the input file's folder or, when the image is
not there, its parent or grandparent (Monet-SFT-125K: ``<root>/<subset>/train.json`` with paths relative to ``<root>``).
Absolute paths are kept.

Step kind (``"zoom"`` or ``"edit"``), first match wins: the ``kind`` argument (``--kind``); ``metadata["kind"]``;
for monet-sft the subset name, taken from ``metadata`` keys ``dataset_name`` / ``dataset`` / ``subset`` /
``source``, else the file stem, else the input's parent folder name (Monet layout ``<subset>/train.json``):
``ReFocus``, ``CoM*`` / ``CogCoM`` / names containing ``edit`` or ``manipul`` -> edit; ``Visual_CoT``,
``Zebra_CoT_*``, ``CoF``, ``PixelReasoner``, ``VTS``, names containing ``zoom`` / ``crop`` / ``toy`` and the toy
world's ``interleaved_<split>`` stem -> zoom; anything else -> a bad record asking for ``kind``. Mirage defaults to
edit (its auxiliary images are generated/edited images, e.g. VSP's drawn path).

Output: one JSON line per kept sample in ``out_path``::

    {"id", "image", "question", "response", "imagination", "answer", "source", "kind", "meta"}

* ``image`` — the question image, relative to the output file's folder (absolute when no relative path exists),
  the convention of core/tasks.py; ``meta.step_images`` lists the replaced images the same way.
* ``response`` — the assistant text with each description inlined where its image was, wrapped in
  ``markers`` (default ``<imagine>`` ... ``</imagine>``; ``("", "")`` = no markers). ``<abs_vis_token>...``
  spans, the image items and ``<output_image>`` are removed, ``<observation>`` tags are removed (their text kept, as
  Monet's loader keeps it); an observation that became the description (``MetadataCaptioner``, or a stored caption
  equal to it) is moved into the span wherever it stands after the image, not repeated, and a ``\\boxed{...}`` answer
  inside it stays in the chain.
  Other tags (e.g. Mirage's ``<think>``) are kept.
* ``imagination`` — the inserted descriptions (after refinement: the spans parsed back from the refined text).
* ``answer`` — the last ``\\boxed{...}`` of the response, else ``metadata["answer"]`` (``meta.answer_origin``).
* ``source`` — ``"<format>/<subset>"``, e.g. ``"monet-sft/Visual_CoT"``, ``"mirage/mirage_train"``.
* ``meta`` — ``where`` (file + position), ``input``, ``caption_origin`` (per step: ``metadata.caption``,
  ``metadata.captions[i]``, ``observation``, ``model:caption_zoom`` ...), ``step_images``, ``answer_origin``,
  ``refined`` / ``draft_response``, ``judge_reply``, ``extra_images``, ``metadata`` (the input's metadata).

Dropped samples and bad records go to ``<out stem>.dropped.jsonl`` next to the output (see ``dropped_path_for``):
``{"id", "where", "reason", "detail", "source", "error"?, "response"?}``; bad records have reason ``"bad record"``
and ``error = {"record", "field", "message"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence


from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.records import JsonlFile
from latentcheck.core.tasks import DEFAULT_MAX_PIXELS, BadRecord, decode_image, json_object

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

KINDS = ("zoom", "edit")
FORMATS = ("monet-sft", "mirage")
DEFAULT_MARKERS = ("<imagine>", "</imagine>")
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
PROMPT_NAMES = ("caption_zoom", "caption_edit", "refine", "judge")
PLACEHOLDERS = ("question", "chain", "answer", "open_marker", "close_marker")
REQUIRED_PLACEHOLDERS = {"caption_zoom": (), "caption_edit": (), "refine": ("chain",), "judge": ("chain",)}

ABS_VIS_MARKER = "<abs_vis_token></abs_vis_token>"
_ABS_VIS_SPAN = re.compile(r"<abs_vis_token>.*?</abs_vis_token>", re.S)
_ABS_VIS_STRAY = re.compile(r"</?abs_vis_token(?:_pad)?>")
_OBS_SPAN = re.compile(r"<observation>(.*?)</observation>", re.S)
_OBS_TAG = re.compile(r"</?observation>")
_OUTPUT_IMAGE = "<output_image>"
_IMAGE_PLACEHOLDER = re.compile(r"[ \t]*<image>[ \t]*\n?")
_UNKNOWN_PLACEHOLDER = re.compile(r"(?<![A-Za-z\\])\{([a-z_][a-z0-9_]*)\}")

_EDIT_SUBSET = re.compile(r"refocus|cogcom|(?:^|[^a-z])com(?:[^a-z]|$)|edit|manipul")
_ZOOM_SUBSET = re.compile(r"visual_?cot|zebra|(?:^|[^a-z])cof(?:[^a-z]|$)|pixel_?reasoner|(?:^|[^a-z])vts"
                          r"(?:[^a-z]|$)|zoom|crop|toy|^interleaved_(?:train|val|test)$")
_SUBSET_KEYS = ("dataset_name", "dataset", "subset", "source")
_ID_KEYS = ("id", "sample_id", "qid", "question_id", "pid")


# ----------------------------------------------------------------------------------------------- model interfaces
@dataclass
class GenRequest:
    """One generation request: images (PIL) shown before the prompt text."""

    images: list["Image.Image"]
    prompt: str


class TextGenerator(Protocol):
    """Anything that turns a batch of requests into one reply string per request (the decoding engine)."""

    def generate(self, requests: list[GenRequest]) -> list[str]: ...


@dataclass
class Description:
    """The text that replaces one intermediate image, and where it came from."""

    text: str
    origin: str


class Captioner(Protocol):
    """Describes every step of each sample; a per-sample failure is returned as a RecordError, not raised."""

    def describe(self, samples: list["InterleavedSample"]) -> list[list[Description] | RecordError]: ...


class Refiner(Protocol):
    def refine(self, samples: list["InterleavedSample"], drafts: list[str]) -> list[str | RecordError]: ...


@dataclass
class Verdict:
    keep: bool
    reason: str
    reply: str


class Judge(Protocol):
    def judge(self, samples: list["InterleavedSample"], responses: list[str]) -> list[Verdict | RecordError]: ...


# ----------------------------------------------------------------------------------------------- samples
@dataclass
class Step:
    """One intermediate image of a chain."""

    image: str  # absolute path
    field: str  # input field that holds the image (for error messages)
    observation: str | None = None  # first <observation> text after the image (before the next image)
    observation_leading: bool = False  # that observation directly follows the image (only whitespace between)


@dataclass
class InterleavedSample:
    """One interleaved chain: ``texts[i]`` precedes ``steps[i]``; ``len(texts) == len(steps) + 1``."""

    id: str
    where: str
    question: str
    image: str | None
    texts: list[str]
    steps: list[Step]
    kind: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    extra_images: list[str] = field(default_factory=list)
    drop_reason: str | None = None  # set by the reader for samples the source loader would drop
    drop_detail: str | None = None
    # input fields of the question text, the question image and the reasoning chain (for error records)
    question_field: str = "question"
    image_field: str = "image"
    chain_field: str = "response"

    @property
    def name(self) -> str:
        return f"{self.where} (id={self.id})"

    def chain_before(self, step_index: int) -> str:
        """The cleaned reasoning text before step ``step_index`` (context for the captioning prompts)."""
        parts = [clean_text(t) for t in self.texts[: step_index + 1]]
        return _smart_join([p for p in parts if p.strip()]).strip()


# ----------------------------------------------------------------------------------------------- text helpers
def clean_text(text: str) -> str:
    """Remove ``<abs_vis_token>`` spans/tokens and ``<observation>`` tags (keeping the observed text)."""
    text = _ABS_VIS_SPAN.sub("", text)
    text = _ABS_VIS_STRAY.sub("", text)
    return _OBS_TAG.sub("", text)


def _smart_join(parts: Sequence[str]) -> str:
    """Concatenate, trimming spaces at each seam and putting one space there unless a newline is already there."""
    out = ""
    for part in parts:
        if not out:
            out = part
            continue
        left, right = out.rstrip(" \t"), part.lstrip(" \t")
        if not left or not right or left.endswith("\n") or right.startswith("\n"):
            out = left + right
        else:
            out = left + " " + right
    return out


def _norm(text: str) -> str:
    return " ".join(text.split()).strip().rstrip(".").lower()


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        i, depth = start + len("\\boxed{"), 1
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j].strip()
        start = text.rfind("\\boxed{", 0, start)
    return None


def check_markers(markers: Sequence[str]) -> tuple[str, str]:
    """Validate a (open, close) marker pair: both non-empty and different, or both empty."""
    if len(markers) != 2 or not all(isinstance(m, str) for m in markers):
        raise LatentcheckError(f"markers must be two strings (open, close), got {markers!r}")
    open_m, close_m = markers
    if bool(open_m) != bool(close_m):
        raise LatentcheckError("markers: give both an open and a close marker, or leave both empty")
    if open_m and open_m == close_m:
        raise LatentcheckError("markers: the open and close markers must differ")
    return open_m, close_m


def parse_imagination(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> list[str]:
    """The imagination spans of a response (text between the markers, stripped); [] when markers are empty."""
    open_m, close_m = check_markers(markers)
    if not open_m:
        return []
    pattern = re.compile(re.escape(open_m) + r"(.*?)" + re.escape(close_m), re.S)
    return [m.strip() for m in pattern.findall(text)]


def sanitize_description(text: str, markers: Sequence[str] = DEFAULT_MARKERS) -> str:
    """Strip a generated description: surrounding quotes/whitespace, echoed markers and tags."""
    text = clean_text(text)
    for m in markers:
        if m:
            text = text.replace(m, "")
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


_BOXED_START = re.compile(r"\\boxed\{")


def _boxed_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every balanced ``\\boxed{...}`` in ``text``."""
    spans = []
    for m in _BOXED_START.finditer(text):
        depth = 1
        for j in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                spans.append((m.start(), j + 1))
                break
    return spans


def observation_caption(observation: str) -> str:
    """The caption an ``<observation>`` can give: its text without any ``\\boxed{...}`` answer (that stays in the
    chain; see ``assemble``)."""
    spans = _boxed_spans(observation)
    out, last = [], 0
    for a, b in spans:
        out.append(observation[last:a])
        last = b
    out.append(observation[last:])
    return " ".join("".join(out).split()).strip()


def _remove_observation(following: str) -> str:
    """``following`` with its first ``<observation>`` span removed (it became the caption), except the boxed answers
    the observation held, which stay where they were."""
    m = _OBS_SPAN.search(following)
    if not m:
        return following
    kept = " ".join(m.group(1)[a:b] for a, b in _boxed_spans(m.group(1)))
    return following[: m.start()] + kept + following[m.end():]


def assemble(sample: InterleavedSample, descriptions: Sequence[Description],
             markers: Sequence[str] = DEFAULT_MARKERS) -> str:
    """Inline the descriptions where the images were and remove the interleaving tags (see module docstring).

    Observations are handled as Monet's loader handles them: their text stays in the chain (the tags go). When a
    description IS that observation (``MetadataCaptioner`` reusing it, or a stored caption equal to it), the
    observation is taken out of the chain wherever it stands after the image -- no duplicated text -- and a
    ``\\boxed{...}`` answer inside it stays in the chain."""
    open_m, close_m = check_markers(markers)
    if len(descriptions) != len(sample.steps):
        raise LatentcheckError(f"{sample.name}: {len(descriptions)} descriptions for {len(sample.steps)} images")
    parts: list[str] = [clean_text(sample.texts[0])]
    for i, (step, desc) in enumerate(zip(sample.steps, descriptions)):
        following = sample.texts[i + 1]
        if step.observation is not None and (desc.origin == "observation" or _norm(
                observation_caption(step.observation)) == _norm(desc.text)):
            following = _remove_observation(following)  # the observation moved into the span
        parts.append(f"{open_m}{desc.text}{close_m}")
        parts.append(clean_text(following))
    return _smart_join([p for p in parts if p.strip()]).strip()


# ----------------------------------------------------------------------------------------------- prompts
def read_template(path: Path, allowed: Sequence[str], required: Sequence[str] = (), what: str = "prompt file") -> str:
    """A prompt template's text. ``{name}`` placeholders must be among ``allowed`` and include ``required``; other
    braces (e.g. ``\\boxed{}``) are left alone. Errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LatentcheckError(f"cannot read {what} {path}: {e.strerror}") from None
    unknown = sorted(set(_UNKNOWN_PLACEHOLDER.findall(text)) - set(allowed))
    if unknown:
        raise LatentcheckError(f"{what} {path}: unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                               f"allowed: {', '.join('{' + a + '}' for a in allowed)}")
    missing = [r for r in required if "{" + r + "}" not in text]
    if missing:
        raise LatentcheckError(f"{what} {path}: missing required placeholder(s) "
                               f"{', '.join('{' + m + '}' for m in missing)}")
    return text


@dataclass(frozen=True)
class PromptSet:
    """The four prompt templates. Placeholders: ``{question}`` (the question text), ``{chain}`` (caption prompts:
    the reasoning text before the image; refine: the draft response with markers; judge: the final response),
    ``{answer}`` (the recovered final answer, or "unknown"), ``{open_marker}`` / ``{close_marker}`` (the imagination
    markers). Other braces (e.g. ``\\boxed{}``) are left alone."""

    caption_zoom: str
    caption_edit: str
    refine: str
    judge: str
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, dir: str | os.PathLike | None = None) -> "PromptSet":
        """Load ``<name>.txt`` from ``dir`` (files missing there fall back to the packaged imagine/prompts/)."""
        folder = Path(dir) if dir is not None else PROMPTS_DIR
        if not folder.is_dir():
            raise LatentcheckError(f"prompt folder not found: {folder}")
        texts, sources = {}, {}
        for name in PROMPT_NAMES:
            path = folder / f"{name}.txt"
            if not path.exists():
                path = PROMPTS_DIR / f"{name}.txt"
            text = read_template(path, PLACEHOLDERS, REQUIRED_PLACEHOLDERS[name], "prompt file")
            texts[name], sources[name] = text, str(path)
        return cls(**texts, sources=sources)

    def render(self, name: str, **values: str) -> str:
        """Fill the known placeholders of template ``name``."""
        if name not in PROMPT_NAMES:
            raise LatentcheckError(f"unknown prompt {name!r} (expected one of {', '.join(PROMPT_NAMES)})")
        text = getattr(self, name)
        for key in PLACEHOLDERS:
            text = text.replace("{" + key + "}", str(values.get(key, "")))
        return text.strip()


# ----------------------------------------------------------------------------------------------- captioners
_META_CAPTION_KEYS = ("caption", "captions", "observation", "observations")


class MetadataCaptioner:
    """Descriptions stored with the data: ``metadata[key]`` for the first present key of ``keys`` (a string for a
    one-image chain, or a list with one string per image), else the ``<observation>`` text after each image."""

    def __init__(self, keys: Sequence[str] = _META_CAPTION_KEYS, use_observation: bool = True):
        self.keys = tuple(keys)
        self.use_observation = use_observation

    def describe_one(self, sample: InterleavedSample) -> list[Description]:
        n = len(sample.steps)
        for key in self.keys:
            if key not in sample.metadata or sample.metadata[key] in (None, "", []):
                continue
            value, fname = sample.metadata[key], f"metadata.{key}"
            if isinstance(value, str):
                if n != 1:
                    raise RecordError(sample.name, fname, f"one caption string but the chain has {n} intermediate "
                                      "images; give a list with one caption per image")
                return [Description(value.strip(), fname)]
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise RecordError(sample.name, fname, "must be a non-empty string or a list of non-empty strings")
            if len(value) != n:
                raise RecordError(sample.name, fname, f"{len(value)} captions for {n} intermediate images")
            return [Description(v.strip(), f"{fname}[{i}]") for i, v in enumerate(value)]
        out = []
        for i, step in enumerate(sample.steps):
            if not self.use_observation or not step.observation or not step.observation.strip():
                tried = ", ".join(f"metadata.{k}" for k in self.keys)
                extra = f" and no <observation> after intermediate image {i} ({step.field})" \
                    if self.use_observation else ""
                raise RecordError(sample.name, f"metadata.{self.keys[0] if self.keys else 'caption'}",
                                  f"no caption (tried {tried}){extra}")
            text = observation_caption(step.observation)
            if not text:
                raise RecordError(sample.name, step.field, f"the <observation> after intermediate image {i} holds "
                                  "only the answer (\\boxed{...}); no caption to reuse")
            out.append(Description(text, "observation"))
        return out

    def describe(self, samples: list[InterleavedSample]) -> list[list[Description] | RecordError]:
        out: list[list[Description] | RecordError] = []
        for s in samples:
            try:
                out.append(self.describe_one(s))
            except RecordError as e:
                out.append(e)
        return out


def _load(path: str | None, record: str, fname: str, max_pixels: int | None):
    try:
        return decode_image(path, record, None, max_pixels=max_pixels)
    except RecordError as e:
        raise RecordError(record, fname, e.message) from None


def _call(generator: TextGenerator, requests: list[GenRequest]) -> list[Any]:
    """Replies (strings) in request order; a request the backend could not answer stays a failure object (anything
    that is not a string, e.g. ``imagine.generate.GenerationFailure``) for the caller to record as an error."""
    replies = generator.generate(requests)
    if len(replies) != len(requests):
        raise LatentcheckError(f"text generator returned {len(replies)} replies for {len(requests)} requests")
    return list(replies)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _failure_error(sample: InterleavedSample, what: str, reply: Any, texts: dict[str, str],
                   image_fields: Sequence[str], fallback: str) -> RecordError:
    """The error record of a request the generator could not answer. The field is the input's: for a prompt the
    model refuses (too long for its positions, text its tokenizer refuses) the longest text field that went into it;
    for an image the processor refuses, the image field(s) of the request; otherwise (a server error) ``fallback``."""
    part = getattr(reply, "part", None)
    if part == "text" and texts:
        unencodable = [f for f, t in texts.items() if not _encodes(t)]  # e.g. a lone surrogate
        field_name = unencodable[0] if unencodable else max(texts, key=lambda f: len(texts[f]))
    elif part == "image" and image_fields:
        field_name = ", ".join(image_fields)
    else:
        field_name = fallback
    return RecordError(sample.name, field_name, f"{what}: {reply}")


def _answer_hint(sample: InterleavedSample) -> str:
    boxed = extract_boxed("".join(sample.texts))
    if boxed is not None:
        return boxed
    answer = sample.metadata.get("answer")
    return str(answer) if isinstance(answer, (str, int, float)) and str(answer).strip() else "unknown"


class _ModelTextPass:
    """Shared set-up of the model-based passes (step captions, refine, judge)."""

    def __init__(self, generator: TextGenerator, prompts: PromptSet | None = None, batch_size: int = 8,
                 markers: Sequence[str] = DEFAULT_MARKERS, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if batch_size < 1:
            raise LatentcheckError(f"batch_size must be >= 1, got {batch_size}")
        self.generator, self.prompts = generator, prompts or PromptSet.load()
        self.batch_size, self.markers, self.max_pixels = batch_size, check_markers(markers), max_pixels


class ModelCaptioner(_ModelTextPass):
    """Captions each step with a model: zoom -> ``caption_zoom`` with [step image]; edit -> ``caption_edit`` with
    [question image, step image] (the difference is taken w.r.t. the question image). Calls the generator in
    batches of ``batch_size`` requests (images are loaded per batch)."""

    def _request(self, sample: InterleavedSample, i: int) -> GenRequest:
        step = sample.steps[i]
        template = "caption_edit" if sample.kind == "edit" else "caption_zoom"
        images = [_load(step.image, sample.name, step.field, self.max_pixels)]
        if sample.kind == "edit":
            if sample.image is None:
                raise RecordError(sample.name, "image", "an edit step needs the question image to compare against")
            images.insert(0, _load(sample.image, sample.name, sample.image_field, self.max_pixels))
        prompt = self.prompts.render(template, question=sample.question, chain=sample.chain_before(i),
                                     answer=_answer_hint(sample))
        return GenRequest(images=images, prompt=prompt)

    def describe(self, samples: list[InterleavedSample]) -> list[list[Description] | RecordError]:
        jobs = [(si, i) for si, s in enumerate(samples) for i in range(len(s.steps))]
        texts: dict[tuple[int, int], str] = {}
        errors: dict[int, RecordError] = {}
        for b in range(0, len(jobs), self.batch_size):
            batch, requests = [], []
            for si, i in jobs[b: b + self.batch_size]:
                if si in errors:
                    continue
                try:
                    requests.append(self._request(samples[si], i))
                    batch.append((si, i))
                except RecordError as e:
                    errors[si] = e
            if requests:
                for key, reply in zip(batch, _call(self.generator, requests)):
                    if isinstance(reply, str):
                        texts[key] = sanitize_description(reply, self.markers)
                    else:
                        s, step = samples[key[0]], samples[key[0]].steps[key[1]]
                        images = [s.image_field, step.field] if s.kind == "edit" else [step.field]
                        prompt_texts = {s.question_field: s.question, s.chain_field: s.chain_before(key[1])}
                        errors.setdefault(key[0], _failure_error(s, "captioner", reply, prompt_texts, images,
                                                                 step.field))
        out: list[list[Description] | RecordError] = []
        for si, s in enumerate(samples):
            if si in errors:
                out.append(errors[si])
                continue
            origin = "model:" + ("caption_edit" if s.kind == "edit" else "caption_zoom")
            out.append([Description(texts[(si, i)], origin) for i in range(len(s.steps))])
        return out


def _strip_fences(text: str) -> str:
    text = text.strip()
    m = re.fullmatch(r"```[a-zA-Z]*\n?(.*?)\n?```", text, re.S)
    return m.group(1).strip() if m else text


class ModelRefiner(_ModelTextPass):
    """Rewrites each whole draft chain with the ``refine`` prompt ([question image] + text)."""

    def refine(self, samples: list[InterleavedSample], drafts: list[str]) -> list[str | RecordError]:
        return _run_text_pass(self, "refine", samples, drafts, _strip_fences)


_VERDICT_PREFIX = r"^(?:[^:\n]{0,40}:)?[\W_]*"  # optional short "Verdict:"-style prefix, markdown
_KEEP_LINE = re.compile(_VERDICT_PREFIX + r"KEEP[\W_]*$", re.I)
_DROP_LINE = re.compile(_VERDICT_PREFIX + r"DROP[\s*_`]*(?:[:\-\u2013\u2014][\s*_`]*(.*?))?[\s*_`.]*$", re.I)


def parse_verdict(reply: str) -> Verdict:
    """Parse a judge reply (format: one line ``KEEP`` or ``DROP: <reason>``; see prompts/judge.txt).

    The last line that is a verdict wins (so a reply may reason first); case, markdown emphasis and a
    short ``Verdict:``-style prefix are tolerated. No verdict line -> drop with reason ``"unparseable judge reply"``."""
    for line in reversed(reply.strip().splitlines()):
        line = line.strip()
        if not line:
            continue
        if _KEEP_LINE.match(line):
            return Verdict(True, "", reply)
        m = _DROP_LINE.match(line)
        if m:
            reason = (m.group(1) or "").strip()
            return Verdict(False, reason or "no reason given", reply)
    return Verdict(False, "unparseable judge reply", reply)


class ModelJudge(_ModelTextPass):
    """Keeps or drops each final response with the ``judge`` prompt ([question image] + text)."""

    def judge(self, samples: list[InterleavedSample], responses: list[str]) -> list[Verdict | RecordError]:
        return _run_text_pass(self, "judge", samples, responses, parse_verdict)


def _run_text_pass(owner: Any, template: str, samples: list[InterleavedSample], chains: list[str], parse):
    """One request per sample ([question image] + rendered ``template``), batched; per-sample image errors kept."""
    out: list[Any] = [None] * len(samples)
    open_m, close_m = owner.markers
    for b in range(0, len(samples), owner.batch_size):
        idx, requests = [], []
        for k in range(b, min(b + owner.batch_size, len(samples))):
            s = samples[k]
            try:
                images = [] if s.image is None else [_load(s.image, s.name, s.image_field, owner.max_pixels)]
            except RecordError as e:
                out[k] = e
                continue
            answer = extract_boxed(chains[k]) or _answer_hint(s)
            prompt = owner.prompts.render(template, question=s.question, chain=chains[k], answer=answer,
                                          open_marker=open_m, close_marker=close_m)
            idx.append(k)
            requests.append(GenRequest(images=images, prompt=prompt))
        if requests:
            for k, reply in zip(idx, _call(owner.generator, requests)):
                s = samples[k]
                out[k] = parse(reply) if isinstance(reply, str) else _failure_error(
                    s, template, reply, {s.question_field: s.question, s.chain_field: chains[k]},
                    [s.image_field] if s.image is not None else [], f"<{template}>")
    return out


# ----------------------------------------------------------------------------------------------- readers
def _iter_json_array(path: Path, chunk_chars: int = 1 << 20) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a top-level JSON list without loading the whole file."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\r\n]*")
    with open(path, encoding="utf-8") as fh:
        buf, pos, eof, size = "", 0, False, chunk_chars

        def more() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            try:
                chunk = fh.read(size)
            except UnicodeDecodeError as e:  # a JSON list is one value: a bad byte is a file-level error
                raise LatentcheckError(f"{path}: not valid UTF-8 ({e.reason}, byte 0x{e.object[e.start]:02x}); fix "
                                       "the file, or use JSON Lines, where a bad line is only that record's "
                                       "error") from None
            if not chunk:
                eof = True
                return False
            buf, pos = buf[pos:] + chunk, 0
            return True

        def peek() -> str | None:
            nonlocal pos
            while True:
                pos = ws.match(buf, pos).end()
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return None

        if peek() != "[":
            raise LatentcheckError(f"{path}: expected a JSON list of samples")
        pos += 1
        if peek() == "]":
            return
        index = 0
        while True:
            if peek() is None:
                raise LatentcheckError(f"{path}: file ends inside the JSON list (element {index})")
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    if end == len(buf) and not eof and more():
                        continue  # a scalar may continue in the next chunk
                    break
                except json.JSONDecodeError as e:
                    size *= 2
                    if more():
                        continue
                    raise LatentcheckError(f"{path}: malformed JSON in list element {index} ({e.msg}); "
                                           "cannot continue past it") from None
            size = chunk_chars
            pos = end
            yield index, value
            index += 1
            c = peek()
            if c == ",":
                pos += 1
                if peek() == "]":
                    raise LatentcheckError(f"{path}: trailing comma after list element {index - 1}")
                continue
            if c == "]":
                return
            raise LatentcheckError(f"{path}: expected ',' or ']' after list element {index - 1}")


def _iter_json_values(path: Path) -> Iterator[tuple[str, Any | RecordError]]:
    """(where, value) for a JSON list (``name[i]``) or JSONL (``name:line``) file; bad JSONL lines -> RecordError."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith(b"["):
        for i, value in _iter_json_array(path):
            yield f"{path.name}[{i}]", value
        return
    with open(path, "rb") as fh:  # bytes: each line is decoded on its own (core.tasks.json_object)
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                yield where, json_object(line, where)
            except RecordError as e:
                yield where, e


def kind_of_subset(name: str) -> str | None:
    """Step kind implied by a Monet subset / dataset name (see module docstring), or None."""
    low = name.strip().lower()
    if _EDIT_SUBSET.search(low):
        return "edit"
    if _ZOOM_SUBSET.search(low):
        return "zoom"
    return None


def _check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise LatentcheckError(f"unknown step kind {kind!r} (expected one of {', '.join(KINDS)})")
    return kind


class _PathResolver:
    """Relative image paths against the dataset root. Without an explicit root the candidates are the input file's
    folder and its two parents (Monet-SFT-125K keeps ``<subset>/train.json`` with ``image_file_name`` relative to the
    dataset folder above it, which Monet's loader receives as ``--dataset_root``); the first that holds the file
    wins."""

    def __init__(self, roots: Sequence[Path]):
        self.roots = list(roots)

    def __call__(self, value: Any, record: str, fname: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise RecordError(record, fname, "missing or not a non-empty path string")
        p = Path(value)
        if p.is_absolute():
            if not p.exists():
                raise RecordError(record, fname, f"image file not found: {p}")
            return str(p.resolve())
        for root in self.roots:
            if (root / p).exists():
                return str((root / p).resolve())
        tried = ", ".join(str(r) for r in self.roots)
        raise RecordError(record, fname, f"image file not found: {value} (relative to {tried}; pass --dataset-root "
                                         "if the paths are relative to another folder)")


def _sample_id(raw: dict[str, Any], metadata: dict[str, Any], fallback: str, record: str) -> str:
    for source, fname in ((metadata, "metadata"), (raw, "")):
        for key in _ID_KEYS:
            value = source.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
                raise RecordError(record, f"{fname}.{key}" if fname else key, "must be a non-empty string or integer")
            return str(value)
    return fallback


def _observation_after(text: str) -> tuple[str | None, bool]:
    m = _OBS_SPAN.search(text)
    if not m:
        return None, False
    return m.group(1).strip(), not text[: m.start()].strip()


def _content_items(turn: dict[str, Any], record: str, tfield: str) -> list[dict[str, Any]]:
    content = turn.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise RecordError(record, f"{tfield}.content", "must be a list of content items")
    for j, item in enumerate(content):
        ifield = f"{tfield}.content[{j}]"
        if not isinstance(item, dict) or item.get("type") not in ("text", "image"):
            raise RecordError(record, ifield, "must be an object with type 'text' or 'image'")
        if item["type"] == "text" and not isinstance(item.get("text"), str):
            raise RecordError(record, f"{ifield}.text", "missing or not a string")
    return content


def _image_field(item: dict[str, Any], ifield: str) -> tuple[Any, str]:
    if "image_file_name" in item:
        return item["image_file_name"], f"{ifield}.image_file_name"
    return item.get("image"), f"{ifield}.image"


def _parse_monet(raw: Any, where: str, index_key: str, path: Path, resolve: _PathResolver,
                 kind: str | None) -> InterleavedSample:
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RecordError(where, "metadata", "must be an object")
    candidates = [str(metadata[k]) for k in _SUBSET_KEYS if isinstance(metadata.get(k), str) and metadata[k].strip()]
    candidates += [path.stem, path.resolve().parent.name]
    subset = next((c for c in candidates if kind_of_subset(c)), candidates[0])
    sid = _sample_id(raw, metadata, f"{subset}:{index_key}", where)
    name = f"{where} (id={sid})"
    turns = raw.get("data")
    if not isinstance(turns, list) or not turns:
        raise RecordError(name, "data", "missing or not a non-empty list of chat turns")
    user_at = None
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str):
            raise RecordError(name, f"data[{t}]", "must be an object with a string 'role'")
        if turn["role"] == "user":
            if user_at is not None:
                raise RecordError(name, f"data[{t}].role", "a second user turn (multi-turn dialogues are not "
                                  "supported)")
            user_at = t
    if user_at is None:
        raise RecordError(name, "data", "no user turn (the question)")
    q_texts, q_image, q_image_field, extra = [], None, "image", []
    for j, item in enumerate(_content_items(turns[user_at], name, f"data[{user_at}]")):
        if item["type"] == "text":
            q_texts.append(item["text"])
        else:
            value, fname = _image_field(item, f"data[{user_at}].content[{j}]")
            img = resolve(value, name, fname)
            if q_image is None:
                q_image, q_image_field = img, fname
            else:
                extra.append(img)
    question = _smart_join(q_texts).strip()
    if not question:
        raise RecordError(name, f"data[{user_at}].content", "the user turn has no question text")

    texts, steps = [""], []
    drop: tuple[str, str] | None = None
    chain_field = None
    for t in range(user_at + 1, len(turns)):
        if turns[t]["role"] != "assistant":
            continue
        chain_field = chain_field or f"data[{t}].content"
        items = _content_items(turns[t], name, f"data[{t}]")
        for j, item in enumerate(items):
            ifield = f"data[{t}].content[{j}]"
            if item["type"] == "text":
                texts[-1] = _smart_join([texts[-1], item["text"]]) if texts[-1] else item["text"]
                continue
            prev = items[j - 1] if j > 0 else None
            if drop is None and prev is not None and prev["type"] == "text" and ABS_VIS_MARKER not in prev["text"]:
                drop = ("assistant image not preceded by <abs_vis_token>",
                        f"{ifield}: the text item before this assistant image lacks {ABS_VIS_MARKER}")
            value, fname = _image_field(item, ifield)
            steps.append(Step(image=resolve(value, name, fname), field=fname))
            texts.append("")
    for step, following in zip(steps, texts[1:]):
        step.observation, step.observation_leading = _observation_after(following)
    sample_kind = kind or _check_meta_kind(metadata, name) or kind_of_subset(subset)
    if sample_kind is None:
        raise RecordError(name, "metadata", f"cannot tell the step kind (zoom/edit) from the subset name "
                          f"{subset!r}; pass kind='zoom' or 'edit' (--kind) or set metadata.kind")
    sample = InterleavedSample(id=sid, where=where, question=question, image=q_image, texts=texts, steps=steps,
                               kind=sample_kind, source=f"monet-sft/{subset}", metadata=metadata, extra_images=extra,
                               question_field=f"data[{user_at}].content", image_field=q_image_field,
                               chain_field=chain_field or "data")
    if drop is not None:
        sample.drop_reason, sample.drop_detail = drop
    return sample


def _check_meta_kind(metadata: dict[str, Any], name: str) -> str | None:
    value = metadata.get("kind")
    if value is None:
        return None
    if value not in KINDS:
        raise RecordError(name, "metadata.kind", f"must be one of {', '.join(KINDS)}, got {value!r}")
    return value


def _parse_mirage(raw: Any, where: str, path: Path, resolve: _PathResolver, kind: str | None) -> InterleavedSample:
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    core_keys = ("text_input", "text_output", "image_input", "image_output")
    metadata = {k: v for k, v in raw.items() if k not in core_keys}
    sid = _sample_id(raw, {}, f"{path.stem}:{where.rsplit(':', 1)[-1]}", where)
    name = f"{where} (id={sid})"
    for key in ("text_input", "text_output"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise RecordError(name, key, "missing or not a non-empty string")
    inputs = raw.get("image_input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise RecordError(name, "image_input", "missing (a path or a non-empty list of paths)")
    images = [resolve(v, name, f"image_input[{i}]" if isinstance(raw["image_input"], list) else "image_input")
              for i, v in enumerate(inputs)]
    outputs = raw.get("image_output")
    out_list = [outputs] if isinstance(outputs, str) else outputs
    if not isinstance(out_list, list) or not out_list:
        raise RecordError(name, "image_output", "missing (the auxiliary image path, or a list of them)")
    out_fields = [f"image_output[{i}]" for i in range(len(out_list))] if isinstance(outputs, list) \
        else ["image_output"]
    text_output = raw["text_output"]
    n_tags = text_output.count(_OUTPUT_IMAGE)
    if n_tags == 0:
        if len(out_list) != 1:
            raise RecordError(name, "text_output", f"no {_OUTPUT_IMAGE} tags for {len(out_list)} auxiliary images")
        texts = ["", text_output]  # Mirage's non-CoT layout: auxiliary image first, then the text
    elif n_tags != len(out_list):
        raise RecordError(name, "text_output", f"{n_tags} {_OUTPUT_IMAGE} tags but {len(out_list)} images in "
                          "image_output")
    else:
        texts = text_output.split(_OUTPUT_IMAGE)
    steps = [Step(image=resolve(v, name, f), field=f) for v, f in zip(out_list, out_fields)]
    for step, following in zip(steps, texts[1:]):
        step.observation, step.observation_leading = _observation_after(following)
    question = _IMAGE_PLACEHOLDER.sub("", raw["text_input"]).strip()
    if not question:
        raise RecordError(name, "text_input", "no question text besides the <image> placeholder")
    sample_kind = kind or _check_meta_kind(metadata, name) or "edit"
    return InterleavedSample(id=sid, where=where, question=question, image=images[0], texts=texts, steps=steps,
                             kind=sample_kind, source=f"mirage/{path.stem}", metadata=metadata,
                             extra_images=images[1:], question_field="text_input",
                             image_field="image_input[0]" if isinstance(raw["image_input"], list) else "image_input",
                             chain_field="text_output")


def resolve_format(path: str | os.PathLike, fmt: str) -> str:
    """Map ``auto`` to a format by the file name; validate explicit names (``toy`` = ``monet-sft``)."""
    aliases = {"monet": "monet-sft", "monet_sft": "monet-sft", "toy": "monet-sft"}
    fmt = aliases.get(fmt, fmt)
    if fmt == "auto":
        return "mirage" if str(path).endswith(".jsonl") else "monet-sft"
    if fmt not in FORMATS:
        raise LatentcheckError(f"unknown input format {fmt!r} (expected auto, {', '.join(FORMATS)})")
    return fmt


def read_interleaved(path: str | os.PathLike, fmt: str = "auto", dataset_root: str | os.PathLike | None = None,
                     kind: str | None = None) -> Iterator[InterleavedSample | BadRecord]:
    """Stream samples of a Monet-SFT (JSON list or JSONL) or Mirage (JSONL) file; bad records -> ``BadRecord``.

    The file, format, kind and dataset root are checked at call time (LatentcheckError), records lazily."""
    p = Path(path)
    if not p.is_file():
        raise LatentcheckError(f"input file not found: {p}")
    fmt, kind = resolve_format(p, fmt), _check_kind(kind)
    if dataset_root is not None:
        roots = [Path(dataset_root)]
        if not roots[0].is_dir():
            raise LatentcheckError(f"dataset root is not a folder: {roots[0]}")
    else:
        here = p.resolve().parent
        roots = [here, *list(here.parents)[:2]]
    return _read(p, fmt, kind, _PathResolver(roots))


def _read(p: Path, fmt: str, kind: str | None, resolve: _PathResolver) -> Iterator[InterleavedSample | BadRecord]:
    n = 0
    for where, raw in _iter_json_values(p):
        n += 1
        if isinstance(raw, RecordError):
            yield BadRecord(where, raw)
            continue
        try:
            if fmt == "mirage":
                yield _parse_mirage(raw, where, p, resolve, kind)
            else:
                index_key = where[len(p.name):].strip("[]:")
                yield _parse_monet(raw, where, index_key, p, resolve, kind)
        except RecordError as e:
            yield BadRecord(where, e)
    if n == 0:
        raise LatentcheckError(f"empty input: {p} has no samples")


# ----------------------------------------------------------------------------------------------- writing / resume
MONET_SYSTEM = "You are a helpful assistant."  # Monet's loader overwrites the system text with this


def monet_chat_sample(rec: dict[str, Any], src_dir: Path, dst_dir: Path) -> dict[str, Any]:
    """One build-data record as a Monet-SFT-style chat sample (``{"data": [turns], "metadata"}``): the user turn
    holds the question image(s) (``image_file_name`` relative to ``dst_dir``, the dataset root of the written file)
    and the question; the assistant turn is the text-imagination response (no intermediate images)."""
    def rel(ref: str) -> str:
        p = Path(ref) if os.path.isabs(ref) else (src_dir / ref)
        try:
            return os.path.relpath(p.resolve(), dst_dir.resolve())
        except ValueError:  # another drive (Windows)
            return str(p.resolve())

    refs = ([rec["image"]] if rec.get("image") else []) + list((rec.get("meta") or {}).get("extra_images") or [])
    user = [{"type": "image", "image_file_name": rel(r)} for r in refs] + [{"type": "text", "text": rec["question"]}]
    meta = {k: rec.get(k) for k in ("id", "answer", "source", "kind", "imagination")}
    return {"data": [{"role": "system", "content": [{"type": "text", "text": MONET_SYSTEM}]},
                     {"role": "user", "content": user},
                     {"role": "assistant", "content": [{"type": "text", "text": rec["response"]}]}],
            "metadata": meta}


def write_monet_chat(jsonl_path: str | os.PathLike, json_path: str | os.PathLike) -> Path:
    """Write the records of a build-data output as one Monet-style chat JSON list (atomically); image paths relative
    to the JSON file's folder. The JSONL stays the primary output (resume, training); this is an export of it."""
    from latentcheck.core.records import write_json_atomic

    src, dst = Path(jsonl_path), Path(json_path)
    samples = []
    with open(src, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                samples.append(monet_chat_sample(json.loads(line), src.resolve().parent, dst.resolve().parent))
    return write_json_atomic(dst, samples, indent=None)


def dropped_path_for(out_path: str | os.PathLike) -> Path:
    """``x.jsonl`` -> ``x.dropped.jsonl`` (other names: ``<name>.dropped.jsonl``)."""
    p = Path(out_path)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(f"{stem}.dropped.jsonl")


def _scan_done(lines: list, done: dict[str, set[str]], done_where: set[str]) -> None:
    """Record the (id, where) of every kept line of an output / dropped file (for resume)."""
    for _, _, _, rec in lines:
        where = rec.get("where") or (rec.get("meta") or {}).get("where")
        rid = rec.get("id")
        if rid is not None:
            done.setdefault(str(rid), set()).add(where)
        elif where:
            done_where.add(where)


def _input_position(rec: Any) -> int:
    """A record's position in the input (``name[i]`` of a JSON list, ``name:line`` of JSONL), from its ``where``."""
    where = rec.get("where") or (rec.get("meta") or {}).get("where") if isinstance(rec, dict) else None
    m = re.search(r"(\d+)\]?$", where or "")
    return int(m.group(1)) if m else -1


def _rel_image(path: str | None, out_dir: Path) -> str | None:
    if path is None:
        return None
    try:
        return os.path.relpath(path, out_dir)
    except ValueError:  # e.g. another drive on Windows
        return path


@dataclass
class _Work:
    sample: InterleavedSample
    descriptions: list[Description] | None = None
    draft: str | None = None
    response: str | None = None
    verdict: Verdict | None = None
    result: dict[str, Any] | None = None  # the output record, if kept
    dropped: dict[str, Any] | None = None  # the dropped/bad record otherwise


def _bad_record(bad: BadRecord) -> dict[str, Any]:
    return {"id": None, "where": bad.where, "reason": "bad record", "detail": str(bad.error),
            "error": bad.error.to_dict()}


def _drop(w: _Work, reason: str, detail: str | None = None, **extra: Any) -> None:
    s = w.sample
    w.dropped = {"id": s.id, "where": s.where, "reason": reason, "detail": detail, "source": s.source, **extra}


def _error(w: _Work, e: RecordError) -> None:
    _drop(w, "bad record", str(e), error=e.to_dict())


def _checked(results: list[Any], n: int, what: str) -> list[Any]:
    if len(results) != n:
        raise LatentcheckError(f"{what} returned {len(results)} results for {n} samples")
    return results


def _process_chunk(chunk: list[_Work], captioner: Captioner, refiner: Refiner | None, judge: Judge | None,
                   markers: tuple[str, str], out_dir: Path, input_path: Path) -> None:
    live = [w for w in chunk if w.dropped is None]
    described = captioner.describe([w.sample for w in live]) if live else []
    for w, desc in zip(live, _checked(described, len(live), "captioner")):
        if isinstance(desc, RecordError):
            _error(w, desc)
            continue
        desc = [Description(sanitize_description(d.text, markers), d.origin) for d in desc]
        empty = [i for i, d in enumerate(desc) if not d.text]
        if empty:
            _drop(w, "empty description", f"no description for intermediate image(s) {empty}")
            continue
        w.descriptions = desc
        w.draft = w.response = assemble(w.sample, desc, markers)
    live = [w for w in chunk if w.dropped is None]
    if refiner is not None and live:
        refined_all = refiner.refine([w.sample for w in live], [w.draft for w in live])
        for w, refined in zip(live, _checked(refined_all, len(live), "refiner")):
            if isinstance(refined, RecordError):
                _error(w, refined)
                continue
            n_before, n_after = len(parse_imagination(w.draft, markers)), len(parse_imagination(refined, markers))
            old_answer, new_answer = extract_boxed(w.draft), extract_boxed(refined)
            if not refined.strip():
                _drop(w, "empty refine reply", draft_response=w.draft)
            elif markers[0] and n_after != n_before:
                _drop(w, "refine lost the imagination markers", f"{n_before} spans before, {n_after} after",
                      response=refined, draft_response=w.draft)
            elif old_answer is not None and (new_answer or "").strip() != old_answer.strip():
                _drop(w, "refine changed the final answer", f"{old_answer!r} -> {new_answer!r}",
                      response=refined, draft_response=w.draft)
            else:
                w.response = refined.strip()
    live = [w for w in chunk if w.dropped is None]
    if judge is not None and live:
        verdicts = judge.judge([w.sample for w in live], [w.response for w in live])
        for w, verdict in zip(live, _checked(verdicts, len(live), "judge")):
            if isinstance(verdict, RecordError):
                _error(w, verdict)
            elif not verdict.keep:
                reason = verdict.reason if verdict.reason == "unparseable judge reply" else "judge dropped"
                _drop(w, reason, verdict.reason, response=w.response, judge_reply=verdict.reply)
            else:
                w.verdict = verdict
    for w in chunk:
        if w.dropped is None:
            w.result = _output_record(w, markers, out_dir, input_path, refined=refiner is not None)


def _output_record(w: _Work, markers: tuple[str, str], out_dir: Path, input_path: Path,
                   refined: bool) -> dict[str, Any]:
    s, response = w.sample, w.response or ""
    imagination = parse_imagination(response, markers) if markers[0] else [d.text for d in w.descriptions or []]
    answer, origin = extract_boxed(response), "boxed"
    if answer is None:
        meta_answer = s.metadata.get("answer")
        answer, origin = (str(meta_answer), "metadata.answer") if isinstance(meta_answer, (str, int, float)) \
            else (None, None)
    meta: dict[str, Any] = {
        "where": s.where, "input": str(input_path),
        "caption_origin": [d.origin for d in w.descriptions or []],
        "step_images": [_rel_image(st.image, out_dir) for st in s.steps],
        "answer_origin": origin, "refined": refined,
    }
    if refined:
        meta["draft_response"] = w.draft
    if w.verdict is not None:
        meta["judge_reply"] = w.verdict.reply
    if s.extra_images:
        meta["extra_images"] = [_rel_image(p, out_dir) for p in s.extra_images]
    meta["metadata"] = s.metadata
    return {"id": s.id, "image": _rel_image(s.image, out_dir), "question": s.question, "response": response,
            "imagination": imagination, "answer": answer, "source": s.source, "kind": s.kind, "meta": meta}


def build_data(input_path: str | os.PathLike, fmt: str, out_path: str | os.PathLike, captioner: Captioner,
               refiner: Refiner | None = None, judge: Judge | None = None, resume: bool = False,
               limit: int | None = None, markers: Sequence[str] = DEFAULT_MARKERS, kind: str | None = None,
               dataset_root: str | os.PathLike | None = None, chunk_size: int = 32,
               retry_errors: bool = False) -> dict[str, Any]:
    """Convert an interleaved file into text-imagination records (module docstring); returns the run's counts.

    Streams ``chunk_size`` samples at a time (caption -> assemble -> refine -> judge, each pass batched) and
    writes every output / dropped record with a flush. ``resume`` skips samples whose id (at the same input
    position) is already in the output or dropped file, after cutting a half-written last line. ``limit`` caps
    the number of records processed in this run (resume-skipped ones not counted). ``retry_errors`` (with
    ``resume``): the error records (reason ``"bad record"``) are removed from the dropped file and their samples run
    again; both files are then put back in input order.
    Returns ``{"read", "kept", "dropped", "errors", "dropped_reasons": {reason: n}, "skipped", "repaired_bytes",
    "out", "dropped_out"}`` for this run (``read = kept + dropped + errors``; ``skipped`` = resume-skipped).
    """
    markers = check_markers(markers)
    input_path, out_path = Path(input_path).resolve(), Path(out_path).resolve()
    if input_path == out_path:
        raise LatentcheckError("the output file must differ from the input file")
    if limit is not None and limit < 0:
        raise LatentcheckError(f"limit must be >= 0, got {limit}")
    if chunk_size < 1:
        raise LatentcheckError(f"chunk_size must be >= 1, got {chunk_size}")
    drop_path = dropped_path_for(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LatentcheckError(f"cannot create output folder {out_path.parent}: {e.strerror}") from None
    samples = read_interleaved(input_path, fmt, dataset_root, kind)

    done: dict[str, set[str]] = {}
    done_where: set[str] = set()
    dumps = partial(json.dumps, ensure_ascii=False)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    seen: dict[str, str] = {}
    skipped = 0
    repaired = 0

    with contextlib.ExitStack() as stack:
        files = []
        retried = 0
        for path in (out_path, drop_path):  # the one JSONL writer/resume (core.records.JsonlFile)
            f, lines, cut = JsonlFile.open(path, resume=resume, ascii=False)
            stack.enter_context(f)
            if retry_errors and path == drop_path:
                keep = [ln for ln in lines if not (isinstance(ln[3], dict) and ln[3].get("reason") == "bad record")]
                retried = len(lines) - len(keep)
                if retried:
                    f.rewrite(b"".join(ln[2] for ln in keep))
                    lines = keep
            _scan_done(lines, done, done_where)
            repaired += cut
            files.append(f)
        out_f, drop_f = files

        def flush(chunk: list[_Work | BadRecord]) -> None:
            works = [c for c in chunk if isinstance(c, _Work)]
            if works:
                _process_chunk(works, captioner, refiner, judge, markers, out_path.parent, input_path)
            for item in chunk:  # input order
                counts["read"] += 1
                if isinstance(item, BadRecord):
                    counts["errors"] += 1
                    drop_f.write_line(dumps(_bad_record(item)))
                elif item.result is not None:
                    counts["kept"] += 1
                    out_f.write_line(dumps(item.result))
                else:
                    if item.dropped["reason"] == "bad record":
                        counts["errors"] += 1
                    else:
                        counts["dropped"] += 1
                        reasons[item.dropped["reason"]] += 1
                    drop_f.write_line(dumps(item.dropped))

        chunk: list[_Work | BadRecord] = []
        processed = 0
        for item in samples:
            if limit is not None and processed >= limit:
                break
            if isinstance(item, BadRecord):
                if item.where in done_where:
                    skipped += 1
                    continue
                chunk.append(item)
            else:
                if item.where in done.get(item.id, ()):
                    skipped += 1
                    seen.setdefault(item.id, item.where)
                    continue
                first = seen.get(item.id) or next(iter(done.get(item.id, ())), None)
                if first is not None and first != item.where:
                    w = _Work(item)
                    _error(w, RecordError(item.name, "id", f"duplicate id {item.id!r} (first at {first})"))
                    chunk.append(w)
                else:
                    seen[item.id] = item.where
                    w = _Work(item)
                    if item.drop_reason is not None:
                        _drop(w, item.drop_reason, item.drop_detail)
                    elif not item.steps:
                        _drop(w, "no intermediate image", "the chain has no image to replace")
                    chunk.append(w)
            processed += 1
            if len(chunk) >= chunk_size:
                flush(chunk)
                chunk = []
        if chunk:
            flush(chunk)
        if retried:  # the re-run records were appended: restore input order in both files
            for f in files:
                f.rewrite(b"".join(ln[2] for ln in sorted(f.scan(), key=lambda ln: _input_position(ln[3]))))

    return {"read": counts["read"], "kept": counts["kept"], "dropped": counts["dropped"], "errors": counts["errors"],
            "dropped_reasons": dict(reasons), "skipped": skipped, "repaired_bytes": repaired, "retried": retried,
            "out": str(out_path), "dropped_out": str(drop_path)}
