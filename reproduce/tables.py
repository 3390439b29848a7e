"""A study's tables from a run folder: per cell the paper's value, this run's value with its CI, the difference, and
a mark where the CI excludes the paper's value; a cell whose step did not run says why."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.summaries import Estimate, read_summary
from latentcheck.reproduce.metrics import MetricUnavailable, read_metric
from latentcheck.reproduce.study import Cell, Study, Table

STEPS_DIR = "steps"
STEP_FILE = "step.json"
EXCLUDES_MARK = "*"  # this run's CI excludes the paper's value


@dataclass(frozen=True)
class CellResult:
    """One cell: the paper's value (with provenance), this run's estimate (scaled to the table's unit), the
    difference this run - paper, whether the CI excludes the paper's value, or the reason there is no number."""

    paper: float | None
    provenance: str | None
    ours: Estimate | None
    reason: str | None = None
    note: str = ""

    @property
    def difference(self) -> float | None:
        if self.paper is None or self.ours is None or self.ours.estimate is None:
            return None
        return self.ours.estimate - self.paper

    @property
    def excludes_paper(self) -> bool | None:
        """True/False when this run has an interval and the paper a value; None otherwise."""
        if self.paper is None or self.ours is None or self.ours.lo is None or self.ours.hi is None:
            return None
        return not (self.ours.lo <= self.paper <= self.ours.hi)

    def to_dict(self) -> dict[str, Any]:
        return {"paper": self.paper, "provenance": self.provenance,
                "ours": None if self.ours is None else self.ours.to_dict(), "difference": self.difference,
                "excludes_paper": self.excludes_paper, "reason": self.reason, "note": self.note}


@dataclass(frozen=True)
class TableResult:
    id: str
    title: str
    unit: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, tuple[CellResult, ...]], ...]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "unit": self.unit, "columns": list(self.columns),
                "note": self.note, "rows": [{"label": lab, "cells": [c.to_dict() for c in cells]}
                                            for lab, cells in self.rows]}


@dataclass
class StepState:
    """What happened to a step: ``done`` (summary path), ``skipped`` or ``failed`` (reason)."""

    id: str
    status: str
    reason: str | None = None
    summary: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "reason": self.reason, "summary": self.summary,
                "seconds": self.seconds, **self.extra}


def step_dir(out: str | Path, step_id: str) -> Path:
    return Path(out) / STEPS_DIR / step_id


def read_step_state(out: str | Path, step_id: str) -> StepState | None:
    p = step_dir(out, step_id) / STEP_FILE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except ValueError:
        return StepState(step_id, "failed", f"{p}: not valid JSON")
    return StepState(step_id, str(d.get("status")), d.get("reason"), d.get("summary"), float(d.get("seconds") or 0),
                     {k: v for k, v in d.items() if k not in ("id", "status", "reason", "summary", "seconds")})


def _scale(e: Estimate, unit: str) -> Estimate:
    if unit != "percent":
        return e
    f = (lambda x: None if x is None else 100.0 * x)
    return Estimate(estimate=f(e.estimate), lo=f(e.lo), hi=f(e.hi), n=e.n, method=e.method)


def cell_result(study: Study, cell: Cell, table: Table, out: str | Path, summaries: dict[str, Any]) -> CellResult:
    if cell.step is None:
        return CellResult(cell.paper, cell.provenance, None, None, cell.note)  # a paper-only cell
    state = read_step_state(out, cell.step)
    if state is None:
        return CellResult(cell.paper, cell.provenance, None, f"step {cell.step} has not run", cell.note)
    if state.status != "done":
        return CellResult(cell.paper, cell.provenance, None, f"step {cell.step} {state.status}: {state.reason}",
                          cell.note)
    if cell.step not in summaries:
        try:
            summaries[cell.step] = read_summary(state.summary)
        except (LatentcheckError, TypeError) as e:
            summaries[cell.step] = e
    summary = summaries[cell.step]
    if isinstance(summary, Exception):
        return CellResult(cell.paper, cell.provenance, None, f"step {cell.step}: unreadable summary ({summary})",
                          cell.note)
    try:
        est = read_metric(study.step(cell.step).analysis, cell.metric, summary)
    except MetricUnavailable as e:
        return CellResult(cell.paper, cell.provenance, None, str(e), cell.note)
    return CellResult(cell.paper, cell.provenance, _scale(est, table.unit), None, cell.note)


def build_tables(study: Study, out: str | Path) -> list[TableResult]:
    """Every table of the study filled from the run folder ``out`` (cells of steps that did not run say why)."""
    summaries: dict[str, Any] = {}
    return [TableResult(t.id, t.title, t.unit, t.columns,
                        tuple((r.label, tuple(cell_result(study, c, t, out, summaries) for c in r.cells))
                              for r in t.rows), t.note)
            for t in study.tables]


# ------------------------------------------------------------------------------------------------ formatting
def fmt_value(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}" if unit == "percent" else f"{x:.3f}"


def fmt_ours(c: CellResult, unit: str) -> str:
    if c.ours is None or c.ours.estimate is None:
        return "n/a"
    s = fmt_value(c.ours.estimate, unit)
    if c.ours.lo is not None and c.ours.hi is not None:
        s += f" [{fmt_value(c.ours.lo, unit)}, {fmt_value(c.ours.hi, unit)}]"
    return s


def fmt_paper(c: CellResult, unit: str) -> str:
    if c.paper is None:
        return "-"
    return ("~" if c.provenance == "figure" else "") + fmt_value(c.paper, unit)


def fmt_difference(c: CellResult, unit: str) -> str:
    d = c.difference
    if d is None:
        return "-"
    s = f"{d:+.1f}" if unit == "percent" else f"{d:+.3f}"
    return s + (EXCLUDES_MARK if c.excludes_paper else "")


def markdown(results: list[TableResult], study: Study) -> str:
    """The tables as Markdown: per column three sub-columns (paper | this run [CI] | difference), then the reasons
    of the cells without a number."""
    lines = [f"# {study.title or study.name}", ""]
    if study.source:
        lines += [f"Source: {study.source}", ""]
    lines += ["Per cell: paper | this run [95% CI] | difference (this run - paper). `~` = approximate paper value "
              f"(read off a figure); `{EXCLUDES_MARK}` = this run's CI excludes the paper's value; `n/a` = not "
              "measured (reason below).", ""]
    for t in results:
        lines += [f"## {t.title}", ""]
        if t.unit == "percent":
            lines += ["Values in percent, differences in points.", ""]
        head = ["", *[f"{c} {k}" for c in t.columns for k in ("paper", "this run", "diff")]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        reasons = []
        for label, cells in t.rows:
            row = [label]
            for col, c in zip(t.columns, cells):
                row += [fmt_paper(c, t.unit), fmt_ours(c, t.unit), fmt_difference(c, t.unit)]
                if c.reason:
                    reasons.append(f"- {label} / {col}: {c.reason}")
            lines.append("| " + " | ".join(row) + " |")
        if t.note:
            lines += ["", t.note]
        if reasons:
            lines += ["", "Cells without a number:", *reasons]
        lines.append("")
    return "\n".join(lines)
