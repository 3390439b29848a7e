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

from latentcheck.core.summaries import AccuracyEffect, fmt_ci, read_summary  # the one CI formatter (re-exported for the report and CLI)
from latentcheck.core.errors import LatentcheckError

SCHEMA = "latentcheck.audit/1"
AUDIT_FILE = "audit.json"
STAGES = ("perturb_input", "perturb_latent", "probe", "mechanism", "text_doz", "bench")
STAGE_FOLDERS = {"perturb_input": "perturb-input", "perturb_latent": "perturb-latent", "probe": "probe",
                 "mechanism": "mechanism", "text_doz": "text-doz", "bench": "bench"}
STAGE_TITLES = {"perturb_input": "perturb-input (X -> Z)", "perturb_latent": "perturb-latent (Z -> Y, mediation)",
                "probe": "probe (what the latents encode)",
                "mechanism": "mechanism (format vs content, knockout, erasure; fewer samples)", "text_doz": "caption-imagine intervene (text do(Z))",
                "bench": "bench (generic, short)"}
ZOO_AUDIT_MODELS = ("toy-latent", "toy-capimagine", "toy-mediated", "toy-vector", "toy-binding", "toy-bypass")
LINKS = ("xz", "zy", "encodes")
LINK_NAMES = {"xz": "X -> Z", "zy": "Z -> Y", "encodes": "what latents encode", "overall": "overall"}

RULES_FILE = Path(__file__).with_name("verdicts.toml")


def _read_rules_file(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text(encoding="utf-8"))


