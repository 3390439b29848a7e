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


# --------------------------------------------------------------------------------------------- newer entry points
# `latentcheck reproduce STUDY`: a bad study file is ONE line naming the file, the section and the key, exit 2.
# Each entry: (kind, how the valid study below is spoiled, the expected message with {path} for the file).
# The spoiler is (old, new) text, bytes to write, or "folder" / "fifo" / "huge".
STUDY = """[study]
name = "hostile"
[models.toy]
default = "toy-latent"
[data.d]
default = "toy:test"
[[steps]]
id = "pl"
analysis = "perturb-latent"
model = "toy"
data = "d"
limit = 3
options = { interventions = ["zero"], mediation = [], force_latent = true }
[[tables]]
id = "t"
columns = ["A"]
[[tables.rows]]
label = "toy"
cells = [{ step = "pl", metric = "accuracy" }]
"""
STUDY_CASES: list[tuple[str, object, str]] = [
    ("invalid TOML", ("limit = 3", "limit = = 3"), "study file {path}: invalid TOML (Invalid value (at line 12, "
                                                   "column 9))"),
    ("a non-UTF-8 byte", STUDY.replace('"hostile"', '"hos\udcfftile"').encode("utf-8", "surrogateescape"),
     "study file {path}: line 2, column 12: byte 0xff is not UTF-8"),
    ("arrays nested 100,000 deep", ("limit = 3", "limit = 3\nx = " + "[" * 100_000 + "]" * 100_000),
     "study file {path}: invalid TOML (arrays or tables nested too deeply)"),
    ("a boolean where an integer belongs", ("limit = 3", "limit = true"),
     "study file {path}: [steps[0]] limit: expected int, got bool True"),
    ("a string where an integer belongs", ("limit = 3", 'limit = "3"'),
     "study file {path}: [steps[0]] limit: expected int, got str '3'"),
    ("a misspelt key", ("limit = 3", "limt = 3"), "study file {path}: [steps[0]] limt: unknown key"),
    ("a section that is not a table", None, "study file {path}: top level study: expected dict, got int 5"),
    ("an option of the wrong type", ('interventions = ["zero"]', 'interventions = "zero"'),
     "study file {path}: [steps[0] (pl)] options.interventions: expected list, got str 'zero'"),
    ("an unknown analysis option", ("force_latent = true", "force_latentt = true"),
     "study file {path}: [steps[0] (pl)] options.force_latentt: unknown option for perturb-latent (known: "
     "interventions, mediation, sigma_sweep, force_latent)"),
    ("a folder as study file", "folder", "study file {path}: is a folder"),
    ("a FIFO as study file", "fifo", "study file {path}: is not a regular file (FIFO, device or socket)"),
    ("a 17 MB study file", "huge", "study file {path}: 17825792 bytes, more than the 16777216 a study file may "
                                   "have"),
]


def study_case_file(folder: Path, kind: str) -> tuple[Path, str]:
    """Write the study of case ``kind`` ("valid study": the unspoiled one) under ``folder``; (path, message)."""
    path = folder / "study.toml"
    if kind == "valid study":
        path.write_text(STUDY)
        return path, ""
    spoil, message = next((s, m) for k, s, m in STUDY_CASES if k == kind)
    if spoil == "folder":
        path.mkdir()
    elif spoil == "fifo":
        os.mkfifo(path)
    elif spoil == "huge":
        with open(path, "wb") as fh:  # sparse: no disk used; refused before reading
            fh.truncate(17 << 20)
    elif spoil is None:
        path.write_text("study = 5\n")
    elif isinstance(spoil, bytes):
        path.write_bytes(spoil)
    else:
        path.write_text(STUDY.replace(*spoil, 1))
    return path, message.format(path=path)


# `latentcheck report FOLDER` on a corrupt summary.json: ONE line, exit 2. (kind, file content, message with {path})
REPORT_CASES: list[tuple[str, bytes, str]] = [
    ("truncated summary.json", b'{"command": "perturb-latent", "counts": {',
     "summary {path}: not valid JSON at line 1, column 42: Expecting property name enclosed in double quotes "
     "(corrupt or truncated file?)"),
    ("summary.json holding a list", b"[1, 2]", "summary {path}: expected a JSON object, got list"),
    ("summary.json with a non-UTF-8 byte", b'{"command": "b\xffd"}',
     "summary {path}: byte 14 is not UTF-8 (corrupt file?)"),
    ("summary.json nested 100,000 deep", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "summary {path}: not valid JSON (nested too deeply)"),
]
