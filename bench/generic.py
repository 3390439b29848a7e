"""The shared task JSONL (delegates to ``read_tasks``) and the streaming I/O helpers every benchmark loader uses.

Helpers: row streams for huge TSVs (``csv`` with a raised field-size limit, one row in memory at a time) and parquet
(``pyarrow`` ``iter_batches``), base64 -> data-URI wrapping (images stay undecoded until ``Task.load_image``),
streaming MD5, and :func:`stream_tasks`, which turns ``(where, raw)`` rows into ``Task | BadRecord`` with a limit,
duplicate-id detection and RecordErrors that name the row and the field.

Record locations (``where``): ``file:LINE`` for JSONL lines, ``file#N`` for the N-th (1-based) row of a TSV,
parquet or JSON array.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.tasks import LETTERS, BadRecord, Task, read_tasks, stream_tasks  # noqa: F401 (re-exported)

_IMAGE_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
    (b"BM", "image/bmp"),
)


def _mime_from_bytes(head: bytes) -> str:
    for magic, mime in _IMAGE_MAGIC:
        if head.startswith(magic):
            return mime
    return "application/octet-stream"


def data_uri(payload: str | bytes) -> str:
    """Wrap a base64 string (or raw image bytes) as a ``data:`` URI that ``decode_image`` reads lazily.

    Only the first bytes are decoded (to name the MIME type); the payload itself is not validated here -- a corrupt
    image surfaces as a RecordError when the image is loaded.
    """
    if isinstance(payload, (bytes, bytearray)):
        return f"data:{_mime_from_bytes(bytes(payload[:12]))};base64," + base64.b64encode(payload).decode("ascii")
    b64 = payload.strip()
    if b64.startswith("data:"):
        return b64
    try:
        head = base64.b64decode(b64[:16] + "=" * (-len(b64[:16]) % 4))
    except (binascii.Error, ValueError):
        head = b""
    return f"data:{_mime_from_bytes(head)};base64,{b64}"


def image_field(value: Any, where: str, field: str) -> str | None:
    """Normalise an image cell (base64 string, bytes, ``{"bytes": ..., "path": ...}`` struct, None) to a string."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return data_uri(value["bytes"])
        if value.get("path"):
            return str(value["path"])
        return None
    if isinstance(value, (bytes, bytearray)):
        return data_uri(value) if value else None
    if isinstance(value, str):
        if not value.strip():
            return None
        return data_uri(value)
    raise RecordError(where, field, f"expected a base64 string or image bytes, got {type(value).__name__}")


def raise_csv_field_limit() -> None:
    """Allow fields as large as the platform permits (base64 images in VLMEvalKit TSVs are tens of MB)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def iter_tsv_rows(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream ``(where, row_dict)`` from a VLMEvalKit-style TSV (header line, tab-separated, csv quoting)."""
    raise_csv_field_limit()
    name = Path(path).name
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not reader.fieldnames:
            return
        for i, row in enumerate(reader, 1):
            yield f"{name}#{i}", row


def iter_parquet_rows(path: str | os.PathLike, columns: list[str] | None = None,
                      batch_size: int = 8) -> Iterator[tuple[str, dict[str, Any]]]:
    """Stream ``(where, row_dict)`` from a parquet file, ``batch_size`` rows in memory at a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise LatentcheckError("reading parquet needs pyarrow: pip install 'latentcheck[bench]'") from None
    pf = pq.ParquetFile(str(path))
    present = set(pf.schema_arrow.names)
    cols = [c for c in columns if c in present] if columns is not None else None
    name = Path(path).name
    i = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
        for row in batch.to_pylist():
            i += 1
            yield f"{name}#{i}", row


class TsvImageRefs:
    """VLMEvalKit shared-image convention: an ``image`` cell of at most 64 characters names the ``index`` of the row
    that holds the base64 image (``ImageBaseDataset``). Resolved on first use with two extra streaming passes that
    keep only the referenced images in memory."""

    def __init__(self, path: str | os.PathLike, index_col: str = "index", image_col: str = "image"):
        self.path, self.index_col, self.image_col = path, index_col, image_col
        self._cache: dict[str, str] | None = None

    @staticmethod
    def is_ref(value: Any) -> bool:
        return isinstance(value, str) and 0 < len(value.strip()) <= 64

    def resolve(self, ref: str, where: str) -> str:
        if self._cache is None:
            wanted = {str(row.get(self.image_col)).strip() for _, row in iter_tsv_rows(self.path)
                      if self.is_ref(row.get(self.image_col))}
            self._cache = {}
            for _, row in iter_tsv_rows(self.path):
                idx = str(row.get(self.index_col, "")).strip()
                img = row.get(self.image_col)
                if idx in wanted and isinstance(img, str) and len(img.strip()) > 64:
                    self._cache[idx] = img
        key = ref.strip()
        if key not in self._cache:
            raise RecordError(where, self.image_col, f"refers to row index {key!r}, which holds no image")
        return self._cache[key]

    def image(self, raw: dict[str, Any], where: str) -> str | None:
        """The row's image as a data URI (following a reference if needed), or None if the cell is empty."""
        value = raw.get(self.image_col)
        if self.is_ref(value):
            return data_uri(self.resolve(value, where))
        return image_field(value, where, self.image_col)


