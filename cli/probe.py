"""`latentcheck probe`: what do the latents encode? (behavioural probe, trained probes, latent geometry)"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from latentcheck.cli import options as o
from latentcheck.cli.app import app, console, out_console
from latentcheck.cli.tables import render_result
from latentcheck.core.summaries import fmt_ci, fmt_num, fmt_p, fmt_pct

PP = "Probe options"


def _behavioural_table(beh: dict) -> Table:
    t = Table(title=f"Behavioural probe: derived questions (n={beh['n']}, scoring={beh['scoring']}, "
                    f"chance {fmt_pct(beh['expected_chance'])}%)")
    for c in ("arm", "acc % [95% CI]", "vs random: Δ pp (McNemar p)", "vs text-only: Δ pp (McNemar p)"):
        t.add_column(c)
    comps = beh["comparisons"]
    for arm, acc in beh["arms"].items():
        cells = []
        for base in ("random", "text_only"):
            c = comps.get(f"{arm}_vs_{base}")
            cells.append("-" if c is None else f"{fmt_pct(c['delta']['estimate'], signed=True)} "
                                               f"(p={fmt_p(c['delta']['p_value'])})")
        t.add_row(arm, fmt_ci(acc, digits=1, pct=True), *cells)
    return t


def _trained_table(trained: dict) -> Table:
    methods = trained["config"]["methods"]
    t = Table(title="Trained probes: held-out accuracy % (splits by image), control task in (), selectivity [95% CI]")
    for c in ("label", "site", "chance"):
        t.add_column(c)
    for m in methods:
        t.add_column(f"{m} (ctrl)")
        t.add_column(f"{m} sel.")
    for label, entry in trained["labels"].items():
        name = label.removeprefix("meta.")
        for site, r in entry["sites"].items():
            if "skipped" in r:
                t.add_row(name, site, "-", *(["-"] * 2 * len(methods)))
                continue
            cells = []
            for m in methods:
                sel = r.get(f"{m}_selectivity")
                ctrl = r.get(f"{m}_control", {}).get("estimate")
                cells += [f"{fmt_pct(r[m]['estimate'])} ({fmt_pct(ctrl)})",
                          "-" if sel is None else f"{100 * sel['estimate']:+.0f} [{100 * sel['lo']:+.0f}, "
                                                  f"{100 * sel['hi']:+.0f}]"]
            t.add_row(name, site, fmt_pct(r["chance"]), *cells)
    return t


def _similarity_table(sim: dict) -> Table:
    t = Table(title=f"Latent geometry (n={sim.get('n_with_latents', 0)} instances)")
    for c in ("latent index", "inter cos raw", "inter cos centred", "category sep. %", "eff. rank"):
        t.add_column(c)
    for i in range(sim.get("K", 0)):
        sep = sim.get("separability")
        t.add_row(str(i), fmt_num(sim["inter_raw"][i], 3, style="g"), fmt_num(sim["inter_centred"][i], 3, style="g"),
                  fmt_pct(sep[i]["estimate"]) if sep else "-", fmt_num(sim["effective_rank"][i], 3, style="g"))
    return t


@app.command("probe")
def probe_cmd(
    model: o.Model = None, profile: o.Profile = None, data: o.Data = None, out: o.Out = "latentcheck-runs/probe",
    limit: o.Limit = None, batch_size: o.BatchSize = 8, seed: o.Seed = 0, quant: o.Quant = "auto",
    device: o.Device = "auto", quiet: o.Quiet = False, resume: o.Resume = False, strict: o.Strict = False,
    max_pixels: o.MaxPixels = None, trust_remote_code: o.TrustRemoteCode = False,
    max_prompt_tokens: o.MaxPromptTokens = None, retry_errors: o.RetryErrors = False,
    overwrite: o.Overwrite = False,
    greedy: o.Greedy = False, temperature: o.Temperature = None, top_p: o.TopP = None, top_k: o.TopK = None,
    repetition_penalty: o.RepetitionPenalty = None, system: o.System = None,
    max_new_tokens: o.MaxNewTokens = None,
    threads: o.Threads = None,
    log: o.Log = None,
    derived: Annotated[Optional[str], typer.Option("--derived", help="Derived questions (task JSONL, each with "
                                                   "meta.source_id); 'same' asks each source's own question "
                                                   "again (the positive-control setting). Default: "
                                                   "derived_<split>.jsonl next to a toy task file, or generated "
                                                   "from toy metadata.",
                                                   rich_help_panel=PP)] = None,
    label: Annotated[Optional[list[str]], typer.Option("--label", help="Trained-probe label (repeatable): answer, "
                                                       "category or meta.<path>. Default (toy): target colour/shape/"
                                                       "quadrant, answer letter, asked value; else category, answer.",
                                                       rich_help_panel=PP)] = None,
    from_cache: Annotated[Optional[str], typer.Option("--from-cache", help="Re-run trained probes and geometry on a "
                                                      "previous probe run's folder (no model).",
                                                      rich_help_panel=PP)] = None,
    scoring: Annotated[str, typer.Option("--scoring", help="logprob (argmax of option log-probs at the answer "
                                         "point) | generate (letter extracted from the generated answer).",
                                         rich_help_panel=PP)] = "logprob",
    force_latent: o.ForceLatent = True,  # the probe forces by default: every sample has latents to read
    behavioural: Annotated[bool, typer.Option("--behavioural/--no-behavioural", rich_help_panel=PP,
                                              help="Run the behavioural probe.")] = True,
    trained: Annotated[bool, typer.Option("--trained/--no-trained", rich_help_panel=PP,
                                          help="Run trained probes and latent geometry.")] = True,
    splits: Annotated[int, typer.Option("--splits", help="Cross-validation folds (grouped by image).",
                                        rich_help_panel=PP)] = 5,
    mlp_hidden: Annotated[int, typer.Option("--mlp-hidden", help="Hidden units of the MLP probe.",
                                            rich_help_panel=PP)] = 64,
    erase: Annotated[Optional[str], typer.Option(
        "--erase", metavar="LABEL", rich_help_panel=PP,
        help="Encodes vs uses: erase LABEL (e.g. answer, meta.answer_text) from the latents with LEACE and steer them "
             "to another value, feed them back and report whether the answer follows (needs the 'mech' extra).")] = None,
    attention: Annotated[bool, typer.Option(
        "--attention/--no-attention", rich_help_panel=PP,
        help="Attention mass of every latent step on the image and the target bbox per layer (one replay per "
             "source).")] = True,
) -> None:
    """Probe what the latents encode: derived questions answered from the latents alone vs baselines, trained
    linear/MLP probes with a control task, and latent geometry."""
    from latentcheck.probe.behavioural import ProbeOptions, run_probe
    from latentcheck.probe.trained import ProbeConfig

    opts = o.common(model, profile, data, out, limit, batch_size, seed, quant, device, quiet, resume, strict,
                    max_pixels, trust_remote_code, max_prompt_tokens=max_prompt_tokens,
                    retry_errors=retry_errors, overwrite=overwrite, log=log,
                    decoding=o.decoding(greedy, temperature, top_p, top_k, repetition_penalty, max_new_tokens),
                    system=system, threads=threads)
    popts = ProbeOptions(derived=derived, labels=label or None, from_cache=from_cache, scoring=scoring,
                         force_latent=force_latent, behavioural=behavioural, trained=trained, erase=erase,
                         attention=attention, probe=ProbeConfig(n_splits=splits, mlp_hidden=(mlp_hidden,), seed=seed))
    res = run_probe(opts, popts)
    s = res.summary
    if res.is_main and not quiet:
        beh = s.get("behavioural") or {}
        if "arms" in beh:
            out_console.print(_behavioural_table(beh))
        elif beh:
            out_console.print(f"behavioural probe skipped: {beh.get('skipped')}")
        if "labels" in (s.get("trained") or {}):
            out_console.print(_trained_table(s["trained"]))
        if "K" in (s.get("similarity") or {}):
            out_console.print(_similarity_table(s["similarity"]))
    render_result(res, console)
