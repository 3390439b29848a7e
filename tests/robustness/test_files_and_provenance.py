"""Issue 19, point 7: the weight fingerprint covers every byte (streamed, cached by path + size + mtime), the
provenance records thread settings and library versions, plots and summaries are written atomically with the
umask's file mode, and temporaries left by a killed run are removed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from latentcheck.core import loader
from latentcheck.core.loader import weight_fingerprint
from latentcheck.core.records import provenance, remove_stale_temporaries, write_json_atomic


def _sparse_checkpoint(folder: Path, size: int, poke_at: int | None = None) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "model.safetensors", "wb") as fh:
        fh.truncate(size)  # sparse zeros: no disk used
        if poke_at is not None:
            fh.seek(poke_at)
            fh.write(b"\x01")
    return folder


def test_checkpoints_that_differ_only_in_the_middle_have_different_fingerprints(tmp_path, monkeypatch):
    """Before: files above 64 MB were hashed by their first and last 4 MB, so two checkpoints differing in the middle
    looked the same to --resume."""
    monkeypatch.setenv("LATENTCHECK_CACHE_DIR", str(tmp_path / "cache"))
    size = 100 << 20
    a = _sparse_checkpoint(tmp_path / "a", size)
    b = _sparse_checkpoint(tmp_path / "b", size, poke_at=size // 2)
    c = _sparse_checkpoint(tmp_path / "c", size)
    assert weight_fingerprint(a) != weight_fingerprint(b)
    assert weight_fingerprint(a) == weight_fingerprint(c)


def test_large_file_digests_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTCHECK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "FINGERPRINT_CACHE_MIN_BYTES", 1 << 20)
    ck = _sparse_checkpoint(tmp_path / "ck", 4 << 20)
    calls = []
    real = loader.file_sha256
    monkeypatch.setattr(loader, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    first = weight_fingerprint(ck)
    assert weight_fingerprint(ck) == first and len(calls) == 1  # second load: from the cache
    cache = json.loads((tmp_path / "cache" / "weight-sha256.json").read_text())
    assert len(cache) == 1 and next(iter(cache)).startswith(f"{(ck / 'model.safetensors').resolve()}|{4 << 20}|")
    with open(ck / "model.safetensors", "r+b") as fh:  # same size, new content and mtime: hashed again
        fh.seek(123)
        fh.write(b"\x07")
    os.utime(ck / "model.safetensors", ns=(1, 10**18))
    assert weight_fingerprint(ck) != first and len(calls) == 2
    assert len(json.loads((tmp_path / "cache" / "weight-sha256.json").read_text())) == 1  # the stale entry is gone


def test_provenance_records_threads_and_versions():
    import torch

    prov = provenance("perturb-latent", {})
    assert prov["threads"] == {"torch_intra_op": torch.get_num_threads()}
    assert {"python", "torch", "transformers", "numpy"} <= set(prov["versions"])


def test_summaries_and_plots_get_the_umask_mode_and_are_atomic(tmp_path):
    from latentcheck.core.plots import bar_ci

    old = os.umask(0o027)
    try:
        p = write_json_atomic(tmp_path / "summary.json", {"a": 1})
        png = Path(bar_ci(["a", "b"], [0.5, 0.6], [0.4, 0.5], [0.6, 0.7], tmp_path / "plots" / "x.png"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o640  # not mkstemp's 0600
    assert stat.S_IMODE(png.stat().st_mode) == 0o640 and stat.S_IMODE(png.with_suffix(".svg").stat().st_mode) == 0o640
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a plot that fails half-way leaves the previous file whole and no temp file behind
    before = png.read_bytes()
    import matplotlib.figure

    fig = matplotlib.figure.Figure()
    fig.add_subplot().plot([1, 2])

    def broken(fh, **kw):
        fh.write(b"\x89PNG half")
        raise RuntimeError("disk full")

    fig.savefig = broken
    from latentcheck.core.plots import save

    with pytest.raises(RuntimeError, match="disk full"):
        save(fig, png)
    assert png.read_bytes() == before
    assert sorted(f.name for f in png.parent.iterdir()) == ["x.png", "x.svg"]


def test_temporaries_left_by_a_killed_run_are_removed_by_the_next_run(ck, tmp_path, monkeypatch, capsys):
    from robustness_helpers import write_tasks
    from test_bad_input import run_main

    data = write_tasks(tmp_path / "data", 2)
    out = tmp_path / "out"
    args = ["perturb-input", "--model", ck, "--profile", "toy-latent", "--data", data, "--out", out, "--quiet",
            "--batch-size", "2", "-t", "identity", "--force-start", "--n-boot", "20", "--no-plots"]
    assert run_main(monkeypatch, capsys, *args)[0] == 0
    stale = [out / ".summary.json.k1l2.tmp", out / "tensors" / ".0123abcd.npz.x9.tmp"]
    for f in stale:
        f.write_bytes(b"half")
    keep = out / "notes.tmp.txt"  # not hidden: not ours
    keep.write_text("mine")
    assert run_main(monkeypatch, capsys, *args, "--resume")[0] == 0
    assert not any(f.exists() for f in stale) and keep.exists()
    assert remove_stale_temporaries(tmp_path / "nothing-here") == []
