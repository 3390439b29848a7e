"""docs/robustness.md's bad-input tables are generated from the tests' own cases: the messages test_bad_input.py,
test_hostile_input.py and test_hostile_entry_points.py assert against real runs. This test fails when the doc and the
cases differ; rerun it with LATENTCHECK_UPDATE_DOCS=1 to rewrite the tables."""

from __future__ import annotations

import os
from pathlib import Path

from robustness_helpers import HOSTILE_HEAD, REPORT_CASES, STUDY_CASES, hostile_cases
from test_bad_input import BAD, N_VALID_HEAD

DOC = Path(__file__).resolve().parents[2] / "docs" / "robustness.md"
START = "<!-- bad-input table: generated from tests/robustness (test_robustness_doc.py); do not edit by hand -->"
END = "<!-- end of the generated bad-input table -->"
START2 = "<!-- entry-point table: generated from tests/robustness (test_robustness_doc.py); do not edit by hand -->"
END2 = "<!-- end of the generated entry-point table -->"


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def table(folder: Path) -> str:
    rows = ["| kind | record | field | message (error record) |", "| --- | --- | --- | --- |"]
    for kind, _, (record, field, message) in BAD:
        rows.append(f"| {kind} | {_cell(record)} | {_cell(field)} | {_cell(message.format(folder='<data>'))} |")
    for n, (kind, _, exp) in enumerate(hostile_cases(folder), HOSTILE_HEAD + 1):
        if exp is None:
            rows.append(f"| {kind} | | | (a sample: supported) |")
            continue
        record, field, message = (x.replace("{line}", str(n)).replace("{folder}", "<data>") for x in exp)
        rows.append(f"| {kind} | {_cell(record)} | {_cell(field)} | {_cell(message)} |")
    return "\n".join(rows)


def entry_point_table() -> str:
    rows = ["| command | bad input | stderr (one line, exit 2) |", "| --- | --- | --- |"]
    for kind, _, message in STUDY_CASES:
        rows.append(f"| `reproduce STUDY` | {kind} | {_cell('error: ' + message.format(path='<study>'))} |")
    for kind, _, message in REPORT_CASES:
        rows.append(f"| `report FOLDER` | {kind} | {_cell('error: ' + message.format(path='<folder>/summary.json'))} |")
    return "\n".join(rows)


def _replace(text: str, start: str, end: str, body: str) -> str:
    assert start in text and end in text, "docs/robustness.md lost the generated-table markers"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def test_the_bad_input_table_in_the_docs_is_the_tests_table(tmp_path):
    assert N_VALID_HEAD == HOSTILE_HEAD  # both files start their bad records on line 3
    text = DOC.read_text()
    new = _replace(_replace(text, START, END, table(tmp_path)), START2, END2, entry_point_table())
    if os.environ.get("LATENTCHECK_UPDATE_DOCS") == "1":
        DOC.write_text(new)
    assert new == text, "docs/robustness.md's bad-input table is stale: rerun with LATENTCHECK_UPDATE_DOCS=1"