# Every verdict threshold, in one documented data file (audit/verdicts.toml; docs/audit.md explains each one).
DEFAULT_RULES: dict[str, Any] = _read_rules_file(RULES_FILE)

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
    from latentcheck.core.records import load_user_toml, read_user_text

    p = Path(path)
    if p.suffix.lower() == ".toml":
        data = load_user_toml(p, "--rules")
    else:
        try:
            data = json.loads(read_user_text(p, "--rules"))
        except (ValueError, RecursionError) as e:
            raise LatentcheckError(f"--rules {p}: not valid JSON ({e or 'nested too deeply'})") from None
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
            f"{r['independent_below']:.2f} -> input-independent (the CI's upper end bounds the ratio the data allow); "
            f"inconclusive below {r['min_samples']} samples; the verdict at each of {r['threshold_sweep']} is shown; "
            f"when the ratio's interval lies below the resolution floor (latents within round-off on every sample), "
            f"input-independent also needs the Wilson upper end of the share of samples whose latents moved "
            f"<= {r.get('max_moved_share', 0.1):.2f}")
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
    moved = tr.get("latents_moved") or {}
    floored = ratio.get("method") == "paired_bootstrap_floored"
    ev.update(ratio_method=ratio.get("method"), resolution_floor=ratio.get("resolution_floor"),
              move_resolution=tr.get("move_resolution"), moved=moved.get("successes"), moved_n=moved.get("n"),
              moved_lo=moved.get("lo"), moved_hi=moved.get("hi"))
    line = f"sensitivity ratio ({r['treatment']} / {tr.get('reference')}) {fmt_ci(ev['ratio'], ev['ratio_lo'], ev['ratio_hi'])}, n={tr.get('n')}"
    if moved.get("n"):
        line += (f"; latents moved beyond {tr.get('move_resolution'):g} in {moved['successes']}/{moved['n']} samples "
                 f"{fmt_ci(moved.get('estimate'), moved.get('lo'), moved.get('hi'))}")
    why = not_measurable(pi_summary, r.get("min_trigger_rate", rules["zy"]["min_trigger_rate"]), trig)
    if why:
        return Verdict("xz", "not measurable", UNTESTABLE, f"{line}: {why}", ev, rule)
    if not _finite(ev["ratio"]) or not tr.get("n"):
        why = "no latents to compare (latent mode never triggered?)" if not tr.get("n") or \
            ev["latent_rel_change"] is None else "ratio undefined (the reference state did not change)"
        return Verdict("xz", "untestable", UNTESTABLE, f"{line}: {why}", ev, rule)
    lo, hi = ev["ratio_lo"], ev["ratio_hi"]
    hi_ok = hi is not None and not (isinstance(hi, float) and math.isnan(hi))

    # A ratio whose bootstrap interval lies below the measurement's resolution (floored) has no sampling spread to
    # read: every sample's latents stayed within round-off. Then the defensible interval is the share of samples whose
    # latents moved (Wilson): "input-independent" also needs its upper end <= max_moved_share.
    max_share = r.get("max_moved_share", DEFAULT_RULES["xz"]["max_moved_share"])
    moved_guard = floored and _finite(ev["moved_hi"]) and ev["moved_hi"] > max_share

    def reading(dep: float, ind: float) -> str:
        if _finite(lo) and lo > dep:
            return "input-dependent"
        if hi_ok and hi < ind and not moved_guard:
            return "input-independent"
        return "inconclusive"

    # the threshold's effect on the verdict, shown rather than hidden (same threshold on both sides)
    ev["threshold_sweep"] = [{"threshold": t, "verdict": reading(t, t)} for t in r["threshold_sweep"]]
    flips = [f"{x['verdict']} at {x['threshold']:g}" for x in ev["threshold_sweep"]]
    line += f" (thresholds: {', '.join(flips)})"
    if tr.get("n") < r["min_samples"]:
        return Verdict("xz", "inconclusive", INCONCLUSIVE,
                       f"{line}: inconclusive (n too small: need >= {r['min_samples']})", ev, rule)
    v = reading(r["dependent_above"], r["independent_below"])
    if v == "input-dependent":
        return Verdict("xz", v, POSITIVE, f"{line}; lo > {r['dependent_above']:.2f}", ev, rule)
    if v == "input-independent":
        if floored:
            return Verdict("xz", v, NEGATIVE, f"{line}; the ratio is below the resolution floor "
                                              f"{ev['resolution_floor']:.2g} and the latents moved in at most "
                                              f"{ev['moved_hi']:.0%} of inputs (Wilson upper end <= "
                                              f"{max_share:.0%})", ev, rule)
        return Verdict("xz", v, NEGATIVE, f"{line}; hi < {r['independent_below']:.2f}: the data exclude ratios "
                                          f"above {hi:.2f}", ev, rule)
    if moved_guard and hi_ok and hi < r["independent_below"]:
        need = min_n_for_zero_share(max_share)
        return Verdict("xz", "inconclusive", INCONCLUSIVE,
                       f"{line}: the latents never moved beyond round-off, but with {ev['moved']}/{ev['moved_n']} the "
                       f"share of inputs that move them may reach {ev['moved_hi']:.0%} (> "
                       f"{max_share:.0%}; need >= {need} samples with none moving)", ev, rule)
    return Verdict("xz", "inconclusive", INCONCLUSIVE, f"{line}: CI straddles the threshold", ev, rule)


def min_n_for_zero_share(max_share: float, alpha: float = 0.05) -> int:
    """Fewest samples at which 0 successes give a Wilson upper end <= ``max_share`` (z^2 / (n + z^2) <= max_share)."""
    from latentcheck.core.stats import wilson_ci

    n = 1
    while wilson_ci(0, n, alpha)[1] > max_share:
        n += 1
    return n


def _chance_guard(acc: Any, lo: Any, chance: Any, rules_zy: dict) -> str | None:
    if rules_zy["require_above_chance"] and _finite(chance) and _finite(lo) and lo <= chance:
        return f"baseline accuracy {fmt_ci(acc)} (Wilson lo {lo:.2f}) is not above chance {chance:.2f}"
    return None


def _paired_evidence(d: dict, rz: dict) -> dict[str, Any]:
    """Equivalence (TOST against the margin) and the minimum detectable effect of one paired 0/1 contrast with
    discordant counts ``n01`` / ``n10`` over ``n`` samples: the READING of a stored result under the rules."""
    from latentcheck.core.stats import paired_mde, paired_tost

    n01, n10, n = d.get("n01"), d.get("n10"), d.get("n")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (n01, n10, n)) or not n:
        return {"tost": None, "mde": None}
    t = paired_tost(n01, n10, n, rz["equivalence_margin"], rz["alpha"])
    return {"tost": t, "mde": paired_mde(n, (n01 + n10) / n, rz["alpha"], rz["power"])}


