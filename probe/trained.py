"""Trained probes and geometry of captured states: is the information in the latents at all?

The behavioural probe (``probe/behavioural.py``) asks whether the model *uses* what its latents hold. This module
asks whether the information is *there*: it decodes labels (toy world: target colour, shape, quadrant, answer option;
real data: any label column of the task file) from each latent index and from reference states (image tokens,
question tokens, last prompt token) with cross-validated linear (logistic regression) and small MLP probes.

Design choices:

- Splits are by image (``StratifiedGroupKFold`` on the image path), so two questions about one image never sit on
  both sides of a split and a probe cannot score by recognising the image.
- Out-of-fold predictions are pooled over the folds, giving one 0/1 correctness per sample: accuracy with a Wilson
  interval, and paired comparisons with the same samples' control predictions.
- Control task (Hewitt & Liang 2019, adapted): the same probe trained on a seeded permutation of the labels. It keeps
  the class balance, destroys the label-state relation, and stays at chance under group splits; *selectivity* =
  accuracy - control accuracy, with a paired-bootstrap interval.
- Chance is the majority-class rate of the probed samples (``chance``) and 1 / number of classes
  (``chance_uniform``).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from threadpoolctl import threadpool_limits

from latentcheck.core.errors import LatentcheckError, RecordError
from latentcheck.core.records import record_order_key
from latentcheck.core.similarity import (effective_rank, inter_instance, intra_instance_collapse, mean_centred,
                                         nearest_centroid_accuracy, within_across)
from latentcheck.core.summaries import Effect, Proportion
from latentcheck.core.tasks import Task

REFERENCE_SITES = ("image_tokens", "question_tokens", "last_prompt_token")
TOY_LABELS = ("meta.target.colour", "meta.target.shape", "meta.target.quadrant", "answer", "meta.answer_text")
METHODS = ("linear", "mlp")


@dataclass
class ProbeConfig:
    """How probes are trained and evaluated."""

    n_splits: int = 5
    methods: tuple[str, ...] = METHODS
    C: float = 1.0  # inverse L2 strength of the logistic-regression probe (features standardised)
    mlp_hidden: tuple[int, ...] = (64,)
    mlp_alpha: float = 1e-3
    mlp_max_iter: int = 200
    control: bool = True
    seed: int = 0
    n_boot: int = 1000
    min_samples: int = 6  # fewer probed samples than this: the (site, label) is skipped with a reason

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["methods"], d["mlp_hidden"] = list(self.methods), list(self.mlp_hidden)
        return d


# ------------------------------------------------------------------------------------------------- labels
def label_value(task: Task, spec: str) -> str | None:
    """The value of label ``spec`` for a task: ``answer`` (gold option letter, or the answer text of an open
    question), ``category``, any other top-level task field, or a dotted path into meta (``meta.target.colour``).
    None when the task has no such value. Raises RecordError for a non-scalar value."""
    if spec == "answer":
        value: Any = task.answer_letter if task.options else task.answer
    elif spec.startswith("meta."):
        value = task.meta
        for part in spec.split(".")[1:]:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    elif spec in ("category", "question", "image", "id"):
        value = getattr(task, spec)
    else:
        raise LatentcheckError(f"unknown label {spec!r}: use 'answer', 'category' or 'meta.<path>'")
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise RecordError(task.id, spec, f"label must be a single value, got a {type(value).__name__}")
    return str(value)


def default_labels(tasks: Iterable[Task]) -> list[str]:
    """Toy-world tasks (the zoom world or the binding world): colour, shape, quadrant of the target (the asked
    object), answer option, asked attribute's value. Other data: ``category`` and ``answer`` (whichever is present)."""
    from latentcheck.toy.world import BINDING_WORLD_NAME, WORLD_NAME

    tasks = list(tasks)
    if tasks and all(t.meta.get("world") in (WORLD_NAME, BINDING_WORLD_NAME) for t in tasks):
        return list(TOY_LABELS)
    out = [s for s in ("category", "answer") if any(label_value(t, s) is not None for t in tasks)]
    if not out:
        raise LatentcheckError("no label to probe: the tasks have neither 'category' nor 'answer'; pass "
                               "--label meta.<field>")
    return out


