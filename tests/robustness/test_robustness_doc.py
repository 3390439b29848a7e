"""docs/robustness.md's bad-input table is generated from the tests' own cases: the messages test_bad_input.py and
test_hostile_input.py assert against real runs. This test fails when the doc and the cases differ; rerun it with
LATENTCHECK_UPDATE_DOCS=1 to rewrite the table."""

from __future__ import annotations

import os
from pathlib import Path

from robustness_helpers import HOSTILE_HEAD, hostile_cases
from test_bad_input import BAD, N_VALID_HEAD

DOC = Path(__file__).resolve().parents[2] / "docs" / "robustness.md"
START = "<!-- bad-input table: generated from tests/robustness (test_robustness_doc.py); do not edit by hand -->"
END = "<!-- end of the generated bad-input table -->"


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


def test_the_bad_input_table_in_the_docs_is_the_tests_table(tmp_path):
    assert N_VALID_HEAD == HOSTILE_HEAD  # both files start their bad records on line 3
    want = table(tmp_path)
    text = DOC.read_text()
    assert START in text and END in text, "docs/robustness.md lost the generated-table markers"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{want}\n{END}{tail}"
    if os.environ.get("LATENTCHECK_UPDATE_DOCS") == "1":
        DOC.write_text(new)
    assert new == text, "docs/robustness.md's bad-input table is stale: rerun with LATENTCHECK_UPDATE_DOCS=1"