def verdict_zy(pl_summary: dict | None, rules: dict) -> Verdict:
    """Z -> Y for latent models from a perturb-latent summary (module docstring)."""
    from latentcheck.core.stats import equivalence_min_n

    r = rules["zy"]
    m, a, eff_min = r["equivalence_margin"], r["alpha"], r["min_effect"]
    min_n = equivalence_min_n(m, a)
    rule = (f"causal: under a primary (on-distribution) ablation ({', '.join(r['primary'])}) accuracy drops with "
            f"Holm-adjusted McNemar p < {a:g} and the 95% score CI of the drop below -{eff_min:.2f}, the condition "
            f"degenerating in <= {r['max_degenerate_rate']:.0%} of samples, AND the NIE ({r['mediation_kind']} swap, "
            f"outcome {r['mediation_outcome']}, fed-vector mediator) CI excludes 0; not causal: every primary delta "
            f"and the NIE equivalent to 0 within +-{m:.2f} (TOST at {a:g}; needs n >= {min_n}); off-distribution "
            f"ablations ({', '.join(r['secondary'])}) are reported, never decisive; every negative verdict states its "
            f"minimum detectable effect at {r['power']:.0%} power; untestable if trigger rate < "
            f"{r['min_trigger_rate']:.2f}, n < {r['min_samples']} or the baseline is not above chance")
    if not pl_summary:
        return Verdict("zy", "untestable", UNTESTABLE, "perturb-latent did not run", rule=rule)
    b = pl_summary.get("baseline") or {}
    rows = {row["label"]: row for row in pl_summary.get("interventions") or []}

    def row_ev(row: dict) -> dict[str, Any]:
        e = AccuracyEffect.from_dict(row["effect"])
        d = {"delta": e.delta.estimate, "lo": e.delta.lo, "hi": e.delta.hi, "interval": e.delta.method,
             "accuracy": e.cond.estimate, "mcnemar_p": e.delta.p_value, "p_holm": e.delta.p_holm, "n": row.get("n"),
             "n01": e.n01, "n10": e.n10, "degenerate_rate": row.get("degenerate_rate")}
        d.update(_paired_evidence(d, r))
        d["degenerate_flag"] = _finite(d["degenerate_rate"]) and d["degenerate_rate"] > r["max_degenerate_rate"]
        return d

    deltas = {lab: row_ev(rows[lab]) for lab in r["primary"] if rows.get(lab) and rows[lab].get("n")}
    secondary = {lab: row_ev(rows[lab]) for lab in r["secondary"] if rows.get(lab) and rows[lab].get("n")}
    med = ((pl_summary.get("mediation") or {}).get(r["mediation_kind"]) or {})
    vec = med.get(r["mediation_outcome"]) or {}
    nie = None
    if vec.get("n"):
        e = vec["nie"]
        nie = {"estimate": e["estimate"], "lo": e["lo"], "hi": e["hi"], "n": vec["n"], "n01": e.get("n01"),
               "n10": e.get("n10"), "interval": e.get("method", "paired_bootstrap")}
        nie.update(_paired_evidence(nie, r))
    span = (med.get("span") or {}).get(r["mediation_outcome"]) or {}

    def effects(e: dict) -> dict | None:
        if not e.get("n"):
            return None
        return {k: {x: e[k][x] for x in ("estimate", "lo", "hi")} for k in
                ("te", "nie", "nde", "interaction", "total_nie", "proportion_mediated", "proportion_mediated_total")
                if k in e}

    base_acc = b.get("accuracy") or {}
    ev = {"baseline_accuracy": base_acc.get("estimate"), "baseline_lo": base_acc.get("lo"),
          "baseline_hi": base_acc.get("hi"), "chance": b.get("chance"), "n": b.get("n"),
          "trigger_rate": b.get("trigger_rate"), "deltas": deltas, "secondary": secondary, "nie": nie,
          "te": None if not vec.get("n") else {k: vec["te"][k] for k in ("estimate", "lo", "hi")},
          "nde": None if not vec.get("n") else {k: vec["nde"][k] for k in ("estimate", "lo", "hi")},
          "mediation_n": vec.get("n"), "mediation": {"vectors": effects(vec), "span": effects(span)},
          "interchange": {"vectors": (med.get("interchange") or {}).get("follows_counterfactual"),
                          "span": ((med.get("span") or {}).get("interchange") or {}).get("follows_counterfactual")},
          "multiplicity": pl_summary.get("multiplicity"), "equivalence_min_n": min_n,
          "other_interventions": {lab: {"delta": row["effect"]["delta"]["estimate"],
                                        "lo": row["effect"]["delta"]["lo"], "hi": row["effect"]["delta"]["hi"],
                                        "p_holm": row["effect"]["delta"]["p_holm"]}
                                  for lab, row in rows.items()
                                  if lab not in r["primary"] and lab not in r["secondary"] and row.get("n")}}
    parts = [f"{lab} dAcc {fmt_ci(d['delta'], d['lo'], d['hi'], signed=True)} (p_holm {_p(d['p_holm'])})"
             + (" [degenerate]" if d["degenerate_flag"] else "") for lab, d in deltas.items()]
    parts.append(f"NIE {fmt_ci(nie['estimate'], nie['lo'], nie['hi'], signed=True)}" if nie else "NIE -")
    if secondary:
        parts.append("off-distribution: " + ", ".join(f"{lab} {fmt_ci(d['delta'], d['lo'], d['hi'], signed=True)}"
                                                       for lab, d in secondary.items()))
    line = "; ".join(parts)
    why = None
    if not b.get("n") or b["n"] < r["min_samples"]:
        why = f"only {b.get('n') or 0} samples (need >= {r['min_samples']})"
    elif not_measurable(pl_summary, r["min_trigger_rate"], b.get("trigger_rate")):
        why = not_measurable(pl_summary, r["min_trigger_rate"], b.get("trigger_rate"))
        return Verdict("zy", "not measurable", UNTESTABLE, f"{line}: {why}", ev, rule)
    else:
        why = _chance_guard(base_acc.get("estimate"), base_acc.get("lo"), b.get("chance"), r)
    if why is None and not deltas:
        why = f"none of the primary interventions ({', '.join(r['primary'])}) ran"
    if why:
        return Verdict("zy", "untestable", UNTESTABLE, f"{line}: {why}", ev, rule)
    flagged = [lab for lab, d in deltas.items() if d["degenerate_flag"]]
    drop = [lab for lab, d in deltas.items() if not d["degenerate_flag"] and _finite(d["hi"]) and d["hi"] < -eff_min
            and _finite(d["p_holm"]) and d["p_holm"] < a]
    nie_ok = nie is not None and _excludes_zero(nie["lo"], nie["hi"])
    if drop and nie_ok:
        return Verdict("zy", "causal", POSITIVE, line, ev, rule)
    checks = list(deltas.values()) + ([nie] if nie is not None else [])
    mdes = ", ".join(f"{lab} {d['mde']:.2f}" for lab, d in [*deltas.items(), ("NIE", nie or {})]
                     if d and _finite(d.get("mde")))
    flat = nie is not None and all(d.get("tost") and d["tost"]["equivalent"] for d in checks)
    if flat and not flagged:
        return Verdict("zy", "not causal", NEGATIVE, f"{line}: every effect equivalent to 0 within +-{m:.2f} (TOST "
                                                     f"p < {a:g}); minimum detectable effect at {r['power']:.0%} "
                                                     f"power: {mdes}", ev, rule)
    n_eff = min([d["n"] for d in checks if d.get("n")] or [0])
    if n_eff < min_n and not (drop or nie_ok):
        return Verdict("zy", "inconclusive", INCONCLUSIVE,
                       f"{line}: inconclusive (n too small for +-{m * 100:.0f} points: need >= {min_n}); minimum "
                       f"detectable effect at {r['power']:.0%} power: {mdes}", ev, rule)
    if drop:
        reason = "accuracy drops but the NIE CI includes 0"
    elif nie_ok:
        reason = ("NIE excludes 0 but no primary ablation drops accuracy by more than "
                  f"{eff_min:.2f} (Holm-adjusted)")
    elif flagged:
        reason = f"{', '.join(flagged)} degenerate(s) in more than {r['max_degenerate_rate']:.0%} of samples"
    else:
        reason = (f"no drop shown, but the CIs are too wide for equivalence within +-{m:.2f}; minimum detectable "
                  f"effect at {r['power']:.0%} power: {mdes}")
    return Verdict("zy", "inconclusive", INCONCLUSIVE, f"{line}: {reason}", ev, rule)


