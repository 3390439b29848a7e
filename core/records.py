"""The one result writer/reader every long-running subcommand streams per-sample results through.

File format (JSON Lines, schema ``latentcheck.results/1``):

* line 1: the provenance record (``"type": "provenance"``, see :func:`provenance`);
* then one line per sample: ``{"type": "sample", <key>: ..., ...}`` or ``{"type": "error", <key>: ..., "record",
  "field", "message"}``. Every key appears exactly once.

Robustness choices (documented here because the CLI relies on them):

* **Flush per record, fsync in batches.** Every record is written as one complete line and flushed, so it is in the
  kernel as soon as :meth:`ResultWriter.write` returns and survives SIGINT or SIGKILL of the process. ``os.fsync``
  (which only matters for an OS crash or power loss) runs every ``fsync_every`` records (default 64) or when
  ``fsync_interval`` seconds (default 2.0) have passed since the last one, whichever comes first, and on close. After a
  power loss at most that tail is lost, and ``resume`` repairs a torn last line.
* **Resume.** A torn last line (no trailing newline, or not valid JSON) is truncated away; the stored provenance's
  ``command`` and ``config`` must equal the new ones except for :data:`RESUME_IGNORED_KEYS`; keys of sample AND error
  records are ``done`` and must not be written again. With ``retry_errors=True`` the file is first rewritten
  atomically without its error lines, so those keys are retried and appear once, at the end, in the new order.
* **Serialisation.** ``json.dumps`` with insertion order (``sort_keys=False``), ASCII output (``ensure_ascii=True``,
  so any string, even one with lone surrogates, encodes) and ``allow_nan=False`` after :func:`to_jsonable` turned numpy
  / torch scalars and arrays into Python values and NaN / +-inf into ``null``. The same seed therefore gives
  byte-identical files once every ``"timing"`` key is removed (:func:`strip_timing`).
* **Data parallel.** Rank ``r`` of ``w`` takes a strided share of the items (``core.runner.run_records`` strides
  whole blocks, ``block_ranges``, so every sample is batched as in a single-process run: every rank gets a similar
  mix of early and late items, as in VLMEvalKit's item-level split), writes ``shard_path(out, r, w)``, and
  :func:`merge_shards` rebuilds the single-process file. Shard information lives only in the provenance's top-level
  ``"shard"`` field (pass
  ``shard=(rank, world_size)`` to :func:`provenance`; never put rank / world size into ``config``), which the merge
  drops, so the merged file equals a single-process run (timing aside).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from latentcheck.core.errors import LatentcheckError, RecordError

SCHEMA_VERSION = "latentcheck.results/1"
SCHEMA_FAMILY = "latentcheck.results/"

# Options that may change between an interrupted run and its resumption without changing results.
RESUME_IGNORED_KEYS: frozenset[str] = frozenset(
    {"resume", "retry_errors", "quiet", "verbose", "out", "progress", "log_level"})

# Packages whose versions go into the provenance (missing ones are omitted).
VERSION_PACKAGES: tuple[str, ...] = (
    "latentcheck", "torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "scipy",
    "scikit-learn", "pillow", "bitsandbytes", "peft", "pyarrow")

DEFAULT_FSYNC_EVERY = 64
DEFAULT_FSYNC_INTERVAL = 2.0


class IncompleteLineWarning(UserWarning):
    """A results file ends with a half-written line (an interrupted run); the line was skipped."""


# --------------------------------------------------------------------------------------------------- serialisation

def to_jsonable(obj: Any, where: str = "$") -> Any:
    """Return a JSON-safe copy: numpy/torch scalars and arrays -> Python values/lists, NaN/+-inf -> None,
    tuples/sets -> lists (sets sorted), Paths -> str, enums -> value, dataclasses / pydantic models -> dicts.

    Raises TypeError naming the JSON path (``where``) for anything else.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            name = _json_key(k, where)
            out[name] = to_jsonable(v, f"{where}.{name}")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v, f"{where}[]") for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    module = type(obj).__module__ or ""
    if module == "numpy" or module.startswith("numpy."):
        import numpy as np

        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist(), where)
        if isinstance(obj, np.generic):
            return to_jsonable(obj.item(), where)
    if module.startswith("torch") and hasattr(obj, "tolist"):
        return to_jsonable(obj.detach().cpu().tolist(), where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), where)
    if hasattr(obj, "model_dump"):  # pydantic v2
        return to_jsonable(obj.model_dump(mode="json"), where)
    raise TypeError(f"value at {where} is not JSON-serialisable: {type(obj).__name__}")


