"""The audit document and its verdicts: stage names, verdict rules (data), the three links' verdicts, the
side-by-side comparison, and reading / writing ``audit.json``. Shared by the audit run (``audit/audit.py``) and
its HTML report (``audit/report.py``); imports neither."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentcheck.core.summaries import fmt_ci  # the one CI formatter (re-exported for the report and CLI)
from latentcheck.core.errors import LatentcheckError

SCHEMA = "latentcheck.audit/1"
AUDIT_FILE = "audit.json"
STAGES = ("perturb_input", "perturb_latent", "probe", "text_doz", "bench")
STAGE_FOLDERS = {"perturb_input": "perturb-input", "perturb_latent": "perturb-latent", "probe": "probe",
                 "text_doz": "text-doz", "bench": "bench"}
STAGE_TITLES = {"perturb_input": "perturb-input (X -> Z)", "perturb_latent": "perturb-latent (Z -> Y, mediation)",
                "probe": "probe (what the latents encode)", "text_doz": "caption-imagine intervene (text do(Z))",
                "bench": "bench (generic, short)"}
ZOO_AUDIT_MODELS = ("toy-latent", "toy-capimagine", "toy-mediated", "toy-bypass")
LINKS = ("xz", "zy", "encodes")
LINK_NAMES = {"xz": "X -> Z", "zy": "Z -> Y", "encodes": "what latents encode", "overall": "overall"}

# Every verdict threshold, in one place (docs/audit.md explains each one).
DEFAULT_RULES: dict[str, Any] = {
    "xz": {
        "treatment": "swap_image",  # the input change whose sensitivity ratio decides the link
        "dependent_above": 0.10,  # ratio CI lower bound above this -> input-dependent
        "independent_below": 0.10,  # ratio CI upper bound below this -> input-independent
    },
    "zy": {
        "interventions": ["zero", "noise_replace"],  # primary interventions (accuracy-delta criterion)
        "mediation_kind": "image",
        "mediation_outcome": "correct",
        "equivalence_margin": 0.05,  # |effect| CI inside +-margin -> "no effect" (equivalence)
        "min_trigger_rate": 0.8,  # baseline latent-mode trigger rate below this -> untestable (paper sec. 10)
        "min_samples": 10,
        "require_above_chance": True,  # baseline accuracy Wilson lo must exceed chance (else drops cannot show)
    },
    "encodes": {
        "labels": ["meta.answer_text", "answer"],  # first label present is judged (toy: the asked attribute value)
        "method": "linear",
        "chance_margin": 0.05,  # probe accuracy CI lo must exceed chance (majority rate) + this
        "control_margin": 0.0,  # selectivity (accuracy - control task) CI lo must exceed this
    },
}

POSITIVE, NEGATIVE, INCONCLUSIVE, UNTESTABLE = "positive", "negative", "inconclusive", "untestable"


# ================================================================================================== rules
def merge_rules(overrides: dict[str, Any] | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (default: DEFAULT_RULES) with ``overrides`` applied; unknown sections or keys are user errors."""
    rules = copy.deepcopy(base or DEFAULT_RULES)
    for section, values in (overrides or {}).items():
        if section not in rules:
            raise LatentcheckError(f"rules: unknown section {section!r}; known: {', '.join(rules)}")
        if not isinstance(values, dict):
            raise LatentcheckError(f"rules: section {section!r} must be a table of settings")
        for key, value in values.items():
            if key not in rules[section]:
                raise LatentcheckError(f"rules: unknown setting {section}.{key}; known: "
                                       f"{', '.join(rules[section])}")
            want = type(rules[section][key])
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise LatentcheckError(f"rules: {section}.{key} must be {want.__name__}, got {value!r}")
            rules[section][key] = value
    return rules


