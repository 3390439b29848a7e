"""The audit's mechanism section (issue #24, part 6): where the answer's information flows, format vs content, what
the latents look at and say, geometry beyond raw cosine, and encodes vs uses — one row per model.

Two pieces:

* the ``mechanism`` stage (:class:`Mechanism`, registered in audit/stages.py; latent models): the arms that the
  verdict stages do not run, as the existing commands with fewer samples (``DEFAULT_LIMITS["mechanism"]``) in their
  own Holm family so the Z -> Y verdict's family is unchanged: perturb-latent with the position-preserving
  ``placeholder``, the attention knockouts answer -> span and span -> image (all layers) and a span-length sweep
  (K' = 0, 1, K/2, 2K; K' = 0 = markers only), and probe ``--erase`` (LEACE erasure + steering of the answer
  attribute; needs the ``mech`` extra, skipped with the reason otherwise). Its ``summary.json`` holds the effects as
  typed records and ``plots/`` a forest plot of them and the length curve;
* :func:`mechanism_row`: the section's row from every stage's summary — the mechanism stage's arms, the perturb-latent
  stage's content ablation and per-layer span patching (``--patch-layers each`` on the mediation's counterfactual run),
  the probe stage's logit lens and attention mass, the perturb-input stage's CKA / RSA / retrieval and position-matched
  references. Each part says how many samples it rests on (``n``).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from latentcheck.core.analysis import AnalysisRun, AnalysisSpec

MECHANISM_ARMS = ("placeholder", "knockout:query=answer,key=span,layers=all",
                  "knockout:query=span,key=image,layers=all")
ARM_NAMES = {"placeholder": "placeholder span (position-preserving removal)",
             "knockout:query=answer,key=span,layers=all": "knockout answer -> span (all layers)",
             "knockout:query=span,key=image,layers=all": "knockout span -> image (all layers)"}
ERASE_LABELS = ("meta.answer_text", "answer")  # the first every task has
CONTENT_ARM = "shared:source=mean"  # the verdict stage's on-distribution content ablation


def length_sweep_for(k: int) -> list[int]:
    """K' values of the mechanism stage's length sweep for a span of K: 0 (markers only), 1, K/2 and 2K (K itself is
    the baseline)."""
    return sorted({0, 1, max(1, k // 2), 2 * k} - {k})


# ------------------------------------------------------------------------------------------------ summary readers
def effect_of(row: dict | None) -> dict | None:
    """A paired-accuracy entry (typed ``AccuracyEffect`` dict or the flat v1 row) -> its delta as an ``Effect`` dict."""
    from latentcheck.core.summaries import Effect

    if not row:
        return None
    d = row.get("delta")
    if isinstance(d, dict):
        return Effect.from_dict(d).to_dict()
    if isinstance(row.get("effect"), dict):
        return effect_of(row["effect"])
    if d is None:
        return None
    return Effect(estimate=d, lo=row.get("delta_lo"), hi=row.get("delta_hi"), n=int(row.get("n") or 0),
                  method=row.get("interval") or "paired_bootstrap", p_value=row.get("mcnemar_p"),
                  test="mcnemar_exact" if row.get("mcnemar_p") is not None else None, p_holm=row.get("p_holm"),
                  mde=row.get("mde")).to_dict()


def accuracy_of(row: dict | None, base: bool = False) -> dict | None:
    """The condition's (or base's) accuracy of a paired-accuracy entry as a ``Proportion`` dict."""
    from latentcheck.core.summaries import Proportion

    if not row:
        return None
    key = "base" if base else "cond"
    if isinstance(row.get(key), dict):
        return Proportion.from_dict(row[key]).to_dict()
    if isinstance(row.get("effect"), dict):
        return accuracy_of(row["effect"], base)
    acc = row.get("acc_base" if base else "accuracy", row.get("acc_base") if base else row.get("acc_cond"))
    if acc is None:
        return None
    n = int(row.get("n") or 0)
    lo = row.get("acc_base_lo" if base else "accuracy_lo", row.get("acc_cond_lo"))
    hi = row.get("acc_base_hi" if base else "accuracy_hi", row.get("acc_cond_hi"))
    return Proportion(estimate=acc, lo=lo, hi=hi, n=n, successes=int(round(acc * n))).to_dict()


def _proportion(d: dict | None) -> dict | None:
    """An accuracy dict (typed ``Proportion`` or the v1 ``accuracy, accuracy_lo, accuracy_hi, n``) as a Proportion."""
    from latentcheck.core.summaries import Proportion

    if not d:
        return None
    if "estimate" in d:
        return Proportion.from_dict({k: v for k, v in d.items() if k in
                                     ("estimate", "lo", "hi", "n", "method", "successes")}).to_dict()
    acc = d.get("accuracy")
    if isinstance(acc, dict):
        return _proportion(acc)
    if acc is None:
        return None
    n = int(d.get("n") or 0)
    return Proportion(estimate=acc, lo=d.get("accuracy_lo", d.get("lo")), hi=d.get("accuracy_hi", d.get("hi")), n=n,
                      successes=int(round(acc * n))).to_dict()


def _rows_by_label(pl: dict | None) -> dict[str, dict]:
    return {r["label"]: r for r in (pl or {}).get("interventions") or [] if isinstance(r, dict) and "label" in r}


def _find(rows: dict[str, dict], prefix: str) -> dict | None:
    """The intervention row whose label is ``prefix`` or starts with it (labels spell out default parameters)."""
    if prefix in rows:
        return rows[prefix]
    name, _, params = prefix.partition(":")
    want = set(params.split(",")) if params else set()
    for label, r in rows.items():
        n, _, p = label.partition(":")
        if n == name and want <= set(p.split(",")):
            return r
    return None


# ------------------------------------------------------------------------------------------------ the stage
def _erase_label(tasks) -> str:
    for label in ERASE_LABELS:
        if label == "answer" or all(isinstance(t.meta.get(label.removeprefix("meta.")), str) for t in tasks):
            return label
    return "answer"


class Mechanism(AnalysisSpec):
    """The mechanism stage (module docstring) as an analysis: no record file of its own; its summary runs
    perturb-latent's mechanism arms and probe ``--erase`` through the same driver (``core.analysis.run_analysis``)
    into ``<folder>/perturb-latent`` and ``<folder>/probe`` and collects their effects; plots."""

    command = "mechanism"
    results_stage = None

    def __init__(self, settings: Any):
        self.settings = settings

    def read_items(self, opts) -> tuple[str, list]:
        from latentcheck.core.runner import data_path, read_all_tasks

        path = data_path(opts)
        return path, read_all_tasks(path, opts.limit, False)

    def stages(self, run: AnalysisRun) -> list:
        return []

    def summarise(self, run: AnalysisRun) -> dict[str, Any]:
        from latentcheck.core.analysis import run_analysis
        from latentcheck.perturb.latents import PerturbLatent

        o, s, lm, out = run.opts, self.settings, run.lm, run.out
        k = int(lm.profile.latent.k or 0) or 4
        sweep = length_sweep_for(k)
        pl = run_analysis(PerturbLatent(list(MECHANISM_ARMS), length_sweep=sweep, mediation=[],
                                        force_latent=s.force_latent, n_boot=s.n_boot, plots=s.plots),
                          dataclasses.replace(o, out=str(out / "perturb-latent")), lm=lm)
        rows = _rows_by_label(pl.summary)
        summary: dict[str, Any] = {"command": "mechanism", "model": lm.describe(), "K": k, "length_sweep": sweep,
                                   "perturb_latent": "perturb-latent/summary.json",
                                   "multiplicity": "Holm over this stage's perturb-latent rows (not the verdict "
                                                   "stage's)"}
        summary["n"] = int((pl.counts or {}).get("ok") or 0)
        summary["baseline_accuracy"] = _proportion(pl.summary.get("baseline"))
        summary["arms"] = {arm: {"name": ARM_NAMES[arm], "effect": effect_of(_find(rows, arm)),
                                 "accuracy": accuracy_of(_find(rows, arm))} for arm in MECHANISM_ARMS}
        by_k = {r.get("x"): r for r in rows.values() if r.get("group") == "length_sweep"}
        summary["length"] = [{"k": kk, "accuracy": accuracy_of(by_k.get(float(kk))),
                              "effect": effect_of(by_k.get(float(kk)))} for kk in sweep]
        counts: dict[str, Any] = {"perturb_latent": pl.counts}
        errors = int((pl.counts or {}).get("errors", 0) or 0)
        # encodes vs uses: LEACE erasure and steering (optional extra)
        try:
            import concept_erasure  # noqa: F401
            have_leace = True
        except ImportError:
            have_leace = False
        pr = None
        if have_leace:
            from latentcheck.core.errors import LatentcheckError
            from latentcheck.probe.behavioural import Probe, ProbeOptions
            from latentcheck.probe.trained import ProbeConfig

            label = _erase_label(run.tasks)
            try:
                pr = run_analysis(Probe(ProbeOptions(behavioural=False, trained=False, attention=False, erase=label,
                                                     force_latent=True, n_boot=s.n_boot,
                                                     probe=ProbeConfig(methods=("linear",), control=False,
                                                                       seed=o.seed, n_boot=s.n_boot))),
                                  dataclasses.replace(o, out=str(out / "probe")), lm=lm)
            except LatentcheckError as e:  # e.g. one label value only: the erasure cannot be fitted on these samples
                if o.strict:
                    raise
                pr = None
                summary["erasure"] = {"label": label, "skipped": f"erasure not run: {e}"}
        if have_leace and pr is not None:
            er = pr.summary.get("erasure") or {}
            summary["erasure"] = {"label": label, "reading": er.get("reading"), "n": er.get("n"),
                                  "probe_before": ((er.get("before") or {}).get("linear")),
                                  "probe_after": ((er.get("after") or {}).get("linear")),
                                  "chance": (er.get("before") or {}).get("chance"),
                                  "erased": effect_of(er.get("erased")), "steered": effect_of(er.get("steered")),
                                  "follows": er.get("follows"), "follows_own": er.get("follows_own"),
                                  "summary": "probe/summary.json"}
            counts["probe"] = pr.counts
            errors += int(pr.errors or 0)
        elif not have_leace:
            summary["erasure"] = {"skipped": "concept erasure needs the optional extra: pip install "
                                             "'latentcheck[mech]'"}
        self.result_counts = {"ok": summary["n"], "errors": errors, **counts}
        return summary

    def figures(self, run: AnalysisRun, summary: dict[str, Any]) -> list[str]:
        plots = plot_mechanism(summary, run.out / "plots") if self.settings.plots else []
        summary["plots"] = [str(Path(p).relative_to(run.out)) for p in plots]
        return plots

    def counts(self, run: AnalysisRun) -> dict[str, Any]:
        return self.result_counts


def plot_mechanism(summary: dict[str, Any], folder: Path) -> list[str]:
    """``mechanism_effects.png``: every mechanism arm's accuracy change (95% CI); ``mechanism_length.png``:
    accuracy against the forced span length K' (the baseline at K)."""
    from latentcheck.core.plots import forest, lines

    items = [(a["name"], a["effect"]) for a in summary["arms"].values() if a.get("effect")]
    items += [(f"span length K'={x['k']}", x["effect"]) for x in summary["length"] if x.get("effect")]
    er = summary.get("erasure") or {}
    for key in ("erased", "steered"):
        if er.get(key):
            items.append((f"LEACE {key} ({er['label'].removeprefix('meta.')})", er[key]))
    paths = []
    if items:
        paths.append(forest([n for n, _ in items], [e["estimate"] for _, e in items], [e["lo"] for _, e in items],
                            [e["hi"] for _, e in items], folder / "mechanism_effects.png",
                            title=f"mechanism arms: accuracy change vs the baseline (n={summary['n']}, 95% CIs)",
                            xlabel="accuracy change"))
    pts = [(x["k"], x["accuracy"]) for x in summary["length"] if x.get("accuracy")]
    b = summary.get("baseline_accuracy")
    if pts and b:
        pts = sorted(pts + [(summary["K"], b)])
        paths.append(lines([p for p, _ in pts], {"accuracy": [a["estimate"] for _, a in pts]},
                           folder / "mechanism_length.png", xlabel="forced span length K'", ylabel="accuracy",
                           title=f"format: accuracy vs span length (own K = {summary['K']}, n={summary['n']})",
                           bands={"accuracy": ([a["lo"] for _, a in pts], [a["hi"] for _, a in pts])}))
    return paths