def _json_key(k: Any, where: str) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, (bool, int, float)) or type(k).__module__ == "numpy":
        return str(to_jsonable(k, where))
    raise TypeError(f"dict key at {where} is not a string: {type(k).__name__}")


def dumps_record(record: Any) -> str:
    """Serialise one record as the writer does (no newline): insertion order, ASCII, NaN/inf -> null."""
    return json.dumps(to_jsonable(record), ensure_ascii=True, allow_nan=False)


def strip_timing(obj: Any) -> Any:
    """Return a copy of ``obj`` without any key named ``"timing"`` at any depth (for determinism comparisons)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k != "timing"}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON so readers see either the old or the new file, never a partial one.

    Writes a temp file in the same folder, fsyncs it, then ``os.replace``s it over ``path``.
    """
    text = json.dumps(to_jsonable(obj), ensure_ascii=False, allow_nan=False, indent=indent) + "\n"
    return _replace_atomic(Path(path), text.encode("utf-8"))


def _replace_atomic(path: Path, data: bytes) -> Path:
    return replace_atomic_with(path, lambda fh: fh.write(data))


TEMP_PREFIX = "."  # every temp file latentcheck writes is hidden and contains TEMP_MARK
TEMP_MARK = ".tmp"


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0o666 minus the process's umask (temp files from
    ``mkstemp`` are 0o600, which would make summaries private)."""
    mask = None
    try:
        with open("/proc/self/status") as fh:  # read without changing it (os.umask would race other threads)
            for line in fh:
                if line.startswith("Umask:"):
                    mask = int(line.split()[1], 8)
                    break
    except OSError:
        pass
    if mask is None:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def replace_atomic_with(path: Path, write: Any) -> Path:
    """Create ``path`` atomically: ``write(fh)`` fills a hidden temp file in the same folder, which is fsynced, given
    the umask's file mode and ``os.replace``d over ``path``. Readers see the old file or the new one, never a partial
    one; a kill leaves at most the temp file (removed by :func:`remove_stale_temporaries`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_MARK)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the hidden temp files (``.*.tmp*``) that killed runs left in ``folder`` and below; call it only while
    holding the folder's results lock, before this run writes anything. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f"{TEMP_PREFIX}*{TEMP_MARK}*"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _fsync_dir(folder: Path) -> None:
    """Best effort: make the rename itself durable (not possible on every platform)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------ provenance

def package_versions(packages: Iterable[str] = VERSION_PACKAGES) -> dict[str, str]:
    """Python version plus installed versions of ``packages`` (missing ones omitted)."""
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def thread_settings() -> dict[str, Any]:
    """What decides how CPU kernels split their reductions (results can differ in the last digits with another
    thread count): torch's intra-op thread count, when torch is loaded (it already reflects OMP_NUM_THREADS /
    MKL_NUM_THREADS; the variables themselves are not recorded, so equal settings reached differently compare equal)."""
    out: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        out["torch_intra_op"] = int(torch.get_num_threads())
    return out


def provenance(command: str, config: dict, model: dict | None = None,
               shard: tuple[int, int] | None = None, argv: Sequence[str] | None = None) -> dict:
    """Build the provenance record (first line of every results file).

    ``config`` holds the options as given (made JSON-safe); ``model`` (id, weight hash, profile, dtype, quant) comes
    from the caller; ``versions`` and ``threads`` (:func:`thread_settings`) record what the numbers depend on;
    ``shard=(rank, world_size)`` marks a data-parallel shard (world size 1 = a plain run, no
    field). Everything is deterministic except the ``"timing"`` entry (start time).
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    record: dict[str, Any] = {
        "type": "provenance",
        "schema": SCHEMA_VERSION,
        "command": command,
        "config": to_jsonable(config, "config"),
        "model": to_jsonable(model, "model") if model is not None else None,
        "versions": package_versions(),
        "threads": thread_settings(),
        "argv": list(sys.argv if argv is None else argv),
    }
    if shard is not None and int(shard[1]) != 1:
        rank, world_size = shard
        _check_rank(rank, world_size)
        record["shard"] = {"rank": int(rank), "world_size": int(world_size)}
    record["timing"] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return record


def config_differences(stored: dict, new: dict, ignore: Iterable[str] = RESUME_IGNORED_KEYS) -> list[str]:
    """Human-readable differences between two configs (ignored keys skipped); empty when they match."""
    ignore = set(ignore)
    stored = stored or {}
    new = json.loads(dumps_record(new or {}))
    diffs = []
    for k in list(stored) + [k for k in new if k not in stored]:
        if k in ignore:
            continue
        if k not in new:
            diffs.append(f"option '{k}' was {json.dumps(stored[k])} and is now not set")
        elif k not in stored:
            diffs.append(f"option '{k}' is now {json.dumps(new[k])} but was not set")
        elif stored[k] != new[k] or type(stored[k]) is not type(new[k]):
            diffs.append(f"option '{k}' was {json.dumps(stored[k])} and is now {json.dumps(new[k])}")
    return diffs


