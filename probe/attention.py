"""Attention mass: where does each latent step look — at the image, and at the target region? (issue #24, part 3)

For every captured source trace the probe replays it once (``Engine.replay_attention``: the teacher-forced replay up
to the answer point, the model's own attention implementation, the head-mean attention weights of chosen query
positions read at every decoder layer). Per layer and query row it records

- ``image``: the attention mass on the image tokens (sum of the row's weights over the image-token keys);
- ``region``: the mass on the image tokens of the target region (the task's ``bbox``, mapped onto the merged-token
  grid by :func:`bbox_token_indices`), when the task has a bbox;
- ``region_share`` (summary): region / image, the share of the row's image attention that lands on the region.

Query rows: ``start`` (the latent-start marker), ``latent_j`` (the position where the j-th vector is fed, whose
output becomes the next vector), and two references from the same replay: ``last_prompt_token`` (the state that
decides to enter the span) and ``answer_point`` (the position whose next-token distribution is the answer). The
uniform baseline of ``region_share`` is the region's share of the image tokens (n_region / n_image): a row that
attends to the image without preferring the target puts that share on the region.

Heads are averaged (the mass of the mean head); masses are computed on the model's own attention weights (the
visibility rules of the profile hold: a position that may not see the image has image mass exactly 0).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SUMMARY_ROWS = ("latent_mean", "start", "last_prompt_token", "answer_point")


def bbox_token_indices(bbox: Sequence[float], image_size: tuple[int, int], grid_thw: Sequence[int],
                       patch_size: int, merge_size: int) -> list[int]:
    """Indices (0-based, row-major, as the processor orders an image's merged tokens) of the merged visual tokens whose
    cell overlaps the bbox with positive area.

    ``bbox`` = [x, y, w, h] in pixels of the original image of ``image_size`` = (width, height); ``grid_thw`` = the
    processor's (t, h, w) patch grid of that image. The processor resizes the whole image (no crop, no padding) to
    (h * patch_size) x (w * patch_size) pixels, and each merged token covers a (patch_size * merge_size)^2 pixel cell
    of the resized image, so the bbox is scaled by the resize factors and every cell it overlaps counts. Temporal
    frames (t > 1) repeat the grid."""
    x, y, w, h = (float(v) for v in bbox)
    W, H = (float(v) for v in image_size)
    t, gh, gw = (int(v) for v in grid_thw)
    if gh % merge_size or gw % merge_size:
        raise ValueError(f"patch grid {gh}x{gw} is not a multiple of the merge size {merge_size}")
    rows, cols = gh // merge_size, gw // merge_size
    cell = float(patch_size * merge_size)
    sx, sy = gw * patch_size / W, gh * patch_size / H  # resized / original pixels
    x0, x1 = max(0.0, x * sx), min(cols * cell, (x + w) * sx)
    y0, y1 = max(0.0, y * sy), min(rows * cell, (y + h) * sy)
    if x1 <= x0 or y1 <= y0:
        return []
    c0, c1 = int(math.floor(x0 / cell)), int(math.ceil(x1 / cell))  # cells [c0, c1) overlap with positive width
    r0, r1 = int(math.floor(y0 / cell)), int(math.ceil(y1 / cell))
    per_frame = [r * cols + c for r in range(r0, r1) for c in range(c0, c1)]
    return [f * rows * cols + i for f in range(t) for i in per_frame]


def region_tokens(lm, prompt, task) -> list[int] | None:
    """The target region's merged-token indices within the prompt's (first) image, or None when the task has no
    bbox or no image."""
    if task.bbox is None or prompt.image_grid_thw is None:
        return None
    image = task.load_image()
    if image is None:
        return None
    ip = lm.processor.image_processor
    return bbox_token_indices(task.bbox, image.size, [int(v) for v in prompt.image_grid_thw[0]],
                              int(ip.patch_size), int(ip.merge_size))


def attention_record(rows, region: list[int] | None) -> dict[str, Any]:
    """Per-sample record from an ``Engine.replay_attention`` result: per layer and query row the image mass and (with
    a region) the region mass; the region's token indices within the image and the image's token count."""
    W = np.asarray(rows.weights, dtype=np.float64)  # [L, R, keys]
    img = np.asarray(rows.image_positions, dtype=np.int64)
    n_first = len(img)
    rec: dict[str, Any] = {"labels": list(rows.labels), "n_image": int(n_first),
                           "image": W[:, :, img].sum(-1).round(6).tolist() if n_first else None,
                           "region": None, "region_tokens": None}
    if region is not None and n_first:
        idx = [i for i in region if i < n_first]
        rec["region_tokens"] = idx
        rec["region"] = W[:, :, img[idx]].sum(-1).round(6).tolist() if idx else np.zeros(W.shape[:2]).tolist()
    return rec


def _row_values(rec: dict[str, Any], key: str, row: str) -> np.ndarray | None:
    """[n_layers] masses of one summary row (``latent_mean`` = mean over the sample's latent_j rows)."""
    M = rec.get(key)
    if M is None:
        return None
    M = np.asarray(M, dtype=np.float64)
    labels = rec["labels"]
    if row == "latent_mean":
        cols = [i for i, name in enumerate(labels) if name.startswith("latent_")]
        return M[:, cols].mean(1) if cols else None
    return M[:, labels.index(row)] if row in labels else None


def summarise_attention(records: list[dict], n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per layer and summary row: image mass, region mass and region share (region / image, over samples whose row
    attends to the image at all) as bootstrap ``Estimate`` records; the uniform baseline (n_region / n_image); the
    contrasts ``region_share`` of the latent rows minus the uniform share, and the latent rows' region mass minus the
    answer point's and the last prompt token's (paired ``Effect`` records); and per latent step the mean masses
    (``steps``, for the figure)."""
    from latentcheck.core.summaries import Effect, Estimate

    recs = [r["attention"] for r in records if isinstance(r.get("attention"), dict) and r["attention"].get("image")]
    if not recs:
        return {"skipped": "no attention was captured (no replayable latent trace with image tokens)"}
    n_layers = len(recs[0]["image"])

    def est(values: list[float]) -> Estimate:
        return Estimate.bootstrap(values, n_boot=n_boot, seed=seed) if values else Estimate.missing()

    layers: list[dict[str, Any]] = []
    with_region = [r for r in recs if r.get("region") is not None and r.get("region_tokens")]
    share = [len(r["region_tokens"]) / r["n_image"] for r in with_region]
    contrasts: dict[str, list] = {"latent_share_vs_uniform": [], "latent_region_vs_answer_point": [],
                                  "latent_region_vs_last_prompt_token": []}
    for layer in range(n_layers):
        entry: dict[str, Any] = {"layer": layer, "image": {}, "region": {}, "region_share": {}}
        for row in SUMMARY_ROWS:
            vals = [v[layer] for r in recs if (v := _row_values(r, "image", row)) is not None]
            entry["image"][row] = est(vals)
            reg = [(v[layer], i[layer], len(r["region_tokens"]) / r["n_image"]) for r in with_region
                   if (v := _row_values(r, "region", row)) is not None
                   and (i := _row_values(r, "image", row)) is not None]
            entry["region"][row] = est([a for a, _, _ in reg])
            entry["region_share"][row] = est([a / b for a, b, _ in reg if b > 1e-12])
        layers.append(entry)
        lat = [(_row_values(r, "region", "latent_mean"), _row_values(r, "image", "latent_mean"), r) for r in with_region]
        lat = [(a, b, r) for a, b, r in lat if a is not None]
        pairs = [(len(r["region_tokens"]) / r["n_image"], a[layer] / b[layer]) for a, b, r in lat if b[layer] > 1e-12]
        contrasts["latent_share_vs_uniform"].append(
            Effect.paired([p for p, _ in pairs], [q for _, q in pairs], n_boot=n_boot, seed=seed) if pairs
            else Effect(estimate=None, n=0, method="none"))
        for ref in ("answer_point", "last_prompt_token"):
            pr = [(rv[layer], a[layer]) for a, _b, r in lat if (rv := _row_values(r, "region", ref)) is not None]
            contrasts[f"latent_region_vs_{ref}"].append(
                Effect.paired([p for p, _ in pr], [q for _, q in pr], n_boot=n_boot, seed=seed) if pr
                else Effect(estimate=None, n=0, method="none"))
    k = min(sum(1 for name in r["labels"] if name.startswith("latent_")) for r in recs)
    steps: dict[str, Any] = {"labels": [f"latent_{j}" for j in range(k)]}
    for key, pool in (("image", recs), ("region", with_region)):
        if pool:
            arr = np.stack([np.asarray(r[key])[:, [r["labels"].index(f"latent_{j}") for j in range(k)]]
                            for r in pool])  # [n, L, k]
            steps[key] = arr.mean(0).round(6).tolist()
    return {"n": len(recs), "n_region": len(with_region), "n_layers": n_layers, "heads": "mean over heads",
            "uniform_region_share": est(share) if share else Estimate.missing(),
            "layers": layers, "contrasts": contrasts, "steps": steps}


def plot_attention(summary: dict[str, Any], out_dir: str | Path) -> list[str]:
    """``attention_image.png``: per layer, the image mass of each summary row; ``attention_region.png`` (with
    regions): the share of each row's image attention on the target region, with the uniform baseline."""
    from latentcheck.core.plots import lines

    if "layers" not in summary:
        return []
    x = list(range(summary["n_layers"]))
    panels = [("image", "attention_image.png", "attention mass on the image tokens", None)]
    if summary.get("n_region"):
        panels.append(("region_share", "attention_region.png", "share of the image attention on the target region",
                       summary["uniform_region_share"]["estimate"]))
    out = []
    for key, name, ylabel, ref in panels:
        series, bands = {}, {}
        for row in SUMMARY_ROWS:
            vals = [summary["layers"][layer][key][row] for layer in x]
            if all(v["estimate"] is None for v in vals):
                continue
            series[row] = [np.nan if v["estimate"] is None else v["estimate"] for v in vals]
            bands[row] = ([np.nan if v["lo"] is None else v["lo"] for v in vals],
                          [np.nan if v["hi"] is None else v["hi"] for v in vals])
        if not series:
            continue
        title = f"{ylabel} per layer (n={summary['n']}, heads averaged)"
        if ref is not None:
            title += f"; dashed: uniform share {ref:.3f}"
        out.append(lines(x, series, Path(out_dir) / name, title=title, xlabel="decoder layer", ylabel=ylabel,
                         bands=bands, hline=ref))
    return out


__all__ = ["bbox_token_indices", "region_tokens", "attention_record", "summarise_attention", "plot_attention",
           "SUMMARY_ROWS"]
