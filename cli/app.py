"""The Typer root: thin commands that parse options, call a library function and render its result with Rich."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from latentcheck.cli.tables import FittingConsole
from latentcheck.core.errors import EXIT_CANNOT_RUN, EXIT_INTERRUPTED, LatentcheckError

app = typer.Typer(name="latentcheck", no_args_is_help=False, pretty_exceptions_show_locals=False,
                  help="Is a model's latent imagination causally real? Causal analysis of latent visual reasoning.")
console = FittingConsole(stderr=True)
out_console = FittingConsole()


def _print_version(value: bool) -> None:
    if value:
        from latentcheck import __version__

        out_console.print(f"latentcheck {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
    num_processes: int = typer.Option(1, "--num-processes", min=1, help="Run the command as N data-parallel "
                                      "processes on this machine (through accelerate launch; CPU/gloo without a "
                                      "GPU, one GPU each otherwise). Results equal a single-process run."),
    plugin: Optional[list[str]] = typer.Option(None, "--plugin", help="Import a module (dotted name or .py file) "
                                               "that registers interventions, treatments, benchmarks or extractors "
                                               "before the command runs (repeatable)."),
) -> None:
    """latentcheck: test the X -> Z -> Y chain of latent visual reasoning models (see README.md)."""
    from latentcheck.core.registry import load_plugin

    for spec in plugin or []:
        load_plugin(spec)
    if num_processes > 1:  # main() handles the option before parsing; only an in-process call gets here
        raise LatentcheckError("--num-processes relaunches the command line: use it with `latentcheck` or "
                               "`python -m latentcheck`")


@app.command("models")
def models_cmd() -> None:
    """List the built-in model profiles (and the toy zoo)."""
    from latentcheck.core.profiles import builtin_profiles

    t = Table(title="latentcheck profiles")
    for i, c in enumerate(("profile", "kind", "tokens (start / end / placeholder)", "entry", "length", "exit")):
        t.add_column(c, no_wrap=i == 0, overflow="fold")
    for p in builtin_profiles().values():
        L = p.latent
        tok = " / ".join(p.tokens.get(k, "-") for k in ("start", "end", "placeholder")) if p.is_latent else "-"
        length = (f"{L.length} k={L.k}" if p.is_latent else "-")
        t.add_row(p.name, p.kind, tok, L.entry if p.is_latent else "-", length, L.exit if p.is_latent else "-")
    out_console.print(t)


def _register_subcommands() -> None:
    """Attach the analysis commands (each module registers itself on ``app``)."""
    import importlib

    importlib.import_module("latentcheck.bench")  # every benchmark format becomes a --data source (NAME:PATH)
    for mod in ("zoo", "perturb_latent", "perturb_input", "probe", "caption_imagine", "bench", "audit", "reproduce"):
        try:
            importlib.import_module(f"latentcheck.cli.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"latentcheck.cli.{mod}":
                raise


def main() -> None:
    """Console entry point: one-line errors and a non-zero exit code instead of tracebacks (0 ok, 3 completed with
    error records, 2 could not run, 130 interrupted, 1 internal error; core/errors.py); ``--num-processes N``
    relaunches through cli/launch.py."""
    from latentcheck.cli.launch import child_exit_code, launch, split_num_processes

    try:
        n, rest = split_num_processes(sys.argv[1:])
        if n is not None and n > 1:
            from latentcheck.core.runner import RUN_STAMP_ENV, run_stamp

            os.environ.setdefault(RUN_STAMP_ENV, run_stamp())  # every process names the same default run folder
            sys.exit(launch(n, rest))
        if n is not None:
            sys.argv[1:] = rest
        _main()
    except LatentcheckError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(child_exit_code(e.exit_code))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.exit(child_exit_code(code))
    sys.exit(child_exit_code(0))


def _main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet = quiet_requested(sys.argv[1:])
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    silence_libraries(quiet)
    _register_subcommands()
    if not sys.argv[1:]:  # `latentcheck` alone: what can I run?
        cmd = typer.main.get_command(app)
        out_console.print(command_list(cmd.make_context("latentcheck", [], resilient_parsing=True)),
                          highlight=False, soft_wrap=True, markup=False)
        return
    try:
        # standalone_mode=False makes click RETURN the code of `raise typer.Exit(n)` instead of exiting with it
        cmd = typer.main.get_command(app)
        readable_metavars(cmd)
        rv = cmd.main(prog_name="latentcheck", standalone_mode=False)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv:
            if rv == 130:  # typer turns Ctrl-C into Exit(130)
                console.print("[yellow]interrupted[/] (rerun with --resume to continue)")
            sys.exit(rv)
    except LatentcheckError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/] (rerun with --resume to continue)")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click / typer usage errors arrive here in non-standalone mode
        code = _click_error(e)
        if code is None:
            raise
        sys.exit(code)


def quiet_requested(argv: list[str]) -> bool:
    """``--quiet`` / ``-q`` anywhere before ``--`` (read before parsing, so libraries are silenced before they load)."""
    for a in argv:
        if a == "--":
            return False
        if a in ("--quiet", "-q"):
            return True
    return False


def silence_libraries(quiet: bool) -> None:
    """Library noise off: transformers' download/loading bars and info logs always (the CLI reports progress itself),
    the deprecation chatter of library internals always; with ``quiet`` every Python warning and every library log
    below ERROR too, so only errors and the final summary remain."""
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        for module in (r"transformers(\..*)?", r"torch(\..*)?", r"accelerate(\..*)?", r"huggingface_hub(\..*)?"):
            warnings.filterwarnings("ignore", category=category, module=module)
    if quiet:
        warnings.simplefilter("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _is_click(e: BaseException, name: str) -> bool:
    """``e`` is click's or typer's own copy (typer >= 0.20 vendors click as ``typer._click`` and defines some, e.g.
    ``Abort``, in ``typer.exceptions``) of exception ``name``."""
    kinds = []
    try:  # click itself: typer < 0.20 is built on it; newer typer vendors it, so it may not be installed
        import click

        kinds.append(getattr(click.exceptions, name, None))
    except ImportError:  # pragma: no cover - click is not a dependency of latentcheck (nor of typer >= 0.20)
        pass
    try:
        from typer._click import exceptions as typer_click
        kinds.append(getattr(typer_click, name, None))
    except ImportError:  # pragma: no cover - older typer uses click itself
        pass
    try:  # typer's own copies (its prompts and typer.Abort() raise typer.exceptions.Abort)
        from typer import exceptions as typer_exceptions
        kinds.append(getattr(typer_exceptions, name, None))
    except ImportError:  # pragma: no cover
        pass
    return any(k is not None and isinstance(e, k) for k in kinds)


def _click_error(e: BaseException) -> int | None:
    """Show a click/typer exception the way the CLI promises (usage errors: ONE line on stderr, exit 2) and return
    the exit code; None for anything else."""
    if _is_click(e, "UsageError") and getattr(e, "ctx", None) is not None and e.ctx.parent is not None \
            and hasattr(e.ctx.command, "list_commands") and e.format_message().startswith("Missing command"):
        ctx = e.ctx
        console.print(f"error: missing command for '{ctx.command_path}' (one of: "
                      f"{', '.join(ctx.command.list_commands(ctx))}); see '{ctx.command_path} --help'",
                      highlight=False, soft_wrap=True, markup=False)
        return 2
    if _is_click(e, "UsageError"):
        ctx = getattr(e, "ctx", None)
        msg = " ".join(str(e.format_message()).split())  # one line, whatever click wrapped
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        console.print(f"error: {msg}{hint}", highlight=False, soft_wrap=True, markup=False)
        return 2
    if _is_click(e, "ClickException"):
        console.print(f"error: {' '.join(str(e.format_message()).split())}", highlight=False, soft_wrap=True,
                      markup=False)
        return int(getattr(e, "exit_code", 1))
    if _is_click(e, "Abort"):
        # click turns Ctrl-C into Abort in non-standalone mode (``from e``; its prompts ``from None``: the context)
        if isinstance(e.__cause__, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt):
            console.print("[yellow]interrupted[/] (rerun with --resume to continue)")
            return EXIT_INTERRUPTED
        # anything else (a declined confirmation, end of input at a prompt, a command's own typer.Abort()) means
        # the command did not run: one line and the "could not run" code, never the internal-error code 1
        why = "end of input at a prompt" if isinstance(e.__cause__ or e.__context__, EOFError) else \
            (" ".join(str(e).split()) or "the command was aborted")
        console.print(f"error: aborted: {why}", highlight=False, soft_wrap=True, markup=False)
        return EXIT_CANNOT_RUN
    return None


# Help metavars by option name (typer would show the Python type, e.g. `<list[str]>`); ints show N, floats X.
METAVARS: dict[str, str] = {
    "--model": "PATH|NAME", "--models": "PATH|NAME", "--profile": "NAME|FILE", "--data": "FILE|DIR|-", "--out": "DIR",
    "--intervention": "SPEC", "--treatment": "SPEC", "--quant": "auto|none|4bit|8bit", "--device": "auto|cpu|cuda[:N]",
    "--image-visibility": "all|latents_only|none", "--mediation": "image|question|none", "--per-index": "NAME",
    "--sigma-sweep": "S1,S2,...", "--benchmark": "NAME", "--extractor": "NAME", "--log": "wandb|tensorboard",
}


def readable_metavars(cmd) -> None:
    """Replace typer's Python-type labels in --help (``<list[str]>``, ``<bool>``) with readable metavars: none for
    flags, ``N`` / ``X`` for numbers, a name from :data:`METAVARS` (or the option's own name) otherwise, ``...`` when
    repeatable."""
    for sub in getattr(cmd, "commands", {}).values():
        readable_metavars(sub)
    original_help_option = cmd.get_help_option

    def help_option(ctx):
        opt = original_help_option(ctx)
        if opt is not None:
            opt.display_type_rich = lambda ctx: None
        return opt

    cmd.get_help_option = help_option
    for param in getattr(cmd, "params", []):
        if not hasattr(param, "display_type_rich") or not getattr(param, "opts", None):
            continue
        if getattr(param, "is_flag", False):
            label = None
        else:
            long = next((o for o in param.opts if o.startswith("--")), param.opts[0])
            try:
                kind = param.bare_type()
                many = bool(param.type_descriptor.is_list)
            except (AttributeError, TypeError, AssertionError):  # a future typer: keep its label
                continue
            label = param.metavar or METAVARS.get(long) or {"int": "N", "float": "X", "list[int]": "N",
                                                            "list[float]": "X"}.get(
                kind, long.lstrip("-").upper().replace("-", "_"))
            if many:
                label += " ..."
        param.display_type_rich = (lambda ctx, _label=label: _label)


def command_list(ctx) -> str:
    """The plain command list printed by bare ``latentcheck`` (groups list their subcommands)."""
    from latentcheck import __version__

    import textwrap

    lines = [f"latentcheck {__version__}", textwrap.fill(app.info.help, 78), "",
             "usage: latentcheck [--version] [--num-processes N] COMMAND [OPTIONS]", "", "commands:"]
    rows = []
    for name in ctx.command.list_commands(ctx):
        cmd = ctx.command.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        if hasattr(cmd, "list_commands"):
            if getattr(cmd, "invoke_without_command", False):  # `bench` runs itself and has subcommands
                rows.append((name, cmd))
            sub_ctx = cmd.make_context(name, [], parent=ctx, resilient_parsing=True)
            for sub in cmd.list_commands(sub_ctx):
                c = cmd.get_command(sub_ctx, sub)
                rows.append((f"{name} {sub}", c))
        else:
            rows.append((name, cmd))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {n.ljust(width)}  {c.get_short_help_str(limit=80 - width - 4) if c else ''}" for n, c in rows]
    lines += ["", "Run 'latentcheck COMMAND --help' for a command's options (all: docs/cli.md)."]
    return "\n".join(lines)


_register_subcommands()
