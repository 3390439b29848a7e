"""Plot primitives shared by every analysis and the report (matplotlib, Agg backend, PNG files).

Analyses compose their figures from these; the report embeds the same PNGs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return str(path)


def bar_ci(labels: Sequence[str], values: Sequence[float], lo: Sequence[float], hi: Sequence[float], path,
           title: str = "", ylabel: str = "", hline: float | None = None, hline_label: str = "",
           extra_lines: dict[str, float] | None = None, marks: Sequence[float | None] | None = None,
           marks_label: str = "") -> str:
    """Bars with confidence-interval error bars (and optional reference lines, e.g. chance, and one reference mark
    per bar, e.g. a published value: ``marks[i]`` drawn as a diamond over bar i, None for no mark)."""
    plt = _plt()
    v = np.asarray(values, float)
    err = np.vstack([v - np.asarray(lo, float), np.asarray(hi, float) - v])
    err = np.nan_to_num(np.clip(err, 0, None))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(labels) + 2), 3.4))
    ax.bar(range(len(v)), np.nan_to_num(v), yerr=err, capsize=3, color="#4C72B0")
    ax.set_xticks(range(len(v)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1, label=hline_label or None)
    for i, (name, y) in enumerate((extra_lines or {}).items()):
        ax.axhline(y, color=f"C{i + 1}", ls=":", lw=1, label=name)
    shown = [(i, m) for i, m in enumerate(marks or []) if m is not None]
    if shown:
        ax.scatter([i for i, _ in shown], [m for _, m in shown], marker="D", s=28, color="black", zorder=3,
                   label=marks_label or "reference")
    if hline_label or extra_lines or shown:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    return save(fig, path)


def lines(x: Sequence[float], series: dict[str, Sequence[float]], path, title: str = "", xlabel: str = "",
          ylabel: str = "", bands: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
          hline: float | None = None) -> str:
    """Several curves over the same x (optional CI bands per series)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, (name, y) in enumerate(series.items()):
        ax.plot(x, y, marker="o", ms=3, label=name, color=f"C{i}")
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(x, lo, hi, alpha=0.2, color=f"C{i}")
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return save(fig, path)


def heatmap_grid(mats: Sequence[np.ndarray], titles: Sequence[str], path, suptitle: str = "",
                 vmin: float = -1.0, vmax: float = 1.0) -> str:
    """A row of square heatmaps (e.g. one inter-instance cosine matrix per latent index)."""
    plt = _plt()
    n = max(1, len(mats))
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 0.6, 2.3 * rows + 0.4), squeeze=False)
    im = None
    for i, ax in enumerate(axes.flat):
        if i < len(mats):
            im = ax.imshow(mats[i], vmin=vmin, vmax=vmax, cmap="viridis")
            ax.set_title(titles[i], fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