def _p(p: Any) -> str:
    return "-" if not _finite(p) else f"{p:.2g}"


def _accuracy_effect(d: dict | None) -> AccuracyEffect | None:
    """A summary's paired-accuracy entry as the record (None when absent)."""
    return AccuracyEffect.from_dict(d) if d else None


def verdict_zy_text(doz_summary: dict | None, rules: dict, chance: float | None) -> Verdict:
    """Z -> Y for text-imagination models from a caption-imagine intervene summary (module docstring)."""
    r = rules["zy"]
    m = r["equivalence_margin"]
    rule = (f"causal: text do(Z) accuracy drop with McNemar p < {r['alpha']:g} and 95% score CI below "
            f"-{r['min_effect']:.2f} while a neutral edit (answer-irrelevant words) does not drop accuracy by more "
            f"than {r['min_effect']:.2f}; not causal: equivalent to 0 within +-{m:.2f} (TOST); untestable if fewer than "
            f"{r['min_samples']} samples had a closed imagination span or the clean run is not above chance")
    if not doz_summary:
        return Verdict("zy", "untestable", UNTESTABLE, "caption-imagine intervene did not run", rule=rule)
    eff = _accuracy_effect(doz_summary.get("effect"))
    fol = doz_summary.get("follows_corruption")
    pg = doz_summary.get("p_gold")
    ev = {"n_samples": doz_summary.get("n_samples"), "n_intervened": doz_summary.get("n_intervened"),
          "imagination_rate": doz_summary.get("imagination_rate"), "chance": chance,
          "skip_reasons": doz_summary.get("skip_reasons"),
          "delta": None if not eff else {"delta": eff.delta.estimate, "lo": eff.delta.lo, "hi": eff.delta.hi,
                                         "acc_clean": eff.base.estimate, "acc_clean_lo": eff.base.lo,
                                         "acc_doz": eff.cond.estimate, "mcnemar_p": eff.delta.p_value, "n": eff.n},
          "follows_corruption": fol, "flip_rate": doz_summary.get("flip_rate"),
          "p_gold_delta": None if not pg else pg["delta"]}
    if not eff:
        return Verdict("zy", "untestable", UNTESTABLE,
                       f"no intervened sample ({doz_summary.get('n_intervened') or 0} of "
                       f"{doz_summary.get('n_samples') or 0} had a closed imagination span)", ev, rule)
    line = (f"text do(Z) dAcc {fmt_ci(eff.delta, signed=True)} "
            f"(clean {eff.base.estimate:.2f} -> do(Z) {eff.cond.estimate:.2f}, n={eff.n})")
    if fol:
        line += f"; follows the corruption {fol['estimate']:.0%}"
    why = None
    if eff.n < r["min_samples"]:
        why = f"only {eff.n} intervened samples (need >= {r['min_samples']})"
    else:
        why = _chance_guard(eff.base.estimate, eff.base.lo, chance, r)
    if why:
        return Verdict("zy", "untestable", UNTESTABLE, f"{line}: {why}", ev, rule)
    pe = _paired_evidence(eff, r)
    ev["delta"].update(pe, n01=eff.n01, n10=eff.n10)
    neu = _accuracy_effect(doz_summary.get("neutral_effect"))
    ev["neutral"] = None if not neu else {"delta": neu.delta.estimate, "lo": neu.delta.lo, "hi": neu.delta.hi,
                                          "n": neu.n, "mcnemar_p": neu.delta.p_value}
    ev["interchange"] = (doz_summary.get("interchange") or {}).get("follows_partner")
    if neu:
        line += f"; neutral edit dAcc {fmt_ci(neu.delta, signed=True)}"
    if ev["interchange"]:
        line += f"; text interchange follows the partner {fmt_ci(ev['interchange'])}"
    if _finite(eff.delta.hi) and eff.delta.hi < -r["min_effect"] and eff.delta.p_value < r["alpha"]:
        if neu and _finite(neu.delta.hi) and neu.delta.hi < -r["min_effect"]:
            return Verdict("zy", "inconclusive", INCONCLUSIVE, f"{line}: the neutral edit moves accuracy too (the "
                                                               "model reacts to any edit)", ev, rule)
        return Verdict("zy", "causal", POSITIVE, line, ev, rule)
    mde = f"minimum detectable effect at {r['power']:.0%} power {pe['mde']:.2f}" if _finite(pe["mde"]) else ""
    if pe["tost"] and pe["tost"]["equivalent"]:
        return Verdict("zy", "not causal", NEGATIVE, f"{line}: equivalent to 0 within +-{m:.2f} (TOST); {mde}", ev,
                       rule)
    if pe["tost"] and eff["n"] < pe["tost"]["min_n"]:
        return Verdict("zy", "inconclusive", INCONCLUSIVE, f"{line}: inconclusive (n too small for +-{m * 100:.0f} "
                                                           f"points: need >= {pe['tost']['min_n']}); {mde}", ev, rule)
    return Verdict("zy", "inconclusive", INCONCLUSIVE, f"{line}: no drop shown, CI too wide for equivalence; {mde}",
                   ev, rule)


