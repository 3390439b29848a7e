"""docs/cli.md documents every option of the live CLI, and the shared vocabulary really is shared (one default)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from latentcheck.cli.app import _register_subcommands, app

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def options_by_command() -> dict[str, dict[str, object]]:
    _register_subcommands()
    found: dict[str, dict[str, object]] = {}

    def walk(cmd, path: str) -> None:
        for p in cmd.params:
            for name in getattr(p, "opts", []) + getattr(p, "secondary_opts", []):
                if name.startswith("--"):
                    found.setdefault(name, {})[path or "(root)"] = p.default
        for n, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {n}".strip())

    walk(typer.main.get_command(app), "")
    return found


def test_every_option_is_in_docs_cli_md():
    doc = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"`(--[a-z0-9-]+)", doc)) | set(re.findall(r"(--[a-z0-9-]+)", doc))
    missing = sorted(set(options_by_command()) - documented - {"--help", "--install-completion",
                                                               "--show-completion"})
    assert not missing, f"options missing from docs/cli.md: {missing}"


SHARED_DEFAULTS = {"--limit": None, "--seed": 0, "--n-boot": 2000, "--quant": "auto", "--device": "auto",
                   "--quiet": False, "--resume": False, "--strict": False, "--max-pixels": None,
                   "--max-new-tokens": None, "--trust-remote-code": False, "--threads": None, "--model": None,
                   "--profile": None, "--list": False, "--no-plots": False}


def test_shared_options_have_one_default_everywhere():
    found = options_by_command()
    for name, default in SHARED_DEFAULTS.items():
        per_command = found[name]
        assert set(map(repr, per_command.values())) == {repr(default)}, (name, per_command)
    analyses = ("perturb-latent", "perturb-input", "probe", "audit", "bench", "caption-imagine run",
                "caption-imagine intervene")
    for name in ("--model", "--data", "--out", "--limit", "--seed", "--threads", "--quiet", "--resume"):
        assert set(analyses) <= set(found[name]), (name, sorted(found[name]))
    # the names that used to drift are accepted under the shared names
    assert "perturb-input" in found["--force-latent"] and "perturb-input" in found["--list"]


def options_with_help() -> dict[str, dict[str, tuple[object, object]]]:
    """option name -> {command: (help, default)} of the live CLI."""
    _register_subcommands()
    found: dict[str, dict[str, tuple[object, object]]] = {}

    def walk(cmd, path: str) -> None:
        for p in cmd.params:
            opts = [n for n in getattr(p, "opts", []) if n.startswith("--")]
            if opts:
                found.setdefault(opts[0], {})[path or "(root)"] = (p.help, p.default)
        for n, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {n}".strip())

    walk(typer.main.get_command(app), "")
    return found


# options whose name several commands take with a different meaning (so a different help), and why
MEANING_DIFFERS = {
    "--model": "reproduce / audit bind roles or repeat models", "--profile": "reproduce: per model role",
    "--data": "reproduce: per data role; train / export-tasks: their own inputs",
    "--out": "build-data / export-tasks / zoo write files of their own", "--limit": "audit / reproduce: per stage",
    "--batch-size": "caption-imagine train: the optimizer's global batch", "--list": "what each command lists",
    "--benchmark": "export-tasks: required", "--scoring": "probe: logprob | generate; bench: the variant's mode",
    "--intervention": "bench: vector interventions only", "--rules": "report: re-reads a stored audit",
    "--image-visibility": "perturb-input accepts all | latents_only | none only",
}


def test_an_option_several_commands_take_is_declared_once():
    """The shared vocabulary (cli/options.py): an option that several commands take has ONE help text and ONE
    default everywhere (the judge options of bench and reproduce, --no-plots, --force-latent, --cache, ...),
    unless its meaning differs by command (MEANING_DIFFERS; probe's --force-latent defaults on)."""
    found = options_with_help()
    for name, per_command in found.items():
        if len(per_command) < 2 or name in MEANING_DIFFERS:
            continue
        helps = {h for h, _ in per_command.values()}
        assert len(helps) == 1, (name, per_command)
        defaults = {repr(d) for c, (_, d) in per_command.items() if not (name == "--force-latent" and c == "probe")}
        assert len(defaults) == 1, (name, per_command)
    for name in ("--judge-model", "--judge-url", "--judge-key-env", "--judge-protocol", "--judge-cache",
                 "--judge-concurrency", "--judge-profile"):
        assert {"bench", "reproduce"} <= set(found[name]), (name, sorted(found[name]))
    assert {"perturb-latent", "perturb-input", "probe", "audit", "bench"} <= set(found["--force-latent"])
    assert {"caption-imagine build-data", "caption-imagine intervene"} <= set(found["--cache"])
    assert set(MEANING_DIFFERS) <= {n for n, c in found.items() if len(c) > 1}  # no stale exception
