"""`latentcheck audit` (the whole study in one command, with a report) and `latentcheck report` (re-render it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from latentcheck.cli import options as o
from latentcheck.cli.app import app, console, out_console
from latentcheck.core.errors import LatentcheckError

A = "Audit options"
STYLE = {"positive": "bold green", "negative": "bold red", "inconclusive": "bold yellow", "untestable": "dim"}


def _stage_names(values: list[str] | None) -> list[str] | None:
    from latentcheck.audit.audit import ANALYSES, stage_order
    from latentcheck.core.errors import LatentcheckError

    known = stage_order(ANALYSES)
    if not values:
        return None
    out = []
    for v in (x.strip().replace("-", "_") for item in values for x in item.split(",")):
        if v not in known:
            raise LatentcheckError(f"--stage {v!r}: unknown stage; valid: {', '.join(known)}")
        if v not in out:
            out.append(v)
    return out


def verdict_table(entry: dict[str, Any]) -> Table:
    """One model's verdicts: link, verdict, the numbers with their 95% CIs."""
    from latentcheck.audit.verdicts import LINK_NAMES

    t = Table(title=f"audit: {entry['model']} ({entry['kind']}, profile {entry['profile']})", show_lines=True)
    t.add_column("link", no_wrap=True)
    t.add_column("verdict", no_wrap=True)
    t.add_column("numbers (95% CI)", overflow="fold")
    for link in ("xz", "zy", "encodes", "overall"):
        v = entry["verdicts"][link]
        t.add_row(LINK_NAMES[link], f"[{STYLE.get(v['status'], '')}]{v['verdict']}[/]", v["summary"])
    b = entry.get("bench") or {}
    if b.get("accuracy") is not None:
        from latentcheck.audit.verdicts import fmt_ci

        t.add_row("bench", "[dim]context[/]", f"{b.get('benchmark')} accuracy {fmt_ci(b['accuracy'], b['lo'], b['hi'])}"
                  f", n={b.get('n')}" + (f", chance {b['chance']:.2f}" if b.get("chance") is not None else ""))
    failed = [f"{k}: {s['reason']}" for k, s in (entry.get("stages") or {}).items() if s["status"] == "failed"]
    for f in failed:
        t.add_row("[red]failed stage[/]", "", f)
    return t


def comparison_table(audit: dict[str, Any]) -> Table:
    """The side-by-side table of a multi-model audit (rows: models)."""
    from latentcheck.audit.verdicts import COMPARISON_COLUMNS, comparison_cells

    t = Table(title="latentcheck audit: comparison (95% CIs)", show_lines=True)
    for c in COMPARISON_COLUMNS:
        t.add_column(c, overflow="fold", no_wrap=c == "model")
    for row in audit["comparison"]:
        cells = comparison_cells(row)
        style = STYLE.get(row["overall_status"], "")
        t.add_row(*[cells[c] if c != "verdicts" else f"[{style}]{cells[c]}[/]" for c in COMPARISON_COLUMNS])
    return t


def render_audit(audit: dict[str, Any]) -> None:
    """Print the Rich summary of an audit.json document."""
    if len(audit["models"]) > 1:
        out_console.print(comparison_table(audit))
    for entry in audit["models"]:
        out_console.print(verdict_table(entry))


