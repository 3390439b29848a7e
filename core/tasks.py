"""The task-record schema shared by every subcommand, its validation, and streaming readers.

A task record (one JSON object per line) has:
``id`` (str), ``image`` (path relative to the data file, absolute path, base64 or data URI; may be null),
``question`` (str), ``options`` (list of >= 2 strings, or null for open questions), ``answer`` (option letter,
option text, or free text when there are no options), ``category`` (str, optional), ``bbox`` ([x, y, w, h] in
pixels, optional), ``meta`` (free dict, optional).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from latentcheck.core.errors import LatentcheckError, RecordError

LETTERS = string.ascii_uppercase
# Decode guard (decompression bombs): images above this many pixels are refused with an error record. This is NOT the
# model's pixel budget: --max-pixels sets what the processor resizes every image down to. Raise the guard with the
# environment variable MAX_PIXELS_ENV (a number of pixels); it never lowers a limit a caller passes explicitly.
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_PIXELS_ENV = "LATENTCHECK_MAX_IMAGE_PIXELS"


def image_decode_limit(limit: int | None = DEFAULT_MAX_PIXELS) -> int | None:
    """The effective decode guard: ``limit`` raised to ``$LATENTCHECK_MAX_IMAGE_PIXELS`` when that is larger
    (``None`` = no guard). A malformed variable is a user error naming it."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw or limit is None:
        return limit
    try:
        env = int(float(raw))
    except ValueError:
        raise LatentcheckError(f"{MAX_PIXELS_ENV}={raw!r} is not a number of pixels") from None
    if env < 1:
        raise LatentcheckError(f"{MAX_PIXELS_ENV} must be >= 1, got {raw!r}")
    return max(int(limit), env)


@dataclass
class Task:
    """One validated task record."""

    id: str
    question: str
    image: str | None = None
    options: list[str] | None = None
    answer: str | None = None
    category: str | None = None
    bbox: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    base_dir: str | None = None  # folder that relative image paths are resolved against

    @property
    def answer_index(self) -> int | None:
        """Index of the gold option (None for open questions or no answer)."""
        if self.options is None or self.answer is None:
            return None
        return option_index(self.answer, self.options)

    @property
    def answer_letter(self) -> str | None:
        i = self.answer_index
        return None if i is None else LETTERS[i]

    def load_image(self, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        """Decode the image (PIL, RGB), lazily; raises RecordError naming the field on failure."""
        return decode_image(self.image, self.id, self.base_dir, max_pixels=max_pixels)

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "image": self.image, "question": self.question, "options": self.options,
             "answer": self.answer, "category": self.category, "bbox": self.bbox, "meta": self.meta}
        return {k: v for k, v in d.items() if v is not None and v != {}}


def option_index(answer: str, options: list[str]) -> int | None:
    """Resolve an answer given as a letter ("B", "(B)", "B.") or as the option text."""
    a = answer.strip()
    core = a.strip("().: ")
    if len(core) == 1 and core.upper() in LETTERS[: len(options)]:
        return LETTERS.index(core.upper())
    for i, o in enumerate(options):
        if a == o or a.lower() == o.strip().lower():
            return i
    return None


