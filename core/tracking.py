"""Run logging to an experiment tracker (``--log tensorboard|wandb``): one interface, one place that feeds it.

A :class:`RunLogger` receives three kinds of events, each from ONE place in the code:

- ``log_progress(stage, done, total)`` — from :class:`core.progress.ProgressHandle` (every progress bar / log-line
  stage of every analysis, the audit's stages included), so a tracker shows the same progress the console does;
- ``log_config(task, config)`` and ``log_metrics(task, metrics)`` — from :func:`core.analysis.finish` (the common
  tail of every analysis) through :func:`log_results`, with the run's lmms-eval-shaped results (core/lmms.py): the
  options and model as the config, every estimate and interval bound of the summary as a final metric.

:func:`configure` opens the logger for the process (the CLI's shared options call it with ``--log``; the Python API
with ``log=``); :func:`close` ends it (also at interpreter exit). Only the main process of a data-parallel run logs.

Backends (optional extras; a missing package is a one-line error when the run starts, never a silent no-op):

==============  ===========================================================================================
``tensorboard``  ``torch.utils.tensorboard.SummaryWriter`` into ``<out>/tensorboard/``: scalars
                 ``progress/<stage>`` (items done), ``<task>/<metric>`` (final metrics, step 0) and the config as
                 text ``config/<task>`` (``pip install 'latentcheck[tensorboard]'``)
``wandb``        one W&B run (project ``$WANDB_PROJECT`` or ``latentcheck``, files under ``<out>/wandb``;
                 ``WANDB_MODE=offline`` works without network): ``config[<task>]``, logged ``progress/<stage>``,
                 final metrics logged and in the run summary (``pip install 'latentcheck[wandb]'``)
==============  ===========================================================================================

A new backend is a :class:`RunLogger` subclass registered in :data:`LOGGERS`.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from latentcheck.core.errors import LatentcheckError


def _tag(text: str) -> str:
    """A tracker-safe name (letters, digits, ``_ - . /``)."""
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", str(text)).strip("_") or "run"


def final_metrics(lmms: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from an lmms-eval-shaped results dict: every finite number (``METRIC,FILTER``
    keys lose their ``,none`` filter; ``"N/A"`` standard errors and missing values are left out)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in (lmms.get("results") or {}).items():
        row = {}
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            name, _, filt = key.partition(",")
            row[name if filt in ("", "none") else f"{name},{filt}"] = float(value)
        out[str(task)] = row
    return out


class RunLogger:
    """What a tracker backend implements (module docstring). ``out_dir``: the run folder."""

    name = "base"

    def __init__(self, out_dir: str | os.PathLike, run_name: str | None = None):
        self.out_dir = Path(out_dir)
        self.run_name = run_name or self.out_dir.name

    def log_config(self, task: str, config: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def log_progress(self, stage: str, done: int, total: int | None) -> None:
        raise NotImplementedError

    def log_metrics(self, task: str, metrics: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class TensorBoardLogger(RunLogger):
    name = "tensorboard"

    def __init__(self, out_dir, run_name=None):
        super().__init__(out_dir, run_name)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LatentcheckError("--log tensorboard needs the tensorboard package "
                                   "(pip install 'latentcheck[tensorboard]')") from None
        self.log_dir = self.out_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self._steps: dict[str, int] = {}

    def log_config(self, task, config):
        text = json.dumps(config, indent=1, sort_keys=True, default=str)
        self.writer.add_text(f"config/{_tag(task)}", "```\n" + text + "\n```", global_step=0)

    def log_progress(self, stage, done, total):
        tag = f"progress/{_tag(stage)}"
        step = self._steps[tag] = self._steps.get(tag, -1) + 1
        self.writer.add_scalar(tag, done, global_step=step)
        if total:
            self.writer.add_scalar(tag + "_fraction", done / total, global_step=step)

    def log_metrics(self, task, metrics):
        for name, value in metrics.items():
            self.writer.add_scalar(f"{_tag(task)}/{name}", value, global_step=0)
        self.writer.flush()

    def close(self):
        self.writer.flush()
        self.writer.close()


class WandbLogger(RunLogger):
    name = "wandb"

    def __init__(self, out_dir, run_name=None):
        super().__init__(out_dir, run_name)
        try:
            import wandb
        except ImportError:
            raise LatentcheckError("--log wandb needs the wandb package (pip install 'latentcheck[wandb]')") from None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "latentcheck"), name=self.run_name,
                              dir=str(self.out_dir), config={}, reinit="finish_previous")

    def log_config(self, task, config):
        self.run.config.update({_tag(task): json.loads(json.dumps(config, default=str))}, allow_val_change=True)

    def log_progress(self, stage, done, total):
        row = {f"progress/{_tag(stage)}": done}
        if total:
            row[f"progress/{_tag(stage)}_fraction"] = done / total
        self.run.log(row)

    def log_metrics(self, task, metrics):
        row = {f"{_tag(task)}/{k}": v for k, v in metrics.items()}
        self.run.log(row)
        self.run.summary.update(row)

    def close(self):
        self.run.finish()


LOGGERS: dict[str, Callable[..., RunLogger]] = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}

_active: RunLogger | None = None


def active() -> RunLogger | None:
    """The process's run logger (None: nothing is logged)."""
    return _active


def configure(kind: str | None, out_dir: str | os.PathLike | None, run_name: str | None = None,
              is_main: bool = True) -> RunLogger | None:
    """Open the run logger ``kind`` (``tensorboard`` / ``wandb``) for a run writing to ``out_dir``; ``None`` closes
    any open one and logs nothing. ``is_main=False`` (a data-parallel worker, rank > 0) logs nothing. Unknown kinds
    and missing packages are a :class:`LatentcheckError`."""
    global _active
    close()
    if kind is None or kind == "":
        return None
    if kind not in LOGGERS:
        raise LatentcheckError(f"--log {kind!r}: valid: {', '.join(LOGGERS)}")
    if out_dir is None:
        raise LatentcheckError(f"--log {kind} needs an output folder")
    if not is_main:
        return None
    _active = LOGGERS[kind](out_dir, run_name)
    atexit.unregister(close)
    atexit.register(close)  # after the backend's own exit hooks were registered, so it runs before them
    return _active


def log_progress(stage: str, done: int, total: int | None) -> None:
    if _active is not None:
        _active.log_progress(stage, done, total)


def log_results(lmms: Mapping[str, Any]) -> None:
    """The end of one analysis (core.analysis.finish): its config and final metrics, per lmms-eval task."""
    if _active is None:
        return
    metrics = final_metrics(lmms)
    for task in metrics:
        cfg = {"config": lmms.get("config"), **((lmms.get("configs") or {}).get(task) or {}),
               "n-samples": (lmms.get("n-samples") or {}).get(task), "version": (lmms.get("versions") or {}).get(task)}
        _active.log_config(task, cfg)
        _active.log_metrics(task, metrics[task])


def close() -> None:
    """Flush and close the run logger (idempotent; also registered at interpreter exit)."""
    global _active
    logger, _active = _active, None
    if logger is not None:
        logger.close()


__all__ = ["RunLogger", "TensorBoardLogger", "WandbLogger", "LOGGERS", "configure", "active", "log_progress",
           "log_results", "close", "final_metrics"]