def image_list_cell(value: Any, where: str, field: str = "image") -> list[str] | None:
    """VLMEvalKit multi-image cells (``toliststr``): a Python / JSON list literal of base64 strings -> data URIs
    (None when the cell is not a list literal)."""
    if not isinstance(value, str):
        return None
    v = value.strip()
    if not (v.startswith("[") and v.endswith("]")):
        return None
    import ast

    try:
        items = ast.literal_eval(v)
    except (ValueError, SyntaxError):
        raise RecordError(where, field, "looks like a list of images but is not a valid list literal") from None
    if not isinstance(items, list) or not all(isinstance(x, str) and x.strip() for x in items):
        raise RecordError(where, field, "must be a list of base64 strings")
    return [data_uri(x) for x in items]


def md5_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Streaming MD5 hex digest of a file."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(path: str | os.PathLike, expected: str) -> str:
    """Check a file against a known MD5 (streaming); returns the digest, raises LatentcheckError on mismatch."""
    p = Path(path)
    if not p.is_file():
        raise LatentcheckError(f"cannot checksum {p}: not a file")
    actual = md5_file(p)
    if actual.lower() != expected.lower():
        raise LatentcheckError(f"MD5 mismatch for {p}: expected {expected.lower()}, got {actual} "
                               "(wrong or corrupted download; pass verify=False to skip the check)")
    return actual


def require(raw: dict[str, Any], field: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """The value of a required source field; a RecordError naming row and field if missing, empty or mistyped."""
    value = raw.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError(where, field, "missing or empty")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RecordError(where, field, f"expected {names}, got {type(value).__name__}")
    return value


def letter_columns(raw: dict[str, Any], max_options: int = 26) -> list[str]:
    """Option texts from VLMEvalKit ``A``, ``B``, ... columns, stopping at the first empty one."""
    options = []
    for letter in LETTERS[:max_options]:
        v = raw.get(letter)
        if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
            break
        options.append(str(v))
    return options


def check_exists(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise LatentcheckError(f"data not found: {p}")
    return p


def load_generic(path: str | os.PathLike, limit: int | None = None, strict: bool = False,
                 ) -> Iterator[Task | BadRecord]:
    """The shared task JSONL (``core/tasks.py`` schema)."""
    return read_tasks(path, limit=limit, strict=strict)


# ---------------------------------------------------------------------------------------------------------------
# Prompts shared by several benchmarks
# ---------------------------------------------------------------------------------------------------------------
LLAVA_MC_SUFFIX = "Answer with the option's letter from the given choices directly."


def vlmevalkit_mcq_prompt(question: str, options: list[str] | None, hint: str | None = None) -> str:
    """VLMEvalKit ``ImageMCQDataset.build_prompt`` (generic MCQ prompt, note the space before the final newline)."""
    prompt = f"Hint: {hint}\n" if hint else ""
    prompt += f"Question: {question}\n"
    if options:
        prompt += "Options:\n" + "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options))
        prompt += "Please select the correct answer from the options above. \n"
    return prompt


QWEN_MCQ_EN = "Please select the correct answer from the options above."
QWEN_MCQ_CN = "\u8bf7\u76f4\u63a5\u56de\u7b54\u9009\u9879\u5b57\u6bcd\u3002"


def qwen2_5_vl_mcq_prompt(task: Task) -> str:
    """VLMEvalKit's Qwen2.5-VL wrapper (``Qwen2VLPromptMixin._build_mcq_prompt``): the generic MCQ layout, the
    instruction without its trailing space (Chinese instruction when the prompt contains Chinese characters), and
    the whole prompt ``rstrip``-ped."""
    import re

    prompt = f"Hint: {task.meta['hint']}\n" if task.meta.get("hint") else ""
    prompt += f"Question: {task.question}\n"
    if task.options:
        prompt += "Options:\n" + "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(task.options))
        prompt += QWEN_MCQ_CN if re.search("[\u4e00-\u9fff]", prompt) else QWEN_MCQ_EN
    return prompt.rstrip()


def generic_official_prompt(task: Task) -> str:
    """Default prompt for the shared task format: question, ``A. option`` lines, LLaVA-style letter instruction."""
    if not task.options:
        return task.question
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(task.options))
    return f"{task.question}\n{lines}\n{LLAVA_MC_SUFFIX}"


def generic_vlmevalkit_prompt(task: Task) -> str:
    return vlmevalkit_mcq_prompt(task.question, task.options, task.meta.get("hint"))


__all__ = ["data_uri", "image_field", "image_list_cell", "TsvImageRefs", "iter_tsv_rows", "iter_parquet_rows",
           "md5_file", "verify_md5", "require", "letter_columns", "stream_tasks", "check_exists", "load_generic",
           "vlmevalkit_mcq_prompt", "generic_official_prompt", "generic_vlmevalkit_prompt", "qwen2_5_vl_mcq_prompt",
           "LLAVA_MC_SUFFIX", "raise_csv_field_limit"]
