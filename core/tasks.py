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
import math
import os
import re
import stat
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
# Image files (and base64 payloads) above this many bytes are refused before they are read; raise it with
# MAX_BYTES_ENV. Generous: a 12000 x 12000 PNG of a photo is about 200 MB.
DEFAULT_MAX_IMAGE_BYTES = 256 << 20
MAX_BYTES_ENV = "LATENTCHECK_MAX_IMAGE_BYTES"
MAX_ID_CHARS = 1024


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


def json_object(line: str | bytes, where: str) -> dict[str, Any]:
    """One JSONL line as a JSON object; errors name the record and the field (``<line>`` / ``<record>``).

    Bytes are decoded as UTF-8 here, so a bad byte is an error of this line only. Nesting deeper than
    ``MAX_JSON_DEPTH`` and integers longer than Python's digit limit are errors of the line, not crashes."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(where, "<line>", f"not valid UTF-8 (byte 0x{line[e.start]:02x} at byte column "
                              f"{e.start + 1})") from None
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(where, "<line>", f"malformed JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise RecordError(where, "<line>", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # e.g. an integer above sys.get_int_max_str_digits() digits
        raise RecordError(where, "<line>", f"unreadable JSON value ({str(e).split(';')[0]})") from None
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise RecordError(where, "<line>", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return raw


MAX_JSON_DEPTH = 64


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative: never recurses)."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            depth = max(depth, d)
            stack.extend((x, d + 1) for x in v)
    return depth


def _text(value: str, where: str, field: str) -> str:
    """``value`` if it is valid Unicode text (no lone surrogates, which no tokenizer or file can hold)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RecordError(where, field, f"not valid Unicode text (lone surrogate U+{ord(value[e.start]):04X} at "
                          f"character {e.start + 1})") from None
    return value


# A field value the Python API could not write as JSON (api._tasks_file): {UNWRITABLE: reason}; the reader turns it
# into the record's error naming that field, so an in-memory row fails exactly like a bad line of a file.
UNWRITABLE = "__latentcheck_unwritable__"