def load_rules(path: str | Path | None) -> dict[str, Any]:
    """DEFAULT_RULES overridden by a JSON or TOML file (``{"zy": {"equivalence_margin": 0.03}}``)."""
    if path is None:
        return merge_rules(None)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise LatentcheckError(f"--rules {p}: cannot read ({e.strerror})") from None
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as e:
        raise LatentcheckError(f"--rules {p}: not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'} "
                               f"({e})") from None
    if not isinstance(data, dict):
        raise LatentcheckError(f"--rules {p}: expected a table of sections (xz, zy, encodes)")
    return merge_rules(data)


# ================================================================================================== verdicts
@dataclass
class Verdict:
    """The judgement of one link: a short verdict, its status, one line of numbers, the evidence and the rule."""

    link: str
    verdict: str
    status: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _inside(lo: Any, hi: Any, margin: float) -> bool:
    return _finite(lo) and _finite(hi) and -margin <= lo and hi <= margin


def _excludes_zero(lo: Any, hi: Any) -> bool:
    return (_finite(lo) and lo > 0) or (_finite(hi) and hi < 0)


def not_measurable(summary: dict | None, min_rate: float, fallback: Any = None) -> str | None:
    """"not measurable: latent mode triggered in 12% of samples" when the run's baseline trigger rate (its
    ``latent_trigger`` block, core/trigger.py; else ``fallback``) is below ``min_rate``; None otherwise."""
    from latentcheck.core.trigger import baseline_rate

    rate, _ = baseline_rate((summary or {}).get("latent_trigger"))
    rate = fallback if rate is None else rate
    if _finite(rate) and rate < min_rate:
        return (f"not measurable: latent mode triggered in {rate:.0%} of samples (< {min_rate:.0%}); a span that "
                "never runs gives a fake null (check the profile or use --force-latent)")
    return None


def verdict_xz(pi_summary: dict | None, rules: dict) -> Verdict:
    """X -> Z from a perturb-input summary (module docstring)."""
    r = rules["xz"]
    rule = (f"sensitivity ratio under {r['treatment']} (latent rel. change / image-token rel. change, paired "
            f"bootstrap 95% CI): lo > {r['dependent_above']:.2f} -> input-dependent; hi < "
            f"{r['independent_below']:.2f} -> input-independent")
    if not pi_summary:
        return Verdict("xz", "untestable", UNTESTABLE, "perturb-input did not run", rule=rule)
    tr = (pi_summary.get("treatments") or {}).get(r["treatment"])
    if tr is None:
        return Verdict("xz", "untestable", UNTESTABLE, f"treatment {r['treatment']} not in the perturb-input run",
                       rule=rule)
    ratio = tr.get("sensitivity_ratio") or {}
    trig = (pi_summary.get("trigger_rate") or {}).get("estimate")
    ev = {"treatment": r["treatment"], "reference": tr.get("reference"), "ratio": ratio.get("estimate"),
          "ratio_lo": ratio.get("lo"), "ratio_hi": ratio.get("hi"), "n": tr.get("n"),
          "latent_rel_change": (tr.get("latent_rel_l2") or {}).get("estimate"),
          "reference_rel_change": (((tr.get("refs") or {}).get(tr.get("reference")) or {}).get("rel_l2") or {})
          .get("estimate"),
          "latent_cosine": (tr.get("latent_cosine") or {}).get("estimate"), "trigger_rate": trig,
          "latent_source": pi_summary.get("latent_source")}
    others = {}
    for label, t in (pi_summary.get("treatments") or {}).items():
        sr = t.get("sensitivity_ratio") or {}
        if label != r["treatment"] and sr.get("estimate") is not None:
            others[label] = {"ratio": sr.get("estimate"), "lo": sr.get("lo"), "hi": sr.get("hi"),
                             "reference": t.get("reference")}
    ev["other_treatments"] = others
    line = f"sensitivity ratio ({r['treatment']} / {tr.get('reference')}) {fmt_ci(ev['ratio'], ev['ratio_lo'], ev['ratio_hi'])}, n={tr.get('n')}"
    why = not_measurable(pi_summary, r.get("min_trigger_rate", rules["zy"]["min_trigger_rate"]), trig)
    if why:
        return Verdict("xz", "not measurable", UNTESTABLE, f"{line}: {why}", ev, rule)
    if not _finite(ev["ratio"]) or not tr.get("n"):
        why = "no latents to compare (latent mode never triggered?)" if not tr.get("n") or \
            ev["latent_rel_change"] is None else "ratio undefined (the reference state did not change)"
        return Verdict("xz", "untestable", UNTESTABLE, f"{line}: {why}", ev, rule)
    if _finite(ev["ratio_lo"]) and ev["ratio_lo"] > r["dependent_above"]:
        return Verdict("xz", "input-dependent", POSITIVE, f"{line} > {r['dependent_above']:.2f}", ev, rule)
    if ev["ratio_hi"] is not None and not (isinstance(ev["ratio_hi"], float) and math.isnan(ev["ratio_hi"])) \
            and ev["ratio_hi"] < r["independent_below"]:
        return Verdict("xz", "input-independent", NEGATIVE, f"{line} < {r['independent_below']:.2f}", ev, rule)
    return Verdict("xz", "inconclusive", INCONCLUSIVE, f"{line}: CI straddles the threshold", ev, rule)


