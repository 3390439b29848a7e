"""Helpers for the robustness tests: task files with images, the real CLI in a subprocess, record comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from latentcheck.core.records import dumps_record, strip_timing

OPTIONS = ["red", "green", "blue", "yellow"]
# One intra-op thread: tiny models are dispatch-bound, and a busy 2-core machine makes 2 threads much slower.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                  "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def task_row(i: int, image: str | None = None, **over) -> dict:
    row = {"id": f"t{i}", "image": image or f"im{i}.png", "question": "What colour is the circle?",
           "options": OPTIONS, "answer": "ABCD"[i % 4], "category": "warm" if i % 2 else "cold"}
    row.update(over)
    return row


def write_tasks(folder: Path, n: int, extra_lines: list[str] = (), name: str = "tasks.jsonl",
                sizes: bool = False) -> Path:
    """``n`` valid tasks with random PNGs (``sizes``: varied image sizes, so prompts differ in length and batches
    pad), then ``extra_lines`` verbatim."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        side = 56 + 28 * (i % 3) if sizes else 112
        Image.fromarray(rng.integers(0, 255, (side, 112, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        lines.append(json.dumps(task_row(i)))
    path = folder / name
    path.write_text("".join(line + "\n" for line in [*lines, *extra_lines]))
    return path


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "latentcheck", *map(str, args)]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m latentcheck ARGS`` in a subprocess (the real entry point and exit codes)."""
    return subprocess.run(cli_command(*args), env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=timeout)


def canonical_records(path: Path) -> list[str]:
    """Every sample / error record of a results file, timing removed, serialised as the writer does."""
    lines = Path(path).read_text().splitlines()
    assert json.loads(lines[0])["type"] == "provenance"
    return [dumps_record(strip_timing(json.loads(x))) for x in lines[1:]]


def canonical_provenance(path: Path) -> dict:
    """The provenance without timing, argv and the output folder (which legitimately differ between runs)."""
    prov = strip_timing(json.loads(Path(path).read_text().splitlines()[0]))
    prov.pop("argv", None)
    prov["config"] = {k: v for k, v in prov["config"].items() if k not in ("out", "resume", "quiet")}
    return prov


def canonical_summary(path: Path) -> dict:
    return strip_timing(json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------------------------- hostile records
# One record per kind that used to crash a whole run (issue 19), in file order after ``HOSTILE_HEAD`` valid tasks.
# Each entry: (kind, the raw line as bytes, the expected (record, field, message) of its error record, or None when
# the record is valid and must give a sample). ``{folder}`` stands for the task file's folder, ``{line}`` for the
# record's line number.
HOSTILE_HEAD = 2


def hostile_cases(folder: Path) -> list[tuple[str, bytes, tuple[str, str, str] | None]]:
    """Create the files the hostile records point at (a folder, a FIFO, a 300 MB sparse file, a 2820 x 14 image) and
    return the cases."""
    import base64
    import io

    from PIL import Image

    (folder / "adir").mkdir(exist_ok=True)
    fifo = folder / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    with open(folder / "big.png", "wb") as fh:  # sparse: no disk used
        fh.truncate(300 << 20)
    Image.new("RGB", (2820, 14), (200, 30, 30)).save(folder / "wide.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    O = OPTIONS

    def row(i: str, **kw) -> bytes:
        r = {"id": i, "image": "im0.png", "question": "What colour is the circle?", "options": O, "answer": "A"}
        r.update(kw)
        return json.dumps(r).encode()

    deep = b'{"id": "h6", "question": "Q?", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return [
        ("lone surrogate in the question", row("h1", question="colour\ud800?"),
         ("tasks.jsonl:{line} (id=h1)", "question", "not valid Unicode text (lone surrogate U+D800 at character 7)")),
        ("aspect ratio above 200", row("h2", image="wide.png"),
         ("h2", "image", "the image processor refused the image (ValueError: absolute aspect ratio must be smaller "
                         "than 200, got 201.42857142857142)")),
        ("a folder as image", row("h3", image="adir"), ("h3", "image", "not a regular file (a folder): {folder}/adir")),
        ("raw base64 image (supported)", row("h4", image=b64), None),
        ("a non-UTF-8 byte", b'{"id": "h5", "question": "caf\xe9?", "options": ["a", "b"], "answer": "A"}',
         ("tasks.jsonl:{line}", "<line>", "not valid UTF-8 (byte 0xe9 at byte column 30)")),
        ("JSON nested 100,000 deep", deep, ("tasks.jsonl:{line}", "<line>", "JSON nested deeper than 64 levels")),
        ("5000-digit integer id", b'{"id": ' + b"7" * 5000 + b', "question": "Q?"}',
         ("tasks.jsonl:{line}", "<line>", "unreadable JSON value (Exceeds the limit (4300 digits) for integer string "
                                          "conversion: value has 5000 digits)")),
        ("/dev/zero as image", row("h8", image="/dev/zero"),
         ("h8", "image", "not a regular file (a character device): /dev/zero")),
        ("a FIFO as image", row("h9", image="fifo"),
         ("h9", "image", "not a regular file (a FIFO / named pipe): {folder}/fifo")),
        ("question longer than the model's positions", row("h10", question="word " * 4000),
         ("h10", "question", "the prompt is 12050 tokens, above the limit of 4096 (the model's 4096 positions)")),
        ("300 MB file as image", row("h11", image="big.png"),
         ("h11", "image", "image file is 314572800 bytes, above the limit of 268435456 bytes (set "
                          "LATENTCHECK_MAX_IMAGE_BYTES to raise it)")),
    ]


def write_hostile(folder: Path) -> tuple[Path, list[tuple[str, tuple[str, str, str] | None]]]:
    """A task file: HOSTILE_HEAD valid tasks, every hostile record, one valid task; returns (path, [(kind, expected
    error with {line} and {folder} filled in, or None)])."""
    path = write_tasks(folder, HOSTILE_HEAD + 1)
    valid = path.read_bytes().splitlines()
    cases = hostile_cases(folder)
    lines = valid[:HOSTILE_HEAD] + [raw for _, raw, _ in cases] + [valid[HOSTILE_HEAD]]
    path.write_bytes(b"\n".join(lines) + b"\n")
    expected = []
    for n, (kind, _, exp) in enumerate(cases, HOSTILE_HEAD + 1):
        if exp is not None:
            exp = tuple(x.replace("{line}", str(n)).replace("{folder}", str(folder)) for x in exp)
        expected.append((kind, exp))
    return path, expected
