"""`latentcheck perturb-latent`: intervene on the fed-back latents (Z -> Y) and measure mediation (thin command)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from latentcheck.cli import options as o
from latentcheck.cli.app import app, console, out_console
from latentcheck.cli.tables import render_result
from latentcheck.core.summaries import fmt_ci, fmt_num, fmt_p

P = "perturb-latent options"


def _tables(s: dict) -> None:
    b = s["baseline"]
    t = Table(title=f"perturb-latent: {s['model'].get('id')} (profile {s['model'].get('profile')}), n={b['n']}, "
                    f"chance {fmt_num(b['chance'], 2)}")
    for c in ("intervention", "n", "accuracy", "delta acc [95% score CI]", "McNemar p (Holm)", "MDE",
              "answer flips", "delta log p(gold)", "KL(base||int)", "degen.", "trig.", "latents"):
        t.add_column(c, justify="left" if c == "intervention" else "right")
    t.add_row("baseline", str(b["n"]), fmt_num(b["accuracy"]["estimate"]), "-", "-", "-", "-", "-", "-",
              fmt_num(b["degenerate_rate"], 2), fmt_num(b["trigger_rate"], 2), fmt_num(b["mean_latent_count"], 1))
    for r in s["interventions"]:
        if not r["n"]:
            t.add_row(r["label"], "0", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-")
            continue
        eff = r["effect"]
        t.add_row(r["label"], str(r["n"]), fmt_num(eff["cond"]["estimate"]),
                  fmt_ci(eff["delta"], digits=3, signed=True),
                  f"{fmt_p(eff['delta']['p_value'])} ({fmt_p(eff['delta']['p_holm'])})",
                  fmt_num(eff["delta"]["mde"], 2),
                  fmt_num(r["answer_flip_rate"], 2), fmt_ci(r["d_logp_gold"], digits=3, signed=True),
                  fmt_num((r["kl"] or {}).get("estimate"), 4), fmt_num(r["degenerate_rate"], 2),
                  fmt_num(r["trigger_rate"], 2), fmt_num(r["mean_latent_count"], 1))
    out_console.print(t)
    for kind, entry in (s.get("mediation") or {}).items():
        m = Table(title=f"mediation, {kind} swap (partner: {s.get('mediation_partner', 'any')}; outcome vs the "
                        f"ORIGINAL gold; primary: {entry['primary_outcome']})")
        for c in ("mediator", "outcome", "n", "TE", "NIE (pure)", "NDE (pure)", "interaction", "prop. med. pure",
                  "prop. med. total", "follows partner"):
            m.add_column(c, justify="left" if c in ("mediator", "outcome") else "right")
        for mediator in entry.get("mediators", ["vectors"]):
            src = entry if mediator == "vectors" else entry.get(mediator) or {}
            ia = ((src.get("interchange") or {}).get("follows_counterfactual") or {})
            for outcome in ("correct", "logp_gold"):
                e = src.get(outcome) or {}
                if not e.get("n"):
                    m.add_row(mediator, outcome, "0", *["-"] * 7)
                    continue
                m.add_row(mediator, outcome, str(e["n"]),
                          *(fmt_ci(e.get(k), digits=3, signed=True) if e.get(k) else "-"
                            for k in ("te", "nie", "nde", "interaction", "proportion_mediated",
                                      "proportion_mediated_total")),
                          fmt_ci(ia, digits=2) if outcome == "correct" and ia else "")
        out_console.print(m)
    for kind, entry in (s.get("layer_patching") or {}).items():
        lt = Table(title=f"span patched per layer from the {kind}-swapped run (layer = residual stream entering it; "
                         f"Holm over {entry['multiplicity']['m']})")
        for c in ("layers", "n", "delta acc [95% score CI]", "McNemar p (Holm)", "delta log p(gold)",
                  "follows counterfactual"):
            lt.add_column(c, justify="left" if c == "layers" else "right")
        for r in entry["rows"]:
            e = r.get("effect")
            if not e:
                lt.add_row(r["label"], "0", "-", "-", "-", "-")
                continue
            lt.add_row(r["label"], str(r["n"]), fmt_ci(e["delta"], digits=3, signed=True),
                       f"{fmt_p(e['delta']['p_value'])} ({fmt_p(e['delta'].get('p_holm'))})",
                       fmt_ci(r["d_logp_gold"], digits=3, signed=True), fmt_ci(r["follows_counterfactual"], digits=2))
        out_console.print(lt)


@app.command("perturb-latent")
def perturb_latent_cmd(
    intervention: Annotated[Optional[list[str]], typer.Option(
        "--intervention", "-i", rich_help_panel=P,
        help="Intervention spec name[:k=v,...][@i,j] (repeatable; ';'-separated lists allowed), e.g. zero, "
             "noise:sigma=0.5@0,1, shared:source=mean|random|file.npy, swap. Default: the standard set "
             "(see --list).")] = None,
    sigma_sweep: Annotated[Optional[str], typer.Option(
        "--sigma-sweep", rich_help_panel=P, help="Add noise:sigma=s for each s, e.g. 0.1,0.5,1,2 (sigma is relative "
                                                 "to each latent's norm); plotted as a curve. Added to the -i "
                                                 "specs; without -i, only the sweep runs (no default set).")] = None,
    length_sweep: Annotated[Optional[str], typer.Option(
        "--length-sweep", rich_help_panel=P, help="Add length:k=K' for each K', e.g. 0,1,2,4,8: the span forced to "
                                                  "K' vectors (the model's own first K'; past its own span the last "
                                                  "one repeated); plotted as a curve. Format vs content: K'=0 keeps "
                                                  "only the markers.")] = None,
    knockout_sweep: Annotated[Optional[str], typer.Option(
        "--knockout-sweep", rich_help_panel=P, help="Add knockout:query=Q,key=K,layers=l for every decoder layer l "
                                                    "(that layer alone), for each Q-K pair, e.g. answer-span,"
                                                    "span-image; plotted as a curve per pair.")] = None,
    per_index: Annotated[Optional[list[str]], typer.Option(
        "--per-index", rich_help_panel=P, help="Add NAME@k for every latent index k (per-index ablation curve), "
                                               "e.g. zero or index_mean (repeatable). Added to the -i specs; "
                                               "without -i, the default set is not run.")] = None,
    mediation: Annotated[str, typer.Option(
        "--mediation", rich_help_panel=P, help="Input changes for the TE/NIE/NDE analysis: image, question, "
                                               "image,question or none.")] = "image",
    mediators: Annotated[str, typer.Option(
        "--mediators", rich_help_panel=P, help="Mediators of the TE/NIE/NDE analysis: vectors (the fed-back "
                                               "vectors) and span (the latent span's states at every layer, "
                                               "patched from the counterfactual run).")] = "vectors,span",
    patch_layers: Annotated[Optional[str], typer.Option(
        "--patch-layers", rich_help_panel=P, help="Layer sweep of activation patching: the latent span's states at "
                                                  "these layers taken from the mediation's counterfactual run, one "
                                                  "arm per item: each (every layer alone), L, A-B or all, comma-"
                                                  "separated (L = the residual stream entering decoder layer L). "
                                                  "Needs --mediation and the span mediator.")] = None,
    partner: Annotated[str, typer.Option(
        "--partner", rich_help_panel=P, help="Mediation/swap partner rule: different_gold (a partner whose gold "
                                             "answer differs, when the block has one) or any.")] = "different_gold",
    naive: Annotated[bool, typer.Option(
        "--naive", rich_help_panel=P, help="Run every condition as its own generation at batch size 1 (reference "
                                           "way; slow, same answers).")] = False,
    force_latent: o.ForceLatent = False,
    image_visibility: Annotated[Optional[str], typer.Option(
        "--image-visibility", rich_help_panel=P, help="Override the profile's image visibility: all | latents_only | "
                                                      "start_only | none.")] = None,
    max_new_tokens: o.MaxNewTokens = None,
    calibration: Annotated[Optional[int], typer.Option(
        "--calibration", rich_help_panel=P, help="Samples in the calibration pass for shared/index_mean statistics "
                                                 "(default: one block = 4 x batch size).")] = None,
    n_boot: o.NBoot = o.N_BOOT,
    no_plots: o.NoPlots = False,
    list_: Annotated[bool, typer.Option("--list", rich_help_panel=P,
                                        help="List the interventions and exit.")] = False,
    model: o.Model = None, profile: o.Profile = None, data: o.Data = None,
    out: o.Out = "latentcheck-runs/perturb-latent", limit: o.Limit = None, batch_size: o.BatchSize = 8,
    seed: o.Seed = 0, quant: o.Quant = "auto", device: o.Device = "auto", quiet: o.Quiet = False,
    resume: o.Resume = False, strict: o.Strict = False, max_pixels: o.MaxPixels = None,
    trust_remote_code: o.TrustRemoteCode = False,
    max_prompt_tokens: o.MaxPromptTokens = None, retry_errors: o.RetryErrors = False,
    overwrite: o.Overwrite = False,
    greedy: o.Greedy = False, temperature: o.Temperature = None, top_p: o.TopP = None, top_k: o.TopK = None,
    repetition_penalty: o.RepetitionPenalty = None, system: o.System = None,
    threads: o.Threads = None,
    log: o.Log = None,
) -> None:
    """Intervene on the fed-back latent vectors (Z -> Y) and decompose the input's effect on the answer into
    direct and latent-mediated parts (TE / NIE / NDE). Writes samples.jsonl, summary.json and plots/ to --out."""
    from latentcheck.perturb.latents import DEFAULT_SPECS, intervention_names, run_perturb_latent

    if list_:
        t = Table(title="latent interventions")
        for c in ("name", "kind", "parameters (defaults)", "what it does"):
            t.add_column(c)
        for name, kind, params, doc in intervention_names():
            t.add_row(name, kind, ", ".join(f"{k}={v}" for k, v in params.items()) or "-", doc)
        out_console.print(t)
        out_console.print("default set: " + " ".join(DEFAULT_SPECS))
        return
    opts = o.common(model, profile, data, out, limit, batch_size, seed, quant, device, quiet, resume, strict,
                    max_pixels, trust_remote_code, max_prompt_tokens=max_prompt_tokens,
                    retry_errors=retry_errors, overwrite=overwrite, log=log,
                    decoding=o.decoding(greedy, temperature, top_p, top_k, repetition_penalty, max_new_tokens),
                    system=system, threads=threads)
    result = run_perturb_latent(opts, intervention, sigma_sweep=sigma_sweep, per_index=per_index or [],
                                length_sweep=length_sweep,
                                mediation=mediation, mediators=mediators, partner=partner, naive=naive,
                                force_latent=force_latent,
                                image_visibility=image_visibility, max_new_tokens=max_new_tokens,
                                calibration_size=calibration, n_boot=n_boot, plots=not no_plots,
                                patch_layers=patch_layers, knockout_sweep=knockout_sweep)
    if result.is_main and not quiet:
        _tables(result.summary)
    render_result(result, console)