def _chance_guard(acc: Any, lo: Any, chance: Any, rules_zy: dict) -> str | None:
    if rules_zy["require_above_chance"] and _finite(chance) and _finite(lo) and lo <= chance:
        return f"baseline accuracy {fmt_ci(acc)} (Wilson lo {lo:.2f}) is not above chance {chance:.2f}"
    return None


def verdict_zy(pl_summary: dict | None, rules: dict) -> Verdict:
    """Z -> Y for latent models from a perturb-latent summary (module docstring)."""
    r = rules["zy"]
    m = r["equivalence_margin"]
    rule = (f"causal: accuracy delta CI < 0 under one of {', '.join(r['interventions'])} AND NIE "
            f"({r['mediation_kind']} swap, outcome {r['mediation_outcome']}) CI excludes 0; not causal: every "
            f"delta CI and the NIE CI inside +-{m:.2f}; untestable if trigger rate < {r['min_trigger_rate']:.2f}, "
            f"n < {r['min_samples']} or the baseline is not above chance")
    if not pl_summary:
        return Verdict("zy", "untestable", UNTESTABLE, "perturb-latent did not run", rule=rule)
    b = pl_summary.get("baseline") or {}
    rows = {row["label"]: row for row in pl_summary.get("interventions") or []}
    deltas = {}
    for label in r["interventions"]:
        row = rows.get(label)
        if row and row.get("n"):
            deltas[label] = {"delta": row.get("delta"), "lo": row.get("delta_lo"), "hi": row.get("delta_hi"),
                             "accuracy": row.get("accuracy"), "mcnemar_p": row.get("mcnemar_p"), "n": row.get("n"),
                             "degenerate_rate": row.get("degenerate_rate")}
    med = ((pl_summary.get("mediation") or {}).get(r["mediation_kind"]) or {}).get(r["mediation_outcome"]) or {}
    nie = med.get("nie") if med.get("n") else None
    ev = {"baseline_accuracy": b.get("accuracy"), "baseline_lo": b.get("accuracy_lo"),
          "baseline_hi": b.get("accuracy_hi"), "chance": b.get("chance"), "n": b.get("n"),
          "trigger_rate": b.get("trigger_rate"), "deltas": deltas,
          "nie": None if nie is None else {"estimate": nie["estimate"], "lo": nie["lo"], "hi": nie["hi"]},
          "te": None if not med.get("n") else {k: med["te"][k] for k in ("estimate", "lo", "hi")},
          "nde": None if not med.get("n") else {k: med["nde"][k] for k in ("estimate", "lo", "hi")},
          "mediation_n": med.get("n"),
          "other_interventions": {lab: {"delta": row.get("delta"), "lo": row.get("delta_lo"),
                                        "hi": row.get("delta_hi")}
                                  for lab, row in rows.items() if lab not in r["interventions"] and row.get("n")}}
    parts = [f"{lab} dAcc {fmt_ci(d['delta'], d['lo'], d['hi'], signed=True)}" for lab, d in deltas.items()]
    parts.append(f"NIE {fmt_ci(nie['estimate'], nie['lo'], nie['hi'], signed=True)}" if nie else "NIE -")
    line = "; ".join(parts)
    why = None
    if not b.get("n") or b["n"] < r["min_samples"]:
        why = f"only {b.get('n') or 0} samples (need >= {r['min_samples']})"
    elif not_measurable(pl_summary, r["min_trigger_rate"], b.get("trigger_rate")):
        why = not_measurable(pl_summary, r["min_trigger_rate"], b.get("trigger_rate"))
        return Verdict("zy", "not measurable", UNTESTABLE, f"{line}: {why}", ev, rule)
    else:
        why = _chance_guard(b.get("accuracy"), b.get("accuracy_lo"), b.get("chance"), r)
    if why is None and not deltas:
        why = f"none of the primary interventions ({', '.join(r['interventions'])}) ran"
    if why:
        return Verdict("zy", "untestable", UNTESTABLE, f"{line}: {why}", ev, rule)
    drop = [lab for lab, d in deltas.items() if _finite(d["hi"]) and d["hi"] < 0]
    nie_ok = nie is not None and _excludes_zero(nie["lo"], nie["hi"])
    if drop and nie_ok:
        return Verdict("zy", "causal", POSITIVE, line, ev, rule)
    flat = all(_inside(d["lo"], d["hi"], m) for d in deltas.values()) and nie is not None and \
        _inside(nie["lo"], nie["hi"], m)
    if flat:
        return Verdict("zy", "not causal", NEGATIVE, f"{line} (all inside +-{m:.2f})", ev, rule)
    reason = ("accuracy drops but the NIE CI includes 0" if drop else
              "NIE excludes 0 but no primary intervention drops accuracy" if nie_ok else
              "no drop shown, but the CIs are too wide for equivalence")
    return Verdict("zy", "inconclusive", INCONCLUSIVE, f"{line}: {reason}", ev, rule)


