"""Shared helpers for the benchmark-format tests: tiny images made with PIL, snapshot reading."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

SNAPSHOTS = Path(__file__).parent / "snapshots"


def _png(color=(255, 0, 0), size=(8, 6), noise: bool = False, fmt: str = "PNG") -> bytes:
    if noise:
        import numpy as np

        arr = np.random.default_rng(0).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        img = Image.fromarray(arr, "RGB")
    else:
        img = Image.new("RGB", size, color)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def image_bytes():
    """``image_bytes(color, size, noise=False, fmt="PNG") -> bytes``."""
    return _png


@pytest.fixture
def image_b64():
    """``image_b64(color, size, noise=False) -> base64 str`` (as in VLMEvalKit TSVs)."""
    return lambda *a, **k: base64.b64encode(_png(*a, **k)).decode("ascii")


@pytest.fixture
def snapshot():
    """``snapshot(name) -> str``: the hand-written expected prompt text (exact bytes, no added newline)."""
    return lambda name: (SNAPSHOTS / name).read_text(encoding="utf-8")
