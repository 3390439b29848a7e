"""`latentcheck caption-imagine`: CapImagine end to end — build data, fine-tune, run, and test the text's causal role
(thin commands over latentcheck.imagine)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from latentcheck.cli import options as o
from latentcheck.cli.app import app, console, out_console
from latentcheck.cli.tables import render_result
from latentcheck.core.summaries import fmt_ci, fmt_p, fmt_pct
from latentcheck.core.errors import EXIT_ERROR_RECORDS, LatentcheckError

sub = typer.Typer(name="caption-imagine", no_args_is_help=False,
                  help="CapImagine: text imagination instead of latents (paper s5). Steps: build-data -> train -> "
                       "run -> intervene.")
app.add_typer(sub, name="caption-imagine")

P = "caption-imagine options"
T = "training options"


# ----------------------------------------------------------------------------------------------- build-data
@sub.command("build-data")
def build_data_cmd(
    input: Annotated[Optional[str], typer.Argument(
        help="Interleaved file: Monet-SFT JSON/JSONL or Mirage JSONL (default: the toy world's interleaved file of "
             "--split).")] = None,
    out: Annotated[str, typer.Option("--out", "-o", rich_help_panel=P,
                                     help="Output JSONL (dropped records go to <stem>.dropped.jsonl).")]
    = "latentcheck-runs/capimagine-data/train.jsonl",
    chat_json: Annotated[Optional[str], typer.Option("--chat-json", rich_help_panel=P,
                                                     help="Also write the kept records as Monet-style chat JSON "
                                                          "(image paths relative to its folder).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", rich_help_panel=P,
                                     help="monet-sft | mirage | auto (.jsonl -> mirage).")] = "auto",
    captioner: Annotated[str, typer.Option("--captioner", rich_help_panel=P,
                                           help="model (-m captions each intermediate image; the paper's setting) | "
                                                "metadata (reuse captions stored with the data, else the "
                                                "<observation> text) | auto (metadata for the toy world when no "
                                                "INPUT is given, else model).")] = "auto",
    url: Annotated[Optional[str], typer.Option("--url", rich_help_panel=P,
                                               help="OpenAI-compatible endpoint serving -m (vLLM, SGLang, "
                                                    "transformers serve, hosted); without it -m is a local "
                                                    "checkpoint.")] = None,
    refine_model: Annotated[Optional[str], typer.Option("--refine-model", rich_help_panel=P,
                                                        help="Model that rewrites each chain (local checkpoint, or "
                                                             "served name with --refine-url).")] = None,
    refine_url: Annotated[Optional[str], typer.Option("--refine-url", rich_help_panel=P)] = None,
    judge_model: o.JudgeModel = None, judge_url: o.JudgeUrl = None,
    key_env: o.KeyEnv = "OPENAI_API_KEY",
    concurrency: Annotated[int, typer.Option("--concurrency", rich_help_panel=P,
                                             help="Requests in flight per served model.")] = 8,
    max_retries: Annotated[int, typer.Option("--max-retries", rich_help_panel=P,
                                             help="Retries of a failed request (connection, timeout, 429, 5xx).")]
    = 3,
    cache: o.Cache = None,
    prompts: Annotated[Optional[str], typer.Option("--prompts", rich_help_panel=P,
                                                   help="Folder with caption_zoom/caption_edit/refine/judge .txt "
                                                        "(missing files: the packaged ones).")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", rich_help_panel=P,
                                                help="zoom | edit for every sample (default: per subset).")] = None,
    dataset_root: Annotated[Optional[str], typer.Option("--dataset-root", rich_help_panel=P,
                                                        help="Folder image paths are relative to (default: the "
                                                             "input's folder or the one or two above it).")] = None,
    split: Annotated[str, typer.Option("--split", rich_help_panel=P,
                                       help="Toy world split when no INPUT is given.")] = "train",
    max_new_tokens: o.MaxNewTokens = None,
    model: o.Model = None, profile: o.Profile = None, limit: o.Limit = None, batch_size: o.BatchSize = 8,
    quant: o.Quant = "auto", device: o.Device = "auto", quiet: o.Quiet = False, resume: o.Resume = False,
    retry_errors: o.RetryErrors = False, max_pixels: o.MaxPixels = None, trust_remote_code: o.TrustRemoteCode = False,
) -> None:
    """Convert interleaved "thinking with images" data into text-imagination SFT records (paper s5.2)."""
    from pathlib import Path

    from latentcheck.imagine.generate import BackendSpec, build_data_with_models

    if captioner == "auto":
        captioner = "metadata" if input is None else "model"
    if input is None:
        from latentcheck.toy.zoo import default_data

        input = str(Path(default_data(split)).parent / f"interleaved_{split}.json")
    load_kw = {"profile": profile, "quant": quant, "device": device, "trust_remote_code": trust_remote_code,
               "max_pixels": max_pixels}
    store = o.reply_cache(cache)

    def spec(name: str | None, endpoint: str | None) -> BackendSpec | None:
        if name is None:
            if endpoint:
                raise LatentcheckError(f"--url {endpoint} needs the served model's name")
            return None
        return BackendSpec(name, url=endpoint, key_env=key_env, concurrency=concurrency, max_retries=max_retries,
                           cache=store, load_kw=load_kw, batch_size=batch_size)

    counts = build_data_with_models(input, out, fmt=fmt, captioner=captioner, caption=spec(model, url),
                                    refine=spec(refine_model, refine_url), judge=spec(judge_model, judge_url),
                                    prompts_dir=prompts, resume=resume, limit=limit, kind=kind,
                                    dataset_root=dataset_root, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    chat_json=chat_json, retry_errors=retry_errors)
    if not quiet:
        t = Table(title=f"caption-imagine build-data: {input}")
        for c in ("read", "kept", "dropped", "errors", "skipped (resume)"):
            t.add_column(c, justify="right")
        t.add_row(str(counts["read"]), str(counts["kept"]), str(counts["dropped"]), str(counts["errors"]),
                  str(counts["skipped"]))
        out_console.print(t)
        for reason, n in sorted(counts["dropped_reasons"].items(), key=lambda x: -x[1]):
            console.print(f"  dropped: {n} x {reason}", highlight=False)
        for role, st in counts["calls"].items():
            console.print(f"  {role}: {st.get('calls', 0)} requests, {st.get('cache_hits', 0)} from the cache, "
                          f"{st.get('errors', 0)} failed", highlight=False)
    console.print(f"build-data: {counts['read']} read, {counts['kept']} kept, {counts['dropped']} dropped, "
                  f"{counts['errors']} errors -> {counts['out']}; dropped/errors -> {counts['dropped_out']}"
                  + (f"; chat JSON -> {counts['chat_json']}" if counts.get("chat_json") else ""),
                  highlight=False, soft_wrap=True, markup=False)  # also under --quiet
    if counts["errors"]:
        raise typer.Exit(EXIT_ERROR_RECORDS)


# ----------------------------------------------------------------------------------------------- train
def _opt(name: str, kind, help: str, *flags: str):
    return Annotated[Optional[kind], typer.Option(name, *flags, rich_help_panel=T, help=help)]


@sub.command("train")
def train_cmd(
    data: Annotated[str, typer.Option("--data", "-d", rich_help_panel=T,
                                      help="build-data output of the train split (JSONL).")],
    val: Annotated[Optional[str], typer.Option("--val", rich_help_panel=T,
                                               help="build-data output of the val split: evaluated every "
                                                    "--eval-every steps; the best checkpoint is kept.")] = None,
    method: Annotated[str, typer.Option("--method", rich_help_panel=T,
                                        help="full (LM weights, vision frozen) | lora | qlora (4-bit base).")] = "full",
    preset: Annotated[str, typer.Option("--preset", rich_help_panel=T,
                                        help="Defaults for every option below: 7b (paper/Monet: lr 1e-5, 4 epochs, "
                                             "batch 128 = micro-batch 1 x accumulation, max length 4096, bf16 + "
                                             "gradient checkpointing on GPU) | toy (the zoo's recipe: lr 1e-3, 900 "
                                             "steps, batch 32).")] = "7b",
    epochs: _opt("--epochs", float, "Passes over the data (ignored when --steps is given).") = None,
    steps: _opt("--steps", int, "Optimizer steps (overrides --epochs; the schedule's length).") = None,
    lr: _opt("--lr", float, "Peak learning rate.") = None,
    batch_size: _opt("--batch-size", int, "Global batch (examples per optimizer step) = micro-batch x processes x "
                                          "gradient accumulation.", "-b") = None,
    micro_batch: _opt("--micro-batch", int, "Examples per forward pass on each process.") = None,
    warmup: _opt("--warmup", float, "Warm-up: steps (>= 1) or a fraction of the run (< 1).") = None,
    scheduler: _opt("--scheduler", str, "cosine | cosine_with_min_lr | linear | constant_with_warmup.") = None,
    weight_decay: _opt("--weight-decay", float, "AdamW weight decay.") = None,
    grad_clip: _opt("--grad-clip", float, "Gradient-norm clip.") = None,
    max_length: _opt("--max-length", int, "Tokens per example (image tokens included); responses are cut to "
                                           "fit, prompts that do not fit are error records.") = None,
    precision: _opt("--precision", str, "auto (bf16 on GPU, fp32 on CPU) | bf16 (autocast, fp32 master weights) | "
                                         "fp16 | fp32.") = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing", rich_help_panel=T,
        help="Recompute activations in the backward pass (default: on GPU).")] = None,
    eval_every: _opt("--eval-every", int, "Evaluate on --val every N steps (0: at every checkpoint).") = None,
    save_every: _opt("--save-every", int, "Checkpoint every N steps (0: no checkpoints).") = None,
    keep_checkpoints: _opt("--keep-checkpoints", int, "Newest checkpoints kept (plus the best).") = None,
    best_metric: _opt("--best-metric", str, "accuracy (generated answers on --val) | loss (val token loss; "
                                             "use with ZeRO-3 / FSDP).") = None,
    report_to: _opt("--report-to", str, "none | tensorboard (out/logs) | wandb.") = None,
    target_score: _opt("--target-score", float, "Stop early once the val accuracy reaches this (e.g. 0.97).") = None,
    stop_after: _opt("--stop-after", int, "Stop once N steps are done (checkpoint written; continue later with "
                                          "--resume).") = None,
    lora_r: Annotated[int, typer.Option("--lora-r", rich_help_panel=T)] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", rich_help_panel=T)] = 32,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout", rich_help_panel=T)] = 0.0,
    val_limit: _opt("--val-limit", int, "Use only the first N val records.") = None,
    no_merge: Annotated[bool, typer.Option("--no-merge", rich_help_panel=T,
                                           help="lora/qlora: save only the adapter, no merged model.")] = False,
    model: o.Model = None, profile: o.Profile = None, out: o.Out = "latentcheck-runs/capimagine-train",
    limit: o.Limit = None, seed: o.Seed = 0, device: o.Device = "auto", quiet: o.Quiet = False,
    resume: o.Resume = False, max_pixels: o.MaxPixels = None, trust_remote_code: o.TrustRemoteCode = False,
) -> None:
    """Fine-tune a Qwen2.5-VL-class model on text-imagination data (paper s5.3) with the Hugging Face Trainer.
    Several GPUs: `accelerate launch [--config_file $(latentcheck caption-imagine accelerate-config zero2)] -m
    latentcheck caption-imagine train ...`. Writes out/model (loadable, with a model card), out/adapter (lora/qlora),
    out/checkpoints (resumable) and out/train_log.json."""
    from dataclasses import replace

    from latentcheck.core.progress import progress_bar
    from latentcheck.imagine.train import LoraSettings
    from latentcheck.imagine.trainer import run_train
    from latentcheck.imagine.trainer import preset as make_preset

    settings = make_preset(preset)
    given = {"epochs": epochs, "max_steps": steps, "lr": lr, "batch_size": batch_size, "micro_batch": micro_batch,
             "scheduler": scheduler, "weight_decay": weight_decay, "grad_clip": grad_clip, "max_length": max_length,
             "precision": precision, "gradient_checkpointing": gradient_checkpointing, "eval_every": eval_every,
             "save_every": save_every, "keep_checkpoints": keep_checkpoints, "best_metric": best_metric,
             "report_to": report_to, "target_score": target_score}
    settings = replace(settings, seed=seed, **{k: v for k, v in given.items() if v is not None})
    if batch_size is not None and micro_batch is None:
        settings = replace(settings, micro_batch=min(settings.micro_batch, settings.batch_size))
    if warmup is not None:
        if warmup < 0:
            raise LatentcheckError("--warmup must be >= 0")
        settings = replace(settings, warmup_steps=int(warmup) if warmup >= 1 else 0,
                           warmup_ratio=warmup if warmup < 1 else 0.0)
    if steps is not None and steps < 1:
        raise LatentcheckError("--steps must be >= 1")
    lora = LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout)
    with progress_bar(stop_after or (settings.max_steps if settings.max_steps > 0 else None),
                      f"caption-imagine train ({method})", quiet=quiet) as bar:
        def on_step(step: int, stats: dict) -> None:
            bar.set_description(f"caption-imagine train ({method}) loss {stats['loss']:.3f}")
            bar.advance(1)

        log = run_train(data, out, model=model or "toy-direct", profile=profile, method=method, val=val,
                        settings=settings, lora=lora, resume=resume, stop_after=stop_after, limit=limit,
                        val_limit=val_limit, device=device, max_pixels=max_pixels,
                        trust_remote_code=trust_remote_code, merge=not no_merge, on_step=on_step)
    if not quiet:
        t = Table(title=f"caption-imagine train: {method}, {log['n_examples']} examples ({log['precision']})")
        for c in ("steps done", "resumed from", "first loss", "last loss", "best val", "best step",
                  "trainable params"):
            t.add_column(c, justify="right")
        losses = log["losses"]
        best = log.get("best_score")
        t.add_row(str(log["steps_done"]), str(log["resumed_from"] if log["resumed_from"] is not None else "-"),
                  f"{losses[0]:.3f}" if losses else "-", f"{losses[-1]:.3f}" if losses else "-",
                  "-" if best is None else (f"{fmt_pct(best)}%" if log.get("best_metric") == "accuracy"
                                            else f"loss {best:.4f}"),
                  str(log.get("best_step") or "-"), f"{log['trainable_params']:,} / {log['total_params']:,}")
        out_console.print(t)
        if log.get("reached_target_at"):
            console.print(f"reached the target val accuracy at step {log['reached_target_at']}", highlight=False)
        if log["stopped_early"]:
            console.print(f"stopped after {log['steps_done']} steps; continue with --resume", highlight=False)
        for e in log["errors"][:5]:
            console.print(f"skipped: record {e['record']}: field '{e['field']}': {e['message']}", highlight=False)
        for k, v in (log.get("exported") or {}).items():
            console.print(f"{k}: {v}", highlight=False)
    losses = log["losses"]
    console.print(f"train: {log['steps_done']} steps, loss {f'{losses[-1]:.3f}' if losses else '-'}, "
                  f"{len(log['errors'])} skipped records -> {out}", highlight=False, soft_wrap=True,
                  markup=False)  # also under --quiet
    if log["errors"]:
        raise typer.Exit(EXIT_ERROR_RECORDS)


@sub.command("accelerate-config")
def accelerate_config_cmd(
    name: Annotated[str, typer.Argument(help="zero2 | zero3 | fsdp")],
) -> None:
    """Print the path of a shipped `accelerate launch --config_file` file (DeepSpeed ZeRO-2 / ZeRO-3, FSDP) for
    `caption-imagine train`; copy it to change the number of processes or offloading."""
    from latentcheck.imagine.trainer import accelerate_config_path

    out_console.print(str(accelerate_config_path(name)), highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------- run
@sub.command("run")
def run_cmd(
    model: o.Model = None, profile: o.Profile = None, data: o.Data = None,
    out: o.Out = "latentcheck-runs/capimagine-run", limit: o.Limit = None, batch_size: o.BatchSize = 8,
    seed: o.Seed = 0, quant: o.Quant = "auto", device: o.Device = "auto", quiet: o.Quiet = False,
    resume: o.Resume = False, strict: o.Strict = False, max_pixels: o.MaxPixels = None,
    trust_remote_code: o.TrustRemoteCode = False,
    max_prompt_tokens: o.MaxPromptTokens = None, retry_errors: o.RetryErrors = False,
    overwrite: o.Overwrite = False,
    greedy: o.Greedy = False, temperature: o.Temperature = None, top_p: o.TopP = None, top_k: o.TopK = None,
    repetition_penalty: o.RepetitionPenalty = None, system: o.System = None,
    max_new_tokens: o.MaxNewTokens = None,
    threads: o.Threads = None,
    log: o.Log = None,
) -> None:
    """Answer with explicit text imagination (default model: toy-capimagine); accuracy with a Wilson CI."""
    from latentcheck.imagine.run import run_caption_imagine

    opts = o.common(model, profile, data, out, limit, batch_size, seed, quant, device, quiet, resume, strict,
                    max_pixels, trust_remote_code, max_prompt_tokens=max_prompt_tokens,
                    retry_errors=retry_errors, overwrite=overwrite, log=log,
                    decoding=o.decoding(greedy, temperature, top_p, top_k, repetition_penalty, max_new_tokens),
                    system=system, threads=threads)
    s = run_caption_imagine(opts)
    if s.is_main and not quiet:
        t = Table(title=f"caption-imagine run: {s['model'].get('id')} (profile {s['model'].get('profile')})")
        for c in ("subset", "accuracy % [95% CI]", "option argmax % [95% CI]"):
            t.add_column(c, justify="left" if c == "subset" else "right")
        t.add_row("all", fmt_ci(s["accuracy"], digits=1, pct=True, n=True),
                  fmt_ci(s.get("option_accuracy"), digits=1, pct=True, n=True))
        for cat, a in s["by_category"].items():
            t.add_row(cat, fmt_ci(a, digits=1, pct=True, n=True), "")
        out_console.print(t)
        console.print(f"imagination rate {fmt_pct(s['imagination_rate'])}%, mean span "
                      f"{s['mean_imagination_tokens'] or 0:.1f} tokens", highlight=False)
    render_result(s, console)


# ----------------------------------------------------------------------------------------------- intervene
@sub.command("intervene")
def intervene_cmd(
    corrupter: Annotated[str, typer.Option("--corrupter", rich_help_panel=P,
                                           help="rule (toy colour/shape word swap) | model (--corrupt-model "
                                                "rewrites) | auto (model if --corrupt-model else rule).")] = "auto",
    corrupt_model: o.CorruptModel = None,
    corrupt_prompt: Annotated[Optional[str], typer.Option("--corrupt-prompt", rich_help_panel=P,
                                                          help="Prompt file (default imagine/prompts/corrupt.txt; "
                                                               "{question} {options} {imagination} {answer}).")]
    = None,
    corrupt_url: Annotated[Optional[str], typer.Option("--corrupt-url", rich_help_panel=P,
                                                       help="OpenAI-compatible endpoint serving --corrupt-model (e.g. "
                                                            "vLLM with Qwen3-32B).")] = None,
    span_rule: Annotated[str, typer.Option("--span-rule", rich_help_panel=P,
                                           help="How the imagination is found: markers (the profile's) | prose "
                                                "(marker-free: everything before the final-answer sentence / boxed "
                                                "answer) | judge (--span-model copies it out) | auto (markers if "
                                                "present, else prose).")] = "auto",
    span_model: Annotated[Optional[str], typer.Option("--span-model", rich_help_panel=P,
                                                      help="Span judge for --span-rule judge (local checkpoint, or "
                                                           "served name with --span-url).")] = None,
    span_url: Annotated[Optional[str], typer.Option("--span-url", rich_help_panel=P)] = None,
    key_env: o.KeyEnv = "OPENAI_API_KEY",
    cache: o.Cache = None,
    span_tokens: Annotated[int, typer.Option("--span-tokens", rich_help_panel=P,
                                             help="Imagination tokens per instance in the similarity "
                                                  "analysis.")] = 8,
    no_plots: o.NoPlots = False,
    model: o.Model = None, profile: o.Profile = None, data: o.Data = None,
    out: o.Out = "latentcheck-runs/capimagine-intervene", limit: o.Limit = None, batch_size: o.BatchSize = 8,
    seed: o.Seed = 0, quant: o.Quant = "auto", device: o.Device = "auto", quiet: o.Quiet = False,
    resume: o.Resume = False, strict: o.Strict = False, max_pixels: o.MaxPixels = None,
    trust_remote_code: o.TrustRemoteCode = False,
    max_prompt_tokens: o.MaxPromptTokens = None, retry_errors: o.RetryErrors = False,
    overwrite: o.Overwrite = False,
    greedy: o.Greedy = False, temperature: o.Temperature = None, top_p: o.TopP = None, top_k: o.TopK = None,
    repetition_penalty: o.RepetitionPenalty = None, system: o.System = None,
    max_new_tokens: o.MaxNewTokens = None,
    threads: o.Threads = None,
    log: o.Log = None,
) -> None:
    """Text do(Z): corrupt the generated imagination, let the model finish, measure the accuracy drop (paired
    bootstrap CI, McNemar); plus the imagination's hidden-state similarity (paper Table 3, Fig. 4)."""
    from latentcheck.imagine.intervene import run_intervene

    opts = o.common(model, profile, data, out, limit, batch_size, seed, quant, device, quiet, resume, strict,
                    max_pixels, trust_remote_code, max_prompt_tokens=max_prompt_tokens,
                    retry_errors=retry_errors, overwrite=overwrite, log=log,
                    decoding=o.decoding(greedy, temperature, top_p, top_k, repetition_penalty, max_new_tokens),
                    system=system, threads=threads)
    store = o.reply_cache(cache)
    s = run_intervene(opts, corrupter=corrupter, corrupt_model=corrupt_model, corrupt_prompt=corrupt_prompt,
                      span_tokens=span_tokens, plots=not no_plots, span_rule=span_rule, span_model=span_model,
                      corrupt_url=corrupt_url, span_url=span_url, backend_kw={"key_env": key_env, "cache": store})
    if s.is_main and not quiet:
        t = Table(title=f"caption-imagine intervene: {s['model'].get('id')} ({s['corrupter']}), "
                        f"{s['n_intervened']}/{s['n_samples']} intervened")
        for c in ("outcome", "clean %", "do(Z) %", "delta pts [95% CI]", "McNemar p", "flips"):
            t.add_column(c, justify="left" if c == "outcome" else "right")
        for name, e in (("generated answer", s["effect"]), ("option argmax", s["option_effect"])):
            if e:
                t.add_row(name, fmt_pct(e["base"]["estimate"]), fmt_pct(e["cond"]["estimate"]),
                          fmt_ci(e["delta"], digits=1, signed=True, pct=True), fmt_p(e["delta"]["p_value"]),
                          str(e["flips"]))
            if name == "generated answer" and len(s.get("per_category") or {}) > 1:
                for cat, c in s["per_category"].items():  # typed AccuracyEffect; p Holm-adjusted across categories
                    t.add_row(f"  {cat} (n={c['n']})", fmt_pct(c["base"]["estimate"]), fmt_pct(c["cond"]["estimate"]),
                              fmt_ci(c["delta"], digits=1, signed=True, pct=True),
                              f"{fmt_p(c['delta']['p_value'])} (Holm {fmt_p(c['delta']['p_holm'])})", str(c["flips"]))
        out_console.print(t)
        if s.get("follows_corruption"):
            f = s["follows_corruption"]
            console.print(f"answer follows the corrupted imagination: "
                          f"{fmt_ci(f, digits=1, pct=True)} (n={f['n']}, %)", highlight=False)
        sim = s["similarity"]
        if sim.get("inter_raw"):
            console.print(f"imagination hidden states (first {sim['span_tokens']} tokens, n={sim['n']}): inter-instance "
                          f"cos raw {sim['inter_raw_mean']:.3f} / centred {sim['inter_centred_mean']:.3f}; intra "
                          f"all-pairs {sim['intra_all_pairs']:.3f}; effective rank {sim['effective_rank']:.1f}",
                          highlight=False)
        if s.get("span_rules"):
            console.print("imagination span found by: " + "; ".join(f"{n} x {r}" for r, n in s["span_rules"].items()),
                          highlight=False)
        if s["skip_reasons"]:
            console.print("not intervened: " + "; ".join(f"{n} x {r}" for r, n in s["skip_reasons"].items()),
                          highlight=False)
    render_result(s, console)