def verdict_zy_text(doz_summary: dict | None, rules: dict, chance: float | None) -> Verdict:
    """Z -> Y for text-imagination models from a caption-imagine intervene summary (module docstring)."""
    r = rules["zy"]
    m = r["equivalence_margin"]
    rule = (f"causal: text do(Z) accuracy delta CI < 0; not causal: CI inside +-{m:.2f}; untestable if fewer than "
            f"{r['min_samples']} samples had a closed imagination span or the clean run is not above chance")
    if not doz_summary:
        return Verdict("zy", "untestable", UNTESTABLE, "caption-imagine intervene did not run", rule=rule)
    eff = doz_summary.get("effect")
    fol = doz_summary.get("follows_corruption")
    pg = doz_summary.get("p_gold")
    ev = {"n_samples": doz_summary.get("n_samples"), "n_intervened": doz_summary.get("n_intervened"),
          "imagination_rate": doz_summary.get("imagination_rate"), "chance": chance,
          "skip_reasons": doz_summary.get("skip_reasons"),
          "delta": None if not eff else {"delta": eff["delta"], "lo": eff["delta_lo"], "hi": eff["delta_hi"],
                                         "acc_clean": eff["acc_base"], "acc_clean_lo": eff["acc_base_lo"],
                                         "acc_doz": eff["acc_cond"], "mcnemar_p": eff["mcnemar_p"], "n": eff["n"]},
          "follows_corruption": fol, "flip_rate": doz_summary.get("flip_rate"),
          "p_gold_delta": None if not pg else pg["delta"]}
    if not eff:
        return Verdict("zy", "untestable", UNTESTABLE,
                       f"no intervened sample ({doz_summary.get('n_intervened') or 0} of "
                       f"{doz_summary.get('n_samples') or 0} had a closed imagination span)", ev, rule)
    line = (f"text do(Z) dAcc {fmt_ci(eff['delta'], eff['delta_lo'], eff['delta_hi'], signed=True)} "
            f"(clean {eff['acc_base']:.2f} -> do(Z) {eff['acc_cond']:.2f}, n={eff['n']})")
    if fol:
        line += f"; follows the corruption {fol['rate']:.0%}"
    why = None
    if eff["n"] < r["min_samples"]:
        why = f"only {eff['n']} intervened samples (need >= {r['min_samples']})"
    else:
        why = _chance_guard(eff["acc_base"], eff["acc_base_lo"], chance, r)
    if why:
        return Verdict("zy", "untestable", UNTESTABLE, f"{line}: {why}", ev, rule)
    if _finite(eff["delta_hi"]) and eff["delta_hi"] < 0:
        return Verdict("zy", "causal", POSITIVE, line, ev, rule)
    if _inside(eff["delta_lo"], eff["delta_hi"], m):
        return Verdict("zy", "not causal", NEGATIVE, f"{line} (inside +-{m:.2f})", ev, rule)
    return Verdict("zy", "inconclusive", INCONCLUSIVE, f"{line}: no drop shown, CI too wide for equivalence", ev,
                   rule)


