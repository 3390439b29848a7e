"""Formal mediation of the input X -> answer Y effect through the latents Z, with interchange interventions.

For sample i and a counterfactual input x' (default: sample i's question with the image of a partner sample j
chosen by a seeded derangement; or sample i's image with partner j's question and options), four runs give
``y_xz`` = outcome when the model reads input x (0 = original, 1 = counterfactual) while its fed latents come from
the run on input z:

- ``y00`` original input, own latents (the un-intervened baseline);
- ``y11`` counterfactual input, its own latents (a normal run on x');
- ``y01`` original input, latents taken from the ``y11`` run (``Condition.override``);
- ``y10`` counterfactual input, the baseline's latents (``Condition.override``).

TE = E[y11 - y00], NIE = E[y01 - y00], NDE = E[y10 - y00], proportion mediated = NIE / TE
(``core.stats.mediation_effects``, paired bootstrap over samples). The outcome is always scored against the
ORIGINAL sample's gold answer: ``correct`` (primary) and ``logp_gold`` = log p(original gold letter) at the answer
point (secondary, more sensitive). This module holds the partner choice, the counterfactual tasks and the summary;
the runs themselves happen in ``perturb.latents`` (same batches as the interventions).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.records import record_order_key
from latentcheck.core.summaries import Mediation
from latentcheck.core.tasks import Task

MEDIATION_KINDS = ("image", "question")
OUTCOMES = ("correct", "logp_gold")
PRIMARY_OUTCOME = "correct"
RUNS = ("y11", "y01", "y10")  # y00 is the sample's baseline


def parse_kinds(text: str | Sequence[str] | None) -> list[str]:
    """``"image,question"`` / ``["image"]`` / ``"none"`` -> validated list of input changes."""
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [x for t in text for x in str(t).split(",")]
    out: list[str] = []
    for it in (x.strip().lower() for x in items):
        if not it or it in ("none", "off"):
            continue
        if it not in MEDIATION_KINDS:
            raise LatentcheckError(f"unknown mediation input change {it!r}; valid: {', '.join(MEDIATION_KINDS)} "
                                   "or none")
        if it not in out:
            out.append(it)
    return out


def _groups(n: int, group_size: int | None) -> list[tuple[int, int]]:
    """Consecutive [a, b) groups of ``group_size`` indices (a trailing group of one joins the previous group)."""
    g = n if not group_size or group_size >= n else max(2, int(group_size))
    starts = list(range(0, n, g))
    if n - starts[-1] < 2:
        starts.pop()
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


def derangement(n: int, seed: int, group_size: int | None = None) -> np.ndarray:
    """A seeded permutation ``p`` of range(n) with ``p[i] != i`` for every i (n >= 2).

    With ``group_size`` the derangement stays inside consecutive groups of that many indices (a trailing group of
    one is merged into the previous group), so a sample's partner is usually in the same processing block.
    Each group is drawn uniformly among its derangements (rejection sampling, seeded by (seed, group index)).
    """
    if n < 2:
        raise LatentcheckError(f"a derangement needs at least 2 samples, got {n}")
    out = np.empty(n, dtype=np.int64)
    for gi, (a, b) in enumerate(_groups(n, group_size)):
        rng = np.random.default_rng([int(seed), gi, 0x5EED])
        m = b - a
        while True:
            p = rng.permutation(m)
            if not np.any(p == np.arange(m)):
                break
        out[a:b] = a + p
    return out


PARTNER_RULES = ("different_gold", "any")
# The mediators: ``vectors`` = the fed-back vectors (Condition.override); ``span`` = the latent span as a whole, i.e.
# the span positions' states at every layer (activation patching, Engine.replay_span).
MEDIATORS = ("vectors", "span")


def parse_mediators(text: str | Sequence[str] | None) -> list[str]:
    """``"vectors,span"`` -> validated list (the fed vectors are always included: the runs exist anyway)."""
    items = [] if text is None else (text.split(",") if isinstance(text, str) else
                                     [x for t in text for x in str(t).split(",")])
    out = ["vectors"]
    for it in (x.strip().lower() for x in items):
        if not it:
            continue
        if it not in MEDIATORS:
            raise LatentcheckError(f"unknown mediator {it!r}; valid: {', '.join(MEDIATORS)}")
        if it not in out:
            out.append(it)
    return out


def partner_map(keys: Sequence[str], seed: int, group_size: int | None = None,
                golds: Sequence[Any] | None = None) -> dict[str, str | None]:
    """Each key's partner (every key maps to None when there are fewer than 2 samples).

    Without ``golds``: a seeded ``derangement``. With ``golds`` (the default rule ``different_gold``: a mediation or
    swap partner whose gold answer differs, so that the counterfactual input asks for another answer): each
    sample's partner is drawn uniformly (seeded by (seed, group)) among the samples of its group whose gold differs;
    a sample whose group has none keeps its derangement partner.

    The draw runs over the keys in the canonical record-id order (``core.records.record_order_key``; groups are
    consecutive in that order), so the partners do not depend on the input file's order."""
    keys = list(keys)
    if len(keys) < 2:
        return {k: None for k in keys}
    canon = sorted(range(len(keys)), key=lambda i: record_order_key(keys[i]))
    keys = [keys[i] for i in canon]
    golds = None if golds is None else [list(golds)[i] for i in canon]
    p = derangement(len(keys), seed, group_size)
    if golds is not None:
        golds = list(golds)
        for gi, (a, b) in enumerate(_groups(len(keys), group_size)):
            rng = np.random.default_rng([int(seed), gi, 0xD1FF])
            for i in range(a, b):
                cands = [j for j in range(a, b) if golds[j] != golds[i]]
                if cands:
                    p[i] = cands[int(rng.integers(len(cands)))]
    return {k: keys[int(j)] for k, j in zip(keys, p)}


