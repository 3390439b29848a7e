"""transformers forward-compatibility: no deprecated call path (no FutureWarning reaches the user), and the declared
transformers range is the one CI tests."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from latentcheck.core.engine import Condition, Engine, Request
from latentcheck.core.interventions import parse_spec
from latentcheck.core.prompts import build_prompt, option_token_ids

from ..conftest import make_image  # noqa: TID252 - tests share the image helper

ROOT = Path(__file__).resolve().parents[2]


def test_engine_paths_emit_no_future_warning(load_tiny):
    lm = load_tiny("monet", "monet")
    p = build_prompt(lm, "s", "What colour is the circle?\nA. red\nB. green", make_image(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eng = Engine(lm, capture_logits=True)
        tr = eng.run([Request(p, [Condition(), Condition("zero", parse_spec("zero"))], force_latent=True,
                              option_ids=option_token_ids(lm, 2), max_new_tokens=6)])[0][0]
        eng.replay_logits(p, tr)
    bad = [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
           and "transformers" in str(w.filename)]
    assert not bad, bad


def test_declared_transformers_range_is_the_tested_minor():
    """CI installs from pyproject: a range of one minor means CI tests its lowest and newest allowed minor."""
    import transformers
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    text = (ROOT / "pyproject.toml").read_text()
    spec = SpecifierSet(re.search(r'"transformers([^"]+)"', text).group(1))
    installed = Version(transformers.__version__)
    assert installed in spec
    lows = [Version(s.version) for s in spec if s.operator == ">="]
    highs = [Version(s.version) for s in spec if s.operator == "<"]
    assert lows and highs
    assert (highs[0].major, highs[0].minor) == (lows[0].major, lows[0].minor + 1)