# --------------------------------------------------------------------------------------------------------- reading

def _scan(path: Path) -> Iterator[tuple[int, int, bytes, Any]]:
    """Yield (line number, byte offset, raw line, parsed JSON or _BROKEN) for every non-empty line.

    Only the last line may be broken; a broken line elsewhere raises RecordError.
    """
    with open(path, "rb") as fh:
        offset = 0
        pending: tuple[int, int, bytes] | None = None
        for lineno, raw in enumerate(fh, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            if pending is not None:
                raise RecordError(f"{path.name}:{pending[0]}", "<line>",
                                  "malformed JSON in the middle of a results file (only the last line may be "
                                  "incomplete); the file is corrupted")
            parsed: Any = _BROKEN
            if raw.endswith(b"\n"):
                try:
                    parsed = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    parsed = _BROKEN
            if parsed is _BROKEN:
                pending = (lineno, start, raw)
                continue
            yield lineno, start, raw, parsed
        if pending is not None:
            yield pending[0], pending[1], pending[2], _BROKEN


_BROKEN = object()


def _check_provenance(obj: Any, path: Path) -> dict:
    if not isinstance(obj, dict) or obj.get("type") != "provenance":
        raise LatentcheckError(f"{path} is not a latentcheck results file: line 1 is not a provenance record")
    schema = obj.get("schema")
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_FAMILY):
        raise RecordError(f"{path.name}:1", "schema", f"unknown results schema {schema!r}")
    return obj