def image_group(task: Task) -> str:
    """The split group of a task: its image (path or a hash of inline data); the id when it has no image."""
    if task.image is None:
        return f"id:{task.id}"
    if task.image.startswith("data:") or len(task.image) >= 1024:
        return "sha256:" + hashlib.sha256(task.image.encode()).hexdigest()
    path = Path(task.image)
    if not path.is_absolute() and task.base_dir:
        path = Path(task.base_dir) / path
    return str(path)


# ------------------------------------------------------------------------------------------------- probes
def _estimator(method: str, cfg: ProbeConfig):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if method == "linear":
        clf = LogisticRegression(C=cfg.C, max_iter=1000)
    elif method == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=tuple(cfg.mlp_hidden), alpha=cfg.mlp_alpha, batch_size=64,
                            max_iter=cfg.mlp_max_iter, random_state=cfg.seed)
    else:
        raise LatentcheckError(f"unknown probe method {method!r}; valid: {', '.join(METHODS)}")
    return make_pipeline(StandardScaler(), clf)


def _oof_correct(method: str, X: np.ndarray, y: np.ndarray, splits, cfg: ProbeConfig) -> np.ndarray:
    """Pooled out-of-fold 0/1 correctness of one probe."""
    correct = np.zeros(len(y), dtype=np.int64)
    for train, test in splits:
        if len(np.unique(y[train])) < 2:  # a fold whose training part holds one class: predict that class
            correct[test] = (y[test] == y[train][0]).astype(np.int64)
            continue
        est = _estimator(method, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings of tiny folds
            est.fit(X[train], y[train])
            correct[test] = (est.predict(X[test]) == y[test]).astype(np.int64)
    return correct


def _group_splits(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has only k members"
        return list(StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
                    .split(np.zeros(len(y)), y, groups))


def _acc(correct: np.ndarray) -> dict[str, Any]:
    """Out-of-fold accuracy of 0/1 ``correct`` as a Proportion dict (Wilson interval)."""
    return Proportion.of(correct).to_dict()


def probe_site(X, labels, groups, cfg: ProbeConfig | None = None) -> dict[str, Any]:
    """Cross-validated probes of ``labels`` from X [N, H] with splits by ``groups`` (e.g. the image path).

    Returns dict(n, n_groups, n_splits, classes, chance, chance_uniform) plus, for each method in ``cfg.methods``,
    ``{method}`` = dict(accuracy, lo, hi, correct) (Wilson interval over pooled out-of-fold predictions) and, with
    ``cfg.control``, ``{method}_control`` (same probe on seeded permuted labels) and ``{method}_selectivity`` =
    accuracy - control accuracy with a paired-bootstrap interval. Or dict(skipped=reason) when the data cannot be
    split (fewer than ``min_samples`` samples, one class, fewer than 2 groups).
    """
    cfg = cfg or ProbeConfig()
    X = np.asarray(X, dtype=np.float64)
    y_raw = np.asarray([str(v) for v in labels], dtype=object)
    g = np.asarray([str(v) for v in groups], dtype=object)
    if X.ndim != 2 or len(X) != len(y_raw) or len(g) != len(y_raw):
        raise LatentcheckError(f"probe_site: X {X.shape}, {len(y_raw)} labels and {len(g)} groups do not match")
    if not np.all(np.isfinite(X)):
        raise LatentcheckError("probe_site: the states contain nan or inf")
    classes, y = np.unique(y_raw, return_inverse=True)
    n, n_groups = len(y), len(set(g))
    base = {"n": n, "n_groups": n_groups, "classes": [str(c) for c in classes]}
    if n < cfg.min_samples:
        return {**base, "skipped": f"only {n} samples (need >= {cfg.min_samples})"}
    if len(classes) < 2:
        return {**base, "skipped": "only one label value"}
    if n_groups < 2:
        return {**base, "skipped": "fewer than 2 images (groups) to split by"}
    if cfg.n_splits < 2:
        raise LatentcheckError(f"probe_site: n_splits must be >= 2, got {cfg.n_splits}")
    counts = np.bincount(y)
    if counts.max() < 2:
        return {**base, "skipped": "every label value occurs once (nothing to learn across splits)"}
    # StratifiedGroupKFold refuses more folds than the largest class has members
    n_splits = int(min(cfg.n_splits, n_groups, counts.max()))
    out: dict[str, Any] = {**base, "n_splits": n_splits, "chance": float(counts.max() / n),
                           "chance_uniform": 1.0 / len(classes)}
    splits = _group_splits(y, g, n_splits, cfg.seed)
    y_ctrl = np.random.default_rng([cfg.seed, 7919]).permutation(y)
    ctrl_splits = _group_splits(y_ctrl, g, n_splits, cfg.seed) if cfg.control else None
    with threadpool_limits(1):  # many small fits: one BLAS thread is faster than oversubscribed ones
        for m in cfg.methods:
            real = _oof_correct(m, X, y, splits, cfg)
            out[m] = _acc(real)
            if cfg.control:
                ctrl = _oof_correct(m, X, y_ctrl, ctrl_splits, cfg)
                out[f"{m}_control"] = _acc(ctrl)
                out[f"{m}_selectivity"] = Effect.paired(ctrl, real, n_boot=cfg.n_boot, seed=cfg.seed).to_dict()
    return out


# ------------------------------------------------------------------------------------------------- sites
def site_matrix(tensors: dict[str, dict[str, np.ndarray]], keys: list[str], site: str
                ) -> tuple[list[str], np.ndarray | None]:
    """(keys that have the site, states [n, H]) for a site: ``latent_<k>``, ``latent_mean`` or a reference."""
    rows, have = [], []
    for k in keys:
        arrs = tensors.get(k, {})
        if site.startswith("latent_"):
            lat = arrs.get("latents")
            if lat is None or lat.ndim != 2 or len(lat) == 0:
                continue
            if site == "latent_mean":
                v = lat.mean(0)
            else:
                i = int(site.split("_")[1])
                if len(lat) <= i:
                    continue
                v = lat[i]
        else:
            v = arrs.get(site)
            if v is None or v.size == 0:
                continue
        rows.append(np.asarray(v, dtype=np.float64).reshape(-1))
        have.append(k)
    return have, (np.stack(rows) if rows else None)


def probe_sites(tensors: dict[str, dict[str, np.ndarray]], keys: list[str]) -> list[str]:
    """latent_0..latent_{K-1} (K = the longest span), latent_mean, then the references present."""
    k_max = max((len(tensors[k]["latents"]) for k in keys if "latents" in tensors.get(k, {})
                 and tensors[k]["latents"].ndim == 2), default=0)
    sites = [f"latent_{i}" for i in range(k_max)] + (["latent_mean"] if k_max > 1 else [])
    sites += [s for s in REFERENCE_SITES if any(tensors.get(k, {}).get(s, np.zeros(0)).size for k in keys)]
    return sites


def run_trained_probes(tensors: dict[str, dict[str, np.ndarray]], tasks: dict[str, Task], labels: list[str],
                       cfg: ProbeConfig | None = None) -> dict[str, Any]:
    """Probe every label from every site. ``tensors``: {key: {"latents": [n, H], ref name: [H]}} (a TensorStore
    load); ``tasks``: {id: Task} giving labels and image groups. Returns dict(config, sites, labels={label:
    dict(n_missing, sites={site: probe_site result})})."""
    cfg = cfg or ProbeConfig()
    # the canonical record-id order: splits, fits and geometry depend neither on storage nor on the file's order
    keys = sorted((k for k in tasks if k in tensors), key=record_order_key)
    if not keys:
        raise LatentcheckError("no captured states match the task file's ids (wrong --data for this cache?)")
    sites = probe_sites(tensors, keys)
    out: dict[str, Any] = {"config": cfg.to_dict(), "sites": sites, "n_keys": len(keys), "labels": {}}
    for label in labels:
        values = {k: label_value(tasks[k], label) for k in keys}
        have = [k for k in keys if values[k] is not None]
        entry: dict[str, Any] = {"n_missing": len(keys) - len(have), "sites": {}}
        for site in sites:
            site_keys, X = site_matrix(tensors, have, site)
            if X is None:
                entry["sites"][site] = {"n": 0, "skipped": "no states"}
                continue
            entry["sites"][site] = probe_site(X, [values[k] for k in site_keys],
                                              [image_group(tasks[k]) for k in site_keys], cfg)
        out["labels"][label] = entry
    return out


# ------------------------------------------------------------------------------------------------- geometry
def similarity_stats(tensors: dict[str, dict[str, np.ndarray]], tasks: dict[str, Task],
                     category: str = "category", seed: int = 0) -> dict[str, Any]:
    """Geometry of the captured latents (core/similarity): per latent index the inter-instance cosine (raw and
    centred on the all-latent mean), within- vs across-category centred cosine, task separability (cosine
    nearest-centroid accuracy by ``category`` on centred states) and effective rank; intra-instance similarity of
    an instance's steps; the same separability and effective rank for the reference states."""
    # the canonical record-id order: splits, fits and geometry depend neither on storage nor on the file's order
    keys = sorted((k for k in tasks if k in tensors), key=record_order_key)
    lat = {k: tensors[k]["latents"] for k in keys
           if "latents" in tensors[k] and tensors[k]["latents"].ndim == 2 and len(tensors[k]["latents"])}
    out: dict[str, Any] = {"n": len(keys), "n_with_latents": len(lat)}
    if len(lat) < 2:
        out["skipped"] = "fewer than 2 instances with latents"
        return out
    counts = [len(v) for v in lat.values()]
    K = int(min(counts))
    lk = list(lat)
    Z = np.stack([lat[k][:K] for k in lk]).astype(np.float64)  # [N, K, H]
    mu = np.concatenate([lat[k] for k in lk]).astype(np.float64).mean(0)
    cats = [label_value(tasks[k], category) for k in lk]
    inter = inter_instance(Z, mean=mu)
    out.update(K=K, latent_count_min=K, latent_count_max=int(max(counts)),
               latent_norm=float(np.linalg.norm(Z, axis=-1).mean()),
               inter_raw=inter["raw_mean"].tolist(), inter_centred=inter["centred_mean"].tolist(),
               effective_rank_all=effective_rank(np.concatenate([lat[k] for k in lk])),
               effective_rank=[effective_rank(Z[:, i]) for i in range(K)])
    if K > 1:
        intra = intra_instance_collapse(Z, mean=mu)
        out.update(intra_adjacent=intra["adjacent"].tolist(), intra_all_pairs=intra["all_pairs"])
    usable = all(c is not None for c in cats) and _separable(cats)
    if usable:
        out["within_across"] = [within_across(inter["centred"][i], cats) for i in range(K)]
        out["separability"] = [nearest_centroid_accuracy(mean_centred(Z[:, i], mu), cats, seed=seed)
                               for i in range(K)]
    else:
        out["separability_skipped"] = f"label {category!r} missing or with < 2 values of >= 2 samples"
    refs: dict[str, Any] = {}
    for site in REFERENCE_SITES:
        rk, X = site_matrix(tensors, keys, site)
        if X is None or len(rk) < 2:
            continue
        r: dict[str, Any] = {"n": len(rk), "norm": float(np.linalg.norm(X, axis=1).mean()),
                             "effective_rank": effective_rank(X)}
        rc = [label_value(tasks[k], category) for k in rk]
        if all(c is not None for c in rc) and _separable(rc):
            r["separability"] = nearest_centroid_accuracy(mean_centred(X), rc, seed=seed)
        refs[site] = r
    out["references"] = refs
    return out


def _separable(cats: list) -> bool:
    vals, counts = np.unique(np.asarray(cats, dtype=object).astype(str), return_counts=True)
    return len(vals) >= 2 and counts.min() >= 2


# ------------------------------------------------------------------------------------------------- plots
def plot_trained(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """One PNG per label: probe accuracy per site (latent indices, then references) with Wilson intervals,
    control-task accuracy (dashed) and chance (grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latentcheck.core.plots import save

    paths = []
    for label, entry in result.get("labels", {}).items():
        sites = [s for s in result["sites"] if "skipped" not in entry["sites"].get(s, {"skipped": 1})]
        if not sites:
            continue
        x = np.arange(len(sites))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(sites) + 2), 3.6))
        for i, m in enumerate(result["config"]["methods"]):
            acc = np.array([entry["sites"][s][m]["estimate"] for s in sites])
            lo = np.array([entry["sites"][s][m]["lo"] for s in sites])
            hi = np.array([entry["sites"][s][m]["hi"] for s in sites])
            ax.errorbar(x + (i - 0.5) * 0.12, acc, yerr=[acc - lo, hi - acc], marker="o", ms=4, capsize=3,
                        color=f"C{i}", label=f"{m} probe")
            if all(f"{m}_control" in entry["sites"][s] for s in sites):
                ctrl = [entry["sites"][s][f"{m}_control"]["estimate"] for s in sites]
                ax.plot(x, ctrl, ls="--", marker="x", ms=4, color=f"C{i}", alpha=0.7, label=f"{m} control task")
        chance = [entry["sites"][s]["chance"] for s in sites]
        ax.plot(x, chance, color="grey", ls=":", lw=1.2, label="chance (majority)")
        n_lat = sum(s.startswith("latent_") for s in sites)
        if 0 < n_lat < len(sites):
            ax.axvline(n_lat - 0.5, color="black", lw=0.6, alpha=0.5)
        ax.set_xticks(x)
        ax.set_xticklabels(sites, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("held-out accuracy (splits by image)")
        ax.set_title(f"probe: {label}", fontsize=10)
        ax.legend(fontsize=7, loc="best")
        safe = label.replace("/", "_").replace(" ", "_")
        paths.append(save(fig, Path(out_dir) / f"probe_{safe}.png"))
    return paths


def plot_similarity(sim: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Inter-instance cosine (raw, centred) and task separability per latent index."""
    from latentcheck.core.plots import lines

    if "inter_raw" not in sim:
        return []
    K = sim["K"]
    series = {"inter-instance cos (raw)": sim["inter_raw"], "inter-instance cos (centred)": sim["inter_centred"]}
    if "separability" in sim:
        series["category separability (NC acc)"] = [s["estimate"] for s in sim["separability"]]
    return [lines(list(range(K)), series, Path(out_dir) / "similarity.png", title="latent geometry per index",
                  xlabel="latent index", ylabel="cosine / accuracy")]


@dataclass
class TrainedResult:
    """Trained probes + geometry of one set of captured states."""

    probes: dict[str, Any] = field(default_factory=dict)
    similarity: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)


def analyse_states(tensors: dict[str, dict[str, np.ndarray]], tasks: dict[str, Task], labels: list[str] | None,
                   cfg: ProbeConfig | None = None, plot_dir: str | Path | None = None) -> TrainedResult:
    """Trained probes (``labels`` or the defaults for these tasks) and latent geometry; optional PNGs."""
    cfg = cfg or ProbeConfig()
    # the canonical record-id order: splits, fits and geometry depend neither on storage nor on the file's order
    keys = sorted((k for k in tasks if k in tensors), key=record_order_key)
    labels = list(labels) if labels else default_labels(tasks[k] for k in keys)
    res = TrainedResult(probes=run_trained_probes(tensors, tasks, labels, cfg),
                        similarity=similarity_stats(tensors, tasks, seed=cfg.seed))
    if plot_dir is not None:
        res.plots = plot_trained(res.probes, plot_dir) + plot_similarity(res.similarity, plot_dir)
    return res
