"""`latentcheck reproduce STUDY`: run a study (the paper's, the zoo's, or a user's .toml) and print its tables with
the paper's numbers beside this run's."""

from __future__ import annotations

import textwrap
from typing import Annotated, Optional

import typer
from rich.table import Table

from latentcheck.cli import options as o
from latentcheck.cli.app import app, console, out_console

R = "Study options"
KEY_WIDTH = 28  # the cell label is wrapped between words so a table fits 80 columns (numbers are never split)


def table_renderable(t) -> Table:
    """One study table in long form (one line per cell: row / column, paper, this run [CI], difference), which
    stays readable at 80 columns and in logs whatever the number of columns."""
    from latentcheck.reproduce.tables import fmt_difference, fmt_ours, fmt_paper

    tab = Table(title=t.title + (" (%, differences in points)" if t.unit == "percent" else ""))
    tab.add_column("cell", overflow="fold")
    tab.add_column("paper", justify="right", no_wrap=True)
    tab.add_column("this run [95% CI]", justify="right", no_wrap=True)
    tab.add_column("diff", justify="right", no_wrap=True)
    for label, cells in t.rows:
        for col, c in zip(t.columns, cells):
            d = fmt_difference(c, t.unit)
            key = textwrap.fill(label if len(t.columns) == 1 else f"{label} / {col}", KEY_WIDTH)
            tab.add_row(key, fmt_paper(c, t.unit), fmt_ours(c, t.unit), f"[bold red]{d}[/]" if d.endswith("*") else d)
    return tab


def render_tables(res) -> None:
    for t in res.tables:
        out_console.print(table_renderable(t))
        reasons = [f"  {label} / {col}: {c.reason}" for label, cells in t.rows for col, c in zip(t.columns, cells)
                   if c.reason]
        if reasons:
            out_console.print("cells without a number:\n" + "\n".join(reasons), highlight=False, soft_wrap=True)
    out_console.print("~ approximate paper value (from a figure); * this run's CI excludes the paper's value",
                      highlight=False)


@app.command("reproduce")
def reproduce_cmd(
    study: Annotated[str, typer.Argument(help="A packaged study (paper-2602.22766, zoo) or a study .toml file.")],
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", metavar="ROLE=PATH", help="Bind a model role of the study to a checkpoint (repeatable), "
        "e.g. monet=/ckpt/Monet-7B.", rich_help_panel=R)] = None,
    data: Annotated[Optional[list[str]], typer.Option(
        "--data", "-d", metavar="ROLE=PATH", help="Bind a data role to a file (repeatable), e.g. "
        "vstar=/data/vstar_bench/test_questions.jsonl.", rich_help_panel=R)] = None,
    profile: Annotated[Optional[list[str]], typer.Option(
        "--profile", metavar="ROLE=NAME", help="Override a model role's profile (repeatable).",
        rich_help_panel=R)] = None,
    step: Annotated[Optional[list[str]], typer.Option(
        "--step", metavar="ID", help="Run only these steps (repeatable); the tables read every step in the folder.",
        rich_help_panel=R)] = None,
    out: o.Out = "latentcheck-runs/reproduce",
    limit: Annotated[Optional[int], typer.Option("--limit", help="Cap every step at N samples (a smoke run; the "
                                                  "study's own sizes otherwise).", rich_help_panel=o.P)] = None,
    batch_size: o.BatchSize = 8,
    seed: o.Seed = 0,
    quant: o.Quant = "auto",
    device: o.Device = "auto",
    quiet: o.Quiet = False,
    resume: o.Resume = False,
    strict: o.Strict = False,
    n_boot: o.NBoot = o.N_BOOT,
    no_plots: o.NoPlots = False,
    no_report: o.NoReport = False,
    judge_model: o.JudgeModel = None, judge_url: o.JudgeUrl = None, judge_key_env: o.JudgeKeyEnv = None,
    judge_protocol: o.JudgeProtocol = None, judge_cache: o.JudgeCache = None,
    judge_concurrency: o.JudgeConcurrency = None, judge_profile: o.JudgeProfile = None,
    list_steps: Annotated[bool, typer.Option("--list", help="Print the study's roles and steps and exit.",
                                             rich_help_panel=R)] = False,
) -> None:
    """Run a study's steps on your checkpoints (resumable, one model load per model role) and print each of its
    tables with three columns per cell: the paper's value, this run's (95% CI) and the difference. Cells whose model
    or data is not bound are skipped with the reason. Writes reproduce.json, tables.md and report.html.
    Data-parallel with `--num-processes N` (each process loads each model once and runs a share of every step).
    The LLM judge options (as `latentcheck bench`'s) override those of every bench step that generates."""
    from latentcheck.reproduce.run import run_study
    from latentcheck.reproduce.study import load_study

    s = load_study(study)
    if list_steps:
        t = Table(title=f"study {s.name}: {len(s.steps)} steps")
        for col in ("step", "analysis", "model role", "data role", "limit"):
            t.add_column(col)
        for st in s.steps:
            t.add_row(st.id, st.analysis, st.model, st.data, str(st.limit or "all"))
        out_console.print(t)
        roles = [f"model {r}: {m.stands_for or r}" + (f" (default {m.default})" if m.default else "")
                 for r, m in s.models.items()]
        roles += [f"data {r}: {d.benchmark or 'task file'}" + (f" (default {d.default})" if d.default else "")
                  for r, d in s.data.items()]
        out_console.print("\n".join(roles), highlight=False)
        return
    opts = o.common(None, None, None, out, limit, batch_size, seed, quant, device, quiet, resume, strict, None,
                    False)
    say = None if quiet else (lambda msg: console.print(msg, highlight=False))
    judge = {"judge_model": judge_model, "judge_url": judge_url, "judge_key_env": judge_key_env,
             "judge_protocol": judge_protocol, "judge_cache": judge_cache, "judge_concurrency": judge_concurrency,
             "judge_profile": judge_profile}
    res = run_study(s, opts, models=model, data=data, profiles=profile, only=step, n_boot=n_boot,
                    plots=not no_plots, report=not no_report, progress=say, judge=judge)
    if not res.is_main:  # a data-parallel worker: rank 0 prints
        raise typer.Exit(res.exit_code)
    render_tables(res)
    if not quiet:
        counts = {k: sum(st.status == k for st in res.steps.values()) for k in ("done", "skipped", "failed")}
        console.print(f"steps: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
                      f"tables: {res.tables_path}" + (f"; report: {res.report_path}" if res.report_path else "")
                      + f"; time: {res.seconds:.0f} s", highlight=False)
    if res.exit_code:
        raise typer.Exit(res.exit_code)
