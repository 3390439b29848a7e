"""report.html of a reproduce run: the study's tables (paper | this run [CI] | difference), one bar chart per table
with the paper's values as reference marks, and the figure-2 panels the steps drew (X -> Z heat maps and collapse
curves, Z -> Y bars, probing bars), laid out per step like the paper's figure."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from latentcheck.reproduce.tables import (EXCLUDES_MARK, TableResult, fmt_difference, fmt_ours, fmt_paper,
                                          step_dir)

REPORT_FILE = "report.html"
FIGURE_DIR = "figures"
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td.l{text-align:left}td.x{color:#b00;font-weight:bold}
img{max-width:560px;margin:4px;border:1px solid #eee}.reason{color:#666;font-size:0.85em}nav a{margin-right:1em}"""
# which figures of a step's folder form its figure-2 panel (file-name stems, matched as substrings)
PANEL_FIGURES = {"perturb-input": ("inter_instance", "collapse", "heat"), "perturb-latent": ("accuracy", "delta"),
                 "probe": ("behavioural",), "intervene": ("doz", "accuracy", "similarity"), "bench": ()}


def table_figure(t: TableResult, path: Path) -> str | None:
    """Bars of this run's values (CI) per cell with the paper's values as diamonds; None when nothing was measured."""
    from latentcheck.core.plots import bar_ci

    labels, vals, lo, hi, marks = [], [], [], [], []
    for label, cells in t.rows:
        for col, c in zip(t.columns, cells):
            if c.ours is None or c.ours.estimate is None:
                continue
            labels.append(f"{label} / {col}")
            vals.append(c.ours.estimate)
            lo.append(c.ours.lo if c.ours.lo is not None else c.ours.estimate)
            hi.append(c.ours.hi if c.ours.hi is not None else c.ours.estimate)
            marks.append(c.paper)
    if not labels:
        return None
    return bar_ci(labels, vals, lo, hi, path, title=t.title, ylabel="%" if t.unit == "percent" else "value",
                  marks=marks, marks_label="paper")


def _table_html(t: TableResult) -> str:
    head = "".join(f"<th colspan=3>{html.escape(c)}</th>" for c in t.columns)
    sub = "".join("<th>paper</th><th>this run [CI]</th><th>diff</th>" for _ in t.columns)
    rows, reasons = [], []
    for label, cells in t.rows:
        tds = []
        for col, c in zip(t.columns, cells):
            diff = fmt_difference(c, t.unit)
            cls = ' class="x"' if diff.endswith(EXCLUDES_MARK) else ""
            tds.append(f"<td>{fmt_paper(c, t.unit)}</td><td>{fmt_ours(c, t.unit)}</td><td{cls}>{diff}</td>")
            if c.reason:
                reasons.append(f"<li>{html.escape(label)} / {html.escape(col)}: {html.escape(c.reason)}</li>")
        rows.append(f"<tr><td class=l>{html.escape(label)}</td>{''.join(tds)}</tr>")
    out = (f"<table><tr><th></th>{head}</tr><tr><th></th>{sub}</tr>{''.join(rows)}</table>")
    if reasons:
        out += f"<div class=reason>Cells without a number:<ul>{''.join(reasons)}</ul></div>"
    return out


def render_reproduce_report(res: Any) -> Path:
    """Write ``<out>/report.html`` for a ``reproduce.run.ReproduceResult``; returns its path."""
    out = Path(res.out)
    figs = out / FIGURE_DIR
    figs.mkdir(parents=True, exist_ok=True)
    study = res.study
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(study.title or study.name)}</title>",
             f"<style>{STYLE}</style><h1>{html.escape(study.title or study.name)}</h1>"]
    if study.source:
        parts.append(f"<p>Study <code>{html.escape(study.name)}</code> — {html.escape(study.source)}</p>")
    parts.append("<nav>" + "".join(f'<a href="#{t.id}">{html.escape(t.title)}</a>' for t in res.tables)
                 + '<a href="#panels">figure panels</a><a href="#steps">steps</a></nav>')
    parts.append(f"<p>Per cell: paper | this run [95% CI] | difference (this run - paper). ~ = approximate paper "
                 f"value (read off a figure); a red difference with {EXCLUDES_MARK} = this run's CI excludes the "
                 "paper's value; n/a = not measured (reason under the table). Diamonds in the charts: the paper.</p>")
    for t in res.tables:
        parts.append(f'<h2 id="{t.id}">{html.escape(t.title)}</h2>')
        if t.unit == "percent":
            parts.append("<p>Values in percent, differences in points.</p>")
        parts.append(_table_html(t))
        if t.note:
            parts.append(f"<p>{html.escape(t.note)}</p>")
        png = table_figure(t, figs / f"{t.id}.png")
        if png:
            parts.append(f'<img src="{Path(png).relative_to(out)}" alt="{html.escape(t.title)}">')
    parts.append('<h2 id="panels">Figure panels (the steps\' own figures)</h2>')
    for s in study.steps:
        state = res.steps.get(s.id)
        if state is None or state.status != "done":
            continue
        want = PANEL_FIGURES.get(s.analysis, ())
        pngs = sorted(p for p in (step_dir(out, s.id) / "run").rglob("*.png") if any(w in p.stem for w in want))
        if pngs:
            parts.append(f"<h3>{html.escape(s.id)}: {html.escape(s.analysis)} ({html.escape(s.model)} on "
                         f"{html.escape(s.data)})</h3>")
            parts += [f'<img src="{p.relative_to(out)}" alt="{html.escape(p.stem)}">' for p in pngs]
    parts.append('<h2 id="steps">Steps</h2><table><tr><th>step</th><th>analysis</th><th>model</th><th>data</th>'
                 "<th>status</th><th>seconds</th><th>reason</th></tr>")
    for s in study.steps:
        st = res.steps.get(s.id)
        parts.append(f"<tr><td class=l>{html.escape(s.id)}</td><td class=l>{s.analysis}</td><td class=l>"
                     f"{html.escape(s.model)}</td><td class=l>{html.escape(s.data)}</td><td class=l>"
                     f"{st.status if st else '-'}</td><td>{st.seconds if st else '-'}</td><td class=l>"
                     f"{html.escape((st.reason or '') if st else '')}</td></tr>")
    parts.append("</table>")
    path = out / REPORT_FILE
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path