def counterfactual_task(task: Task, partner: Task, kind: str) -> Task:
    """The changed input x' for ``task``: ``image`` = partner's image, own question and options; ``question`` =
    own image, partner's question and options. The gold answer stays the ORIGINAL one."""
    if kind == "image":
        return replace(task, id=f"{task.id}~image", image=partner.image, base_dir=partner.base_dir)
    if kind == "question":
        return replace(task, id=f"{task.id}~question", question=partner.question, options=partner.options)
    raise LatentcheckError(f"unknown mediation input change {kind!r}; valid: {', '.join(MEDIATION_KINDS)}")


def _value(outcome: dict | None, name: str) -> float | None:
    if not outcome or "skipped" in outcome:
        return None
    v = outcome.get(name)
    if v is None:
        return None
    return float(v)


def mediation_arrays(records: list[dict], kind: str, outcome: str, mediator: str = "vectors"
                     ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-sample y00 / y11 / y01 / y10 arrays of ``outcome`` for one input change and mediator, over the samples
    that have all four; returns (arrays, keys used)."""
    cols: dict[str, list[float]] = {"y00": [], "y11": [], "y01": [], "y10": []}
    used = []
    for r in records:
        if r.get("type", "sample") != "sample":
            continue
        runs = _mediator_runs(r, kind, mediator)
        if runs is None:
            continue
        vals = {y: _value(o, outcome) for y, o in runs.items()}
        if any(v is None for v in vals.values()):
            continue
        for y, v in vals.items():
            cols[y].append(v)
        used.append(r["key"])
    return {y: np.asarray(v, dtype=np.float64) for y, v in cols.items()}, used


def _mediator_runs(r: dict, kind: str, mediator: str) -> dict[str, dict | None] | None:
    """{y00, y11, y01, y10} outcomes of one record for one mediator (None when skipped)."""
    m = (r.get("mediation") or {}).get(kind)
    if not m or "skipped" in m:
        return None
    if mediator == "vectors":
        return {"y00": r.get("baseline"), **{y: m.get(y) for y in RUNS}}
    sp = m.get(mediator)
    if not sp or "skipped" in sp:
        return None
    return {y: sp.get(y) for y in ("y00", *RUNS)}


def interchange(records: list[dict], kind: str, mediator: str = "vectors") -> dict:
    """Interchange accuracy: does the answer follow the counterfactual when only the mediator comes from it?

    ``follows_counterfactual`` = P(answer(y01) == answer(y11)) (the answer the model gives on the partner's input),
    also over the informative samples where the counterfactual run answers differently from the original
    (``..._changed``); ``follows_partner_gold`` = P(answer(y01) == the partner's gold letter). Wilson intervals."""
    from latentcheck.core.summaries import Proportion

    same, changed, partner = [], [], []
    for r in records:
        if r.get("type", "sample") != "sample":
            continue
        runs = _mediator_runs(r, kind, mediator)
        if runs is None or any(v is None or "skipped" in v for v in runs.values()):
            continue
        a00, a11, a01 = (runs[y].get("answer") for y in ("y00", "y11", "y01"))
        same.append(a01 is not None and a01 == a11)
        if a11 != a00:
            changed.append(a01 is not None and a01 == a11)
        pg = ((r.get("mediation") or {}).get(kind) or {}).get("partner_gold")
        if pg is not None:
            partner.append(a01 == pg)

    return {name: Proportion.of(flags).to_dict() for name, flags in (
        ("follows_counterfactual", same), ("follows_counterfactual_changed", changed),
        ("follows_partner_gold", partner))}


def summarise_mediation(records: list[dict], kinds: Sequence[str], seed: int = 0, n_boot: int = 2000,
                        mediators: Sequence[str] = ("vectors",)) -> dict:
    """TE / NIE / NDE / interaction / pure and total proportions mediated with CIs, per input change, mediator and
    outcome, plus interchange accuracy. The fed-vector mediator's effects sit at the top of each input change's entry
    (``entry[outcome]``, ``entry["interchange"]``); every other mediator under its name (``entry["span"]``)."""
    out: dict[str, Any] = {}
    for kind in kinds:
        entry: dict[str, Any] = {"primary_outcome": PRIMARY_OUTCOME, "mediators": list(mediators)}
        n_total = sum(1 for r in records if r.get("type", "sample") == "sample")
        skipped = [r["key"] for r in records if r.get("type", "sample") == "sample"
                   and "skipped" in ((r.get("mediation") or {}).get(kind) or {"skipped": True})]
        entry["n_skipped"] = len(skipped)
        for mediator in mediators:
            target = entry if mediator == "vectors" else entry.setdefault(mediator, {})
            for outcome in OUTCOMES:
                arrs, used = mediation_arrays(records, kind, outcome, mediator)
                if not used:
                    target[outcome] = {"n": 0}
                    continue
                target[outcome] = Mediation.from_outcomes(arrs["y00"], arrs["y11"], arrs["y01"], arrs["y10"],
                                                          seed=seed, n_boot=n_boot).to_dict()
            target["interchange"] = interchange(records, kind, mediator)
        entry["n_samples"] = n_total
        out[kind] = entry
    return out


# ---------------------------------------------------------------------------------------------- layer patching
def parse_patch_layers(text: str | Sequence[str] | None, n_states: int) -> list[tuple[str, list[int]]]:
    """``--patch-layers``: ``each`` (every decoder layer l alone), ``L``, ``A-B`` (inclusive) or ``all``,
    comma-separated -> [(label, state indices)] in order, de-duplicated. State index l = the residual stream entering
    decoder layer l; n_states - 1 = the last layer's output, which no later position reads (keys and values are made
    from layer inputs), so ``each`` leaves it out (it can still be named)."""
    from latentcheck.core.interventions import parse_layers

    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [x for t in text for x in str(t).split(",")]
    out: list[tuple[str, list[int]]] = []
    for it in (x.strip().lower() for x in items):
        if not it or it in ("none", "off"):
            continue
        sets = [(str(i), [i]) for i in range(n_states - 1)] if it == "each" else \
            [(it, sorted(parse_layers(it, n_states)))]
        for label, layers in sets:
            if label not in [lab for lab, _ in out]:
                out.append((label, layers))
    return out


def summarise_layer_patching(records: list[dict], kinds: Sequence[str], sets: Sequence[tuple[str, list[int]]],
                             n_states: int, seed: int = 0, n_boot: int = 2000) -> dict:
    """Per input change: one row per patched layer set, the span's states at those layers taken from the
    counterfactual run (y01 at layer l) vs the replayed baseline (y00): paired ``AccuracyEffect`` (Tango CI, exact
    McNemar, Holm over the sweep in ``effect.delta.p_holm``), ``d_logp_gold`` (``Effect``, paired bootstrap),
    ``follows_counterfactual`` / ``follows_partner_gold`` (``Proportion``, Wilson)."""
    from dataclasses import replace as dc_replace

    from latentcheck.core.stats import holm
    from latentcheck.core.summaries import AccuracyEffect, Effect, Proportion

    out: dict[str, Any] = {}
    for kind in kinds:
        rows = []
        for label, layers in sets:
            y00, y01, lp0, lp1, fol, pg = [], [], [], [], [], []
            for r in records:
                m = (r.get("mediation") or {}).get(kind) or {}
                sp = m.get("span") or {}
                o = (sp.get("layers") or {}).get(label)
                if not o or "skipped" in sp or sp.get("y00") is None:
                    continue
                y00.append(bool(sp["y00"]["correct"]))
                y01.append(bool(o["correct"]))
                lp0.append(sp["y00"]["logp_gold"])
                lp1.append(o["logp_gold"])
                fol.append(o["answer"] == sp["y11"]["answer"])
                if m.get("partner_gold") is not None:
                    pg.append(o["answer"] == m["partner_gold"])
            row: dict[str, Any] = {"label": label, "layers": list(layers),
                                   "x": layers[0] if len(layers) == 1 else None, "n": len(y00)}
            if y00:
                row["effect"] = AccuracyEffect.paired(y00, y01, seed=seed, n_boot=n_boot)
                row["d_logp_gold"] = Effect.paired(lp0, lp1, n_boot=n_boot, seed=seed)
                row["follows_counterfactual"] = Proportion.of(fol)
                row["follows_partner_gold"] = Proportion.of(pg) if pg else None
            rows.append(row)
        ps = [r["effect"].delta.p_value if "effect" in r else math.nan for r in rows]
        adj = holm(ps)
        for r, ph in zip(rows, adj):
            if "effect" in r:
                r["effect"] = dc_replace(r["effect"], delta=dc_replace(r["effect"].delta,
                                                                      p_holm=None if math.isnan(ph) else ph))
        for r in rows:
            for k in ("effect", "d_logp_gold", "follows_counterfactual", "follows_partner_gold"):
                if r.get(k) is not None:
                    r[k] = r[k].to_dict()
        out[kind] = {"n_states": n_states, "rows": rows,
                     "state_index": "l = the residual stream entering decoder layer l at the span positions; "
                                    f"{n_states - 1} = the last layer's output",
                     "multiplicity": {"method": "holm", "family": "the layer sets of this sweep (exact McNemar p)",
                                      "m": int(sum(1 for x in adj if not math.isnan(x)))}}
    return out


def plot_layer_patching(summary_lp: dict, folder) -> dict[str, str]:
    """One curve per input change over the single-layer rows: accuracy change (Tango CI band) and the share of
    answers that follow the counterfactual run (Wilson band), against the patched layer."""
    from pathlib import Path

    from latentcheck.core.plots import lines

    paths = {}
    for kind, entry in summary_lp.items():
        rows = [r for r in entry["rows"] if r.get("x") is not None and r.get("effect")]
        if not rows:
            continue
        x = [r["x"] for r in rows]
        d = [r["effect"]["delta"] for r in rows]
        f = [r["follows_counterfactual"] for r in rows]
        paths[f"layer_patching_{kind}"] = lines(
            x, {"delta accuracy": [e["estimate"] for e in d], "follows counterfactual": [e["estimate"] for e in f]},
            Path(folder) / f"layer_patching_{kind}.png",
            title=f"span patched at one layer from the {kind}-swapped run (n={rows[0]['n']}; 95% CIs)",
            xlabel="layer (residual stream entering it)", ylabel="effect / rate",
            bands={"delta accuracy": ([e["lo"] for e in d], [e["hi"] for e in d]),
                   "follows counterfactual": ([e["lo"] for e in f], [e["hi"] for e in f])}, hline=0.0)
    return paths


def plot_mediation(summary_mediation: dict, folder) -> dict[str, str]:
    """One bar chart per input change: TE / NIE / NDE on the primary outcome with CI bars and the zero line."""
    from pathlib import Path

    from latentcheck.core.plots import bar_ci

    paths = {}
    for kind, entry in summary_mediation.items():
        eff = entry.get(PRIMARY_OUTCOME) or {}
        if not eff.get("n"):
            continue
        names = ("te", "nie", "nde")
        vals = [eff[k]["estimate"] for k in names]
        lo = [eff[k]["lo"] for k in names]
        hi = [eff[k]["hi"] for k in names]
        pm = eff["proportion_mediated"]["estimate"]
        title = (f"mediation, {kind} swap (n={eff['n']}, outcome: {PRIMARY_OUTCOME}); "
                 f"prop. mediated = {pm:.2f}" if math.isfinite(pm) else
                 f"mediation, {kind} swap (n={eff['n']}, outcome: {PRIMARY_OUTCOME}); prop. mediated undefined")
        paths[f"mediation_{kind}"] = bar_ci(["TE", "NIE", "NDE"], vals, lo, hi, Path(folder) / f"mediation_{kind}.png",
                                            title=title, ylabel="effect on P(correct)", hline=0.0)
    return paths
