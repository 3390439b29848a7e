"""`pip install .` gives one import namespace `latentcheck` (with profiles and the shipped zoo) and a working CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # setuptools and wheel come with the test extra
    return next(out.glob("latentcheck-*.whl"))


def venv_on_current_environment(env_dir: Path) -> Path:
    """A venv WITHOUT system site packages whose only outside packages are the running environment's own.

    The running interpreter's site-packages (the CI venv's, not the bare base interpreter's) are appended to the new
    venv's path by a .pth file, so the installed wheel gets its dependencies (torch, typer, ...) from there while
    ``latentcheck`` itself comes from the wheel. Plain path lines in a .pth do not run the other environment's .pth
    hooks, so an editable install of the repository there stays invisible."""
    venv.EnvBuilder(system_site_packages=False, with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site_dir, "_running_env.pth").write_text("\n".join(sorted(ours)) + "\n")
    return py


def test_wheel_has_one_namespace_with_profiles_and_zoo(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"latentcheck"}, tops  # no generic top-level `core`, `cli`, `tests`
    assert "latentcheck/core/profiles/monet.toml" in names
    assert "latentcheck/toy/zoo/toy-mediated/model.safetensors" in names
    for name in ("zero2.yaml", "zero3.yaml", "fsdp.yaml"):  # caption-imagine train's accelerate configs
        assert f"latentcheck/imagine/accelerate_configs/{name}" in names
    assert not any(n.startswith("latentcheck/tests/") for n in names)


def test_installed_cli_runs_models_and_help(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    py = venv_on_current_environment(env_dir)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exe = env_dir / "bin" / "latentcheck"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "200"
    for args in (["--help"], ["models"]):
        r = subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
    assert "mirage" in r.stdout and "toy-mediated" in r.stdout
    r = subprocess.run([str(py), "-c", "import latentcheck, latentcheck.core.engine as e; print(e.__file__)"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0 and str(env_dir) in r.stdout, (r.stdout, r.stderr)


def test_out_dash_streams_jsonl_to_stdout(tmp_path):
    """`--out -` writes only the JSONL records (provenance first) to stdout, so output pipes into jq."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "latentcheck", "perturb-latent", "-m", "toy-bypass", "-i", "zero",
                        "--mediation", "none", "--limit", "2", "--out", "-"], capture_output=True, text=True,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [ln["type"] for ln in lines] == ["provenance", "sample", "sample"]
    r = subprocess.run([sys.executable, "-m", "latentcheck", "perturb-latent", "-m", "toy-bypass", "--out", "-",
                        "--resume"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 2 and "--resume needs an output folder" in r.stderr