def validate_record(raw: Any, where: str, base_dir: str | None = None) -> Task:
    """Validate one decoded JSON value; ``where`` names the record (e.g. ``data.jsonl:12``)."""
    if not isinstance(raw, dict):
        raise RecordError(where, "<record>", f"expected a JSON object, got {type(raw).__name__}")
    for fname, value in raw.items():
        if isinstance(value, dict) and set(value) == {UNWRITABLE}:
            raise RecordError(where, fname, str(value[UNWRITABLE]))
    rid = raw.get("id", raw.get("question_id"))
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        raise RecordError(where, "id", "missing (every record needs a non-empty 'id')")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise RecordError(where, "id", f"must be a string or integer, got {type(rid).__name__}")
    rid = _text(str(rid), where, "id")
    if len(rid) > MAX_ID_CHARS:
        raise RecordError(where, "id", f"{len(rid)} characters long, above the limit of {MAX_ID_CHARS}")
    name = f"{where} (id={rid})"
    q = raw.get("question")
    if not isinstance(q, str) or not q.strip():
        raise RecordError(name, "question", "missing or not a non-empty string")
    _text(q, name, "question")
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        raise RecordError(name, "image", f"must be a path or base64 string, got {type(image).__name__}")
    if image is not None:
        _text(image, name, "image")
    options = raw.get("options")
    if options is not None:
        if not isinstance(options, list) or not all(isinstance(o, (str, int, float)) for o in options):
            raise RecordError(name, "options", "must be a list of strings")
        options = [_text(str(o), name, f"options[{i}]") for i, o in enumerate(options)]
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
        answer = _text(str(answer), name, "answer")
        if options is not None and option_index(answer, options) is None:
            raise RecordError(name, "answer", f"{answer!r} is neither an option letter "
                              f"(A-{LETTERS[len(options) - 1]}) nor one of the options")
    category = raw.get("category")
    if category is not None and not isinstance(category, str):
        raise RecordError(name, "category", "must be a string")
    if category is not None:
        _text(category, name, "category")
    bbox = raw.get("bbox")
    if bbox is not None:
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in bbox)):
            raise RecordError(name, "bbox", "must be [x, y, w, h] (4 numbers, pixels)")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise RecordError(name, "bbox", "width and height must be positive")
        bbox = [float(v) for v in bbox]
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordError(name, "meta", "must be an object")
    return Task(id=rid, question=q, image=image, options=options, answer=answer,
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


# ------------------------------------------------------------------------------------------------ task sources
# ``--data SOURCE:WHERE`` reads tasks from something other than task JSONL: ``hf:`` (a Hugging Face ``datasets``
# dataset, below) and every benchmark format bench knows (bench registers ``vstar:``, ``hrbench:`` ... when it is
# imported). A reader takes (where, limit, strict) and streams Task | BadRecord.
TaskReader = Callable[[str, "int | None", bool], Iterator["Task | BadRecord"]]
TASK_SOURCES: dict[str, tuple[TaskReader, str]] = {}


def register_task_source(prefix: str, reader: TaskReader, doc: str = "", replace: bool = False) -> None:
    """Make ``--data PREFIX:WHERE`` read tasks with ``reader``; a taken prefix is an error unless ``replace`` (the
    benchmark registry re-registers a benchmark's source when a test or plugin re-adds it)."""
    if prefix in TASK_SOURCES and not replace:
        raise LatentcheckError(f"task source {prefix!r} is already registered")
    TASK_SOURCES[prefix] = (reader, doc)


def split_source(path: str) -> tuple[str, str] | None:
    """(prefix, where) when ``path`` names a registered task source and is not itself an existing file."""
    prefix, sep, rest = path.partition(":")
    if not sep or prefix not in TASK_SOURCES or Path(path).exists():
        return None
    return prefix, rest


def dataset_rows_to_tasks(rows: Iterable[Any], source: str, limit: int | None = None, strict: bool = False,
                          image_dir: str | os.PathLike | None = None) -> Iterator[Task | BadRecord]:
    """Tasks from dict-like rows (a list of dicts, any iterable, a ``datasets.Dataset``): the task schema's fields
    (``id`` / ``question_id``, ``question``, ``options`` or ``choices``, ``answer``, ``image``, ``category``,
    ``bbox``, ``meta``). An ``image`` that is a PIL image (what ``datasets`` decodes) becomes a PNG file in
    ``image_dir`` (or an in-memory data URI without one); a row without an id gets its row number. Bad rows are
    BadRecords naming ``source[row]`` and the field, like bad JSONL lines."""

    def convert(raw: Any, where: str) -> Task:
        if not isinstance(raw, dict):
            try:
                raw = dict(raw)
            except (TypeError, ValueError):
                raise RecordError(where, "<record>", f"expected a mapping, got {type(raw).__name__}") from None
        raw = dict(raw)
        if raw.get("id") is None and raw.get("question_id") is None:
            raw["id"] = where.rsplit("[", 1)[-1].rstrip("]")
        if raw.get("options") is None and isinstance(raw.get("choices"), (list, tuple)):
            raw["options"] = list(raw.pop("choices"))
        if isinstance(raw.get("options"), tuple):
            raw["options"] = list(raw["options"])
        image = raw.get("image")
        if image is not None and not isinstance(image, str):
            raw["image"] = _image_to_str(image, str(raw.get("id", raw.get("question_id"))), where, image_dir)
        known = {"id", "question_id", "question", "options", "answer", "image", "category", "bbox", "meta"}
        extra = {k: v for k, v in raw.items() if k not in known and _json_plain(v)}
        if extra:
            raw["meta"] = {**extra, **(raw.get("meta") or {})}
        for k in list(raw):
            if k not in known:
                raw.pop(k)
        return validate_record(raw, where, str(image_dir) if image_dir else None)

    def numbered() -> Iterator[tuple[str, Any]]:
        for i, row in enumerate(rows):
            yield f"{source}[{i}]", row

    yield from stream_tasks(numbered(), convert, source, limit=limit, strict=strict)


def _json_plain(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool)) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v))