# ------------------------------------------------------------------------------------------------ the section's row
def mechanism_row(summaries: dict[str, dict | None]) -> dict[str, Any]:
    """One model's row of the mechanism section from its stage summaries (any may be missing: its parts are None)."""
    mech = summaries.get("mechanism") or {}
    pl = summaries.get("perturb_latent") or {}
    probe = summaries.get("probe") or {}
    pi = summaries.get("perturb_input") or {}
    row: dict[str, Any] = {"n": {"mechanism_arms": mech.get("n"), "perturb_latent": (pl.get("counts") or {}).get("ok"),
                                 "probe": (probe.get("capture") or {}).get("n"),
                                 "geometry": (pi.get("geometry") or {}).get("n")}}
    # format vs content
    row["format"] = {"K": mech.get("K"), "baseline": mech.get("baseline_accuracy"),
                     "markers_only": next((x["effect"] for x in mech.get("length") or [] if x["k"] == 0), None),
                     "length": mech.get("length"),
                     "placeholder": ((mech.get("arms") or {}).get("placeholder") or {}).get("effect")}
    row["content"] = {"arm": CONTENT_ARM, "effect": effect_of(_find(_rows_by_label(pl), CONTENT_ARM))}
    # where the information flows
    arms = mech.get("arms") or {}
    patch = ((pl.get("layer_patching") or {}).get("image") or {}).get("rows") or []
    row["flow"] = {"knockout_answer_span": (arms.get(MECHANISM_ARMS[1]) or {}).get("effect"),
                   "knockout_span_image": (arms.get(MECHANISM_ARMS[2]) or {}).get("effect"),
                   "layer_patching": [{"layer": r["label"], "effect": effect_of(r.get("effect")),
                                       "follows": r.get("follows_counterfactual")}
                                      for r in patch if r.get("effect")]}
    # what the latents say and look at
    lens = (probe.get("capture") or {}).get("logit_lens") or {}
    steps = lens.get("steps") or []
    best = max(steps, key=lambda x: x["gold_mrr"]) if steps else None
    att = (probe.get("capture") or {}).get("attention") or {}
    row["readout"] = {
        "lens_best_step": None if best is None else {"step": best["step"], "gold_mrr": best["gold_mrr"],
                                                     "gold_top1": best["gold_top1"], "n": best["n"]},
        "lens_reference_mrr": (lens.get("reference_last_prompt_token") or {}).get("gold_mrr"),
        "attention_share_vs_uniform": (att.get("contrasts_over_layers") or {}).get("latent_share_vs_uniform"),
        "attention_start_share_vs_uniform": (att.get("contrasts_over_layers") or {}).get("start_share_vs_uniform"),
        "attention_region_vs_answer_point": (att.get("contrasts_over_layers") or {}).get(
            "latent_region_vs_answer_point"),
        "uniform_region_share": att.get("uniform_region_share"), "attention_n": att.get("n")}
    # geometry beyond raw cosine
    geo = pi.get("geometry") or {}
    ref = (geo.get("latent_vs_refs") or {}).get("image_tokens") or {}
    pm = geo.get("position_matched") or {}
    bests = [b for b in pm.get("best") or [] if b.get("cka") is not None]
    top = max(bests, key=lambda b: b["cka"]) if bests else None
    row["geometry"] = {"cka_image": ref.get("linear_cka"), "rsa_image": ref.get("rsa"),
                       "retrieval": ref.get("retrieval"), "n": ref.get("n"),
                       "best_position": top, "pooled_cka": pm.get("pooled_cka"),
                       "target_specificity": (pm.get("target") or {}).get("mean_over_steps")}
    # encodes vs uses
    row["erasure"] = mech.get("erasure")
    return row


