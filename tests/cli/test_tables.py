"""Tables at 80 columns (a log file, a pipe): never wider than the console, never a number split across lines.
Snapshots live in tests/cli/snapshots/ (regenerate with LATENTCHECK_UPDATE_SNAPSHOTS=1 after a deliberate change)."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest
from rich.table import Table

from latentcheck.cli.tables import FittingConsole, fit_table, natural_width

SNAPSHOTS = Path(__file__).parent / "snapshots"


def render(table: Table, width: int = 80) -> str:
    buf = io.StringIO()
    FittingConsole(file=buf, width=width, force_terminal=False, color_system=None).print(table)
    return buf.getvalue()


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("LATENTCHECK_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed:\n{text}"


def perturb_latent_like() -> tuple[Table, list[list[str]]]:
    """The perturb-latent table's columns (11) with realistic values."""
    t = Table(title="perturb-latent: toy-latent (profile toy-latent), n=200, chance 0.25")
    heads = ("intervention", "n", "accuracy", "delta acc [95% CI]", "McNemar p", "answer flips", "delta log p(gold)",
             "KL(base||int)", "degen.", "trig.", "latents")
    for h in heads:
        t.add_column(h, justify="left" if h == "intervention" else "right")
    rows = [["baseline", "200", "0.915", "-", "-", "-", "-", "-", "0.00", "1.00", "4.0"],
            ["zero", "200", "0.250", "-0.665 [-0.730, -0.600]", "1.2e-38", "0.71", "-4.991 [-5.928, -3.944]",
             "1.2345", "0.00", "1.00", "4.0"],
            ["noise:sigma=0.5@0,1", "200", "0.910", "-0.005 [-0.020, +0.010]", "1", "0.01",
             "-0.004 [-0.012, +0.000]", "0.0001", "0.00", "1.00", "4.0"],
            ["placeholder", "200", "0.905", "-0.010 [-0.030, +0.005]", "0.375", "0.02", "+0.012 [-0.001, +0.030]",
             "0.0021", "0.00", "1.00", "4.0"]]
    for r in rows:
        t.add_row(*r)
    return t, rows


def assert_readable(text: str, rows: list[list[str]], width: int = 80) -> None:
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= width, max(len(ln) for ln in lines)
    body = "\n".join(lines)
    for r in rows:
        for cell in r:  # every value whole on one line: keys never cut to `nois...`, numbers never split
            assert any(cell in ln for ln in lines), (cell, body)
    assert "…" not in body and "..." not in body


def test_wide_table_is_cut_into_column_groups_with_the_key_repeated():
    t, rows = perturb_latent_like()
    assert natural_width(FittingConsole(width=80), t) > 80
    text = render(t)
    assert_readable(text, rows)
    assert text.count("intervention") == 3 and "part 1 of 3" in text
    check_snapshot("perturb_latent_80.txt", text)


def test_table_that_fits_is_printed_whole():
    t = Table(title="bench")
    for h in ("benchmark", "n", "accuracy [95% CI]"):
        t.add_column(h)
    t.add_row("vstar", "191", "0.628 [0.557, 0.694]")
    text = render(t)
    assert_readable(text, [["vstar", "191", "0.628 [0.557, 0.694]"]])
    assert "part 1" not in text
    check_snapshot("small_80.txt", text)


def test_too_wide_for_any_column_group_is_transposed():
    t = Table(title="caption-imagine run")
    for h in ("model", "imagination (first words)", "answer"):
        t.add_column(h)
    long = " ".join(["the red square sits left of the blue circle"] * 2)
    t.add_row("/scratch/ckpt/toy-capimagine-run-2026-12-02/step-4000", long, "B")
    text = render(t, width=60)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= 60
    assert "model: /scratch/ckpt/toy-capimagine-run-2026-12-02/step-4000" in lines
    assert re.search(r"^\s+answer\s+B\s*$", text, re.M)
    check_snapshot("transposed_60.txt", text)


@pytest.mark.parametrize("width", [40, 60, 80, 100, 160])
def test_no_width_splits_a_value(width):
    t, rows = perturb_latent_like()
    text = render(t, width=width)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= width
    for r in rows:
        for cell in r:
            if len(cell) <= width - 20:
                assert any(cell in ln for ln in lines), (width, cell)


def test_fit_table_leaves_a_fitting_table_alone():
    t, _ = perturb_latent_like()
    assert fit_table(t, 500, FittingConsole(width=500)) is t


def test_render_result_is_the_common_end_of_every_analysis_command(tmp_path):
    """render_result: the final line (counts, samples file, summary, results.json, figures) and the first error record
    of whichever record file holds it (an analysis with two files, like the probe), then exit 3; a clean result
    returns; a data-parallel worker prints nothing but keeps its shard's exit code."""
    import typer

    from latentcheck.cli.tables import render_result
    from latentcheck.core.analysis import AnalysisResult, not_main

    from latentcheck.core.records import ResultWriter, provenance

    first = tmp_path / "capture" / "samples.jsonl"
    second = tmp_path / "samples.jsonl"
    first.parent.mkdir()
    with ResultWriter(first, provenance("probe.capture", {}, None)) as w:
        w.write({"key": "a"})
    with ResultWriter(second, provenance("probe.behavioural", {}, None)) as w:
        w.write_error("b-d", "d.jsonl:2 (id=b-d)", "options", "empty")
    res = AnalysisResult("probe", counts={"errors": 1, "capture": {"ok": 1, "errors": 0},
                                          "behavioural": {"ok": 0, "errors": 1}},
                         summary_path=str(tmp_path / "summary.json"), lmms_path=str(tmp_path / "results.json"),
                         figures={"a": str(tmp_path / "plots" / "a.png"), "b": str(tmp_path / "plots" / "b.png")},
                         record_files={"capture": str(first), "behavioural": str(second)})
    out = io.StringIO()
    console = FittingConsole(file=out, width=300)
    with pytest.raises(typer.Exit) as e:
        render_result(res, console)
    assert e.value.exit_code == 3
    assert out.getvalue().splitlines() == [
        f"samples: 1 ok, 1 errors; summary: {tmp_path}/summary.json; results: {tmp_path}/results.json; "
        f"plots: 2 PNG in {tmp_path}/plots",
        "first error: d.jsonl:2 (id=b-d), field 'options': empty"]
    clean = AnalysisResult("bench", counts={"ok": 2, "errors": 0}, results_path=str(first))
    out.truncate(0), out.seek(0)
    render_result(clean, console)
    assert out.getvalue() == f"samples: 2 ok, 0 errors -> {first}\n"
    worker = not_main("bench", tmp_path, str(first), {"ok": 1, "errors": 1})
    out.truncate(0), out.seek(0)
    with pytest.raises(typer.Exit) as e:
        render_result(worker, console)
    assert e.value.exit_code == 3 and out.getvalue() == ""