def _image_to_str(image: Any, rid: str, where: str, image_dir: str | os.PathLike | None) -> str:
    """A PIL image (or a ``datasets`` image dict with bytes/path) -> a PNG file path (or a data URI)."""
    if isinstance(image, dict):  # datasets' undecoded Image feature: {"bytes": ..., "path": ...}
        if image.get("bytes"):
            from PIL import Image

            try:
                image = Image.open(io.BytesIO(image["bytes"]))
            except Exception:  # noqa: BLE001 - any decoder failure is this record's error
                raise RecordError(where, "image", "image bytes are not a format Pillow recognises") from None
        elif image.get("path"):
            return str(image["path"])
    if not hasattr(image, "save"):
        raise RecordError(where, "image", f"must be a path, base64 string or PIL image, got {type(image).__name__}")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    if image_dir is None:
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    import hashlib

    folder = Path(image_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (hashlib.sha256(data).hexdigest()[:24] + ".png")
    if not target.exists():
        target.write_bytes(data)
    return str(target)


def read_hf_dataset(where: str, limit: int | None = None, strict: bool = False) -> Iterator[Task | BadRecord]:
    """``--data hf:PATH_OR_NAME[@SPLIT]``: a ``datasets`` dataset saved with ``save_to_disk`` (a folder) or one in
    the local Hugging Face cache (loaded with ``HF_DATASETS_OFFLINE=1``: never downloaded). Default split: test, else
    the only one. Images are written as PNG files under ``~/.cache/latentcheck/hf-images``."""
    try:
        import datasets
    except ImportError:
        raise LatentcheckError("--data hf:... needs the `datasets` package (pip install 'latentcheck[hf]')") from None
    name, _, split = where.partition("@")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, split=split or None)
    except Exception as e:  # noqa: BLE001 - any loading failure is one line naming the dataset
        raise LatentcheckError(f"cannot open dataset {name!r} offline (saved folder or local HF cache): "
                               f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(ds, dict) or hasattr(ds, "keys") and not hasattr(ds, "column_names"):
        splits = list(ds.keys())
        chosen = split or ("test" if "test" in splits else splits[0] if len(splits) == 1 else None)
        if chosen not in splits:
            raise LatentcheckError(f"dataset {name!r} has splits {', '.join(splits)}: pick one with hf:{name}@SPLIT")
        ds = ds[chosen]
    cache = Path(os.environ.get("LATENTCHECK_CACHE", Path.home() / ".cache" / "latentcheck")) / "hf-images"
    yield from dataset_rows_to_tasks(ds, f"hf:{where}", limit=limit, strict=strict, image_dir=cache)


register_task_source("hf", read_hf_dataset, "a Hugging Face datasets dataset: hf:FOLDER (save_to_disk) or "
                     "hf:NAME[@SPLIT] from the local cache")


def read_tasks(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
               ) -> Iterator[Task | BadRecord]:
    """Stream task records from a JSONL file (``-`` = stdin) or a task source (``hf:...``, ``vstar:...``; see
    :func:`register_task_source`). Bad lines yield ``BadRecord`` (or raise if strict)."""
    p = str(path)
    source = split_source(p)
    if source is not None:
        reader, _ = TASK_SOURCES[source[0]]
        yield from reader(source[1], limit, strict)
        return
    if p != "-" and not Path(p).exists():
        raise LatentcheckError(f"data file not found: {p}")
    base_dir = None if p == "-" else str(Path(p).resolve().parent)
    name = Path(p).name if p != "-" else "<stdin>"

    def rows(fh) -> Iterator[tuple[str, bytes]]:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield f"{name}:{lineno}", line

    def convert(line: bytes, where: str) -> Task:
        return validate_record(json_object(line, where), where, base_dir)

    if p != "-" and Path(p).is_dir():
        raise LatentcheckError(f"data file is a folder, not a task file: {p}")
    fh = sys.stdin.buffer if p == "-" else open(p, "rb")  # bytes: each line is decoded on its own (json_object)
    try:
        yield from stream_tasks(rows(fh), convert, p, limit=limit, strict=strict)
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()


def image_byte_limit() -> int:
    """Largest image file / base64 payload accepted, in bytes (``$LATENTCHECK_MAX_IMAGE_BYTES`` raises it)."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_BYTES
    try:
        env = int(float(raw))
    except ValueError:
        raise LatentcheckError(f"{MAX_BYTES_ENV}={raw!r} is not a number of bytes") from None
    return max(DEFAULT_MAX_IMAGE_BYTES, env)


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO / named pipe"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _file_kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def read_image_file(path: Path, record: str, field: str = "image") -> bytes:
    """The bytes of an image file: anything but a regular file (folder, FIFO, device, socket) is refused BEFORE it is
    opened (a FIFO would block, /dev/zero never ends), and a file above :func:`image_byte_limit` before it is read.
    The check is repeated on the open descriptor, so a file swapped in between is refused too."""
    limit = image_byte_limit()
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise RecordError(record, field, f"not a regular file ({_file_kind(st.st_mode)}): {path}")

    def too_big(size: int) -> RecordError:
        return RecordError(record, field, f"image file is {size} bytes, above the limit of {limit} bytes (set "
                           f"{MAX_BYTES_ENV} to raise it)")

    if st.st_size > limit:
        raise too_big(st.st_size)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise RecordError(record, field, f"not a regular file ({_file_kind(st.st_mode)}): {path}")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise too_big(len(data))
    return data


def _b64(payload: str, record: str, what: str, invalid: str) -> bytes:
    limit = image_byte_limit()
    if len(payload) * 3 // 4 > limit:
        raise RecordError(record, "image", f"{what} decodes to about {len(payload) * 3 // 4} bytes, above the limit "
                          f"of {limit} bytes (set {MAX_BYTES_ENV} to raise it)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(record, "image", invalid) from None


def decode_image(image: str | None, record: str, base_dir: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Return a PIL RGB image from a path / base64 / data-URI string; errors name the record and field.

    Every failure of one record is a RecordError, never a crash: a missing, non-regular or oversized file, invalid
    base64, bytes Pillow cannot decode, too many pixels (decompression bombs)."""
    from PIL import Image

    if image is None:
        return None
    if image.startswith("data:"):
        if "," not in image:
            raise RecordError(record, "image", "invalid data URI (no ',' before the payload)")
        data = _b64(image.split(",", 1)[1], record, "the data URI payload", "invalid data URI / base64 payload")
    else:
        path = Path(image)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        looks_like_path = len(image) < 1024 and ("/" in image or "." in image[-6:])
        try:
            exists = os.path.lexists(path)
        except (OSError, ValueError):  # e.g. a raw base64 string: "File name too long", or a NUL character
            exists = False
        if exists:
            try:
                data = read_image_file(path, record)
            except FileNotFoundError:
                raise RecordError(record, "image", f"image file not found (dangling link?): {path}") from None
            except OSError as e:
                raise RecordError(record, "image", f"cannot read image file {path} ({e.strerror or e})") from None
        elif looks_like_path:
            raise RecordError(record, "image", f"image file not found: {path}")
        else:
            data = _b64(image, record, "the base64 image", "neither an existing file nor valid base64")
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
    except RecordError:
        raise
    except Image.DecompressionBombError as e:  # PIL's own guard (2 x Image.MAX_IMAGE_PIXELS) fired first
        raise RecordError(record, "image", f"image refused by Pillow's decompression-bomb guard ({e})") from None
    except MemoryError:
        raise RecordError(record, "image", "image too large to decode in memory") from None
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any decoder failure is this record's error
        from PIL import UnidentifiedImageError

        if isinstance(e, UnidentifiedImageError):
            raise RecordError(record, "image", "corrupt or unreadable image (not a format Pillow recognises)") from None
        detail = re.sub(r"\s*<[^>]*\bat 0x[0-9a-fA-F]+>", "", str(e)).strip()  # no memory addresses: deterministic
        raise RecordError(record, "image", f"corrupt or unreadable image ({e.__class__.__name__}"
                          + (f": {detail[:200]}" if detail else "") + ")") from None