def _best_site(sites: dict[str, dict], method: str) -> tuple[str | None, dict | None, str]:
    usable = {s: v for s, v in sites.items() if s.startswith("latent_") and "skipped" not in v}
    if not usable:
        return None, None, method
    if not all(method in v for v in usable.values()):
        method = next(k for k in ("linear", "mlp") if all(k in v for v in usable.values()))
    best = max(usable, key=lambda s: (usable[s][method]["accuracy"], -list(usable).index(s)))
    return best, usable[best], method


def verdict_encodes(probe_summary: dict | None, rules: dict) -> Verdict:
    """What the latents encode, from a probe summary (``trained`` probes; behavioural arms as extra evidence)."""
    r = rules["encodes"]
    rule = (f"encodes: at the best latent site, the {r['method']} probe of the first available label of "
            f"{', '.join(r['labels'])} has Wilson 95% lo > chance (majority rate) + {r['chance_margin']:.2f} and "
            f"selectivity (accuracy - control task, paired bootstrap) lo > {r['control_margin']:.2f}; otherwise "
            "not detected (no evidence; not proof of absence)")
    if not probe_summary:
        return Verdict("encodes", "untestable", UNTESTABLE, "the probe did not run", rule=rule)
    trained = probe_summary.get("trained") or {}
    labels = trained.get("labels") or {}
    label = next((lab for lab in r["labels"] if lab in labels), None)
    ev: dict[str, Any] = {"source": probe_summary.get("source", "latents")}
    beh = probe_summary.get("behavioural") or {}
    if "arms" in beh:
        comp = (beh.get("comparisons") or {}).get("latents_vs_text_only") or {}
        ev["behavioural"] = {"n": beh["n"], "chance": beh.get("expected_chance"),
                             **{a: beh["arms"][a]["accuracy"] for a in beh["arms"]},
                             "latents_vs_text_only": {"delta": comp.get("delta"), "lo": comp.get("delta_lo"),
                                                      "hi": comp.get("delta_hi")}}
    if label is None:
        why = trained.get("skipped") or f"none of the labels {', '.join(r['labels'])} was probed"
        return Verdict("encodes", "untestable", UNTESTABLE, why, ev, rule)
    sites = labels[label]["sites"]
    site, res, method = _best_site(sites, r["method"])
    if site is None:
        return Verdict("encodes", "untestable", UNTESTABLE, f"no latent site could be probed for {label}", ev, rule)
    acc = res[method]
    sel = res.get(f"{method}_selectivity") or {}
    ctrl = (res.get(f"{method}_control") or {}).get("accuracy")
    per_index = {s: {"accuracy": v[method]["accuracy"], "lo": v[method]["lo"], "hi": v[method]["hi"]}
                 for s, v in sites.items() if "skipped" not in v and method in v}
    ev.update(label=label, method=method, site=site, accuracy=acc["accuracy"], lo=acc["lo"], hi=acc["hi"],
              chance=res["chance"], control=ctrl, selectivity=sel.get("estimate"), selectivity_lo=sel.get("lo"),
              selectivity_hi=sel.get("hi"), n=res["n"], per_site=per_index)
    line = (f"{label.removeprefix('meta.')} from {site} ({method}): {fmt_ci(acc['accuracy'], acc['lo'], acc['hi'])} "
            f"vs chance {res['chance']:.2f}, control {fmt_ci(ctrl)}, selectivity "
            f"{fmt_ci(sel.get('estimate'), sel.get('lo'), sel.get('hi'), signed=True)}")
    if "behavioural" in ev:
        bv = ev["behavioural"]
        d = bv["latents_vs_text_only"]
        line += (f"; behavioural: latents {bv['latents']:.2f} vs text-only {bv['text_only']:.2f} "
                 f"(d {fmt_ci(d['delta'], d['lo'], d['hi'], signed=True)})")
    ok = acc["lo"] > res["chance"] + r["chance_margin"] and _finite(sel.get("lo")) and sel["lo"] > r["control_margin"]
    if ok:
        return Verdict("encodes", "encodes", POSITIVE, line, ev, rule)
    return Verdict("encodes", "not detected", NEGATIVE, line, ev, rule)