def _ci(e: dict | None, signed: bool = True) -> str:
    from latentcheck.core.summaries import fmt_ci

    return "-" if not e or e.get("estimate") is None else fmt_ci(e, signed=signed)


def _num(x: Any, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


MECHANISM_TABLES: dict[str, tuple[str, ...]] = {
    "format vs content, information flow": (
        "model", "markers only (K'=0) dAcc", "placeholder span dAcc", "span length K': accuracy",
        "content: shared mean dAcc", "knockout answer->span dAcc", "knockout span->image dAcc",
        "span patched per layer: dAcc / follows"),
    "what the latents say, look at and share with the image": (
        "model", "logit lens: gold MRR (best step) vs prompt", "attention: latent region share - uniform",
        "attention: start region share - uniform",
        "attention: latent - answer-point region mass", "CKA / RSA with image tokens", "instance retrieval (p)",
        "best position CKA (pooled)", "target specificity"),
    "encodes vs uses (LEACE)": (
        "model", "label", "probe before -> after (chance)", "erased dAcc", "steered dAcc", "follows steering (own)",
        "reading"),
}


def mechanism_cells(model: str, row: dict[str, Any]) -> dict[str, str]:
    """The cells of one model's mechanism row as text (every table of :data:`MECHANISM_TABLES`)."""
    f, fl, rd, g = row.get("format") or {}, row.get("flow") or {}, row.get("readout") or {}, row.get("geometry") or {}
    length = "; ".join(f"{x['k']}: {_num((x.get('accuracy') or {}).get('estimate'))}"
                       for x in sorted((f.get("length") or []) + ([{"k": f["K"], "accuracy": f["baseline"]}]
                                                                   if f.get("baseline") else []),
                                       key=lambda x: x["k"])) or "-"
    patch = "; ".join(f"L{p['layer']} {_ci(p['effect'])} / {_num((p.get('follows') or {}).get('estimate'))}"
                      for p in fl.get("layer_patching") or []) or "-"
    lens = rd.get("lens_best_step")
    lens_cell = "-" if not lens else (f"{_num(lens['gold_mrr'], 3)} (step {lens['step']}) vs "
                                      f"{_num(rd.get('lens_reference_mrr'), 3)}")
    ret = g.get("retrieval") or {}
    top = g.get("best_position")
    pooled = [x for x in g.get("pooled_cka") or [] if x is not None and math.isfinite(x)]
    er = row.get("erasure") or {}
    before, after = er.get("probe_before") or {}, er.get("probe_after") or {}
    fol = er.get("follows") or {}
    fol_rate = fol.get("estimate", fol.get("rate"))
    own = (er.get("follows_own") or {}).get("estimate", fol.get("own_rate"))
    n = row.get("n") or {}
    return {
        "model": model,
        "markers only (K'=0) dAcc": _ci(f.get("markers_only")),
        "placeholder span dAcc": _ci(f.get("placeholder")),
        "span length K': accuracy": length,
        "content: shared mean dAcc": _ci((row.get("content") or {}).get("effect")),
        "knockout answer->span dAcc": _ci(fl.get("knockout_answer_span")),
        "knockout span->image dAcc": _ci(fl.get("knockout_span_image")),
        "span patched per layer: dAcc / follows": patch,
        "logit lens: gold MRR (best step) vs prompt": lens_cell,
        "attention: latent region share - uniform": _ci(rd.get("attention_share_vs_uniform")),
        "attention: start region share - uniform": _ci(rd.get("attention_start_share_vs_uniform")),
        "attention: latent - answer-point region mass": _ci(rd.get("attention_region_vs_answer_point")),
        "CKA / RSA with image tokens": "-" if g.get("cka_image") is None else
        f"{_num(g['cka_image'])} / {_num(g.get('rsa_image'))}",
        "instance retrieval (p)": "-" if ret.get("accuracy") is None else
        f"{_num(ret['accuracy'])} vs {_num(ret.get('chance'), 3)} (p={_num(ret.get('p_value'), 3)})",
        "best position CKA (pooled)": "-" if not top else
        f"{_num(top['cka'])} at {top['position']} ({_num(max(pooled)) if pooled else '-'})",
        "target specificity": _ci(g.get("target_specificity"), signed=True),
        "label": er.get("label") or ("-" if not er.get("skipped") else "skipped"),
        "probe before -> after (chance)": "-" if not before else
        f"{_num(before.get('estimate', before.get('accuracy')))} -> "
        f"{_num(after.get('estimate', after.get('accuracy')))} ({_num(er.get('chance'))})",
        "erased dAcc": _ci(er.get("erased")), "steered dAcc": _ci(er.get("steered")),
        "follows steering (own)": "-" if fol_rate is None else f"{_num(fol_rate)} ({_num(own)})",
        "reading": er.get("reading") or er.get("skipped") or "-",
        "n": f"arms {n.get('mechanism_arms') or '-'}, stages {n.get('perturb_latent') or '-'}, "
             f"geometry {n.get('geometry') or '-'}",
    }


__all__ = ["MECHANISM_ARMS", "MECHANISM_TABLES", "length_sweep_for", "mechanism_cells", "mechanism_row",
           "Mechanism", "effect_of", "accuracy_of"]
