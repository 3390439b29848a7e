"""Bad input, kind by kind: a clear message naming the record and the field, an error record and the run goes on (or
stops with --strict), exit code 0 ok / 3 error records / 2 could not run, error counts by field in the summary.

Commands run through ``latentcheck.cli.app.main`` (the console entry point: real exit codes and the one-line error
on stderr) in this process; one test runs the real ``python -m latentcheck`` in a subprocess. docs/robustness.md shows
the same messages in a table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.records import read_results
from robustness_helpers import OPTIONS, run_cli, write_tasks

# (kind, task line, expected (record, field, message)) in file order; the file also starts with 2 valid tasks t0, t1
# and ends with 1 valid task t2 (written separately, see bad_data).
O = OPTIONS
BAD = [
    ("missing image", {"id": "q1", "image": "missing.png", "question": "Q?", "options": O, "answer": "A"},
     ("q1", "image", "image file not found: {folder}/missing.png")),
    ("corrupt image", {"id": "q2", "image": "corrupt.png", "question": "Q?", "options": O, "answer": "A"},
     ("q2", "image", "corrupt or unreadable image (OSError: image file is truncated)")),
    ("not an image", {"id": "q3", "image": "notes.txt", "question": "Q?", "options": O, "answer": "A"},
     ("q3", "image", "corrupt or unreadable image (not a format Pillow recognises)")),
    ("malformed JSONL line", '{"id": "q4", "question": "Q?", ',
     ("tasks.jsonl:6", "<line>", "malformed JSON (Expecting property name enclosed in double quotes at column 1)")),
    ("missing field", {"id": "q5", "image": "im0.png", "options": O, "answer": "A"},
     ("tasks.jsonl:7 (id=q5)", "question", "missing or not a non-empty string")),
    ("missing id", {"image": "im0.png", "question": "Q?", "options": O, "answer": "A"},
     ("tasks.jsonl:8", "id", "missing (every record needs a non-empty 'id')")),
    ("mistyped field", {"id": "q7", "image": "im0.png", "question": "Q?", "options": "red, green", "answer": "A"},
     ("tasks.jsonl:9 (id=q7)", "options", "must be a list of strings")),
    ("mistyped field", {"id": "q8", "image": 7, "question": "Q?", "options": O, "answer": "A"},
     ("tasks.jsonl:10 (id=q8)", "image", "must be a path or base64 string, got int")),
    ("too few options", {"id": "q9", "image": "im0.png", "question": "Q?", "options": ["red"], "answer": "A"},
     ("tasks.jsonl:11 (id=q9)", "options", "needs at least 2 options, got 1")),
    ("too many options", {"id": "q10", "image": "im0.png", "question": "Q?", "options": [f"o{i}" for i in range(27)],
                          "answer": "A"},
     ("tasks.jsonl:12 (id=q10)", "options", "at most 26 options, got 27")),
    ("answer not among options", {"id": "q11", "image": "im0.png", "question": "Q?", "options": O,
                                  "answer": "purple"},
     ("tasks.jsonl:13 (id=q11)", "answer", "'purple' is neither an option letter (A-D) nor one of the options")),
    ("image too large", {"id": "q12", "image": "huge.png", "question": "Q?", "options": O, "answer": "A"},
     ("q12", "image", "image is 4200x4000 = 16800000 pixels, above the decode limit of 16777216 pixels (a guard "
                      "against decompression bombs; --max-pixels only sets the size the model sees; set "
                      "LATENTCHECK_MAX_IMAGE_PIXELS to raise the limit)")),
    ("duplicate id", {"id": "t0", "image": "im1.png", "question": "Q?", "options": O, "answer": "A"},
     ("tasks.jsonl:15", "id", "duplicate id 't0'")),
    ("no gold answer (perturb-latent)", {"id": "q14", "image": "im0.png", "question": "Q?", "options": O},
     ("q14", "answer", "perturb-latent needs the gold answer (missing)")),
    ("no options (perturb-latent)", {"id": "q15", "image": "im0.png", "question": "Q?", "answer": "red"},
     ("q15", "options", "perturb-latent needs multiple-choice tasks (options missing)")),
]
N_VALID_HEAD = 2


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    lines = [x if isinstance(x, str) else json.dumps(x) for _, x, _ in BAD]
    path = write_tasks(folder, N_VALID_HEAD + 1, extra_lines=lines)
    rows = path.read_text().splitlines()  # move the last valid task after the bad lines
    path.write_text("\n".join(rows[:N_VALID_HEAD] + rows[N_VALID_HEAD + 1:] + [rows[N_VALID_HEAD]]) + "\n")
    (folder / "corrupt.png").write_bytes((folder / "im0.png").read_bytes()[:60])
    (folder / "notes.txt").write_text("not an image\n")
    Image.new("RGB", (4200, 4000)).save(folder / "huge.png")
    (folder / "empty.jsonl").write_text("\n\n")
    return path


def expected_errors(folder: Path) -> list[dict]:
    return [{"record": r, "field": f, "message": m.format(folder=folder)} for _, _, (r, f, m) in BAD]


def run_main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """``latentcheck ARGS`` through the console entry point in this process: (exit code, stderr)."""
    from latentcheck.cli.app import main

    monkeypatch.setattr(sys, "argv", ["latentcheck", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main()
    return int(e.value.code or 0), capsys.readouterr().err


def latent_args(ck, data, out, *extra):
    return ["perturb-latent", "--model", ck, "--profile", "toy-latent", "--force-latent", "-i", "zero",
            "--mediation", "none", "--batch-size", "2", "--n-boot", "100", "--no-plots", "--quiet", "--data", data,
            "--out", out, *extra]


def test_every_bad_record_becomes_an_error_record_naming_record_and_field_and_the_run_continues(
        ck, bad_data, tmp_path):
    """The real `python -m latentcheck` (subprocess): exit code 3, one error record per bad line in file order."""
    out = tmp_path / "run"
    done = run_cli(*latent_args(ck, bad_data, out))
    assert done.returncode == 3, done.stderr
    _, recs = read_results(out / "samples.jsonl")
    assert [r["key"] for r in recs if r["type"] == "sample"] == ["t0", "t1", "t2"]
    errors = [{k: r[k] for k in ("record", "field", "message")} for r in recs if r["type"] == "error"]
    assert errors == expected_errors(bad_data.parent)
    assert [r["type"] for r in recs] == ["sample"] * N_VALID_HEAD + ["error"] * len(BAD) + ["sample"]
    counts = json.loads((out / "summary.json").read_text())["counts"]
    by_field: dict[str, int] = {}
    for e in errors:
        by_field[e["field"]] = by_field.get(e["field"], 0) + 1
    assert counts == {"total": len(BAD) + 3, "ok": 3, "errors": len(BAD), "errors_by_field": by_field}


def test_strict_stops_at_the_first_bad_record_with_exit_2(ck, bad_data, tmp_path, monkeypatch, capsys):
    # a bad line is found when the file is read, before the model runs
    code, err = run_main(monkeypatch, capsys, *latent_args(ck, bad_data, tmp_path / "strict", "--strict"))
    assert code == 2
    assert ("error: record tasks.jsonl:6: field '<line>': malformed JSON (Expecting property name enclosed in double "
            "quotes at column 1)") in err
    # a bad image is found when its block runs: the records before it are kept (and --resume continues after it)
    rows = bad_data.read_text().splitlines()
    only_image = bad_data.parent / "image_error.jsonl"
    only_image.write_text("\n".join(rows[:N_VALID_HEAD] + [rows[N_VALID_HEAD]] + [rows[-1]]) + "\n")
    code, err = run_main(monkeypatch, capsys, *latent_args(ck, only_image, tmp_path / "strict2", "--strict"))
    assert code == 2
    assert f"error: record q1: field 'image': image file not found: {bad_data.parent}/missing.png" in err
    _, recs = read_results(tmp_path / "strict2" / "samples.jsonl")
    assert [r["key"] for r in recs] == ["t0", "t1"]


def test_a_clean_run_exits_0(ck, bad_data, tmp_path, monkeypatch, capsys):
    clean = write_tasks(tmp_path / "clean", 2)
    code, err = run_main(monkeypatch, capsys, *latent_args(ck, clean, tmp_path / "ok"))
    assert code == 0, err


USER_ERRORS = [
    ("unknown profile", ["perturb-latent", "--profile", "toy-latnet"],
     "error: unknown profile 'toy-latnet'; built-in profiles: "),
    ("unknown intervention", ["perturb-latent", "--profile", "toy-latent", "-i", "zeros"],
     "error: unknown intervention 'zeros'; valid: drop, identity, index_mean, knockout, length, near_zero, noise, "
     "noise_replace, placeholder, replay, reverse, scale, shared, shuffle, swap, zero"),
    ("unknown intervention parameter", ["perturb-latent", "--profile", "toy-latent", "-i", "noise:sgima=1"],
     "error: intervention 'noise' has no parameter 'sgima'; valid: sigma (default 0.5)"),
    ("unknown treatment", ["perturb-input", "--profile", "toy-latent", "-t", "blurr"],
     "error: unknown treatment 'blurr'; valid treatments: "),
    ("empty input", ["perturb-latent", "--profile", "toy-latent", "--data", "{folder}/empty.jsonl"],
     "error: empty input: {folder}/empty.jsonl has no records"),
    ("data file not found", ["perturb-latent", "--profile", "toy-latent", "--data", "{folder}/nope.jsonl"],
     "error: data file not found: {folder}/nope.jsonl"),
]


@pytest.mark.parametrize("kind,args,message", USER_ERRORS, ids=[k for k, _, _ in USER_ERRORS])
def test_user_and_config_errors_exit_2_with_one_line(kind, args, message, ck, bad_data, tmp_path, monkeypatch,
                                                      capsys):
    folder = str(bad_data.parent)
    args = [a.replace("{folder}", folder) for a in args]
    if "--data" not in args:
        args += ["--data", str(bad_data)]
    code, err = run_main(monkeypatch, capsys, *args, "--model", ck, "--out", tmp_path / "x", "--quiet")
    assert code == 2, err
    assert message.replace("{folder}", folder) in err
    assert "Traceback" not in err


def test_checkpoint_without_the_profiles_latent_tokens_exits_2(tiny_checkpoint, bad_data, tmp_path, monkeypatch,
                                                                capsys):
    plain = tiny_checkpoint("plain", None)
    code, err = run_main(monkeypatch, capsys, "perturb-latent", "--model", plain, "--profile", "toy-latent",
                         "--data", bad_data, "--out", tmp_path / "x", "--quiet")
    assert code == 2
    assert ("error: checkpoint tokenizer has no token '<|latent_start|>' (profile toy-latent, tokens.start); is this "
            "the right profile for this checkpoint?") in err


@pytest.mark.parametrize("command", ["perturb-input", "probe", "bench"])
def test_other_commands_record_the_same_errors_and_exit_3(command, ck, bad_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / command
    common = ["--model", ck, "--profile", "toy-latent", "--data", bad_data, "--out", out, "--quiet",
              "--batch-size", "2"]
    extra = {"perturb-input": ["-t", "identity", "--force-start", "--n-boot", "50", "--no-plots"],
             "probe": ["--no-behavioural", "--no-trained"],
             "bench": ["--n-boot", "50", "--max-new-tokens", "4"]}[command]
    code, err = run_main(monkeypatch, capsys, command, *common, *extra)
    assert code == 3, err
    results = out / ("capture" if command == "probe" else "") / "samples.jsonl"
    _, recs = read_results(results)
    got = {(r["record"], r["field"]): r["message"] for r in recs if r["type"] == "error"}
    # every validation error and every image error is reported the same way by every command; the perturb-latent
    # specific ones (gold answer, options) are not errors for these commands
    for (kind, _, _), e in zip(BAD, expected_errors(bad_data.parent)):
        if "(perturb-latent)" in kind or (command == "bench" and kind == "image too large"):
            continue  # bench decodes up to 12000 x 12000 (HR-Bench 8K), then the processor resizes
        assert got.get((e["record"], e["field"])) == e["message"], (command, e)
    assert {r["key"] for r in recs if r["type"] == "sample"} >= {"t0", "t1", "t2"}


def test_decode_limit_can_be_raised_but_not_lowered_by_the_environment(bad_data, monkeypatch):
    from latentcheck.core.tasks import decode_image

    huge = str(bad_data.parent / "huge.png")
    with pytest.raises(RecordError, match="above the decode limit of 16777216 pixels"):
        decode_image(huge, "r")
    monkeypatch.setenv("LATENTCHECK_MAX_IMAGE_PIXELS", "17000000")
    assert decode_image(huge, "r").size == (4200, 4000)
    monkeypatch.setenv("LATENTCHECK_MAX_IMAGE_PIXELS", "100")  # an explicit, larger limit wins
    assert decode_image(huge, "r", max_pixels=20_000_000).size == (4200, 4000)
    monkeypatch.setenv("LATENTCHECK_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(LatentcheckError, match="LATENTCHECK_MAX_IMAGE_PIXELS='lots' is not a number"):
        decode_image(huge, "r")