def verdict_overall(verdicts: dict[str, Verdict]) -> Verdict:
    """The chain: causally real iff X -> Z and Z -> Y are both positive; not real if either is negative."""
    xz, zy = verdicts["xz"], verdicts["zy"]
    rule = ("causally real: X -> Z input-dependent AND Z -> Y causal; not causally real: X -> Z input-independent "
            "OR Z -> Y not causal; otherwise inconclusive / untestable ('what latents encode' is descriptive)")
    ev = {"xz": xz.verdict, "zy": zy.verdict, "encodes": verdicts["encodes"].verdict}
    line = f"X -> Z {xz.verdict}, Z -> Y {zy.verdict}, latents: {verdicts['encodes'].verdict}"
    if xz.status == POSITIVE and zy.status == POSITIVE:
        return Verdict("overall", "causally real", POSITIVE, line, ev, rule)
    if NEGATIVE in (xz.status, zy.status):
        return Verdict("overall", "not causally real", NEGATIVE, line, ev, rule)
    status = UNTESTABLE if UNTESTABLE in (xz.status, zy.status) and INCONCLUSIVE not in (xz.status, zy.status) \
        else INCONCLUSIVE
    return Verdict("overall", status, status, line, ev, rule)


def judge(summaries: dict[str, dict | None], kind: str, rules: dict, chance: float | None = None
          ) -> dict[str, Verdict]:
    """Verdicts for every link from the stage summaries (``{stage: summary or None}``) of one model."""
    v = {"xz": verdict_xz(summaries.get("perturb_input"), rules)}
    if kind == "text_imagination":
        v["zy"] = verdict_zy_text(summaries.get("text_doz"), rules, chance)
    elif kind == "latent":
        v["zy"] = verdict_zy(summaries.get("perturb_latent"), rules)
    else:
        v["zy"] = Verdict("zy", "untestable", UNTESTABLE, f"a {kind} model has no latents or imagination to "
                                                          "intervene on")
    v["encodes"] = verdict_encodes(summaries.get("probe"), rules)
    v["overall"] = verdict_overall(v)
    return v


def bench_headline(bench_summary: dict | None) -> dict[str, Any] | None:
    """Accuracy (Wilson CI), n and chance of a bench results dict."""
    if not bench_summary:
        return None
    acc = ((bench_summary.get("conditions") or {}).get("baseline") or {}).get("accuracy") or {}
    return {"accuracy": acc.get("accuracy"), "lo": acc.get("lo"), "hi": acc.get("hi"), "n": acc.get("n"),
            "chance": (bench_summary.get("chance") or {}).get("these_samples"),
            "benchmark": bench_summary.get("benchmark")}


