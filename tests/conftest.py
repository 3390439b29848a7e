"""Shared fixtures: tiny Qwen2.5-VL-class checkpoints built in-process (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    """Tiny models are dispatch-bound: one intra-op thread is as fast and does not fight other processes."""
    import torch

    torch.set_num_threads(1)

_TOKENIZERS: dict = {}


def _tokenizer(family: str):
    from latentcheck.toy.tiny import build_tokenizer

    if family not in _TOKENIZERS:
        _TOKENIZERS[family] = build_tokenizer(family)
    return _TOKENIZERS[family]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: tiny_checkpoint(family, profile, seed=0, size="tiny") -> folder (cached per session)."""
    from latentcheck.toy.tiny import build_tiny_checkpoint

    cache: dict = {}

    def make(family: str, profile: str | None, seed: int = 0, size: str = "tiny"):
        key = (family, profile, seed, size)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ck-{family}-{profile}-{seed}")
            cache[key] = build_tiny_checkpoint(out, family=family, size=size, seed=seed, profile=profile,
                                               tokenizer=_tokenizer(family))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def load_tiny(tiny_checkpoint):
    """Factory: load_tiny(family, profile) -> LoadedModel (cached per session)."""
    from latentcheck.core.loader import load_model

    cache: dict = {}

    def make(family: str, profile: str | None, **kw):
        key = (family, profile, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = load_model(str(tiny_checkpoint(family, profile)), profile=profile, **kw)
        return cache[key]

    return make


def make_image(seed: int = 0, size: int = 112):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------ a real OpenAI-compatible server
class ServedModel:
    """A running ``transformers serve`` process: ``base_url`` (``http://127.0.0.1:PORT/v1``), ``model`` (the name
    requests use), ``log`` (its output file), ``stop()``."""

    def __init__(self, model_path, max_lifetime_s: float = 900.0, startup_s: float = 180.0):
        import socket
        import subprocess
        import sys
        import tempfile
        import threading
        import time
        import urllib.request

        with socket.socket() as s:  # a free port on the loopback interface only
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.model = str(model_path)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="transformers-serve-", suffix=".log", delete=False)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        code = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", self.model, "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu", "--dtype", "float32", "--log-level", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        # bounded in time: killed after max_lifetime_s whatever the tests do
        self._watchdog = threading.Timer(max_lifetime_s, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        deadline = time.monotonic() + startup_s
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}:\n{self.log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"transformers serve did not answer within {startup_s} s")
            time.sleep(0.5)

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._watchdog.cancel()


@pytest.fixture(scope="session")
def serve_model():
    """Factory: ``serve_model(folder) -> ServedModel``: a REAL OpenAI-compatible server (``transformers serve``, extra
    ``transformers[serving]``) for any local checkpoint folder (image-text or text-only causal LM, loaded offline),
    bound to 127.0.0.1 on a free port; one per folder per session, all stopped at the end (each killed after 15
    minutes whatever happens). Skips when the serving extras are missing."""
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    servers: dict[str, ServedModel] = {}

    def make(folder) -> ServedModel:
        key = str(folder)
        if key not in servers:
            servers[key] = ServedModel(folder)
        return servers[key]

    try:
        yield make
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="session")
def transformers_server(serve_model):
    """``transformers serve`` on the toy zoo's ``toy-direct`` (a Qwen2.5-VL-class image-text model) on 127.0.0.1:
    ``.base_url``, ``.model`` (the name requests use), ``.log`` (its output; each request is a line)."""
    from latentcheck.core.loader import resolve_model_path

    return serve_model(resolve_model_path("toy-direct"))

# ------------------------------------------------------------------------------------------- fresh-machine check
def foreign_modules(modules: dict, prefix: str, outside_dirs: list[str]) -> list[str]:
    """Names of loaded modules whose files lie in ``outside_dirs`` (the base interpreter's or the user's
    site-packages) rather than in the environment at ``prefix``: packages a fresh machine would not have."""
    prefix = os.path.realpath(prefix)
    outside = [os.path.realpath(d) for d in outside_dirs if d]
    bad = []
    for name, mod in list(modules.items()):
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        f = os.path.realpath(f)
        if f.startswith(prefix + os.sep):
            continue
        if any(f.startswith(d + os.sep) for d in outside):
            bad.append(name)
    return sorted(bad)


def outside_site_dirs() -> list[str]:
    """The base interpreter's site-packages and the user site: where a hand-installed package would hide."""
    import site
    import sys
    import sysconfig

    base = {sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})[k]
            for k in ("purelib", "platlib")}
    return sorted(base | {site.getusersitepackages()})


def pytest_sessionfinish(session, exitstatus):
    """With LATENTCHECK_FRESH_CHECK=1 (set by .ci/run) the run fails when any test imported a package from outside
    the test environment (a venv created without system site packages), so CI cannot pass on packages that were
    installed by hand into this machine's base interpreter."""
    if os.environ.get("LATENTCHECK_FRESH_CHECK") != "1":
        return
    import sys

    bad = foreign_modules(sys.modules, sys.prefix, outside_site_dirs())
    if sys.prefix == sys.base_prefix:
        bad.insert(0, "<the tests do not run in a virtualenv>")
    if bad:
        sys.stderr.write("\nFRESHNESS CHECK FAILED: imported from outside the test venv: " + ", ".join(bad[:20]) + "\n")
        session.exitstatus = 1