def json_object(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; errors name the record and the field (``<line>`` / ``<record>``)."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(where, "<line>", f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    return raw


def validate_record(raw: Any, where: str, base_dir: str | None = None) -> Task:
    """Validate one decoded JSON value; ``where`` names the record (e.g. ``data.jsonl:12``)."""
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    rid = raw.get("id", raw.get("question_id"))
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        raise RecordError(where, "id", "missing (every record needs a non-empty 'id')")
    if not isinstance(rid, (str, int)):
        raise RecordError(where, "id", f"must be a string or integer, got {type(rid).__name__}")
    name = f"{where} (id={rid})"
    q = raw.get("question")
    if not isinstance(q, str) or not q.strip():
        raise RecordError(name, "question", "missing or not a non-empty string")
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        raise RecordError(name, "image", f"must be a path or base64 string, got {type(image).__name__}")
    options = raw.get("options")
    if options is not None:
        if not isinstance(options, list) or not all(isinstance(o, (str, int, float)) for o in options):
            raise RecordError(name, "options", "must be a list of strings")
        options = [str(o) for o in options]
        if len(options) < 2:
            raise RecordError(name, "options", f"needs at least 2 options, got {len(options)}")
        if len(options) > len(LETTERS):
            raise RecordError(name, "options", f"at most {len(LETTERS)} options, got {len(options)}")
        if len(set(options)) != len(options):
            raise RecordError(name, "options", "options must be distinct")
    answer = raw.get("answer")
    if answer is not None:
        if not isinstance(answer, (str, int, float)):
            raise RecordError(name, "answer", f"must be a string, got {type(answer).__name__}")
        answer = str(answer)
        if options is not None and option_index(answer, options) is None:
            raise RecordError(name, "answer", f"{answer!r} is neither an option letter "
                              f"(A-{LETTERS[len(options) - 1]}) nor one of the options")
    category = raw.get("category")
    if category is not None and not isinstance(category, str):
        raise RecordError(name, "category", "must be a string")
    bbox = raw.get("bbox")
    if bbox is not None:
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            raise RecordError(name, "bbox", "must be [x, y, w, h] (4 numbers, pixels)")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise RecordError(name, "bbox", "width and height must be positive")
        bbox = [float(v) for v in bbox]
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError(name, "meta", "must be an object")
    return Task(id=str(rid), question=q, image=image, options=options, answer=answer,
                category=category, bbox=bbox, meta=meta, base_dir=base_dir)


@dataclass
class BadRecord:
    """A record that failed validation, kept so the run can write an error record and continue."""

    where: str
    error: RecordError


def stream_tasks(rows: Iterable[tuple[str, Any]], convert: Callable[[Any, str], Task], source: str,
                 limit: int | None = None, strict: bool = False) -> Iterator[Task | BadRecord]:
    """Convert ``(where, raw)`` rows into tasks; bad rows yield ``BadRecord`` (raise if ``strict``).

    ``limit`` counts valid tasks. Ids must be unique. An input with no rows at all is a LatentcheckError. Every
    reader (task JSONL, benchmark formats) goes through this one loop.
    """
    seen: set[str] = set()
    n_ok = n_rows = 0
    for where, raw in rows:
        n_rows += 1
        try:
            task = convert(raw, where)
            if task.id in seen:
                raise RecordError(where, "id", f"duplicate id {task.id!r}")
            seen.add(task.id)
        except RecordError as e:
            if strict:
                raise
            yield BadRecord(where, e)
            continue
        yield task
        n_ok += 1
        if limit is not None and n_ok >= limit:
            return
    if n_rows == 0:
        raise LatentcheckError(f"empty input: {source} has no records")


def read_tasks(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
               ) -> Iterator[Task | BadRecord]:
    """Stream task records from a JSONL file (``-`` = stdin). Bad lines yield ``BadRecord`` (or raise if strict)."""
    p = str(path)
    if p != "-" and not Path(p).exists():
        raise LatentcheckError(f"data file not found: {p}")
    base_dir = None if p == "-" else str(Path(p).resolve().parent)
    name = Path(p).name if p != "-" else "<stdin>"

    def rows(fh) -> Iterator[tuple[str, str]]:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield f"{name}:{lineno}", line

    def convert(line: str, where: str) -> Task:
        return validate_record(json_object(line, where), where, base_dir)

    fh = sys.stdin if p == "-" else open(p, encoding="utf-8")
    try:
        yield from stream_tasks(rows(fh), convert, p, limit=limit, strict=strict)
    finally:
        if fh is not sys.stdin:
            fh.close()


def decode_image(image: str | None, record: str, base_dir: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Return a PIL RGB image from a path / base64 / data-URI string; errors name the record and field."""
    from PIL import Image, UnidentifiedImageError

    if image is None:
        return None
    data: bytes | None = None
    if image.startswith("data:"):
        try:
            data = base64.b64decode(image.split(",", 1)[1], validate=True)
        except (binascii.Error, IndexError):
            raise RecordError(record, "image", "invalid data URI / base64 payload") from None
    else:
        path = Path(image)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        looks_like_path = len(image) < 1024 and ("/" in image or "." in image[-6:])
        if path.exists():
            data = path.read_bytes()
        elif looks_like_path:
            raise RecordError(record, "image", f"image file not found: {path}")
        else:
            try:
                data = base64.b64decode(image, validate=True)
            except binascii.Error:
                raise RecordError(record, "image", "neither an existing file nor valid base64") from None
    limit = image_decode_limit(max_pixels)
    try:
        img = Image.open(io.BytesIO(data))
        if limit is not None and img.width * img.height > limit:
            raise RecordError(record, "image", f"image is {img.width}x{img.height} = {img.width * img.height} "
                              f"pixels, above the decode limit of {limit} pixels (a guard against decompression "
                              f"bombs; --max-pixels only sets the size the model sees; set {MAX_PIXELS_ENV} to "
                              "raise the limit)")
        img.load()
        return img.convert("RGB")
    except Image.DecompressionBombError as e:  # PIL's own guard (2 x Image.MAX_IMAGE_PIXELS) fired first
        raise RecordError(record, "image", f"image refused by Pillow's decompression-bomb guard ({e})") from None
    except UnidentifiedImageError:
        raise RecordError(record, "image", "corrupt or unreadable image (not a format Pillow recognises)") from None
    except (OSError, SyntaxError, ValueError) as e:
        detail = re.sub(r"\s*<[^>]*\bat 0x[0-9a-fA-F]+>", "", str(e)).strip()  # no memory addresses: deterministic
        raise RecordError(record, "image", f"corrupt or unreadable image ({e.__class__.__name__}"
                          + (f": {detail[:200]}" if detail else "") + ")") from None


