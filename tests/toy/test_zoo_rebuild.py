"""Byte-identical rebuilds of the shipped zoo weights (opt-in: each rebuild trains for minutes on a 2-core CPU, too
slow for every CI run; docs/zoo.md records the measured rebuilds).

``LATENTCHECK_REBUILD=toy-vector,toy-binding python -m pytest -q tests/toy/test_zoo_rebuild.py`` retrains each named
model with ``build_model`` (seed 0, one thread) from the SHIPPED copy of its base (itself byte-identical to its own
rebuild) and requires the new ``model.safetensors`` to equal the shipped file byte for byte (sha256)."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from latentcheck.toy import zoo

REQUESTED = [n.strip() for n in os.environ.get("LATENTCHECK_REBUILD", "").split(",") if n.strip()]


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.skipif(not REQUESTED, reason="opt-in: set LATENTCHECK_REBUILD=model[,model...] (minutes per model)")
@pytest.mark.parametrize("name", REQUESTED or ["-"])
def test_rebuild_is_byte_identical_to_the_shipped_weights(name, tmp_path):
    assert name in zoo.ZOO, f"unknown zoo model {name!r}"
    spec = zoo.ZOO[name]
    if spec.base is not None:
        shutil.copytree(zoo.PACKAGED / spec.base, tmp_path / spec.base)
    card = zoo.build_model(name, tmp_path, seed=0)
    assert _sha256(tmp_path / name / "model.safetensors") == _sha256(zoo.PACKAGED / name / "model.safetensors"), card
