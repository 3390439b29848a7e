"""Tables that stay readable at any width: 80 columns, a log file, a pipe.

Rich squeezes a table that is wider than the console by wrapping and truncating its cells (``nois...``, a number
split over two lines). :func:`fit_table` never does that. A table whose natural width fits is printed as it is;
a wider one is cut into column groups that each fit, the first (key) column repeated in every group, the way pandas
prints a wide frame; if even the key column and one other column do not fit, each row is printed as a block of
``column  value`` lines (transposed). Cell contents are never split inside a word, so a number is always whole.

Every console of the CLI fits its tables (:class:`FittingConsole`), so a command just prints its ``Table``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text


def _text(console: Console, cell: Any) -> Text | None:
    if isinstance(cell, Text):
        return cell
    if isinstance(cell, str):
        return console.render_str(cell)
    return None


def _width(console: Console, cell: Any) -> int:
    """Natural (unwrapped) width of a cell: its longest line."""
    t = _text(console, cell)
    if t is None:
        from rich.measure import Measurement

        return Measurement.get(console, console.options, cell).maximum
    return max((len(line) for line in t.plain.splitlines()), default=0)


def _header_width(console: Console, header: Any) -> int:
    """A header may wrap between words: its width is its longest word."""
    t = _text(console, header)
    if t is None:
        return _width(console, header)
    return max((len(w) for w in t.plain.split()), default=0)


def _column_widths(console: Console, table: Table) -> list[int]:
    widths = []
    for col in table.columns:
        cells = list(col.cells)
        widths.append(max([_header_width(console, col.header)] + [_width(console, c) for c in cells]))
    return widths


def _overhead(table: Table, n_columns: int) -> int:
    """Characters a table adds around n columns: padding on both sides of each cell, a rule between cells and the
    outer edges."""
    pad = table.padding[1] + table.padding[3] if len(table.padding) == 4 else 2
    edges = 2 if table.box is not None and table.show_edge else 0
    rules = (n_columns - 1) if table.box is not None else 0
    return n_columns * pad + rules + edges


def natural_width(console: Console, table: Table) -> int:
    widths = _column_widths(console, table)
    return sum(widths) + _overhead(table, len(widths))


def _copy(table: Table, columns: list[int], title: Any, caption: Any, widths: list[int]) -> Table:
    t = Table(title=title, caption=caption, box=table.box, show_header=table.show_header, show_lines=table.show_lines,
              show_edge=table.show_edge, padding=table.padding, header_style=table.header_style,
              title_justify=table.title_justify, expand=False)
    rows = table.row_count
    for i in columns:
        col = table.columns[i]
        t.add_column(col.header, justify=col.justify, style=col.style, header_style=col.header_style,
                     no_wrap=True, min_width=widths[i], overflow="fold")
    cells = [list(table.columns[i].cells) for i in columns]
    for r in range(rows):
        t.add_row(*[c[r] if r < len(c) else "" for c in cells])
    return t


def fit_table(table: Table, width: int, console: Console) -> RenderableType:
    """``table`` as it is when its natural width fits ``width``; else column groups (key column repeated) that each
    fit; else one block per row with ``column  value`` lines. Never splits a cell inside a word."""
    widths = _column_widths(console, table)
    if sum(widths) + _overhead(table, len(widths)) <= width or len(widths) < 2:
        for col, w in zip(table.columns, widths):
            col.no_wrap = True
            col.min_width = max(col.min_width or 0, w)
        return table
    groups: list[list[int]] = []
    current: list[int] = [0]
    for i in range(1, len(widths)):
        trial = current + [i]
        if sum(widths[j] for j in trial) + _overhead(table, len(trial)) <= width or len(current) == 1:
            current = trial
        else:
            groups.append(current)
            current = [0, i]
    groups.append(current)
    if all(sum(widths[j] for j in g) + _overhead(table, len(g)) <= width for g in groups):
        parts: list[RenderableType] = []
        for n, g in enumerate(groups):
            caption = f"(part {n + 1} of {len(groups)}: table too wide for {width} columns)"
            parts.append(_copy(table, g, table.title if n == 0 else None, caption, widths))
        return Group(*parts)
    return _transposed(table, width, console)


def _transposed(table: Table, width: int, console: Console) -> RenderableType:
    """One block per row: the key cell as a heading, then ``column  value`` lines (values wrap only between words)."""
    parts: list[RenderableType] = []
    if table.title:
        parts.append(Text(str(table.title), style="bold"))
    headers = [_text(console, c.header) or Text(str(c.header)) for c in table.columns]
    cells = [list(c.cells) for c in table.columns]
    key_w = min(max((len(h.plain) for h in headers[1:]), default=0), width // 2)
    for r in range(table.row_count):
        parts.append(Text.assemble(Text(f"{headers[0].plain}: ", style="dim"), _text(console, cells[0][r]) or ""))
        grid = Table.grid(padding=(0, 2), pad_edge=True)
        grid.add_column(width=key_w, style="dim", overflow="fold")
        grid.add_column(overflow="fold")
        for h, c in zip(headers[1:], cells[1:]):
            grid.add_row(h.plain, c[r] if r < len(c) else "")
        parts.append(grid)
    return Group(*parts)


class FittingConsole(Console):
    """A Rich console whose ``print`` fits every :class:`~rich.table.Table` to the console width (:func:`fit_table`)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 - Rich's name
        fitted = [fit_table(o, self.width, self) if isinstance(o, Table) else o for o in objects]
        super().print(*fitted, **kwargs)


