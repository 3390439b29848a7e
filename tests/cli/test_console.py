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
    assert any(f"{base['accuracy']['estimate']:.3f}" in ln for ln in lines)


def test_quiet_prints_only_the_final_line(tmp_path):
    r = run_cli("perturb-latent", "--limit", "2", "-i", "zero", "--n-boot", "100", "--no-plots", "--quiet",
                "--out", str(tmp_path / "q"), env={"LATENTCHECK_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samples: 2 ok, 0 errors"), r.stderr


# the common final line of every analysis (cli.tables.render_result): counts, samples file, summary, results.json
FINAL = r"samples: {n} ok, 0 errors -> .*samples\.jsonl; summary: .*summary\.json; results: .*results\.json"
QUIET_FINAL_LINES = {
    "perturb-input": (("perturb-input", "--limit", "2", "-t", "noise", "--n-boot", "50", "--no-plots"),
                      FINAL.format(n=2)),
    "perturb-latent": (("perturb-latent", "--limit", "2", "-i", "zero", "--mediation", "none", "--n-boot", "50",
                        "--no-plots"), FINAL.format(n=2)),
    "probe": (("probe", "--limit", "6", "--splits", "2", "--label", "category", "--no-trained"),
              r"samples: \d+ ok, 0 errors; summary: .*summary\.json; results: .*results\.json; "
              r"plots: \d+ PNG in .*plots"),
    "bench": (("bench", "--limit", "2", "--n-boot", "50"), FINAL.format(n=2)),
    "caption-imagine run": (("caption-imagine", "run", "--limit", "2"), FINAL.format(n=2)),
    "caption-imagine intervene": (("caption-imagine", "intervene", "--limit", "2", "--no-plots"), FINAL.format(n=2)),
    "audit": (("audit", "-m", "toy-bypass", "--limit", "4", "--stage", "perturb_input", "--n-boot", "50",
               "--no-report", "--no-plots"),
              r"audit: toy-bypass: (causally real|not causally real|inconclusive|[a-z ]+) -> .*audit\.json; \d+ s"),
}


@pytest.mark.parametrize("command", list(QUIET_FINAL_LINES))
def test_quiet_prints_the_final_line_of_every_analysis(command, tmp_path):
    """--quiet through the console script: nothing on stdout, exactly one line on stderr (the final summary)."""
    import re

    args, pattern = QUIET_FINAL_LINES[command]
    r = run_cli(*args, "--quiet", "--out", str(tmp_path / "q"), env={"LATENTCHECK_PROGRESS_INTERVAL": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), r.stderr


def test_default_out_is_a_new_timestamped_folder_per_run_and_files_honour_the_umask(tmp_path):
    """Two runs without --out land in two folders latentcheck-runs/perturb-latent/<UTC stamp>; --resume without
    --out continues the newest; every file written follows the umask (027 here -> 0640), not mkstemp's 0600."""
    import re
    import stat

    def run(*extra):
        e = dict(os.environ)
        e["PYTHONPATH"] = os.pathsep.join([str(ROOT.parent)] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep)
                                                                 if p])
        e.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LATENTCHECK_PROGRESS_INTERVAL": "3600"})
        return subprocess.run([*console_command(), "perturb-latent", "--limit", "2", "-i", "zero", "--n-boot", "100",
                               *extra], capture_output=True, text=True, cwd=tmp_path, env=e, timeout=600,
                              preexec_fn=lambda: os.umask(0o027))

    r1, r2 = run(), run()
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr[-2000:], r2.stderr[-2000:])
    root = tmp_path / "latentcheck-runs" / "perturb-latent"
    runs = sorted(p.name for p in root.iterdir())
    assert len(runs) == 2 and all(re.fullmatch(r"\d{8}-\d{6}(-\d+)?", n) for n in runs), runs
    for name in runs:
        assert (root / name / "samples.jsonl").exists() and (root / name / "summary.json").exists()
        assert f"latentcheck-runs/perturb-latent/{name}/samples.jsonl" in r1.stderr + r2.stderr
    files = [p for p in root.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= {".jsonl", ".json", ".png"}
    modes = {p.relative_to(root).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o640"}, modes
    r3 = run("--resume")
    assert r3.returncode == 0, r3.stderr[-2000:]
    assert sorted(p.name for p in root.iterdir()) == runs
    newest = max(runs, key=lambda n: (n[:15], int(n[16:] or 1)))
    assert f"latentcheck-runs/perturb-latent/{newest}/samples.jsonl" in r3.stderr


def test_new_run_folder_never_reuses_a_name(tmp_path, monkeypatch):
    from latentcheck.core import runner

    monkeypatch.delenv(runner.RUN_STAMP_ENV, raising=False)
    monkeypatch.setattr(runner, "run_stamp", lambda: "20261202-131500")
    made = []
    for _ in range(3):
        f = runner.new_run_folder(tmp_path)
        f.mkdir(parents=True)
        made.append(f.name)
    assert made == ["20261202-131500", "20261202-131500-2", "20261202-131500-3"]
    assert runner.latest_run_folder(tmp_path).name == "20261202-131500-3"
    (tmp_path / "20261202-131501").mkdir()
    assert runner.latest_run_folder(tmp_path).name == "20261202-131501"
    import pytest as _pytest

    from latentcheck.core.errors import LatentcheckError
    with _pytest.raises(LatentcheckError, match="no earlier run"):
        runner.latest_run_folder(tmp_path / "none")


def test_every_analysis_reads_a_benchmark_format_and_the_console_names_the_first_error(tmp_path):
    """V*'s distributed folder through --data vstar:DIR works in perturb-latent; its raw jsonl (not the task schema)
    fails record by record and the console names the first failing record, field and reason."""
    import base64

    root = tmp_path / "vstar_bench"
    (root / "direct_attributes").mkdir(parents=True)
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")
    lines = []
    for i in range(2):
        (root / "direct_attributes" / f"sa_{i}.png").write_bytes(png)
        (root / "direct_attributes" / f"sa_{i}.json").write_text(json.dumps({
            "target_object": ["bag"], "bbox": [[0, 0, 1, 1]], "question": "What is the color of the bag?",
            "options": ["black", "white", "red", "blue"]}))
        lines.append({"image": f"direct_attributes/sa_{i}.png", "question_id": i, "category": "direct_attributes",
                      "label": "A", "text": "What is the color of the bag?\n(A) black\n(B) white\n(C) red\n(D) blue\n"
                                            "Answer with the option's letter from the given choices directly."})
    (root / "test_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ok = run_cli("perturb-latent", "--data", f"vstar:{root}", "-i", "zero", "--n-boot", "100", "--no-plots",
                 "--mediation", "none", "--out", str(tmp_path / "ok"), "-q")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert ok.stderr.strip().startswith("samples: 2 ok, 0 errors")
    bad = run_cli("perturb-latent", "--data", str(root / "test_questions.jsonl"), "-i", "zero", "--n-boot", "100",
                  "--no-plots", "--mediation", "none", "--out", str(tmp_path / "bad"), "-q")
    assert bad.returncode == 3, bad.stderr[-3000:]
    lines = bad.stderr.strip().splitlines()
    assert lines[0].startswith("samples: 0 ok, 2 errors")
    assert lines[1] == ("first error: test_questions.jsonl:1 (id=0), field 'question': missing or not a non-empty "
                        "string (and 1 more: the error records in " + str(tmp_path / "bad" / "samples.jsonl") + ")")
