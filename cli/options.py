"""Option definitions shared by every analysis command (defined once, reused everywhere)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from latentcheck.core.runner import CommonOptions

P = "Common options"
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Checkpoint folder, HF id in the local cache, "
                                                "or a toy zoo name (default: a toy zoo model).", rich_help_panel=P)]
Profile = Annotated[Optional[str], typer.Option("--profile", help="Profile name or .toml file (default: "
                                                  "auto-detect).", rich_help_panel=P)]
Data = Annotated[Optional[str], typer.Option("--data", "-d", help="Task JSONL file ('-' = stdin; default: the toy "
                                               "world's test split).", rich_help_panel=P)]
Out = Annotated[str, typer.Option("--out", "-o", metavar="DIR|-", help="Output folder (samples.jsonl, "
                                  "summary.json, plots). Default: a new folder DEFAULT/<UTC timestamp> per run "
                                  "(--resume: the newest). '-' streams the per-sample JSONL to stdout (tables go to "
                                  "stderr; nothing is kept).", rich_help_panel=P)]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N records.", rich_help_panel=P)]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", help="Samples per engine batch.", rich_help_panel=P)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (noise, sampling, bootstrap).", rich_help_panel=P)]
Quant = Annotated[str, typer.Option("--quant", help="auto | none | 4bit | 8bit (bitsandbytes).", rich_help_panel=P)]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.", rich_help_panel=P)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.", rich_help_panel=P)]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in the same --out folder.",
                                      rich_help_panel=P)]
Strict = Annotated[bool, typer.Option("--strict", help="Stop at the first bad record instead of recording an error.",
                                      rich_help_panel=P)]
MaxPixels = Annotated[Optional[int], typer.Option("--max-pixels", help="Image pixel budget (processor max_pixels).",
                                                  rich_help_panel=P)]
MaxNewTokens = Annotated[Optional[int], typer.Option("--max-new-tokens", help="Generation budget of the model's "
                                                     "passes (default: the profile's).", rich_help_panel=P)]
D = "Decoding (every analysis command; default: the profile's)"
Greedy = Annotated[bool, typer.Option("--greedy", help="Greedy decoding, whatever the profile samples.",
                                      rich_help_panel=D)]
Temperature = Annotated[Optional[float], typer.Option("--temperature", help="Sample at this temperature (0 = "
                                                      "greedy).", rich_help_panel=D)]
TopP = Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling mass (transformers' TopP).",
                                               rich_help_panel=D)]
TopK = Annotated[Optional[int], typer.Option("--top-k", help="Top-k sampling (0 = off).", rich_help_panel=D)]
RepetitionPenalty = Annotated[Optional[float], typer.Option(
    "--repetition-penalty", help="transformers' repetition penalty (over prompt and generated ids).",
    rich_help_panel=D)]
System = Annotated[Optional[str], typer.Option("--system", help="System prompt instead of the profile's ('' = "
                                               "none).", rich_help_panel=D)]
NBoot = Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples for every CI.", rich_help_panel=P)]
N_BOOT = 2000  # the one default of --n-boot
Threads = Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads (default: torch's own choice; "
                                                "audit of the tiny zoo: 1).", rich_help_panel=P)]
MaxPromptTokens = Annotated[Optional[int], typer.Option("--max-prompt-tokens", min=1, help="Longest prompt in "
                                                       "tokens; longer ones become error records (default: the "
                                                       "model's positions).", rich_help_panel=P)]
RetryErrors = Annotated[bool, typer.Option("--retry-errors", help="With --resume: run the error records (and records "
                                           "whose input line changed) again, in place.", rich_help_panel=P)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Start over in an --out folder that holds another "
                                         "run's results (they are replaced).", rich_help_panel=P)]
Log = Annotated[Optional[str], typer.Option("--log", metavar="tensorboard|wandb", help="Also log the run's config, "
                                            "per-stage progress and final metrics to TensorBoard (<out>/tensorboard) "
                                            "or Weights & Biases (optional extras).", rich_help_panel=P)]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the checkpoint's own Python code "
                                               "(off by default).", rich_help_panel=P)]


# Options that several commands take with one meaning: declared once here (lighteval's style), never per command.
A = "Analysis options"
ForceLatent = Annotated[bool, typer.Option(
    "--force-latent/--no-force-latent", "--force-start", rich_help_panel=A,
    help="Force the latent span (the latent-start token / imagination start marker as the first generated token), "
         "for checkpoints that do not emit it on their own (--force-start: the older name).")]
NoPlots = Annotated[bool, typer.Option("--no-plots", help="Skip the PNG plots.", rich_help_panel=A)]
NoReport = Annotated[bool, typer.Option("--no-report", help="Do not write report.html.", rich_help_panel=A)]
CorruptModel = Annotated[Optional[str], typer.Option(
    "--corrupt-model", rich_help_panel=A,
    help="Model that rewrites the text imagination to imply a wrong answer (do(Z)); default: the rule corrupter.")]
B = "Benchmark options"
Benchmark = Annotated[Optional[str], typer.Option(
    "--benchmark", rich_help_panel=B,
    help="vstar | hrbench4k | hrbench8k | mme_realworld | mme_realworld_lite | blink[:Sub,...] | vsp | "
         "tablevqa[:split,...] | generic (bench: default generic on the toy world test split).")]
ImageRoot = Annotated[Optional[str], typer.Option(
    "--image-root", rich_help_panel=B,
    help="Folder the image paths are relative to (vsp: default the Mirage repository root found above the jsonl; "
         "mme_realworld: the JSON's folder).")]
NoVerify = Annotated[bool, typer.Option("--no-verify", help="Skip the MD5 check of distributed TSVs.",
                                        rich_help_panel=B)]
J = "LLM judge"
JudgeModel = Annotated[Optional[str], typer.Option(
    "--judge-model", rich_help_panel=J,
    help="LLM judge: a local model (path / zoo name), or with --judge-url the served model's name.")]
JudgeUrl = Annotated[Optional[str], typer.Option(
    "--judge-url", rich_help_panel=J,
    help="OpenAI-compatible endpoint of the judge (vLLM, SGLang, transformers serve, hosted APIs), e.g. "
         "http://127.0.0.1:8000/v1; needs the openai extra.")]
JudgeKeyEnv = Annotated[Optional[str], typer.Option(
    "--judge-key-env", rich_help_panel=J,
    help="Environment variable holding the judge's API key (default OPENAI_API_KEY).")]
JudgeProtocol = Annotated[Optional[str], typer.Option(
    "--judge-protocol", rich_help_panel=J,
    help="hrbench | blink | vlmevalkit | monet (default: the variant's: HR-Bench official hrbench, BLINK official "
         "blink, monet variants monet, else vlmevalkit). The protocol decides which replies the judge reads.")]
JudgeCache = Annotated[Optional[str], typer.Option(
    "--judge-cache", rich_help_panel=J,
    help="Reply cache file (default $LATENTCHECK_CACHE/responses.sqlite; 'none' turns it off).")]
JudgeConcurrency = Annotated[Optional[int], typer.Option(
    "--judge-concurrency", min=1, rich_help_panel=J, help="Judge requests in flight (openai backend; default 4).")]
JudgeProfile = Annotated[Optional[str], typer.Option(
    "--judge-profile", rich_help_panel=J, help="Profile of a local judge model (default: auto-detect).")]
E = "Served models"
KeyEnv = Annotated[str, typer.Option("--key-env", rich_help_panel=E,
                                     help="Environment variable holding the endpoints' API key.")]
Cache = Annotated[Optional[str], typer.Option(
    "--cache", rich_help_panel=E,
    help="Reply cache of the model passes (default $LATENTCHECK_CACHE/responses.sqlite; 'none' turns it off): a "
         "rerun asks nothing twice.")]


def reply_cache(value: str | None) -> str | bool | None:
    """``--cache`` / ``--judge-cache`` as the backends take it: a file, ``None`` for 'none' (off), ``True`` (the
    shared default cache) when not given."""
    return None if (value or "").lower() == "none" else (value or True)


def decoding(greedy: bool = False, temperature: float | None = None, top_p: float | None = None,
             top_k: int | None = None, repetition_penalty: float | None = None,
             max_new_tokens: int | None = None) -> dict:
    """The decoding options given on the command line, as overrides of the profile's ``DecodingSpec`` fields
    (``--temperature 0`` and ``--greedy`` mean greedy; a positive temperature means sampling)."""
    from latentcheck.core.errors import LatentcheckError

    if greedy and temperature:
        raise LatentcheckError("--greedy and a positive --temperature contradict each other")
    out: dict = {"top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty,
                 "max_new_tokens": max_new_tokens}
    if greedy or temperature == 0:
        out["do_sample"] = False
    elif temperature is not None:
        out.update(do_sample=True, temperature=temperature)
    return {k: v for k, v in out.items() if v is not None}


def common(model, profile, data, out, limit, batch_size, seed, quant, device, quiet, resume, strict, max_pixels,
           trust_remote_code, threads: int | None = None, *, decoding: dict | None = None,
           system: str | None = None, max_prompt_tokens: int | None = None, retry_errors: bool = False,
           overwrite: bool = False, log: str | None = None) -> CommonOptions:
    """Bundle the shared options. ``--out -`` writes the per-sample JSONL (provenance first) to stdout when the
    command ends — tables move to stderr, summary and plots are not kept — so output pipes into jq. ``log`` opens
    the run logger (``--log``, core/tracking.py) for the run folder."""
    if threads is not None:
        if threads < 1:
            from latentcheck.core.errors import LatentcheckError

            raise LatentcheckError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    if out == "-":
        out = _stdout_run(resume)
    elif _out_is_default():
        out = default_run_folder(out, resume)
    if log is not None:
        from latentcheck.core import tracking
        from latentcheck.core.runner import distributed

        tracking.configure(log, out, is_main=distributed()[0] == 0)
    return CommonOptions(model=model, profile=profile, data=data, out=out, limit=limit, batch_size=batch_size,
                         seed=seed, quant=quant, device=device, quiet=quiet, resume=resume, strict=strict,
                         max_pixels=max_pixels, trust_remote_code=trust_remote_code, decoding=dict(decoding or {}),
                         system=system, max_prompt_tokens=max_prompt_tokens, retry_errors=retry_errors,
                         overwrite=overwrite)


def _out_is_default() -> bool:
    """True when the running command's ``--out`` was not given on the command line (its default is the runs root)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - typer without a vendored click
        from click import get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None:
        return False
    source = ctx.get_parameter_source("out")
    return source is not None and source.name in ("DEFAULT", "DEFAULT_MAP")


def default_run_folder(root: str, resume: bool) -> str:
    """Without ``--out``: a new timestamped folder under the command's runs root (``--resume``: the newest one)."""
    from latentcheck.core.runner import latest_run_folder, new_run_folder

    return str(latest_run_folder(root) if resume else new_run_folder(root))


def _stdout_run(resume: bool) -> str:
    import atexit
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    from latentcheck.cli.app import out_console
    from latentcheck.core.errors import LatentcheckError

    if resume:
        raise LatentcheckError("--resume needs an output folder, not --out -")
    tmp = tempfile.mkdtemp(prefix="latentcheck-out-")
    out_console.file = sys.stderr

    def dump() -> None:
        f = Path(tmp) / "samples.jsonl"
        if f.exists():
            sys.stdout.write(f.read_text(encoding="utf-8"))
            sys.stdout.flush()
        shutil.rmtree(tmp, ignore_errors=True)

    atexit.register(dump)  # after the command (and its tables, on stderr) has finished
    return tmp
