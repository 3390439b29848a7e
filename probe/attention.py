"""Attention mass: where does each latent step look — at the image, and at the target region? (issue #24, part 3)

For every captured source trace the probe replays it once (``Engine.replay_attention``: the teacher-forced replay up
to the answer point, the model's own attention implementation, the head-mean attention weights of chosen query
positions read at every decoder layer). Per layer and query row it records

- ``image``: the attention mass on the image tokens (sum of the row's weights over the image-token keys);
- ``region``: the mass on the image tokens of the target region (the task's ``bbox``, mapped onto the merged-token
  grid by ``core.prompts.bbox_token_indices``), when the task has a bbox;
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

from pathlib import Path
from typing import Any, Sequence

import numpy as np

SUMMARY_ROWS = ("latent_mean", "start", "last_prompt_token", "answer_point")


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
    answer point's and the last prompt token's (paired ``Effect`` records) per layer, and ``contrasts_over_layers``
    (the same contrasts on each sample's mean over layers: one pre-specified number each); and per latent step the
    mean masses (``steps``, for the figure)."""
    from latentcheck.core.summaries import Effect, Estimate

    recs = [r["attention"] for r in records if isinstance(r.get("attention"), dict) and r["attention"].get("image")]
    if not recs:
        return {"skipped": "no attention was captured (no replayable latent trace with image tokens)"}
    n_layers = len(recs[0]["image"])

    def est(values: list[float]) -> dict[str, Any]:
        return (Estimate.bootstrap(values, n_boot=n_boot, seed=seed) if values else Estimate.missing()).to_dict()

    def eff(pairs: list[tuple[float, float]]) -> dict[str, Any]:
        """mean(second - first) over paired samples (paired bootstrap Effect)."""
        if not pairs:
            return Effect(estimate=None, n=0, method="none").to_dict()
        return Effect.paired([p for p, _ in pairs], [q for _, q in pairs], n_boot=n_boot, seed=seed).to_dict()

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
        contrasts["latent_share_vs_uniform"].append(eff(pairs))
        for ref in ("answer_point", "last_prompt_token"):
            pr = [(rv[layer], a[layer]) for a, _b, r in lat if (rv := _row_values(r, "region", ref)) is not None]
            contrasts[f"latent_region_vs_{ref}"].append(eff(pr))
    # one pre-specified number per contrast: per sample the mean over layers (share: over layers where the latent
    # rows attend to the image at all), then a paired bootstrap over samples
    shares: dict[str, list] = {"latent_mean": [], "start": []}
    all_ap = []
    for r in with_region:
        for row in shares:
            a, b = _row_values(r, "region", row), _row_values(r, "image", row)
            if a is None or b is None:
                continue
            ok = b > 1e-12
            if ok.any():
                shares[row].append((len(r["region_tokens"]) / r["n_image"], float(np.mean(a[ok] / b[ok]))))
        a, ap = _row_values(r, "region", "latent_mean"), _row_values(r, "region", "answer_point")
        if a is not None and ap is not None:
            all_ap.append((float(np.mean(ap)), float(np.mean(a))))
    over_layers = {"latent_share_vs_uniform": eff(shares["latent_mean"]),
                   "start_share_vs_uniform": eff(shares["start"]), "latent_region_vs_answer_point": eff(all_ap)}
    k = min(sum(1 for name in r["labels"] if name.startswith("latent_")) for r in recs)
    steps: dict[str, Any] = {"labels": [f"latent_{j}" for j in range(k)]}
    for key, pool in (("image", recs), ("region", with_region)):
        if pool:
            arr = np.stack([np.asarray(r[key])[:, [r["labels"].index(f"latent_{j}") for j in range(k)]]
                            for r in pool])  # [n, L, k]
            steps[key] = arr.mean(0).round(6).tolist()
    return {"n": len(recs), "n_region": len(with_region), "n_layers": n_layers, "heads": "mean over heads",
            "uniform_region_share": est(share),
            "layers": layers, "contrasts": contrasts, "contrasts_over_layers": over_layers, "steps": steps}


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


__all__ = ["attention_record", "summarise_attention", "plot_attention",
           "SUMMARY_ROWS"]
