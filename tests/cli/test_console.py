"""The console script as a user meets it, in a subprocess: usage errors are ONE line and exit 2 (never a traceback),
`--version`, bare `latentcheck` lists the commands, help shows readable metavars."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def console_command() -> list[str]:
    """argv that runs the `latentcheck` console entry point exactly as the installed script does (the script in this
    interpreter's bin/ when it exists, else the entry point's target called the same way)."""
    eps = [ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "latentcheck"]
    target = eps[0].value if eps else "latentcheck.cli.app:main"
    assert target == "latentcheck.cli.app:main"
    script = Path(sys.executable).parent / "latentcheck"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "import sys; from latentcheck.cli.app import main; sys.exit(main())"]


def run_cli(*args: str, cwd: str | os.PathLike | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the console script with this checkout first on the import path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT.parent)] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    e.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "80", "OMP_NUM_THREADS": "1"})
    e.update(env or {})
    return subprocess.run([*console_command(), *args], capture_output=True, text=True, cwd=cwd, env=e,
                          timeout=timeout)


USAGE_ERRORS = [
    (("zoo",), "missing command for 'latentcheck zoo' (one of: build, list)"),
    (("caption-imagine",), "missing command for 'latentcheck caption-imagine'"),
    (("models", "--bogus"), "No such option: --bogus"),
    (("perturb-latent", "--limit", "abc"), "Invalid value for '--limit'"),
    (("perturb-latent", "--mediation"), "Option '--mediation' requires an argument"),
    (("nosuch",), "No such command 'nosuch'"),
    (("bench", "compare"), "Missing argument"),
    (("probe", "--batch-size", "1.5"), "Invalid value for '--batch-size'"),
    (("--num-processes", "0", "models"), "--num-processes must be >= 1"),
]


@pytest.mark.parametrize("args,expected", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_error_is_one_line_exit_2(args, expected):
    r = run_cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_version():
    from latentcheck import __version__

    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"latentcheck {__version__}"


def test_bare_command_lists_every_command():
    r = run_cli()
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    listed = [ln.strip().split("  ")[0] for ln in r.stdout.splitlines() if ln.startswith("  ")]
    for name in ("models", "perturb-latent", "perturb-input", "probe", "audit", "report", "zoo build", "zoo list",
                 "caption-imagine train", "bench", "bench compare"):
        assert name in listed, (name, r.stdout)
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 80


def test_help_shows_readable_metavars():
    r = run_cli("perturb-latent", "--help")
    assert r.returncode == 0, r.stderr
    assert "<list[str]>" not in r.stdout and "<bool>" not in r.stdout and "<str>" not in r.stdout
    assert "SPEC ..." in r.stdout and "DIR|-" in r.stdout


def test_piped_run_logs_loading_and_progress_lines_and_fits_80_columns(tmp_path):
    """stdout/stderr are pipes here (as in a SLURM log): a "loading model" line comes first, then periodic progress
    lines (stage, done/total, rate, ETA) instead of a bar, and the tables fit 80 columns with every number whole."""
    out = tmp_path / "run"
    r = run_cli("perturb-latent", "--limit", "6", "--batch-size", "1", "-i", "zero", "--n-boot", "200", "--no-plots",
                "--out", str(out),
                env={"LATENTCHECK_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ "
    import re

    assert re.fullmatch(stamp + r"loading model toy-latent \(profile auto, device auto, quant auto\) \.\.\.", err[0])
    assert re.fullmatch(stamp + r"loaded toy-latent in \d+\.\ds \(profile toy-latent, cpu, float32\)", err[1])
    progress = [ln for ln in err if re.match(stamp + r"perturb-latent: \d/6", ln)]
    assert progress[0].endswith("started, elapsed 0s") and ", done, " in progress[-1]
    assert any("ETA" in ln and "/s" in ln for ln in progress[1:-1]), progress
    assert "Warning" not in r.stderr and "\x1b" not in r.stderr + r.stdout
    lines = r.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    summary = json.loads((out / "summary.json").read_text())
    base = summary["baseline"]
    assert any(f"{base['accuracy']:.3f}" in ln for ln in lines)


def test_quiet_prints_only_the_final_line(tmp_path):
    r = run_cli("perturb-latent", "--limit", "2", "-i", "zero", "--n-boot", "100", "--no-plots", "--quiet",
                "--out", str(tmp_path / "q"), env={"LATENTCHECK_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samples: 2 ok, 0 errors"), r.stderr
