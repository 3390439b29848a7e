"""`latentcheck perturb-input`: the Input -> Latent link (X -> Z). Thin: options -> run_perturb_input -> table."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from latentcheck.cli.app import app, console, out_console
from latentcheck.cli.tables import render_result
from latentcheck.cli import options as o
from latentcheck.cli.options import (N_BOOT, BatchSize, Data, Device, Limit, MaxNewTokens, MaxPixels, Model, NBoot,
                                     Out, Profile, Quant, Quiet, Resume, Seed, Strict, Threads, TrustRemoteCode,
                                     common)
from latentcheck.core.summaries import fmt_ci, fmt_num

A = "perturb-input options"
SHORT = {"image_tokens": "image", "question_tokens": "question", "last_prompt_token": "last"}


def treatments_table() -> Table:
    from latentcheck.perturb.treatments import describe_treatments

    t = Table(title="input treatments (compose with +, e.g. mask_target+noise:std=0.1)")
    for c in ("name", "changes", "parameters", "what it does"):
        t.add_column(c)
    for d in describe_treatments():
        t.add_row(d["name"], d["changes"], d["params"], d["doc"])
    return t


def results_table(summary: dict) -> Table:
    t = Table(title=f"perturb-input: {summary['profile']} ({summary['latent_source']}), n={summary['n_samples']}, "
                    f"trigger rate {fmt_num((summary.get('trigger_rate') or {}).get('estimate'), 2)}")
    t.add_column("treatment", no_wrap=True)
    for c in ("n", "skip", "latent cos", "latent rel. change", "ref.", "ref. rel. change",
              "sensitivity ratio [95% CI]", "answer changed"):
        t.add_column(c, overflow="fold")
    for label, tr in summary["treatments"].items():
        ref = tr["reference"]
        changed = tr["answer_changed"]
        t.add_row(label, str(tr["n"]), str(tr["n_skipped"]), fmt_num(tr["latent_cosine"]["estimate"], 4),
                  fmt_num(tr["latent_rel_l2"]["estimate"]), SHORT.get(ref, ref),
                  fmt_num(tr["refs"][ref]["rel_l2"]["estimate"]), fmt_ci(tr["sensitivity_ratio"], digits=3),
                  fmt_num(changed["estimate"], 2))
    return t


def geometry_table(summary: dict) -> Table:
    g = summary["geometry"]
    t = Table(title=f"inter-instance similarity of the original inputs (n={g['n']}; raw / mean-centred)")
    t.add_column("state", no_wrap=True)
    for c in ("raw cos", "centred cos", "effective rank", "participation ratio", "within - across (raw)"):
        t.add_column(c)
    rows = [(f"latent {p['index']}", p) for p in g["latent_index"]] + list(g["refs"].items())
    for name, p in rows:
        wa = p.get("within_across_raw")
        t.add_row(name, fmt_num(p["raw_mean"]), fmt_num(p["centred_mean"]), fmt_num(p["effective_rank"], 2),
                  fmt_num(p["participation_ratio"], 2), fmt_num(wa["difference"]) if wa else "-")
    return t


@app.command("perturb-input")
def perturb_input_cmd(
    treatment: Annotated[Optional[list[str]], typer.Option(
        "--treatment", "-t", "-i", help="Input treatment spec, repeatable or ';'-separated (e.g. noise:std=0.2, "
        "mask_target, shuffle_patches:patch=28, swap_image+noise:std=0.1). Default: a standard set "
        "(see --list).", rich_help_panel=A)] = None,
    list_treatments: Annotated[bool, typer.Option("--list", "--list-treatments", help="List the treatments and exit.",
                                                  rich_help_panel=A)] = False,
    max_matrix: Annotated[int, typer.Option("--max-matrix", help="Samples used for the inter-instance matrices and "
                                            "geometry aggregates (bounded memory).", rich_help_panel=A)] = 64,
    save_tensors: Annotated[bool, typer.Option("--save-tensors", help="Keep every sample's latents and reference "
                                               "states in <out>/tensors (npz blocks).", rich_help_panel=A)] = False,
    per_token_refs: Annotated[bool, typer.Option("--per-token-refs/--no-per-token-refs", help="Keep the original "
                                                 "input's per-token image states of the --max-matrix samples and "
                                                 "compare each latent step with them position by position.",
                                                 rich_help_panel=A)] = True,
    force_start: o.ForceLatent = False,
    image_visibility: Annotated[Optional[str], typer.Option("--image-visibility", help="Override the profile's "
                                                            "rule: all | latents_only | none.",
                                                            rich_help_panel=A)] = None,
    max_latents: Annotated[Optional[int], typer.Option("--max-latents", help="Keep at most this many latents per "
                                                       "run (text-imagination/plain default 32).",
                                                       rich_help_panel=A)] = None,
    max_new_tokens: MaxNewTokens = None,
    n_boot: NBoot = N_BOOT,
    no_plots: o.NoPlots = False,
    model: Model = None, profile: Profile = None, data: Data = None, out: Out = "latentcheck-runs/perturb-input",
    limit: Limit = None, batch_size: BatchSize = 8, seed: Seed = 0, quant: Quant = "auto", device: Device = "auto",
    quiet: Quiet = False, resume: Resume = False, strict: Strict = False, max_pixels: MaxPixels = None,
    trust_remote_code: TrustRemoteCode = False,
    max_prompt_tokens: o.MaxPromptTokens = None, retry_errors: o.RetryErrors = False,
    overwrite: o.Overwrite = False,
    greedy: o.Greedy = False, temperature: o.Temperature = None, top_p: o.TopP = None, top_k: o.TopK = None,
    repetition_penalty: o.RepetitionPenalty = None, system: o.System = None,
    threads: o.Threads = None,
    log: o.Log = None,
) -> None:
    """Do the latents change when the input changes? Controlled input treatments vs reference states (X -> Z)."""
    from latentcheck.perturb.inputs import run_perturb_input
    from latentcheck.perturb.treatments import parse_treatments

    if list_treatments:
        out_console.print(treatments_table())
        return
    parsed = parse_treatments(treatment) if treatment else None
    opts = common(model, profile, data, out, limit, batch_size, seed, quant, device, quiet, resume, strict,
                  max_pixels, trust_remote_code, max_prompt_tokens=max_prompt_tokens,
                    retry_errors=retry_errors, overwrite=overwrite, log=log,
                    decoding=o.decoding(greedy, temperature, top_p, top_k, repetition_penalty, max_new_tokens),
                    system=system, threads=threads)
    res = run_perturb_input(opts, parsed, max_matrix=max_matrix, save_tensors=save_tensors, force_start=force_start,
                            image_visibility=image_visibility, max_latents=max_latents,
                            max_new_tokens=max_new_tokens, n_boot=n_boot, plots=not no_plots,
                            per_token_refs=per_token_refs)
    if res.is_main and not quiet:
        out_console.print(results_table(res.summary))
        out_console.print(geometry_table(res.summary))
    render_result(res, console)
