"""`latentcheck bench`: vision-centric benchmarks with official scoring, under interventions, with latency; and
`latentcheck bench compare A B` (thin commands)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from latentcheck.cli import options as o
from latentcheck.cli.app import app, console, out_console
from latentcheck.cli.tables import render_result
from latentcheck.core.errors import EXIT_ERROR_RECORDS
from latentcheck.core.summaries import fmt_ci, fmt_num, fmt_p, fmt_pct

P = "bench options"
bench_app = typer.Typer(help="Run a benchmark (V*, HR-Bench, MME-RealWorld, BLINK, VSP, TableVQA, generic) with its "
                             "official protocol, optionally under latent interventions; `bench compare` pairs two "
                             "runs.",
                        no_args_is_help=False)
app.add_typer(bench_app, name="bench")


def _render(r: dict) -> None:
    v = r["variant"]
    title = (f"bench {r['benchmark']} ({v['name']}, {r['scoring']}"
             + (f", extractor {r['extractor']}" if r.get("extractor") else "") + f") - {r['model'].get('id')} "
             f"(profile {r['model'].get('profile')}), max_pixels {r['processor'].get('max_pixels')}")
    t = Table(title=title)
    for c in ("condition", "category", "n", "accuracy % [95% CI]", "delta vs base [CI]", "McNemar p", "s/sample",
              "tokens", "latent steps", "judged"):
        t.add_column(c, justify="left" if c in ("condition", "category") else "right")
    for name, c in r["conditions"].items():
        lat = c["latency"]
        eff = c.get("effect")
        delta = "-" if not eff else fmt_ci(eff["delta"], digits=1, signed=True, pct=True)
        t.add_row(name, "all", str(c["accuracy"]["n"]), fmt_ci(c["accuracy"], digits=1, pct=True), delta,
                  "-" if not eff else fmt_p(eff["delta"]["p_value"]), fmt_num(lat["overall"]["timing"]["row_s"]),
                  fmt_num(lat["overall"]["tokens"], 1), fmt_num(lat["overall"]["latent_steps"], 1),
                  str(lat["overall"]["judge_used"]))
        if len(c["per_category"]) > 1:
            for cat, a in c["per_category"].items():
                lc = lat["per_category"][cat]
                t.add_row("", cat, str(a["n"]), fmt_ci(a, digits=1, pct=True), "", "", fmt_num(lc["timing"]["row_s"]),
                          fmt_num(lc["tokens"], 1),
                          fmt_num(lc["latent_steps"], 1), str(lc["judge_used"]))
    out_console.print(t)
    scores = r.get("scores") or {}  # a Score record: the official number with its interval (core/summaries.py)
    official = scores.get("official") or {}
    if scores.get("estimate") is not None:
        console.print(f"official score ({r['benchmark']}): {fmt_ci(scores, digits=1, pct=True)}"
                      + (f"; chance {fmt_pct(r['chance']['these_samples'])}" if r["chance"].get("these_samples")
                         else "")
                      + (f"; paper overall {fmt_pct(official['paper_overall'])}"
                         if official.get("paper_overall") is not None
                         else ""), highlight=False)
    if r.get("judge"):
        j = r["conditions"]["baseline"]["judge"]
        rule = r.get("scores_rule") or {}
        console.print(f"judge {r['judge']['protocol']} ({r['judge']['backend'].get('model')}): asked {j['asked']} "
                      f"({j['cached']} from cache, {j['errors']} errors); rule-based score "
                      f"{fmt_ci(rule, digits=1, pct=True)}", highlight=False)
    off = r.get("official") or {}
    if off and not off.get("comparable"):
        console.print("not the official number: " + "; ".join(off.get("reasons", [])), highlight=False)
    errs = (r.get("errors") or {}).get("counted_wrong") or []
    if errs:
        console.print(f"{len(errs)} sample(s) could not be run and count as wrong: {', '.join(map(str, errs[:10]))}",
                      highlight=False)


def _list_benchmarks() -> None:
    from latentcheck.bench import BENCHMARKS

    t = Table(title="benchmarks (--benchmark) and prompt variants (--variant)")
    for c in ("benchmark", "variant", "mode", "extractor", "judge", "source"):
        t.add_column(c)
    for b in BENCHMARKS.values():
        for i, v in enumerate(b.variants.values()):
            judge = "-" if not v.judge else v.judge + (" (official: required)" if v.judge_required else "")
            t.add_row(b.name if i == 0 else "", v.name, v.mode, v.extractor or "-", judge, v.source)
        if b.default_variant == "profile":
            t.add_row("", "profile", "generate", "(profile's)", "-", "the model profile's own prompt (default for "
                      "generic)")
    out_console.print(t)


@bench_app.callback(invoke_without_command=True)
def bench_cmd(
    ctx: typer.Context,
    benchmark: o.Benchmark = None,
    variant: Annotated[Optional[str], typer.Option(
        "--variant", rich_help_panel=P, help="Prompt protocol: official | lmms-eval | vlmevalkit | monet | "
                                             "likelihood | profile ... (see --list; default official, generic: "
                                             "profile).")] = None,
    scoring: Annotated[Optional[str], typer.Option(
        "--scoring", rich_help_panel=P, help="generate | likelihood (default: the variant's mode).")] = None,
    intervention: Annotated[Optional[list[str]], typer.Option(
        "--intervention", "-i", rich_help_panel=P,
        help="Vector latent intervention, repeatable (e.g. identity, zero, noise:sigma=0.5@0,1, shared:source=mean); "
             "run next to the baseline from one shared prefill.")] = None,
    judge_model: o.JudgeModel = None, judge_url: o.JudgeUrl = None, judge_key_env: o.JudgeKeyEnv = None,
    judge_protocol: o.JudgeProtocol = None, judge_cache: o.JudgeCache = None,
    judge_concurrency: o.JudgeConcurrency = None, judge_profile: o.JudgeProfile = None,
    image_root: o.ImageRoot = None,
    max_new_tokens: o.MaxNewTokens = None,
    force_latent: o.ForceLatent = False,
    no_verify: o.NoVerify = False,
    n_boot: o.NBoot = o.N_BOOT,
    list_: Annotated[bool, typer.Option("--list", rich_help_panel=P, help="List benchmarks and variants.")] = False,
    model: o.Model = None, profile: o.Profile = None, data: o.Data = None, out: o.Out = "latentcheck-runs/bench",
    limit: o.Limit = None, batch_size: o.BatchSize = 8, seed: o.Seed = 0, quant: o.Quant = "auto",
    device: o.Device = "auto", quiet: o.Quiet = False, resume: o.Resume = False, strict: o.Strict = False,
    max_pixels: o.MaxPixels = None, trust_remote_code: o.TrustRemoteCode = False,
    max_prompt_tokens: o.MaxPromptTokens = None, retry_errors: o.RetryErrors = False,
    overwrite: o.Overwrite = False,
    greedy: o.Greedy = False, temperature: o.Temperature = None, top_p: o.TopP = None, top_k: o.TopK = None,
    repetition_penalty: o.RepetitionPenalty = None, system: o.System = None,
    threads: o.Threads = None,
    log: o.Log = None,
) -> None:
    """Run a benchmark with its official scoring (generation + rule extraction, or V* likelihood ranking), under
    optional latent interventions, with latency per category. Writes samples.jsonl, summary.json and results.json
    (lmms-eval's shape) to --out."""
    if ctx.invoked_subcommand is not None:
        return
    if list_:
        _list_benchmarks()
        return
    from latentcheck.bench.runner import run_bench
    from latentcheck.core.backends import DEFAULT_KEY_ENV

    decoding = o.decoding(greedy, temperature, top_p, top_k, repetition_penalty, max_new_tokens)
    opts = o.common(model, profile, data, out, limit, batch_size, seed, quant, device, quiet, resume, strict,
                    max_pixels, trust_remote_code, decoding=decoding, system=system, threads=threads,
                    max_prompt_tokens=max_prompt_tokens, retry_errors=retry_errors, overwrite=overwrite, log=log)
    result = run_bench(opts, benchmark, variant, scoring, intervention, judge=judge_model,
                       decoding=decoding, verify=not no_verify,
                       judge_profile=judge_profile, force_latent=force_latent, n_boot=n_boot,
                       judge_protocol=judge_protocol, judge_url=judge_url,
                       judge_key_env=judge_key_env or DEFAULT_KEY_ENV, judge_cache=o.reply_cache(judge_cache),
                       judge_concurrency=judge_concurrency or 4, image_root=image_root)
    if result.is_main and not quiet:
        _render(result)
    render_result(result, console)


@bench_app.command("export-tasks")
def export_tasks_cmd(
    benchmark: Annotated[str, typer.Option("--benchmark", help="Benchmark name (as for `bench`, e.g. vstar, "
                                                               "hrbench4k, blink:Jigsaw).")],
    data: Annotated[str, typer.Option("--data", help="The benchmark's distributed file or folder.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Task JSONL to write (images go to <stem>-images/ "
                                                         "beside it).")],
    limit: o.Limit = None,
    no_verify: o.NoVerify = False,
    image_root: o.ImageRoot = None,
    quiet: o.Quiet = False,
) -> None:
    """Write any benchmark as latentcheck task JSONL (gold letter, category, bbox, scoring fields and the official
    prompt in meta), so perturb-input / perturb-latent / probe / audit run on it directly. Exit 1 when some
    records could not be read (listed)."""
    from latentcheck.bench.export import export_tasks

    r = export_tasks(benchmark, data, out, limit=limit, verify=not no_verify, image_root=image_root)
    if not quiet:
        console.print(f"wrote {r['written']} tasks to {r['path']}"
                      + (f" (images in {r['images_dir']})" if r["images_dir"] else ""), highlight=False)
        for e in r["errors"]:
            console.print(f"skipped {e['record']}: {e['field']}: {e['message']}", highlight=False)
    if r["errors"]:
        raise typer.Exit(EXIT_ERROR_RECORDS)


@bench_app.command("compare")
def compare_cmd(
    a: Annotated[str, typer.Argument(help="Reference run: a run folder or samples.jsonl.")],
    b: Annotated[str, typer.Argument(help="Compared run: a run folder or samples.jsonl.")],
    condition_a: Annotated[str, typer.Option("--condition-a", help="Condition of A (baseline or an intervention "
                                                                   "label).")] = "baseline",
    condition_b: Annotated[str, typer.Option("--condition-b", help="Condition of B.")] = "baseline",
    n_boot: o.NBoot = o.N_BOOT,
    seed: o.Seed = 0,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Also write the comparison to this file.")] = None,
    quiet: o.Quiet = False,
) -> None:
    """Paired per-sample comparison (matched by id): accuracy of each, delta with paired bootstrap CI, exact McNemar
    (n01 = A wrong & B right, n10 = A right & B wrong), overall and per category."""
    from latentcheck.bench.compare import compare_runs
    from latentcheck.core.records import write_json_atomic

    r = compare_runs(a, b, condition_a, condition_b, seed=seed, n_boot=n_boot)
    if json_out:
        write_json_atomic(json_out, r)
    if quiet:
        return
    t = Table(title=f"bench compare: B = {b} [{condition_b}] vs A = {a} [{condition_a}] ({r['n_paired']} paired)")
    for c in ("category", "n", "acc A %", "acc B %", "delta B-A [95% CI]", "n01 (A wrong, B right)",
              "n10 (A right, B wrong)", "McNemar p"):
        t.add_column(c, justify="left" if c == "category" else "right")
    rows = [("all", r["overall"])] + (list(r["per_category"].items()) if len(r["per_category"]) > 1 else [])
    for name, e in rows:
        t.add_row(name, str(e["n"]), fmt_pct(e["base"]["estimate"]), fmt_pct(e["cond"]["estimate"]),
                  fmt_ci(e["delta"], digits=1, signed=True, pct=True), str(e["n01"]), str(e["n10"]),
                  fmt_p(e["delta"]["p_value"]))
    out_console.print(t)
    if r["only_a"] or r["only_b"]:
        console.print(f"unpaired: {len(r['only_a'])} only in A, {len(r['only_b'])} only in B (left out)",
                      highlight=False)
    if not json_out:
        console.print("(--json FILE writes the full comparison incl. the discordant ids)", highlight=False)
