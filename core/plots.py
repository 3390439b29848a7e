"""Plot primitives shared by every analysis and the report (matplotlib, Agg backend).

Analyses compose their figures from these; the report embeds the same PNGs. Every figure is saved twice: a PNG at
print resolution (:data:`DPI`) and a vector SVG beside it (same stem), with a tight bounding box and wrapped titles
so nothing is clipped. Effects are drawn as forest plots (a point and its CI whiskers around a zero line) so a zero
effect is visible, not an invisible bar; heat maps are scaled to their data and can carry category ticks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DPI = 200  # PNG resolution (print quality); the SVG beside it is resolution-free
TITLE_WIDTH = 60  # characters per title line before wrapping


def wrap_title(title: str, width: int = TITLE_WIDTH) -> str:
    """A long title over several lines instead of clipped at the figure's edge."""
    import textwrap

    return "\n".join(textwrap.wrap(title, width)) if title and len(title) > width else title


def save(fig, path: str | Path, tight_layout: bool = True) -> str:
    """Write ``path`` (PNG, :data:`DPI`) and the same figure as SVG beside it, each atomically
    (records.replace_atomic_with); return the PNG path."""
    from latentcheck.core.records import replace_atomic_with

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight_layout:
        fig.tight_layout()
    for target, dpi in ((path, DPI), (path.with_suffix(".svg"), None)):
        try:  # atomic, with the umask's mode; a failure leaves the old file whole and no temp file
            replace_atomic_with(target, lambda fh: fig.savefig(
                fh, dpi=dpi, bbox_inches="tight", format=target.suffix.lstrip(".") or "png",
                metadata={"Date": None} if target.suffix == ".svg" else None))
        except BaseException:
            _plt().close(fig)
            raise
    _plt().close(fig)
    return str(path)


def forest(labels: Sequence[str], values: Sequence[float], lo: Sequence[float], hi: Sequence[float], path,
           title: str = "", xlabel: str = "", ref: float | None = 0.0, ref_label: str = "no effect",
           band: float | None = None) -> str:
    """Forest plot: one row per label, the estimate as a point and its CI as whiskers, a reference line (0 = no
    effect). A zero effect is a point on the line with its interval, never an invisible bar; a missing value is
    written as "n/a" in its row."""
    plt = _plt()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.0, 0.42 * n + 1.4))
    ys = np.arange(n)[::-1]
    for y, v, a, b in zip(ys, values, lo, hi):
        if v is None or not np.isfinite(v):
            ax.text(0.5, y, "n/a", transform=ax.get_yaxis_transform(), ha="center", va="center", fontsize=8,
                    color="grey")
            continue
        a = v if a is None or not np.isfinite(a) else a
        b = v if b is None or not np.isfinite(b) else b
        ax.plot([a, b], [y, y], color="#4C72B0", lw=2, solid_capstyle="butt")
        ax.plot([a, a], [y - 0.15, y + 0.15], color="#4C72B0", lw=1)
        ax.plot([b, b], [y - 0.15, y + 0.15], color="#4C72B0", lw=1)
        ax.plot([v], [y], marker="o", color="#1f3b63", ms=6, zorder=3)
    if band is not None:
        ax.axvspan(-band, band, color="#8a6d00", alpha=0.12, label=f"equivalence band +-{band:.2f}")
    if ref is not None:
        ax.axvline(ref, color="grey", ls="--", lw=1, label=ref_label)
    if ref is not None or band is not None:
        ax.legend(fontsize=7, loc="best")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_title(wrap_title(title), fontsize=10)
    ax.set_xlabel(xlabel)
    ax.margins(x=0.15)
    return save(fig, path)


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
    ax.set_title(wrap_title(title), fontsize=10)
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
    ax.set_title(wrap_title(title), fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return save(fig, path)


def data_range(mats: Sequence[np.ndarray], symmetric: bool | None = None) -> tuple[float, float]:
    """Colour limits from the data (finite values of every matrix): symmetric around 0 when the data has both
    signs (``symmetric=None``), else [min, max]; a constant matrix gets a small band around its value."""
    vals = np.concatenate([np.asarray(m, float).ravel() for m in mats]) if len(mats) else np.zeros(1)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return -1.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    if symmetric is None:
        symmetric = lo < 0 < hi
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return -m, m
    if hi - lo < 1e-12:
        return lo - 0.5, hi + 0.5
    return lo, hi


def _runs(ticks: Sequence[Any] | None) -> list[tuple[int, int, str]]:
    """Consecutive equal categories as ``(start, stop, name)`` runs."""
    runs: list[tuple[int, int, str]] = []
    if ticks:
        start = 0
        for i in range(1, len(ticks) + 1):
            if i == len(ticks) or ticks[i] != ticks[start]:
                runs.append((start, i, str(ticks[start])))
                start = i
    return runs


def heatmap_grid(mats: Sequence[np.ndarray], titles: Sequence[str], path, suptitle: str = "",
                 vmin: float | None = None, vmax: float | None = None,
                 ticks: Sequence[Any] | None = None) -> str:
    """A grid of square heatmaps (e.g. one inter-instance cosine matrix per latent index) on ONE colour scale fitted
    to the data (:func:`data_range`, unless ``vmin`` / ``vmax`` are given). ``ticks``: one category per row/column
    (e.g. the sample's category), the same for every panel, or one such list per panel (``None`` for a panel
    without); consecutive equal categories are labelled once, at the middle of their run, with separator lines
    between runs."""
    plt = _plt()
    n = max(1, len(mats))
    cols = min(n, 5)
    rows = (n + cols - 1) // cols
    lo, hi = data_range(mats)
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 0.9, 2.6 * rows + 0.7), squeeze=False)
    im = None
    per_panel = ticks is not None and len(ticks) == len(mats) and all(
        t is None or (isinstance(t, (list, tuple)) and len(t) == len(m)) for t, m in zip(ticks, mats)) and any(
        isinstance(t, (list, tuple)) for t in ticks)
    shared = None if per_panel else _runs(ticks)
    for i, ax in enumerate(axes.flat):
        if i < len(mats):
            im = ax.imshow(mats[i], vmin=vmin, vmax=vmax, cmap="viridis")
            ax.set_title(wrap_title(titles[i], 28), fontsize=8)
            runs = _runs(ticks[i]) if per_panel else shared
            if runs:
                mids = [(a + b - 1) / 2 for a, b, _ in runs]
                names = [name for _, _, name in runs]
                ax.set_xticks(mids)
                ax.set_xticklabels(names, rotation=90, fontsize=6)
                ax.set_yticks(mids)
                ax.set_yticklabels(names, fontsize=6)
                for a, _, _ in runs[1:]:
                    ax.axhline(a - 0.5, color="white", lw=0.6)
                    ax.axvline(a - 0.5, color="white", lw=0.6)
                continue
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    if suptitle:
        fig.suptitle(wrap_title(suptitle, 70), fontsize=10)
    return save(fig, path, tight_layout=False)
