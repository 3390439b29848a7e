"""Fuzz (issue 19, point 8): a seeded generator throws 2,400 bad records of every kind at the task reader and at the
engine's input preparation (image decoding, the processor, the tokenizer, the prompt-length check). Zero crashes:
every record is an error naming a record and a field, at the reader or at preparation.

A seeded generator (numpy) rather than hypothesis: the same 2,400 records every run, no extra dependency, and each
generator is bad by construction, so "every one is an error" is a sharp check. About 10-20 s.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentcheck.core.errors import RecordError
from latentcheck.core.tasks import BadRecord, Task, read_tasks

N_RECORDS = 2400
OPTIONS = ["red", "green", "blue", "yellow"]


def _base(i: int) -> dict:
    return {"id": f"f{i}", "image": "ok.png", "question": "What colour is the circle?", "options": list(OPTIONS),
            "answer": "B"}


def _dumps(d) -> bytes:
    return json.dumps(d).encode()


# ---- line-level kinds (the reader must reject them) -------------------------------------------------------------
def _junk_value(rng):
    return [7, 3.5, True, None, [], {}, ["x"], {"a": 1}, float("nan")][rng.integers(9)]


def k_not_utf8(rng, i):
    raw = _dumps(_base(i))
    at = int(rng.integers(0, len(raw)))
    return raw[:at] + bytes([int(rng.choice([0x80, 0x9f, 0xbf, 0xc0, 0xc1, 0xf5, 0xfe, 0xff]))]) + raw[at:]


def k_truncated(rng, i):
    raw = _dumps(_base(i))
    return raw[:int(rng.integers(1, len(raw) - 1))]


def k_deep(rng, i):
    depth = int(rng.choice([65, 200, 5000, 100_000]))
    return b'{"id": "f%d", "question": "Q?", "meta": ' % i + b"[" * depth + b"]" * depth + b"}"


def k_huge_int(rng, i):
    digits = int(rng.integers(4301, 8000))
    field = ["id", "answer", "options"][rng.integers(3)]
    value = b"9" * digits if field != "options" else b"[" + b"1" * digits + b', "b"]'
    return b'{"id": "f%d", "question": "Q?", "%s": %s}' % (i, field.encode(), value) if field != "id" else \
        b'{"id": ' + value + b', "question": "Q?"}'


def k_surrogate(rng, i):
    d = _base(i)
    field = ["question", "options", "answer", "id", "category", "image"][rng.integers(6)]
    bad = "x" + chr(int(rng.integers(0xD800, 0xE000))) + "y"
    if field == "options":
        d["options"][int(rng.integers(4))] += bad
    elif field == "answer":
        d["answer"] = bad
    else:
        d[field] = bad
    return _dumps(d)


def k_wrong_type(rng, i):
    d = _base(i)
    field = ["question", "image", "options", "answer", "category", "bbox", "meta", "id"][rng.integers(8)]
    value = _junk_value(rng)
    if field == "question" and isinstance(value, str):
        value = 5
    if field in ("answer",) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = {"x": 1}
    if field == "image" and (value is None or isinstance(value, str)):
        value = 9
    if field == "options" and (value is None):
        value = "red, green"
    if field == "options" and isinstance(value, list) and len(value) < 2:
        value = [{"a": 1}, "b"]
    if field == "category" and (value is None or isinstance(value, str)):
        value = 4
    if field == "bbox" and value is None:
        value = "0,0,1,1"
    if field == "meta" and (value is None or isinstance(value, dict) or value == []):
        value = "meta"
    if field == "id" and (isinstance(value, (str, int)) and not isinstance(value, bool) or value is None):
        value = []
    d[field] = value
    return _dumps(d)


def k_missing(rng, i):
    d = _base(i)
    field = ["id", "question"][rng.integers(2)]
    if rng.integers(2):
        del d[field]
    else:
        d[field] = "   "
    return _dumps(d)


def k_options(rng, i):
    d = _base(i)
    n = int(rng.choice([0, 1, 27, 40]))
    d["options"] = [f"o{j}" for j in range(n)] if rng.integers(3) else ["same", "same", "x"]
    return _dumps(d)


def k_answer(rng, i):
    d = _base(i)
    d["answer"] = ["purple", "Z", "(E)", "", "F."][rng.integers(5)]
    return _dumps(d)


def k_bbox(rng, i):
    d = _base(i)
    d["bbox"] = [[0, 0, -1, 5], [0, 0, 0, 0], [1, 2, 3], [float("nan"), 0, 1, 1], [0, 0, float("inf"), 1],
                 [True, 0, 1, 1], ["1", 2, 3, 4]][rng.integers(7)]
    return json.dumps(d, allow_nan=True).encode()


def k_not_object(rng, i):
    return [b"[1, 2]", b'"text"', b"42", b"null", b"true"][rng.integers(5)]


def k_long_id(rng, i):
    return _dumps({**_base(i), "id": "x" * int(rng.integers(1025, 5000))})


LINE_KINDS = [k_not_utf8, k_truncated, k_deep, k_huge_int, k_surrogate, k_wrong_type, k_missing, k_options,
              k_answer, k_bbox, k_not_object, k_long_id]


# ---- preparation kinds (valid records whose input cannot be prepared) ----------------------------------------------
def image_kinds(folder: Path) -> list:
    """Generators of image references that must fail in preparation."""
    (folder / "adir").mkdir()
    os.mkfifo(folder / "fifo")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    ok = (folder / "ok.png").read_bytes()
    (folder / "trunc.png").write_bytes(ok[: len(ok) // 3])
    (folder / "loop").symlink_to(folder / "loop")
    (folder / "dangling").symlink_to(folder / "gone.png")
    with open(folder / "big.png", "wb") as fh:
        fh.truncate(300 << 20)
    Image.new("RGB", (3000, 10)).save(folder / "wide.png")
    Image.new("RGB", (10, 3000)).save(folder / "tall.png")
    Image.new("RGB", (4200, 4000)).save(folder / "huge.png")

    def path(name):
        return lambda rng, i: _dumps({**_base(i), "image": name})

    def rand_bytes_file(rng, i):
        p = folder / f"rand{i}.png"
        p.write_bytes(bytes(rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8)))
        return _dumps({**_base(i), "image": p.name})

    def b64_garbage(rng, i):
        raw = bytes(rng.integers(0, 256, int(rng.integers(2000, 4000)), dtype=np.uint8))
        s = base64.b64encode(raw).decode()
        return _dumps({**_base(i), "image": s if rng.integers(2) else "data:image/png;base64," + s[:-3] + "!"})

    def long_question(rng, i):
        return _dumps({**_base(i), "question": "word " * int(rng.integers(4100, 6000))})

    def too_long_path(rng, i):
        return _dumps({**_base(i), "image": "d/" * int(rng.integers(600, 3000)) + "x.png"})

    names = ["adir", "fifo", "/dev/zero", "/dev/null", "missing.png", "empty.png", "notes.txt", "trunc.png", "loop",
             "dangling", "big.png", "wide.png", "tall.png", "ok.png/inside.png", "huge.png", "data:image/png;base64"]
    return [path(n) for n in names] + [rand_bytes_file, b64_garbage, long_question, too_long_path]


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory) -> tuple[Path, Counter]:
    folder = tmp_path_factory.mktemp("fuzz")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(folder / "ok.png")
    kinds = LINE_KINDS + image_kinds(folder)
    rng = np.random.default_rng(19)
    lines, made = [], Counter()
    for i in range(N_RECORDS):
        kind = kinds[i % len(kinds)]
        line = kind(rng, i)
        assert b"\n" not in line
        lines.append(line)
        made[kind.__name__ if kind.__name__ != "<lambda>" else "image path"] += 1
    path = folder / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, made


def test_thousands_of_bad_records_never_crash_the_reader_or_the_input_preparation(fuzz_file, load_tiny):
    from latentcheck.core.prompts import build_prompt, task_text

    path, made = fuzz_file
    assert sum(made.values()) == N_RECORDS >= 2000
    lm = load_tiny("toy", "toy-latent")
    items = list(read_tasks(path))  # never raises on a record
    assert len(items) == N_RECORDS
    fields: Counter = Counter()
    prepared_ok = []
    for item in items:
        if isinstance(item, BadRecord):
            err = item.error
        else:
            assert isinstance(item, Task)
            try:
                build_prompt(lm, item.id, task_text(item, lm.profile), item.load_image())
            except RecordError as e:
                err = e
            else:
                prepared_ok.append(item.id)
                continue
        assert err.field and err.record and err.message, item
        assert "\n" not in err.message and " at 0x" not in err.message
        fields[err.field] += 1
    assert prepared_ok == []  # every generated record is bad: each one became an error naming its field
    assert sum(fields.values()) == N_RECORDS
    # every stage was reached: line, record fields, image decoding, the processor and the prompt-length check
    assert {"<line>", "<record>", "id", "question", "image", "options", "answer", "bbox", "meta"} <= set(fields)