def comparison_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One row of the side-by-side table from a model entry of audit.json (verdicts + evidence)."""
    v = entry["verdicts"]
    xz, zy, enc = v["xz"]["evidence"], v["zy"]["evidence"], v["encodes"]["evidence"]
    row: dict[str, Any] = {"model": entry["model"], "kind": entry["kind"],
                           "xz": {"ratio": xz.get("ratio"), "lo": xz.get("ratio_lo"), "hi": xz.get("ratio_hi"),
                                  "treatment": xz.get("treatment"), "verdict": v["xz"]["verdict"]},
                           "zy": {"verdict": v["zy"]["verdict"], "deltas": zy.get("deltas"), "nie": zy.get("nie"),
                                  "text_doz": zy.get("delta") if entry["kind"] == "text_imagination" else None},
                           "encodes": {"verdict": v["encodes"]["verdict"], "label": enc.get("label"),
                                       "site": enc.get("site"), "accuracy": enc.get("accuracy"), "lo": enc.get("lo"),
                                       "hi": enc.get("hi"), "chance": enc.get("chance"),
                                       "control": enc.get("control")},
                           "bench": entry.get("bench"), "overall": v["overall"]["verdict"],
                           "overall_status": v["overall"]["status"]}
    return row


COMPARISON_COLUMNS = ("model", "kind", "X -> Z sensitivity [CI]", "Z -> Y dAcc under intervention [CI]",
                      "NIE [CI]", "text do(Z) dAcc [CI]", "probe acc [CI] vs chance", "bench acc [CI]", "verdicts")


def comparison_cells(row: dict[str, Any]) -> dict[str, str]:
    """The cells of one comparison row as text (shared by the terminal table and the HTML report)."""
    xz, zy, enc, b = row["xz"], row["zy"], row["encodes"], row.get("bench")
    deltas = "; ".join(f"{lab} {fmt_ci(d['delta'], d['lo'], d['hi'], signed=True)}"
                       for lab, d in (zy.get("deltas") or {}).items()) or "-"
    nie = zy.get("nie")
    doz = zy.get("text_doz")
    probe = "-" if enc.get("accuracy") is None else (
        f"{fmt_ci(enc['accuracy'], enc['lo'], enc['hi'])} vs {enc['chance']:.2f} ({enc['site']})")
    bench = "-" if not b or b.get("accuracy") is None else (
        f"{fmt_ci(b['accuracy'], b['lo'], b['hi'])}" + (f" (chance {b['chance']:.2f})" if _finite(b.get("chance"))
                                                          else ""))
    verdicts = (f"X->Z {xz['verdict']}; Z->Y {zy['verdict']}; latents {enc['verdict']}; => {row['overall']}")
    return {"model": row["model"], "kind": row["kind"],
            "X -> Z sensitivity [CI]": "-" if xz.get("ratio") is None else fmt_ci(xz["ratio"], xz["lo"], xz["hi"]),
            "Z -> Y dAcc under intervention [CI]": deltas,
            "NIE [CI]": "-" if not nie else fmt_ci(nie["estimate"], nie["lo"], nie["hi"], signed=True),
            "text do(Z) dAcc [CI]": "-" if not doz else fmt_ci(doz["delta"], doz["lo"], doz["hi"], signed=True),
            "probe acc [CI] vs chance": probe, "bench acc [CI]": bench, "verdicts": verdicts}


def write_audit(folder: str | Path, audit: dict[str, Any]) -> Path:
    from latentcheck.core.records import write_json_atomic

    return write_json_atomic(Path(folder) / AUDIT_FILE, audit)


def load_audit(folder: str | Path) -> dict[str, Any]:
    """audit.json of an audit folder (a clear error when it is missing or not an audit)."""
    p = Path(folder) / AUDIT_FILE
    if not p.exists():
        raise LatentcheckError(f"{folder}: no {AUDIT_FILE} (is it a `latentcheck audit` output folder?)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise LatentcheckError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("models"), list):
        raise LatentcheckError(f"{p}: not a latentcheck audit file (schema {SCHEMA})")
    return doc
