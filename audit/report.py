"""A self-contained HTML report of an audit folder, rendered from saved results only (no model is loaded).

``render_report(folder)`` reads ``audit.json`` (audit/audit.py), draws the audit's own figures from it (verdict views:
sensitivity ratios against the X -> Z threshold, accuracy deltas and TE / NIE / NDE against the equivalence band,
probe accuracy per site against chance; for a zoo audit the side-by-side comparisons) into ``figures/``, and writes
``report.html`` with every figure embedded as a base64 PNG: the audit figures and every PNG the analyses wrote into
their ``plots/`` folders (per-index similarity heat maps, collapse curves, intervention effects, probe accuracy per
index, ...). Nothing in the page is fetched from elsewhere.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentcheck.audit.verdicts import (COMPARISON_COLUMNS, LINK_NAMES, STAGE_FOLDERS, STAGE_TITLES, STAGES,
                                    comparison_cells, fmt_ci, load_audit)

REPORT_FILE = "report.html"
FIGURE_DIR = "figures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Which stage's plots illustrate which link, and captions for the analyses' known PNGs (others get their file name).
LINK_STAGES = {"xz": [("perturb_input", None), ("text_doz", ("similarity", "intra_matrix"))],
               "zy": [("perturb_latent", None), ("text_doz", ("accuracy",))],
               "encodes": [("probe", None)],
               "mechanism": [("mechanism", None)]}
CAPTIONS = {
    "inter_instance_raw": "Inter-instance cosine per latent index (raw), then the reference states; panel titles give "
                          "the off-diagonal mean (paper Fig. 2b).",
    "inter_instance_centred": "Inter-instance cosine per latent index after removing the shared mean (anisotropy "
                              "correction).",
    "collapse_adjacent": "Intra-instance collapse: cosine of consecutive latent steps.",
    "collapse_all_pairs": "Intra-instance collapse: mean cosine of each step with the other steps.",
    "latent_cosine_by_index": "cos(original, treated) latent per index and input treatment.",
    "sensitivity": "Sensitivity ratio per treatment: latent relative change / reference-state relative change "
                   "(95% bootstrap CI).",
    "accuracy": "Accuracy under each latent intervention (Wilson 95% CI; dashed: chance).",
    "delta_logp": "Mean change of log p(gold) under each intervention (bootstrap 95% CI).",
    "mediation_image": "Mediation, image swap: total / natural indirect / natural direct effect (95% CI).",
    "mediation_question": "Mediation, question swap: TE / NIE / NDE (95% CI).",
    "sigma_sweep": "Accuracy vs additive noise strength.",
    "behavioural": "Behavioural probe: derived questions answered from the latents alone vs baselines.",
    "similarity": "Geometry per index: inter-instance cosine (raw / centred) and category separability.",
    "intra_matrix": "Imagination hidden states: intra-instance cosine matrix.",
    "mechanism_effects": "Mechanism arms (fewer samples): accuracy change under the position-preserving placeholder "
                         "span, the attention knockouts, each forced span length and LEACE erasure / steering (95% CI).",
    "mechanism_length": "Format: accuracy against the forced span length K' (the model's own K is the baseline).",
    "attention_image": "Attention mass on the image tokens per decoder layer: latent steps, the latent-start "
                       "position, the last prompt token and the answer point (bootstrap 95% CI).",
    "attention_region": "Share of each row's image attention on the target bbox per layer; dashed: the uniform share.",
    "position_cka": "Linear CKA of each latent step with each image-token position, drawn on the token grid.",
    "position_target": "Target specificity per latent step: centred cosine with the own target's token states minus "
                       "with other instances' (95% CI).",
    "layer_patching_image": "Span patched at one layer from the image-swapped run: accuracy change and the share of "
                            "answers that follow the counterfactual run.",
}
STAGE_CAPTIONS = {("text_doz", "accuracy"): "Text do(Z): accuracy with the model's own imagination vs the corrupted "
                                            "one (Wilson 95% CI).",
                  ("text_doz", "similarity"): "Imagination hidden states: inter-instance cosine per token index "
                                              "(raw / centred) and intra-instance adjacent-token cosine (paper Fig. 4)."}
STATUS_COLOURS = {"positive": "#1b7f3b", "negative": "#b3261e", "inconclusive": "#8a6d00", "untestable": "#5f6368"}


@dataclass
class Figure:
    """One embedded figure: a stable id (``data-figure``), its link section, title, caption and PNG file."""

    id: str
    section: str
    title: str
    caption: str
    path: Path
    wide: bool = False  # spans the page width (heat-map grids, many bars)


# ================================================================================================== figures
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _clip(v: Any, est: float) -> float:
    return v if _finite(v) else est


def _bars(items: list[tuple[str, Any, Any, Any]]) -> tuple[list[str], list[float], list[float], list[float]]:
    """Keep bars with a finite estimate; non-finite CI ends collapse onto the estimate (drawn without that arm)."""
    keep = [(lab, e, _clip(lo, e), _clip(hi, e)) for lab, e, lo, hi in items if _finite(e)]
    return [k[0] for k in keep], [k[1] for k in keep], [k[2] for k in keep], [k[3] for k in keep]


def audit_figures(entry: dict[str, Any], model_root: Path, rules: dict[str, Any]) -> list[Figure]:
    """Draw the per-model verdict figures from one model entry of audit.json into ``model_root/figures``."""
    from latentcheck.core.plots import bar_ci, forest

    out = model_root / FIGURE_DIR
    figs: list[Figure] = []
    v = entry["verdicts"]
    xz = v["xz"]["evidence"]
    if xz.get("treatment") is not None:
        items = [(f"{xz['treatment']}\n/{xz.get('reference')}", xz.get("ratio"), xz.get("ratio_lo"), xz.get("ratio_hi"))]
        items += [(f"{lab}\n/{o.get('reference')}", o["ratio"], o["lo"], o["hi"])
                  for lab, o in (xz.get("other_treatments") or {}).items()]
        labels, vals, lo, hi = _bars(items)
        if labels:
            r = rules["xz"]
            p = bar_ci(labels, vals, lo, hi, out / "xz_sensitivity.png",
                       title="X -> Z sensitivity ratio (95% CI)",
                       ylabel="latent / reference rel. change", hline=r["dependent_above"],
                       hline_label=f"input-dependent if CI lo > {r['dependent_above']:.2f}")
            figs.append(Figure("audit/xz_sensitivity", "xz", "Sensitivity ratios vs the X -> Z threshold",
                               f"Verdict: {v['xz']['verdict']}. {v['xz']['rule']}.", Path(p)))
    zy = v["zy"]["evidence"]
    m = rules["zy"]["equivalence_margin"]
    items = []
    for lab, d in (zy.get("deltas") or {}).items():
        items.append((f"dAcc {lab}", d["delta"], d["lo"], d["hi"]))
    for lab, d in (zy.get("other_interventions") or {}).items():
        items.append((f"dAcc {lab}", d["delta"], d["lo"], d["hi"]))
    for eff in ("te", "nie", "nde"):
        e = zy.get(eff)
        if e:
            items.append((f"{eff.upper()} ({rules['zy']['mediation_kind']})", e["estimate"], e["lo"], e["hi"]))
    if zy.get("delta"):
        d = zy["delta"]
        items.append(("dAcc text do(Z)", d["delta"], d["lo"], d["hi"]))
    if zy.get("p_gold_delta"):
        d = zy["p_gold_delta"]
        items.append(("d p(gold) text do(Z)", d["estimate"], d["lo"], d["hi"]))
    labels, vals, lo, hi = _bars(items)
    if labels:
        p = forest([lab.replace("\n", " ") for lab in labels], vals, lo, hi, out / "zy_effects.png",
                   title=f"Z -> Y effects (95% CI), equivalence band +-{m:.2f}",
                   xlabel="effect on accuracy / P(correct)", band=m)
        figs.append(Figure("audit/zy_effects", "zy", "Intervention effects and mediation vs zero",
                           f"Verdict: {v['zy']['verdict']}. {v['zy']['rule']}.", Path(p), wide=len(labels) > 6))
    enc = v["encodes"]["evidence"]
    if enc.get("per_site"):
        sites = list(enc["per_site"])
        per = enc["per_site"]
        margin = rules["encodes"]["chance_margin"]
        extra = {f"chance + {margin:.2f}": enc["chance"] + margin}
        if _finite(enc.get("control")):
            extra["control task (best site)"] = enc["control"]
        p = bar_ci(sites, [per[s]["accuracy"] for s in sites], [per[s]["lo"] for s in sites],
                   [per[s]["hi"] for s in sites], out / "encodes_per_site.png",
                   title=f"{enc['method']} probe of {enc['label'].removeprefix('meta.')} per site (95% CI)",
                   ylabel="held-out accuracy", hline=enc["chance"], hline_label="chance (majority)",
                   extra_lines=extra)
        figs.append(Figure("audit/encodes_per_site", "encodes", "Probe accuracy per latent index and reference state",
                           f"Verdict: {v['encodes']['verdict']}. {v['encodes']['rule']}.", Path(p)))
    return figs


def zoo_figures(audit: dict[str, Any], root: Path) -> list[Figure]:
    """Side-by-side comparison figures of a multi-model audit into ``root/figures``."""
    from latentcheck.core.plots import bar_ci, forest

    rows = audit["comparison"]
    rules = audit["rules"]
    out = root / FIGURE_DIR
    figs: list[Figure] = []
    labels, vals, lo, hi = _bars([(r["model"], r["xz"]["ratio"], r["xz"]["lo"], r["xz"]["hi"]) for r in rows])
    if labels:
        t = rules["xz"]["dependent_above"]
        figs.append(Figure("zoo/xz", "comparison", "X -> Z: sensitivity ratio per model",
                           f"Ratio under {rules['xz']['treatment']} (95% CI); dashed: threshold {t:.2f}.",
                           Path(bar_ci(labels, vals, lo, hi, out / "zoo_xz.png", hline=t,
                                       hline_label=f"threshold {t:.2f}",
                                       title="X -> Z sensitivity ratio", ylabel="latent / image-token change"))))
    items = []
    for r in rows:
        for lab, d in (r["zy"].get("deltas") or {}).items():
            items.append((f"{r['model']}\ndAcc {lab}", d["delta"], d["lo"], d["hi"]))
        if r["zy"].get("nie"):
            n = r["zy"]["nie"]
            items.append((f"{r['model']}\nNIE", n["estimate"], n["lo"], n["hi"]))
        if r["zy"].get("text_doz"):
            d = r["zy"]["text_doz"]
            items.append((f"{r['model']}\ntext do(Z)", d["delta"], d["lo"], d["hi"]))
    labels, vals, lo, hi = _bars(items)
    if labels:
        m = rules["zy"]["equivalence_margin"]
        figs.append(Figure("zoo/zy", "comparison", "Z -> Y: accuracy change under intervention and NIE per model",
                           f"95% CIs; dotted: the +-{m:.2f} equivalence band of the 'not causal' verdict.",
                           Path(forest([lab.replace("\n", " ") for lab in labels], vals, lo, hi,
                                       out / "zoo_zy.png", band=m, title="Z -> Y effects",
                                       xlabel="effect on accuracy")), wide=len(labels) > 6))
    enc = [r for r in rows if r["encodes"].get("accuracy") is not None]
    labels, vals, lo, hi = _bars([(f"{r['model']}\n{r['encodes']['site']}", r["encodes"]["accuracy"],
                                   r["encodes"]["lo"], r["encodes"]["hi"]) for r in enc])
    if labels:
        chance = [r["encodes"]["chance"] for r in enc]
        figs.append(Figure("zoo/encodes", "comparison", "What latents encode: best latent probe per model",
                           "Held-out accuracy at the best latent site (Wilson 95% CI); dashed: mean chance "
                           "(majority rate).",
                           Path(bar_ci(labels, vals, lo, hi, out / "zoo_encodes.png", hline=sum(chance) / len(chance),
                                       hline_label="chance (majority, mean)", title="best latent probe",
                                       ylabel="accuracy"))))
    items = []
    for m in audit["models"]:
        mech = m.get("mechanism") or {}
        for name, e in (("markers only", (mech.get("format") or {}).get("markers_only")),
                        ("placeholder", (mech.get("format") or {}).get("placeholder")),
                        ("knockout answer->span", (mech.get("flow") or {}).get("knockout_answer_span")),
                        ("LEACE erased", (mech.get("erasure") or {}).get("erased"))):
            if e and e.get("estimate") is not None:
                items.append((f"{m['model']}\n{name}", e["estimate"], e["lo"], e["hi"]))
    labels, vals, lo, hi = _bars(items)
    if labels:
        figs.append(Figure("zoo/mechanism", "mechanism", "Mechanism arms per model",
                           "Accuracy change (95% CI) under markers only (K'=0), the placeholder span, the answer -> span "
                           "knockout and LEACE erasure of the answer attribute (the mechanism stage's samples).",
                           Path(forest([lab.replace("\n", " ") for lab in labels], vals, lo, hi,
                                       out / "zoo_mechanism.png", title="mechanism arms",
                                       xlabel="accuracy change")), wide=len(labels) > 6))
    bench = [r for r in rows if r.get("bench") and r["bench"].get("accuracy") is not None]
    labels, vals, lo, hi = _bars([(r["model"], r["bench"]["accuracy"], r["bench"]["lo"], r["bench"]["hi"])
                                  for r in bench])
    if labels:
        ch = [r["bench"]["chance"] for r in bench if _finite(r["bench"].get("chance"))]
        figs.append(Figure("zoo/bench", "comparison", "Short bench: accuracy per model",
                           "Generic benchmark on the audit data (Wilson 95% CI); dashed: chance.",
                           Path(bar_ci(labels, vals, lo, hi, out / "zoo_bench.png",
                                       hline=sum(ch) / len(ch) if ch else None, hline_label="chance" if ch else "",
                                       title="bench accuracy", ylabel="accuracy"))))
    return figs


def _stage_pngs(entry: dict[str, Any], model_root: Path, stage: str, only: tuple[str, ...] | None) -> list[Path]:
    st = (entry.get("stages") or {}).get(stage) or {}
    if st.get("status") != "done":
        return []
    folder = model_root / (st.get("folder") or STAGE_FOLDERS[stage]) / "plots"
    pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if only is not None:
        pngs = [p for p in pngs if p.stem in only]
    order = list(CAPTIONS)
    return sorted(pngs, key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem))


def model_figures(entry: dict[str, Any], model_root: Path, rules: dict[str, Any]) -> list[Figure]:
    """Every figure of one model: its audit figures, then every analysis PNG, grouped by link."""
    audit_figs: dict[str, list[Figure]] = {}
    for f in audit_figures(entry, model_root, rules):
        audit_figs.setdefault(f.section, []).append(f)
    figs: list[Figure] = []
    for link, stages in LINK_STAGES.items():
        figs += audit_figs.get(link, [])
        for stage, only in stages:
            for p in _stage_pngs(entry, model_root, stage, only):
                caption = STAGE_CAPTIONS.get((stage, p.stem)) or CAPTIONS.get(p.stem) or \
                    (f"Probe accuracy per site for {p.stem.removeprefix('probe_')} (linear/MLP, control task dashed, "
                     "chance dotted)." if p.stem.startswith("probe_") else
                     f"Per-index ablation: {p.stem.removeprefix('per_index_')}." if p.stem.startswith("per_index_")
                     else p.stem)
                figs.append(Figure(f"{STAGE_FOLDERS[stage]}/{p.stem}", link, f"{STAGE_FOLDERS[stage]}: {p.stem}",
                                   caption, p, wide=p.stem.startswith("inter_instance")))
    return figs


def report_figures(folder: str | Path, audit: dict[str, Any] | None = None) -> dict[str, list[Figure]]:
    """Draw the audit figures and list every figure of the report: ``{"comparison": [...], model: [...]}``."""
    root = Path(folder)
    audit = audit or load_audit(root)
    out: dict[str, list[Figure]] = {}
    if len(audit["models"]) > 1:
        out["comparison"] = zoo_figures(audit, root)
    for entry in audit["models"]:
        out[entry["model"]] = model_figures(entry, root / entry.get("folder", "."), audit["rules"])
    return out


# ================================================================================================== HTML
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#202124;
line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:2px solid #dadce0;padding-bottom:.2em}
h3{margin-top:1.5em}table{border-collapse:collapse;margin:1em 0;font-size:.9em;width:100%}
th,td{border:1px solid #dadce0;padding:.35em .6em;text-align:left;vertical-align:top}th{background:#f1f3f4}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;color:#fff;font-weight:600;font-size:.9em}
.figs{display:flex;flex-wrap:wrap;gap:.8em;align-items:flex-start}
figure{margin:0;width:270px;flex:0 0 270px}figure.wide{width:420px;flex-basis:420px}
figure img{width:100%;border:1px solid #eee;cursor:zoom-in}figure:target{width:100%;flex-basis:100%}
figure:target img{cursor:default}figcaption{font-size:.78em;color:#5f6368;line-height:1.3}
figure.key{width:540px;flex-basis:540px}figure:not(:target) img{max-height:300px;object-fit:contain}
figure.key:not(:target) img{max-height:420px}td details{border:0;padding:0;margin:0}
td details>summary{font-weight:400;color:#5f6368}
details{margin:.4em 0;border:1px solid #e3e3e3;border-radius:4px;padding:.2em .8em}
details>summary{cursor:pointer;font-weight:600;padding:.2em 0}details[open]>summary{margin-bottom:.4em}
section.model{margin-top:1.6em}
.muted{color:#5f6368;font-size:.9em}
nav#contents{border:1px solid #ddd;background:#fafafa;padding:.4em 1em;margin:1em 0;max-width:760px}
nav#contents h2{margin:.3em 0;font-size:1.1em}nav#contents ul{margin:.2em 0;padding-left:1.2em}
nav#contents li.toc2{margin-left:1.4em;font-size:.9em}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
pre{background:#f8f9fa;padding:.8em;overflow-x:auto;border:1px solid #eee}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _badge(verdict: str, status: str) -> str:
    return f'<span class="badge" style="background:{STATUS_COLOURS.get(status, "#5f6368")}">{_e(verdict)}</span>'


def _img(fig: Figure, key: bool = False) -> str:
    """A figure as a thumbnail (``key``: a larger one) embedded as base64 PNG. Clicking it shows it full width in
    place (CSS ``:target``, no second copy of the image); ``PNG`` / ``SVG`` link the full-size files."""
    data = fig.path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        return f'<p class="muted">figure {_e(fig.id)}: {_e(fig.path.name)} is not a PNG file</p>'
    b64 = base64.b64encode(data).decode("ascii")
    classes = " ".join(c for c, on in (("wide", fig.wide), ("key", key)) if on)
    cls = f' class="{classes}"' if classes else ""
    fid = anchor("fig", fig.id, "key" if key else "")
    svg = fig.path.with_suffix(".svg")
    links = f' <a href="{_e(_relative(fig.path))}">PNG</a>'
    links += f' <a href="{_e(_relative(svg))}">SVG</a>' if svg.is_file() else ""
    return (f'<figure id="{fid}"{cls}><a href="#{fid}"><img alt="{_e(fig.title)}" data-figure="{_e(fig.id)}" '
            f'loading="lazy" src="data:image/png;base64,{b64}"></a>'
            f"<figcaption><b>{_e(fig.title)}</b>. {_e(fig.caption)}{links}</figcaption></figure>")


_REPORT_ROOT: list[Path] = []  # the folder report.html is written to (links are relative to it)


def _relative(path: Path) -> str:
    if _REPORT_ROOT:
        try:
            return os.path.relpath(path, _REPORT_ROOT[-1])
        except ValueError:
            pass
    return str(path)


def anchor(*parts: Any) -> str:
    """A stable HTML id from parts (letters, digits, '-')."""
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", "-".join(str(p) for p in parts)).strip("-").lower() or "section"


def _contents(items: list[tuple[int, str, str]]) -> str:
    """The contents box: (level, anchor, title); level-2 links follow their level-1 entry on the same line, so the
    box stays a few lines high however many sections there are."""
    lines: list[list[str]] = []
    for level, ref, title in items:
        link = f'<a href="#{_e(ref)}">{_e(title)}</a>'
        if level > 1 and lines:
            lines[-1].append(f'<span class="muted">{link}</span>')
        else:
            lines.append([link])
    out = ['<nav id="contents"><h2>Contents</h2><ul>']
    out += [f'<li class="toc1">{line[0]}' + (": " + " · ".join(line[1:]) if line[1:] else "") + "</li>"
            for line in lines]
    out.append("</ul></nav>")
    return "".join(out)


def _verdict_badges(entry: dict[str, Any]) -> str:
    """One badge per link plus the overall verdict (the comparison table's verdict cell)."""
    v = entry["verdicts"]
    short = {"xz": "X->Z", "zy": "Z->Y", "encodes": "latents", "overall": "overall"}
    return " ".join(f'<span class="muted">{short[k]}</span> {_badge(v[k]["verdict"], v[k]["status"])}'
                    for k in ("xz", "zy", "encodes", "overall") if k in v)


def _table(headers: list[str], rows: list[list[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _verdict_table(entry: dict[str, Any]) -> str:
    rows = []
    for link in ("xz", "zy", "encodes", "overall"):
        v = entry["verdicts"][link]
        rows.append([_e(LINK_NAMES[link]), _badge(v["verdict"], v["status"]), _e(v["summary"]),
                     f'<details><summary>rule</summary><span class="muted">{_e(v["rule"])}</span></details>'])
    return _table(["link", "verdict", "numbers (95% CI)", "rule"], rows, raw=True)


def _stage_table(entry: dict[str, Any]) -> str:
    rows = []
    for stage in STAGES:
        st = (entry.get("stages") or {}).get(stage)
        if st is None:
            continue
        counts = st.get("counts") or {}
        n = counts.get("ok", counts.get("samples", ""))
        link = f'<a href="{_e(Path(entry.get("folder", ".")) / st["summary"])}">{_e(st["summary"])}</a>' \
            if st.get("summary") else ""
        rows.append([_e(STAGE_TITLES[stage]), _e(st["status"]), _e(st.get("reason") or ""), _e(st.get("limit")),
                     _e(n), _e(f"{st.get('seconds', 0):.1f}"), link])
    return _table(["stage", "status", "note", "limit", "samples", "seconds", "summary"], rows, raw=True)


def _figure_block(figs: list[Figure], section: str) -> str:
    chosen = [f for f in figs if f.section == section]
    if not chosen:
        return '<p class="muted">no figures (the stage did not run or produced none)</p>'
    return '<div class="figs">' + "".join(_img(f) for f in chosen) + "</div>"


def key_figure(figs: list[Figure]) -> Figure | None:
    """The one figure shown open for a model: the audit's own Z -> Y view, else its X -> Z view, else the first."""
    for wanted in ("audit/zy_effects", "audit/xz_sensitivity", "audit/encodes_per_site"):
        for f in figs:
            if f.id == wanted:
                return f
    return figs[0] if figs else None


def _details(title: str, body: str, ident: str | None = None, open_: bool = False) -> str:
    """A collapsed section: ``<summary>`` always visible; ``ident`` sits inside, so following a link to it opens the
    section (browsers expand a closed ``<details>`` around a fragment target)."""
    target = f'<div id="{_e(ident)}"></div>' if ident else ""
    return f'<details{" open" if open_ else ""}><summary>{_e(title)}</summary>{target}{body}</details>'


def _model_section(entry: dict[str, Any], figs: list[Figure], heading: str = "h2") -> str:
    info = entry.get("model_info") or {}
    sub = "h3" if heading == "h2" else "h4"
    bench = entry.get("bench") or {}
    bench_line = "" if bench.get("accuracy") is None else (
        f"<p>Short bench ({_e(bench.get('benchmark'))}, n={_e(bench.get('n'))}): accuracy "
        f"{_e(fmt_ci(bench['accuracy'], bench['lo'], bench['hi']))}"
        + (f", chance {bench['chance']:.2f}" if _finite(bench.get("chance")) else "") + "</p>")
    key = key_figure(figs)
    parts = [f'<section class="model"><{heading} id="{anchor("model", entry["model"])}">{_e(entry["model"])} '
             f'{_badge(entry["verdicts"]["overall"]["verdict"], entry["verdicts"]["overall"]["status"])}</{heading}>',
             f'<p class="muted">profile {_e(entry.get("profile"))} ({_e(entry.get("kind"))}); weights '
             f'{_e(info.get("path"))} (hash {_e(str(info.get("weight_hash"))[:12])}); data {_e(entry.get("data"))}; '
             f'{_e(entry.get("seconds"))} s</p>',
             _verdict_table(entry), bench_line]
    if key is not None:  # the key figure stays visible; everything else is one click away
        parts.append('<div class="figs">' + _img(key, key=True) + "</div>")
    rest = [f for f in figs if f is not key]  # the key figure is not embedded twice
    for link in ("xz", "zy", "encodes"):
        n = sum(f.section == link for f in rest)
        more = " more" if key is not None and key.section == link else ""
        parts.append(_details(f"{LINK_NAMES[link]}: {n}{more} figure{'s' if n != 1 else ''}",
                              _figure_block(rest, link), anchor("section", entry["model"], link)))
    if entry.get("mechanism"):
        n = sum(f.section == "mechanism" for f in rest)
        parts.append(_details(f"mechanism: tables and {n} figure{'s' if n != 1 else ''}",
                              _mechanism_tables([entry]) + _figure_block(rest, "mechanism"),
                              anchor("section", entry["model"], "mechanism")))
    parts.append(_details("stages", _stage_table(entry), anchor("section", entry["model"], "stages")))
    parts.append("</section>")
    return "\n".join(parts)


def _mechanism_tables(models: list[dict[str, Any]]) -> str:
    """The mechanism section's tables (audit/mechanism.py): one row per model, the samples each part rests on."""
    from latentcheck.audit.mechanism import MECHANISM_TABLES, mechanism_cells

    cells = [mechanism_cells(m["model"], m["mechanism"]) for m in models if m.get("mechanism")]
    if not cells:
        return ""
    out = []
    for title, cols in MECHANISM_TABLES.items():
        out.append(f'<p class="muted">{_e(title)}</p>' + _table(list(cols), [[c[k] for k in cols] for c in cells]))
    out.append('<p class="muted">samples: ' + "; ".join(f"{_e(c['model'])}: {_e(c['n'])}" for c in cells) +
               " (the mechanism arms use fewer samples than the verdict stages; docs/audit.md)</p>")
    return "".join(out)


def build_html(audit: dict[str, Any], figures: dict[str, list[Figure]]) -> str:
    """The report page (a string) from audit.json and the figures."""
    models = audit["models"]
    multi = len(models) > 1
    title = "latentcheck audit: " + (", ".join(m["model"] for m in models) if multi else models[0]["model"])
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{_e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
             f"<h1>{_e(title)}</h1>",
             f'<p class="muted">Is the latent imagination causally real? X -> Z (do latents depend on the input?), '
             f'Z -> Y (does the answer depend on them?), and what they encode. Created {_e(audit.get("created"))}; '
             f'total {_e((audit.get("timing") or {}).get("total_s"))} s.</p>']
    toc = [(1, "summary", "Comparison" if multi else "Summary")]
    for m in models:
        toc.append((1, anchor("model", m["model"]), f'{m["model"]}: {m["verdicts"]["overall"]["verdict"]}'))
        toc += [(2, anchor("section", m["model"], link), LINK_NAMES[link]) for link in ("xz", "zy", "encodes")]
        toc.append((2, anchor("section", m["model"], "stages"), "stages"))
    if multi and any(m.get("mechanism") for m in models):
        toc.insert(1, (1, "mechanism", "Mechanism"))
    toc += [(1, "verdict-rules", "Verdict rules"), (1, "settings", "Settings")]
    parts.append(_contents(toc))
    by_model = {m["model"]: m for m in models}
    rows = [comparison_cells(r) for r in audit["comparison"]]
    cells = [[_e(c[k]) for k in COMPARISON_COLUMNS] for c in rows]
    for cell, r in zip(cells, audit["comparison"]):
        if r["model"] in by_model and "verdicts" in COMPARISON_COLUMNS:
            cell[COMPARISON_COLUMNS.index("verdicts")] = _verdict_badges(by_model[r["model"]])
        if "model" in COMPARISON_COLUMNS:
            cell[0] = f'<a href="#{anchor("model", r["model"])}">{_e(r["model"])}</a>'
    parts.append('<h2 id="summary">Summary</h2>' if not multi else '<h2 id="summary">Comparison</h2>')
    parts.append(_table(list(COMPARISON_COLUMNS), cells, raw=True))
    if multi:
        parts.append(_figure_block(figures.get("comparison", []), "comparison"))
        if any(m.get("mechanism") for m in models):
            parts.append('<h2 id="mechanism">Mechanism</h2>')
            parts.append(_mechanism_tables(models))
            parts.append(_figure_block(figures.get("comparison", []), "mechanism"))
    for m in models:
        parts.append(_model_section(m, figures.get(m["model"], [])))
    parts.append('<h2>Verdict rules and settings</h2>')
    parts.append(_details("verdict rules (audit/verdicts.toml, overridable with --rules; docs/audit.md)",
                          f"<pre>{_e(json.dumps(audit.get('rules'), indent=2))}</pre>", "verdict-rules"))
    settings = json.dumps({"settings": audit.get("settings"), "options": audit.get("options")}, indent=2)
    parts.append(_details("settings and options", f"<pre>{_e(settings)}</pre>", "settings"))
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def render_report(folder: str | Path) -> Path:
    """Write ``<folder>/report.html`` from the saved audit (audit.json, stage summaries' PNGs); return its path."""
    root = Path(folder)
    if not (root / "audit.json").is_file() and (root / "summary.json").is_file():
        return render_analysis_report(root)
    audit = load_audit(root)
    _REPORT_ROOT.append(root)
    try:
        page = build_html(audit, report_figures(root, audit))
    finally:
        _REPORT_ROOT.pop()
    path = root / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def render_analysis_report(folder: str | Path) -> Path:
    """``report.html`` for the folder of any single analysis (perturb-latent, perturb-input, probe, bench,
    caption-imagine ...): contents, the run's counts and settings, every figure under ``plots/`` (and the folder),
    and the summary; no model is loaded."""
    from latentcheck.core.records import read_json_object
    from latentcheck.core.summaries import read_summary

    root = Path(folder)
    summary = read_summary(root / "summary.json")
    prov_file = root / "provenance.json"
    prov = read_json_object(prov_file, "provenance") if prov_file.is_file() else {}
    command = summary.get("command") or prov.get("command") or root.name
    model = (summary.get("model") or {}).get("id") if isinstance(summary.get("model"), dict) else summary.get("model")
    title = f"latentcheck {command}" + (f": {model}" if model else "")
    pngs = sorted(set((root / "plots").glob("*.png")) | set(root.glob("*.png"))) if root.is_dir() else []
    figs = [Figure(f"{command}/{p.stem}", "figures", p.stem.replace("_", " "),
                   CAPTIONS.get(p.stem, p.name), p) for p in pngs]
    counts = summary.get("counts") or {}
    toc = [(1, "run", "Run"), (1, "figures", f"Figures ({len(figs)})")]
    toc += [(2, anchor("figure", f.id), f.title) for f in figs]
    toc += [(1, "summary", "Summary (summary.json)")]
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{_e(title)}</title>",
             f"<style>{CSS}</style>", "</head>", "<body>", f"<h1>{_e(title)}</h1>", _contents(toc),
             '<h2 id="run">Run</h2>',
             _table(["samples ok", "error records", "data", "created", "folder"],
                    [[_e(counts.get("ok", "-")), _e(counts.get("errors", "-")), _e(summary.get("data", "-")),
                      _e(prov.get("created", "-")), _e(str(root))]], raw=True),
             f'<h2 id="figures">Figures</h2>']
    _REPORT_ROOT.append(root)
    try:
        if figs:
            parts.append('<div class="figs">' + "".join(
                f'<div id="{anchor("figure", f.id)}">{_img(f)}</div>' for f in figs) + "</div>")
        else:
            parts.append('<p class="muted">no figures in this folder</p>')
    finally:
        _REPORT_ROOT.pop()
    parts.append('<h2>Summary</h2>')
    parts.append(_details("summary.json", f"<pre>{_e(json.dumps(summary, indent=2))}</pre>", "summary"))
    parts += ["</body>", "</html>"]
    path = root / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp{os.getpid()}")
    tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


__all__ = ["Figure", "REPORT_FILE", "render_analysis_report", "audit_figures", "build_html", "model_figures", "render_report",
           "report_figures", "zoo_figures"]