def _best_site(sites: dict[str, dict], method: str) -> tuple[str | None, dict | None, str]:
    usable = {s: v for s, v in sites.items() if s.startswith("latent_") and "skipped" not in v}
    if not usable:
        return None, None, method
    if not all(method in v for v in usable.values()):
        method = next(k for k in ("linear", "mlp") if all(k in v for v in usable.values()))
    best = max(usable, key=lambda s: (usable[s][method]["estimate"], -list(usable).index(s)))
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
                             **{a: beh["arms"][a]["estimate"] for a in beh["arms"]},
                             "latents_vs_text_only": {k: (comp.get("delta") or {}).get(x)
                                                      for k, x in (("delta", "estimate"), ("lo", "lo"), ("hi", "hi"))}}
    if label is None:
        why = trained.get("skipped") or f"none of the labels {', '.join(r['labels'])} was probed"
        return Verdict("encodes", "untestable", UNTESTABLE, why, ev, rule)
    sites = labels[label]["sites"]
    site, res, method = _best_site(sites, r["method"])
    if site is None:
        return Verdict("encodes", "untestable", UNTESTABLE, f"no latent site could be probed for {label}", ev, rule)
    acc = res[method]
    sel = res.get(f"{method}_selectivity") or {}
    ctrl = (res.get(f"{method}_control") or {}).get("estimate")
    per_index = {s: {"accuracy": v[method]["estimate"], "lo": v[method]["lo"], "hi": v[method]["hi"]}
                 for s, v in sites.items() if "skipped" not in v and method in v}
    ev.update(label=label, method=method, site=site, accuracy=acc["estimate"], lo=acc["lo"], hi=acc["hi"],
              chance=res["chance"], control=ctrl, selectivity=sel.get("estimate"), selectivity_lo=sel.get("lo"),
              selectivity_hi=sel.get("hi"), n=res["n"], per_site=per_index)
    line = (f"{label.removeprefix('meta.')} from {site} ({method}): {fmt_ci(acc)} "
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
    return {"accuracy": acc.get("estimate"), "lo": acc.get("lo"), "hi": acc.get("hi"), "n": acc.get("n"),
            "chance": (bench_summary.get("chance") or {}).get("these_samples"),
            "benchmark": bench_summary.get("benchmark")}


def comparison_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One row of the side-by-side table from a model entry of audit.json (verdicts + evidence)."""
    v = entry["verdicts"]
    xz, zy, enc = v["xz"]["evidence"], v["zy"]["evidence"], v["encodes"]["evidence"]
    row: dict[str, Any] = {"model": entry["model"], "kind": entry["kind"],
                           "xz": {"ratio": xz.get("ratio"), "lo": xz.get("ratio_lo"), "hi": xz.get("ratio_hi"),
                                  "treatment": xz.get("treatment"), "verdict": v["xz"]["verdict"],
                                  "floored": xz.get("ratio_method") == "paired_bootstrap_floored",
                                  "moved": xz.get("moved"), "moved_n": xz.get("moved_n"),
                                  "moved_lo": xz.get("moved_lo"), "moved_hi": xz.get("moved_hi")},
                           "zy": {"verdict": v["zy"]["verdict"], "deltas": zy.get("deltas"), "nie": zy.get("nie"),
                                  "text_doz": zy.get("delta") if entry["kind"] == "text_imagination" else None,
                                  "interchange": (zy.get("interchange") if entry["kind"] == "latent" else
                                                  {"text": zy.get("interchange")})},
                           "encodes": {"verdict": v["encodes"]["verdict"], "label": enc.get("label"),
                                       "site": enc.get("site"), "accuracy": enc.get("accuracy"), "lo": enc.get("lo"),
                                       "hi": enc.get("hi"), "chance": enc.get("chance"),
                                       "control": enc.get("control")},
                           "bench": entry.get("bench"), "overall": v["overall"]["verdict"],
                           "overall_status": v["overall"]["status"]}
    return row


COMPARISON_COLUMNS = ("model", "kind", "X -> Z sensitivity [CI]", "Z -> Y dAcc under intervention [CI]",
                      "NIE [CI]", "text do(Z) dAcc [CI]", "interchange: follows partner [CI]", "probe acc [CI] vs chance",
                      "bench acc [CI]", "verdicts")


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
    xz_cell = "-" if xz.get("ratio") is None else fmt_ci(xz["ratio"], xz["lo"], xz["hi"])
    if xz.get("floored") and xz.get("moved_n"):  # below the resolution floor: the share that moved is the interval
        xz_cell = (f"< {xz['hi']:.1e} (floor); moved {xz['moved']}/{xz['moved_n']} "
                   f"[{xz['moved_lo']:.2f}, {xz['moved_hi']:.2f}]")
    return {"model": row["model"], "kind": row["kind"],
            "X -> Z sensitivity [CI]": xz_cell,
            "Z -> Y dAcc under intervention [CI]": deltas,
            "NIE [CI]": "-" if not nie else fmt_ci(nie["estimate"], nie["lo"], nie["hi"], signed=True),
            "text do(Z) dAcc [CI]": "-" if not doz else fmt_ci(doz["delta"], doz["lo"], doz["hi"], signed=True),
            "interchange: follows partner [CI]": "; ".join(
                f"{k} {fmt_ci(x.get('estimate'), x.get('lo'), x.get('hi'))}"
                for k, x in (zy.get("interchange") or {}).items() if x) or "-",
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


def reread(folder: str | Path, rules: dict[str, Any]) -> dict[str, Any]:
    """The audit of ``folder`` READ under other ``rules``: a copy of its audit.json whose verdicts (and comparison)
    are recomputed from the stored stage summaries. Nothing in the folder is written or changed: a threshold changes
    the reading of a stored result, never the result."""
    root = Path(folder)
    doc = copy.deepcopy(load_audit(root))
    for entry in doc["models"]:
        base = root / entry.get("folder", ".")
        summaries: dict[str, dict | None] = {}
        for stage, st in (entry.get("stages") or {}).items():
            f = base / str(st.get("folder") or STAGE_FOLDERS.get(stage, stage)) / "summary.json"
            summaries[stage] = read_summary(f) if st.get("status") == "done" and f.exists() else None
        entry["verdicts"] = {k: v.to_dict() for k, v in
                             judge(summaries, entry["kind"], rules, entry.get("data_chance")).items()}
    if doc.get("comparison") is not None:
        doc["comparison"] = [comparison_row(e) for e in doc["models"]]
    doc["rules"] = rules
    doc["reread"] = True
    return doc
