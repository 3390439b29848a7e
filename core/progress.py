"""Progress on stderr (stdout stays free for JSONL with ``--out -``): a Rich bar on a terminal, periodic log lines
everywhere else (a SLURM log, a pipe, ``nohup``), nothing with ``quiet``.

Log lines are plain, timestamped and one per event, so ``tail -f`` and ``grep`` work on a cluster job's log::

    2026-12-02 13:40:01Z perturb-latent: 16/40 (40%), 2.10/s, elapsed 7s, ETA 11s

A line is written when a stage starts, at most every ``LATENTCHECK_PROGRESS_INTERVAL`` seconds (default 30) while it
runs, and when it ends. :func:`status` writes one such line for a step without a count ("loading model ...").
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import IO, Iterator

INTERVAL_ENV = "LATENTCHECK_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def status(message: str, quiet: bool = False) -> None:
    """One timestamped line on stderr (e.g. ``loading model X ...``) unless ``quiet``."""
    if not quiet:
        print(f"{_stamp()} {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A loud warning on stderr, also under ``--quiet`` (results that may be meaningless must not pass silently)."""
    print(f"{_stamp()} WARNING: {message}", file=sys.stderr, flush=True)


def log_interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class _LogProgress:
    """Rich-progress lookalike for :class:`ProgressHandle` that writes periodic log lines instead of a bar."""

    def __init__(self, description: str, total: int | None, completed: int, interval: float):
        self.description, self.total, self.interval = description, total, interval
        self.completed = self.start_completed = completed
        self.start = self.last = time.monotonic()
        self._line("started")

    def _line(self, event: str | None = None) -> None:
        done = f"{self.completed}/{self.total}" if self.total is not None else f"{self.completed}"
        if self.total:
            done += f" ({100 * self.completed / self.total:.0f}%)"
        elapsed = time.monotonic() - self.start
        parts = [done]
        if event:
            parts.append(event)
        new = self.completed - self.start_completed
        if new > 0 and elapsed > 0:
            rate = new / elapsed
            parts.append(f"{rate:.2f}/s" if rate >= 0.1 else f"{1 / rate:.1f}s each")
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total is not None and new > 0 and self.completed < self.total:
            parts.append(f"ETA {_duration(elapsed / new * (self.total - self.completed))}")
        print(f"{_stamp()} {self.description}: {', '.join(parts)}", file=sys.stderr, flush=True)
        self.last = time.monotonic()

    def advance(self, task_id, n: int = 1) -> None:
        self.completed += n
        if time.monotonic() - self.last >= self.interval:
            self._line()

    def update(self, task_id, description: str | None = None) -> None:
        if description:
            self.description = description

    def close(self) -> None:
        self._line("done" if self.total is None or self.completed >= self.total else "stopped")


class ProgressHandle:
    """What :func:`progress_bar` yields: call ``advance()`` once per finished item. Every advance also goes to the
    run logger of ``--log`` (core/tracking.py), whatever the console shows."""

    def __init__(self, progress=None, task_id=None, completed: int = 0, description: str = "", total: int | None = None):
        self._progress = progress
        self._task_id = task_id
        self.completed = completed
        self.description, self.total = description, total

    @property
    def enabled(self) -> bool:
        return self._progress is not None

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more finished items."""
        self.completed += n
        if self._progress is not None:
            self._progress.advance(self._task_id, n)
        from latentcheck.core import tracking

        tracking.log_progress(self.description, self.completed, self.total)

    def set_description(self, description: str) -> None:
        self.description = description
        if self._progress is not None:
            self._progress.update(self._task_id, description=description)


_live_console = None  # console of the outermost drawn bar; nested bars share it so Rich stacks them


def progress_enabled(quiet: bool, stream: IO | None = None) -> bool:
    """A bar is drawn only when not quiet and the stream (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or fake streams
        return False


@contextmanager
def progress_bar(total: int | None, description: str, quiet: bool = False,
                 completed: int = 0) -> Iterator[ProgressHandle]:
    """Context manager yielding a :class:`ProgressHandle`; rich bar on stderr when it is a terminal, periodic log
    lines otherwise (module docstring), no output at all when ``quiet``. ``completed`` starts the bar part-way (e.g. records already done when resuming).
    A bar opened while another is drawn shares its console, so Rich stacks them (a stage bar over an analysis's
    own bar) instead of two live displays overwriting one line."""
    if quiet:
        yield ProgressHandle(completed=completed, description=description, total=total)
        return
    if not progress_enabled(quiet):
        log = _LogProgress(description, total, completed, log_interval())
        try:
            yield ProgressHandle(log, None, completed, description, total)
        finally:
            log.close()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    global _live_console
    outermost = _live_console is None
    if outermost:
        _live_console = Console(file=sys.stderr)
    columns = [SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=_live_console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, completed=completed)
            yield ProgressHandle(progress, task_id, completed, description, total)
    finally:
        if outermost:
            _live_console = None