class ResultStream:
    """Iterate over the sample and error records of a results file.

    ``provenance`` is read at construction; ``broken_last_line`` (line number or None) is set once iteration reaches
    a half-written last line, which is skipped instead of raising.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise LatentcheckError(f"results file not found: {self.path}")
        self.broken_last_line: int | None = None
        scan = _scan(self.path)
        try:
            first = next(scan, None)
        finally:
            scan.close()
        if first is None or first[3] is _BROKEN:
            raise LatentcheckError(f"{self.path} has no complete provenance line (empty or interrupted at start)")
        self.provenance: dict = _check_provenance(first[3], self.path)

    def __iter__(self) -> Iterator[dict]:
        self.broken_last_line = None
        for i, (lineno, _, _, obj) in enumerate(_scan(self.path)):
            if i == 0:
                continue
            if obj is _BROKEN:
                self.broken_last_line = lineno
                return
            if not isinstance(obj, dict) or obj.get("type") not in ("sample", "error"):
                raise RecordError(f"{self.path.name}:{lineno}", "type",
                                  "expected a JSON object with type 'sample' or 'error'")
            yield obj


def iter_results(path: str | os.PathLike) -> ResultStream:
    """Stream records lazily; check ``.broken_last_line`` after iterating (a torn last line is skipped)."""
    return ResultStream(path)


def first_error(path: str | os.PathLike) -> dict | None:
    """The first error record of a results file (``record``, ``field``, ``message``, ...) or None: what a console
    names after "N errors" so the user sees why without opening the file."""
    try:
        for rec in ResultStream(path):
            if rec.get("type") == "error":
                return rec
    except (LatentcheckError, RecordError, OSError):
        return None
    return None


def read_results(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """Return (provenance, records). A torn last line is skipped with an :class:`IncompleteLineWarning`."""
    stream = ResultStream(path)
    records = list(stream)
    if stream.broken_last_line is not None:
        warnings.warn(f"{stream.path}:{stream.broken_last_line}: incomplete last line skipped (interrupted run; "
                      f"rerun with resume to repair)", IncompleteLineWarning, stacklevel=2)
    return stream.provenance, records


MAX_CONFIG_BYTES = 16 << 20  # a study / profile / rules file is a few kB: anything this big is not one


def read_user_text(path: str | os.PathLike, what: str, error: type[Exception] = LatentcheckError,
                   max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a small file the user names (study, profile, rules): ONE line of ``error`` ("<what> <path>:
    ...") for a missing path, a folder, FIFO or device (refused before opening: a FIFO would block), a file over
    ``max_bytes`` (refused before reading), or a byte that is not UTF-8 (its line and column)."""
    import stat as stat_

    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise error(f"{what} {p}: cannot read it ({e.strerror})") from None
    if not stat_.S_ISREG(st.st_mode):
        kind = "a folder" if stat_.S_ISDIR(st.st_mode) else "not a regular file (FIFO, device or socket)"
        raise error(f"{what} {p}: is {kind}")
    if st.st_size > max_bytes:
        raise error(f"{what} {p}: {st.st_size} bytes, more than the {max_bytes} a {what} may have")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise error(f"{what} {p}: cannot read it ({e.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise error(f"{what} {p}: line {line}, column {col}: byte 0x{data[e.start]:02x} is not UTF-8") from None


def load_user_toml(path: str | os.PathLike, what: str, error: type[Exception] = LatentcheckError) -> dict:
    """A user's TOML file (:func:`read_user_text`) parsed; invalid TOML and nesting too deep for the parser (Python's
    recursion limit) are one line of ``error`` too."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    text = read_user_text(path, what, error)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} {path}: invalid TOML ({e})") from None
    except RecursionError:
        raise error(f"{what} {path}: invalid TOML (arrays or tables nested too deeply)") from None


def read_json_object(path: str | os.PathLike, what: str = "file") -> dict:
    """A JSON file that must hold an object (summary.json, provenance.json ...): ONE ``LatentcheckError`` line naming
    the file and, for broken JSON, its line and column, instead of a traceback (a corrupt or truncated file, a byte
    that is not UTF-8, nesting too deep for the parser, a list where an object belongs)."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
        obj = json.loads(text)
    except OSError as e:
        raise LatentcheckError(f"{what} {p}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise LatentcheckError(f"{what} {p}: byte {e.start} is not UTF-8 (corrupt file?)") from None
    except json.JSONDecodeError as e:
        raise LatentcheckError(f"{what} {p}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg} "
                               "(corrupt or truncated file?)") from None
    except RecursionError:
        raise LatentcheckError(f"{what} {p}: not valid JSON (nested too deeply)") from None
    if not isinstance(obj, dict):
        raise LatentcheckError(f"{what} {p}: expected a JSON object, got {type(obj).__name__}")
    return obj


_DIGITS = None


def record_order_key(key: Any) -> tuple:
    """The canonical order of record ids: natural order (``t2`` before ``t10``, integer 9 before 10), total over mixed
    int / str ids (never a TypeError) and over ids too long for ``int()`` (digit runs compare by length, then digits,
    without conversion; integers beyond ``str()``'s digit limit sort after all others, by size). Ties between equal-looking ids of different types (``7`` and ``"7"``) break on the type."""
    import re

    global _DIGITS
    if _DIGITS is None:
        _DIGITS = re.compile(r"(\d+)")
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        key = json.dumps(key, sort_keys=True, default=str)
    if isinstance(key, int) and abs(key).bit_length() >= 10000:  # beyond str()'s digit limit: after every other
        h = format(abs(key), "x")  # number, ordered by size (bit length, then the hex digits of equal length)
        return (((0, 10 ** 9 + len(h), h, "-" if key < 0 else ""),), 0, h)
    text = str(key) if isinstance(key, int) else key
    parts = []
    for i, chunk in enumerate(_DIGITS.split(text)):
        if i % 2:  # a digit run: numeric order without int(), then the zero padding
            stripped = chunk.lstrip("0")
            parts.append((0, len(stripped), stripped, chunk))
        elif chunk:
            parts.append((1, 0, chunk, ""))
    return (tuple(parts), 0 if isinstance(key, int) else 1, text)


def in_record_order(records: Iterable[dict], key: str = "key") -> list[dict]:
    """``records`` sorted by :func:`record_order_key` of their ``key`` field (stable; a missing key sorts as None):
    the ONE order every statistic is computed in, so a summary does not depend on the input file's order, on the
    order records were completed (resume, ``--retry-errors``, data-parallel shards) or on the process count."""
    return sorted(records, key=lambda r: record_order_key(r.get(key) if isinstance(r, dict) else None))


def in_id_order(tasks: Iterable[Any]) -> list[Any]:
    """Tasks (anything with an ``id``) in the canonical record-id order (:func:`record_order_key`)."""
    return sorted(tasks, key=lambda t: record_order_key(t.id))


# ----------------------------------------------------------------------------------------------------- the writer

class JsonlFile:
    """The one append-only JSON Lines file under everything that streams (results files, build-data's outputs).

    Opens without truncating and takes a POSIX advisory lock (a second process writing the same file is refused
    and destroys nothing); :meth:`write_line` writes one complete line and flushes (so it survives SIGINT/SIGKILL),
    fsyncs every ``fsync_every`` lines or ``fsync_interval`` seconds and on close. :meth:`open` with ``resume``
    keeps the complete lines and cuts a torn last line (no newline, or not JSON) — the one resume rule; a broken
    line elsewhere is a :class:`RecordError`. ``ascii=False`` writes UTF-8 (text datasets); ``path="-"`` is stdout.
    """

    def __init__(self, path: str | os.PathLike, fsync_every: int = DEFAULT_FSYNC_EVERY,
                 fsync_interval: float = DEFAULT_FSYNC_INTERVAL, ascii: bool = True):
        self.to_stdout = str(path) == "-"
        self.path: Path | None = None if self.to_stdout else Path(path)
        self.ascii = ascii
        self.fsync_every = max(1, int(fsync_every))
        self.fsync_interval = float(fsync_interval)
        self._since_sync = 0
        self._last_sync = time.monotonic()
        self._broken = False
        self._fh: Any = sys.stdout if self.to_stdout else None
        if not self.to_stdout:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open_locked()

    @classmethod
    def open(cls, path: str | os.PathLike, resume: bool = False, **kwargs: Any) -> tuple["JsonlFile", list, int]:
        """(file, complete lines kept as (line number, offset, raw bytes, parsed JSON), bytes cut from a torn
        last line). Without ``resume`` (or for stdout) the file starts empty."""
        f = cls(path, **kwargs)
        if f.to_stdout or not resume:
            if not f.to_stdout:
                f.truncate(0)
            return f, [], 0
        try:
            lines, cut = f.repair()
        except BaseException:
            f.close()
            raise
        return f, lines, cut

    def _open_locked(self) -> None:
        assert self.path is not None
        self._fh = open(self.path, "a+b")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            raise LatentcheckError(f"{self.path} is being written by another latentcheck process") from None

    def scan(self) -> list[tuple[int, int, bytes, Any]]:
        """Every non-empty line as (line number, offset, raw, parsed JSON or the broken-line marker)."""
        assert self.path is not None
        return list(_scan(self.path))

    def repair(self) -> tuple[list[tuple[int, int, bytes, Any]], int]:
        """Cut a torn last line (and trailing blank lines); returns (complete lines, bytes cut)."""
        assert self.path is not None
        lines = self.scan()
        size = self.path.stat().st_size
        if lines and lines[-1][3] is _BROKEN:
            lines.pop()
        keep = lines[-1][1] + len(lines[-1][2]) if lines else 0
        self.truncate(keep)
        return lines, size - keep

    def truncate(self, size: int) -> None:
        self._fh.truncate(size)
        self.sync()

    def rewrite(self, data: bytes) -> None:
        """Replace the whole file atomically with ``data`` (then keep appending to it)."""
        assert self.path is not None
        _replace_atomic(self.path, data)
        self._fh.close()
        self._open_locked()
        self.sync()

    def write_line(self, line: str, sync: bool | None = None) -> None:
        """Write ``line`` + newline and flush; fsync now (``sync=True``), never (False) or by the batch policy."""
        if self._fh is None:
            raise LatentcheckError("result writer is closed")
        if self._broken:
            raise LatentcheckError("result writer was interrupted in the middle of a line; rerun with resume")
        try:
            if self.to_stdout:
                self._fh.write(line + "\n")
            else:
                self._fh.write((line + "\n").encode("ascii" if self.ascii else "utf-8"))
            self._fh.flush()
        except BaseException:
            self._broken = True
            raise
        self._since_sync += 1
        due = self._since_sync >= self.fsync_every or time.monotonic() - self._last_sync >= self.fsync_interval
        if sync or (sync is None and due):
            self.sync()

    def sync(self) -> None:
        self._since_sync = 0
        self._last_sync = time.monotonic()
        if self.to_stdout or self._fh is None:
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Flush, fsync and close (stdout is flushed, not closed)."""
        if self._fh is None:
            return
        try:
            if self.to_stdout:
                self._fh.flush()
            else:
                self.sync()
                self._fh.close()
        finally:
            self._fh = None

    def __enter__(self) -> "JsonlFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def input_digest(payload: Any) -> str:
    """A short sha256 of what a record was computed from (``payload``: a task's fields, or a bad record's position
    and error), stored in every record as ``input_sha256`` so that resuming notices an input line that changed."""
    import hashlib

    return hashlib.sha256(dumps_record(payload).encode("ascii")).hexdigest()[:16]


def refuse_existing_results(path: Path) -> None:
    """Raise (exit code 2) when ``path`` holds another run's records: a fresh run never replaces results without
    ``--overwrite`` (``--resume`` continues them)."""
    try:
        if not path.exists() or path.stat().st_size == 0:
            return
        stream = ResultStream(path)
        what = f"a '{stream.provenance.get('command')}' run"
        n = sum(1 for _ in _scan(path)) - 1
    except (LatentcheckError, OSError, ValueError):
        what, n = "a file latentcheck cannot read as results", None
    raise LatentcheckError(f"{path} already holds {what}" + (f" ({n} records)" if n is not None else "")
                           + "; pass --resume to continue it, or --overwrite to replace it")


class ResultWriter:
    """Append-only JSONL writer with provenance, per-record flush, resume and duplicate protection.

    ``ResultWriter(path, provenance, resume=False, key="key")``; ``path="-"`` writes to stdout (no resume).
    A fresh run (``resume=False``) refuses a file that already holds records unless ``overwrite``; it truncates only
    after it holds the file's lock, so a run locked out destroys nothing. ``fresh`` tells whether the file was
    (re)started. Use as a context manager. The file itself is a :class:`JsonlFile` (locking, flush, fsync batching,
    torn-line repair).

    ``inputs`` ({key: input digest}, see :func:`input_digest`): on resume, a stored record whose key is no longer an
    input, or whose ``input_sha256`` differs from the input's digest now, means the input changed since it was
    processed: with ``retry_errors`` such records are dropped (and rerun, like error records), otherwise resuming is
    refused with a message naming them.
    """

    def __init__(self, path: str | os.PathLike, provenance: dict, resume: bool = False, key: str = "key",
                 retry_errors: bool = False, fsync_every: int = DEFAULT_FSYNC_EVERY,
                 fsync_interval: float = DEFAULT_FSYNC_INTERVAL,
                 ignore_keys: Iterable[str] = RESUME_IGNORED_KEYS, overwrite: bool = False,
                 inputs: dict[Any, str] | None = None):
        if not isinstance(provenance, dict) or provenance.get("type") != "provenance":
            raise TypeError("provenance must be a dict built by records.provenance()")
        self.key = key
        self.provenance = provenance
        self.done: set[Any] = set()
        self.counter = SummaryCounter()
        self.resumed = 0  # records already in the file when resuming
        self.repaired = False  # a torn last line was truncated
        self.dropped: list[Any] = []  # keys removed on resume for a retry (error records, changed inputs)
        self.fresh = True  # the file was started (provenance written) by this writer
        self._inputs = inputs
        if str(path) == "-" and resume:
            raise LatentcheckError("cannot resume when writing to stdout (--out -); write to a file instead")
        self._file = JsonlFile(path, fsync_every=fsync_every, fsync_interval=fsync_interval)
        self.path: Path | None = self._file.path
        if self._file.to_stdout:
            self._file.write_line(dumps_record(provenance), sync=False)
            return
        try:
            if resume and self.path.stat().st_size > 0:
                self._resume(retry_errors, set(ignore_keys))
            else:
                if not overwrite:
                    refuse_existing_results(self.path)
                self._start_fresh()
        except BaseException:
            self._file.close()
            raise

    def _start_fresh(self) -> None:
        self._file.truncate(0)
        self._file.write_line(dumps_record(self.provenance), sync=True)

    # -- resume -------------------------------------------------------------------------------------------------
    def _resume(self, retry_errors: bool, ignore: set[str]) -> None:
        assert self.path is not None
        lines = self._file.scan()
        if not lines or lines[0][3] is _BROKEN:  # interrupted while writing the provenance: nothing to keep
            self._start_fresh()
            return
        stored = _check_provenance(lines[0][3], self.path)
        self._check_compatible(stored, ignore)
        self.fresh = False
        if lines[-1][3] is _BROKEN:
            self.repaired = True
            lines.pop()
        keep: list[bytes] = [lines[0][2]]
        stale: list[str] = []
        for lineno, _, raw, obj in lines[1:]:
            where = f"{self.path.name}:{lineno}"
            if not isinstance(obj, dict) or obj.get("type") not in ("sample", "error"):
                raise RecordError(where, "type", "expected a JSON object with type 'sample' or 'error'")
            if self.key not in obj:
                raise RecordError(where, self.key, "missing key field; was the file written with another key?")
            k = obj[self.key]
            changed = None
            if self._inputs is not None:
                if k not in self._inputs:
                    changed = f"{k!r} (no longer in the input)"
                elif obj.get("input_sha256") is not None and obj["input_sha256"] != self._inputs[k]:
                    changed = f"{k!r} (its input line changed)"
            if retry_errors and (obj["type"] == "error" or changed):
                self.dropped.append(k)
                continue
            if changed:
                stale.append(changed)
            if obj[self.key] in self.done:
                raise RecordError(where, self.key, f"duplicate key {obj[self.key]!r} in the results file")
            self.done.add(obj[self.key])
            self.counter.add(obj)
            keep.append(raw)
        if stale:
            raise LatentcheckError(f"cannot resume {self.path}: the input changed since these records were written: "
                                   f"{', '.join(stale[:3])}" + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
                                   + " (add --retry-errors to run them again, or start over with --overwrite)")
        self.resumed = len(keep) - 1
        if len(keep) != len(lines):  # retry_errors: rewrite atomically without the dropped lines
            self._file.rewrite(b"".join(keep))
        else:  # drop a torn tail (and any trailing blank lines) so appends start on a fresh line
            last_offset, last_raw = lines[-1][1], lines[-1][2]
            self._file.truncate(last_offset + len(last_raw))

    def _check_compatible(self, stored: dict, ignore: set[str]) -> None:
        name = self.path
        if stored.get("schema") != SCHEMA_VERSION:
            raise LatentcheckError(f"cannot resume {name}: it uses schema {stored.get('schema')!r}, this version "
                                   f"writes {SCHEMA_VERSION!r}; rerun without --resume")
        if stored.get("command") != self.provenance.get("command"):
            raise LatentcheckError(f"cannot resume {name}: it was written by '{stored.get('command')}', not "
                                   f"'{self.provenance.get('command')}'")
        diffs = config_differences(stored.get("config") or {}, self.provenance.get("config") or {}, ignore)
        old_hash = (stored.get("model") or {}).get("weight_hash")
        new_hash = (self.provenance.get("model") or {}).get("weight_hash")
        if old_hash and new_hash and old_hash != new_hash:
            diffs.append(f"model weight hash was {old_hash} and is now {new_hash}")
        old_shard, new_shard = stored.get("shard"), json.loads(dumps_record(self.provenance.get("shard")))
        if old_shard != new_shard:
            diffs.append(f"data-parallel shard was {old_shard} and is now {new_shard}")
        if diffs:
            raise LatentcheckError(f"cannot resume {name}: " + "; ".join(diffs)
                                   + " (rerun with the original options, or without --resume to start over)")

    # -- writing ------------------------------------------------------------------------------------------------
    def write(self, record: dict) -> dict:
        """Append one sample record (``"type": "sample"`` added first if missing); returns what was written."""
        if not isinstance(record, dict):
            raise TypeError(f"record must be a dict, got {type(record).__name__}")
        out = record if "type" in record else {"type": "sample", **record}
        if out["type"] not in ("sample", "error"):
            raise RecordError(str(out.get(self.key, "?")), "type", f"must be 'sample' or 'error', got {out['type']!r}")
        self._check_key(out)
        self._file.write_line(dumps_record(out))
        self.done.add(out[self.key])
        self.counter.add(out)
        return out

    def write_error(self, key: Any, record_where: str, field: str, message: str, **extra: Any) -> dict:
        """Append ``{"type": "error", <key>, "record", "field", "message", **extra}`` for a failed sample."""
        return self.write({"type": "error", self.key: key, "record": record_where, "field": field,
                           "message": message, **extra})

    def _check_key(self, record: dict) -> None:
        if self.key not in record:
            raise RecordError("<result>", self.key, "result record has no key field")
        k = record[self.key]
        if not isinstance(k, (str, int)) or isinstance(k, bool):
            raise RecordError(str(k), self.key, f"key must be a string or integer, got {type(k).__name__}")
        if k in self.done:
            raise RecordError(str(k), self.key, f"key {k!r} was already written to "
                              f"{self.path or '<stdout>'} (duplicate result)")

    def close(self) -> None:
        """Flush, fsync and close (stdout is flushed, not closed)."""
        self._file.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------------- summary

class SummaryCounter:
    """Count ok (sample) and error records, errors broken down by field."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.errors_by_field: Counter[str] = Counter()

    def add(self, record: dict) -> None:
        if record.get("type") == "error":
            self.errors += 1
            self.errors_by_field[str(record.get("field"))] += 1
        elif record.get("type", "sample") == "sample":
            self.ok += 1

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> "SummaryCounter":
        counter = cls()
        for r in records:
            counter.add(r)
        return counter

    @property
    def total(self) -> int:
        return self.ok + self.errors

    def as_dict(self) -> dict:
        return {"total": self.total, "ok": self.ok, "errors": self.errors,
                "errors_by_field": dict(sorted(self.errors_by_field.items()))}


# ------------------------------------------------------------------------------------------------------ sharding

def _check_rank(rank: int, world_size: int) -> None:
    if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
        raise LatentcheckError(f"invalid data-parallel rank {rank} of world size {world_size}")


def shard_path(path: str | os.PathLike, rank: int, world_size: int) -> Any:
    """``out.jsonl`` -> ``out.rank0-of-2.jsonl`` (unchanged when world_size == 1); same type as ``path``."""
    _check_rank(rank, world_size)
    if world_size == 1:
        return path
    p = Path(path)
    sharded = p.with_name(f"{p.stem}.rank{rank}-of-{world_size}{p.suffix}")
    return sharded if isinstance(path, Path) else str(sharded)


def merge_shards(shard_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike, order: Sequence[Any],
                 key: str = "key") -> SummaryCounter:
    """Merge data-parallel shards into one file equal to a single-process run; returns the record counts.

    The provenance comes from the rank-0 shard with its ``"shard"`` field removed; all shards must share the same
    provenance otherwise (timing and argv aside). Records are ordered by ``order`` (keys); a key missing from every
    shard, present twice, or not in ``order`` raises. The output is written atomically.
    """
    if not shard_paths:
        raise LatentcheckError("no shard files to merge")
    streams = [ResultStream(p) for p in shard_paths]
    provs = [s.provenance for s in streams]
    shards = [p.get("shard") or {"rank": 0, "world_size": 1} for p in provs]
    ranks = sorted(int(sh.get("rank", -1)) for sh in shards)
    sizes = {sh.get("world_size") for sh in shards}
    if sizes != {len(streams)} or ranks != list(range(len(streams))):
        raise LatentcheckError(f"shards do not form a complete data-parallel run: ranks {ranks}, world sizes "
                               f"{sorted(map(str, sizes))}, {len(streams)} files")
    for s in streams[1:]:
        diffs = config_differences(provs[0].get("config") or {}, s.provenance.get("config") or {})
        if _comparable(s.provenance) != _comparable(provs[0]) or diffs:
            raise LatentcheckError(f"cannot merge {s.path}: its provenance differs from the rank-0 shard"
                                   + (f" ({'; '.join(diffs)})" if diffs else ""))
    rank0 = next(i for i, sh in enumerate(shards) if sh["rank"] == 0)
    merged_prov = _normalised(provs[rank0])

    wanted = set(order)
    if len(wanted) != len(order):
        dup = next(k for k, c in Counter(order).items() if c > 1)
        raise LatentcheckError(f"merge order lists key {dup!r} twice")
    lines: dict[Any, bytes] = {}
    counter = SummaryCounter()
    for s in streams:
        for lineno, _, raw, obj in list(_scan(s.path))[1:]:
            where = f"{s.path.name}:{lineno}"
            if obj is _BROKEN:
                raise RecordError(where, "<line>", "incomplete last line: that shard did not finish; resume it first")
            if not isinstance(obj, dict) or key not in obj:
                raise RecordError(where, key, "record has no key field")
            k = obj[key]
            if k not in wanted:
                raise RecordError(where, key, f"key {k!r} is not in the expected order")
            if k in lines:
                raise RecordError(where, key, f"key {k!r} appears in more than one shard record")
            lines[k] = raw
            counter.add(obj)
    missing = [k for k in order if k not in lines]
    if missing:
        raise LatentcheckError(f"cannot merge: {len(missing)} key(s) missing from every shard, e.g. "
                               f"{', '.join(map(repr, missing[:5]))}; resume the unfinished shards first")
    data = (dumps_record(merged_prov) + "\n").encode("ascii") + b"".join(lines[k] for k in order)
    _replace_atomic(Path(out_path), data)
    return counter


def write_shard_from(path: str | os.PathLike, provenance: dict, records: Iterable[dict]) -> Path:
    """Atomically write a results file from a provenance record and already-serialised-compatible records (used to
    resume a run under another data-parallel layout: the records a process already has become its file)."""
    if not isinstance(provenance, dict) or provenance.get("type") != "provenance":
        raise TypeError("provenance must be a dict built by records.provenance()")
    data = "".join(dumps_record(r) + "\n" for r in [provenance, *records]).encode("ascii")
    return _replace_atomic(Path(path), data)


def _normalised(prov: dict) -> dict:
    """Provenance with world-size-dependent fields removed (what a single-process run would write)."""
    return {k: v for k, v in prov.items() if k != "shard"}


def _comparable(prov: dict) -> dict:
    return {k: v for k, v in prov.items() if k not in ("shard", "timing", "argv", "config")}
