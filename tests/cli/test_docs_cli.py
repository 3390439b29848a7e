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