def run_line(counts: dict, results_path: str | None, record_files: list[str] | None = None, **where: str | None) -> str:
    """The final line of a run: ``samples: 38 ok, 2 errors -> DIR/samples.jsonl; ...``, plus the first error's record,
    field and reason when there are errors (the rest are in the results file). ``record_files``: where to look for
    the error records (default: the results file; an analysis with several record files names them all)."""
    line = f"samples: {counts.get('ok', 0)} ok, {counts.get('errors', 0)} errors"
    if results_path:
        line += f" -> {results_path}"
    for name, value in where.items():
        if value:
            line += f"; {name}: {value}"
    files = record_files or ([results_path] if results_path else [])
    if counts.get("errors") and files:
        from latentcheck.core.records import first_error

        err = next((e for e in map(first_error, files) if e is not None), None)
        if err is not None:
            more = counts["errors"] - 1
            line += (f"\nfirst error: {err.get('record')}, field '{err.get('field')}': {err.get('message')}"
                     + (f" (and {more} more: the error records in {', '.join(files)})" if more > 0 else ""))
    return line


def figures_note(figures: list[str]) -> str | None:
    """The figures of a run in a few words: ``3 PNG in DIR`` when they share one folder, else their paths."""
    if not figures:
        return None
    folders = {str(Path(f).parent) for f in figures}
    return f"{len(figures)} PNG in {folders.pop()}" if len(folders) == 1 else ", ".join(figures)


def result_line(result: Any, **where: str | None) -> str:
    """The final line of any analysis's :class:`~latentcheck.core.analysis.AnalysisResult`: :func:`run_line` over
    its counts (nested counts summed) with its summary, results.json and figures."""
    return run_line({"ok": result.ok, "errors": result.errors}, result.results_path,
                    list(result.record_files.values()) or None, summary=result.summary_path, results=result.lmms_path,
                    plots=figures_note(result.plots), **where)


def render_result(result: Any, console: Console) -> None:
    """The common end of every analysis command, for any :class:`~latentcheck.core.analysis.AnalysisResult`: on the
    main process the final line (:func:`result_line`: counts, the first error record, summary, results.json,
    figures; printed also under ``--quiet``), then the exit code (``typer.Exit``: 3 when some records became error
    records; on a data-parallel worker its shard's). The per-analysis tables stay in each command's module and are
    printed before this."""
    import typer

    if result.is_main:
        console.print(result_line(result), highlight=False, soft_wrap=True, markup=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)