def parse_models(specs: list[str]) -> dict[str, str]:
    """``--model`` values -> NAME -> model: ``NAME=MODEL`` names it; a bare MODEL (or an existing path containing
    ``=``) is named by itself. A name given twice is an error."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, model = spec.partition("=")
        if not sep or Path(spec).exists():
            name, model = spec, spec
        if not name or not model:
            raise LatentcheckError(f"--model {spec!r}: expected NAME=MODEL or MODEL")
        if name in out:
            raise LatentcheckError(f"--model: the name {name!r} is given twice")
        out[name] = model
    return out


def final_line(res: Any) -> str:
    """``audit: MODEL: overall verdict; ... -> audit.json; report: report.html; N s`` (one model or several)."""
    results = getattr(res, "results", None) or [res]
    verdicts = "; ".join(f"{r.model}: {r.verdicts['overall'].verdict}" for r in results)
    return (f"audit: {verdicts} -> {res.audit_path}" + (f"; report: {res.report_path}" if res.report_path else "")
            + f"; {res.seconds:.0f} s")


@app.command("audit")
def audit_cmd(
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", metavar="[NAME=]MODEL", help="Checkpoint folder, HF id in the local cache, or a toy zoo "
        "name. Repeat for several models side by side (one comparison table and report), each optionally named "
        "NAME=MODEL. Default: the toy zoo side by side.", rich_help_panel=o.P)] = None, profile: o.Profile = None, data: o.Data = None, out: o.Out = "latentcheck-runs/audit",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Samples per stage (default: the first 100 "
                                                 "records in every stage).", rich_help_panel=o.P)] = None,
    batch_size: o.BatchSize = 8, seed: o.Seed = 0, quant: o.Quant = "auto",
    device: o.Device = "auto", quiet: o.Quiet = False, resume: o.Resume = False, strict: o.Strict = False,
    max_pixels: o.MaxPixels = None, trust_remote_code: o.TrustRemoteCode = False,
    max_prompt_tokens: o.MaxPromptTokens = None, retry_errors: o.RetryErrors = False,
    overwrite: o.Overwrite = False,
    greedy: o.Greedy = False, temperature: o.Temperature = None, top_p: o.TopP = None, top_k: o.TopK = None,
    repetition_penalty: o.RepetitionPenalty = None, system: o.System = None,
    max_new_tokens: o.MaxNewTokens = None,
    stage: Annotated[Optional[list[str]], typer.Option(
        "--stage", help="Run only these stages (repeatable or comma-separated): perturb_input, perturb_latent, "
                        "probe, text_doz, bench.", rich_help_panel=A)] = None,
    force_latent: o.ForceLatent = False,
    rules: Annotated[Optional[str], typer.Option(
        "--rules", help="JSON/TOML file overriding verdict thresholds, e.g. {\"zy\": {\"equivalence_margin\": "
                        "0.03}} (defaults: docs/audit.md).", rich_help_panel=A)] = None,
    mlp: Annotated[bool, typer.Option("--mlp", help="Also train MLP probes (slower; default: linear probes only).",
                                      rich_help_panel=A)] = False,
    corrupt_model: o.CorruptModel = None,
    n_boot: o.NBoot = o.N_BOOT,
    threads: o.Threads = None,
    log: o.Log = None,
    no_plots: o.NoPlots = False,
    no_report: o.NoReport = False,
) -> None:
    """Is this model's latent imagination causally real? Runs perturb-input, perturb-latent (+ mediation), probe,
    text do(Z) (text-imagination models) and a short bench; judges X -> Z, Z -> Y and what the latents encode;
    writes a report folder (report.html, audit.json, one subfolder per analysis). Several --model: side by side,
    one subfolder per model. Without --model: the toy zoo (toy-latent, toy-capimagine, toy-mediated, toy-vector,
    toy-binding, toy-bypass) side by side."""
    from latentcheck.audit.audit import ZOO_THREADS, AuditSettings, run_audit, run_zoo_audit
    from latentcheck.audit.verdicts import load_audit, load_rules

    models = parse_models(model or [])
    single = next(iter(models.items())) if len(models) == 1 else None
    opts = o.common(single[1] if single else None, profile, data, out, limit, batch_size, seed, quant, device, quiet, resume, strict,
                    max_pixels, trust_remote_code, max_prompt_tokens=max_prompt_tokens,
                    retry_errors=retry_errors, overwrite=overwrite, log=log,
                    decoding=o.decoding(greedy, temperature, top_p, top_k, repetition_penalty, max_new_tokens),
                    system=system)
    settings = AuditSettings(force_latent=force_latent, n_boot=n_boot, plots=not no_plots, report=not no_report,
                             probe_methods=["linear", "mlp"] if mlp else ["linear"], corrupt_model=corrupt_model,
                             threads=threads if threads is not None or model else ZOO_THREADS)
    chosen = _stage_names(stage)
    if chosen:
        settings.stages = chosen
    verdict_rules = load_rules(rules)
    if single:
        res = run_audit(opts, settings, verdict_rules, name=single[0] if single[0] != single[1] else None)
    else:
        res = run_zoo_audit(opts, settings, verdict_rules, **({"models": models} if models else {}))
    if not quiet:
        render_audit(load_audit(res.out))
    console.print(final_line(res), highlight=False, soft_wrap=True, markup=False)  # also under --quiet
    if res.exit_code:
        raise typer.Exit(res.exit_code)


@app.command("report")
def report_cmd(
    folder: Annotated[str, typer.Argument(help="An audit folder (audit.json) or the folder of any analysis run "
                                                "(summary.json, plots/).")],
    rules: Annotated[Optional[str], typer.Option(
        "--rules", help="Read a stored audit under other verdict rules (TOML/JSON overrides of "
                        "audit/verdicts.toml): prints the verdicts they give; writes nothing.")] = None,
    quiet: o.Quiet = False,
) -> None:
    """Render report.html of an audit or of any analysis folder from its saved results (no model is loaded). With
    --rules: print the verdicts a stored audit gives under those rules, changing nothing on disk."""
    from latentcheck.audit.verdicts import load_audit, load_rules, reread
    from latentcheck.audit.report import render_report

    if rules is not None:
        render_audit(reread(folder, load_rules(rules)))
        return
    root = Path(folder)
    if not (root / "audit.json").is_file() and not (root / "summary.json").is_file():
        from latentcheck.core.errors import LatentcheckError

        raise LatentcheckError(f"{folder}: no audit.json (an audit folder) and no summary.json (an analysis folder)")
    path = render_report(folder)
    if not quiet and (root / "audit.json").is_file():
        render_audit(load_audit(root))
    console.print(f"report: {path}", highlight=False)
