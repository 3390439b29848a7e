"""core/registry.py: one registry class for everything looked up by name; definitions declare their capabilities."""

from __future__ import annotations

import numpy as np
import pytest

from latentcheck.core.errors import LatentcheckError
from latentcheck.core.registry import Registry, load_plugin


def test_registry_refuses_duplicates_and_names_the_known():
    r: Registry[int] = Registry("widget")
    r.add("b", 1)
    r.add("a", 2)
    assert list(r) == ["b", "a"] and r["a"] == 2 and "b" in r and len(r) == 2 and r.get("zz") is None
    with pytest.raises(LatentcheckError, match="widget 'a' is already registered"):
        r.add("a", 3)
    assert r["a"] == 2  # the first registration stays
    with pytest.raises(LatentcheckError, match=r"unknown widget 'c'; known: a, b"):
        r["c"]
    with pytest.raises(LatentcheckError, match="non-empty string"):
        r.add("", 4)
    del r["b"]
    assert list(r) == ["a"]


@pytest.mark.parametrize("registry_path, register", [
    ("latentcheck.core.interventions", lambda m: m.register("zero", "vector", "dup")(lambda *a: None)),
    ("latentcheck.perturb.treatments", lambda m: m.register("identity", "dup", "none")(lambda *a: None)),
    ("latentcheck.core.extract", lambda m: m.register_extractor("letter")(lambda t, o: None)),
])
def test_every_builtin_registry_refuses_a_taken_name(registry_path, register):
    import importlib

    with pytest.raises(LatentcheckError, match="already registered"):
        register(importlib.import_module(registry_path))


def test_builtin_profiles_are_a_registry():
    from latentcheck.core.profiles import builtin_profiles, get_profile

    profiles = builtin_profiles()
    assert isinstance(profiles, Registry) and "monet" in profiles
    assert get_profile("monet") is not None
    with pytest.raises(LatentcheckError, match="unknown profile 'nope'"):
        get_profile("nope")


def test_intervention_capabilities_replace_name_checks():
    from latentcheck.core.interventions import REGISTRY, parse_spec, sequence_override

    assert parse_spec("index_mean").needs_stats and parse_spec("shared:source=mean").needs_stats
    assert not parse_spec("zero").needs_stats and not parse_spec("swap").needs_stats
    assert [n for n, d in REGISTRY.items() if d.needs_partner] == ["swap"]
    assert [n for n, d in REGISTRY.items() if d.whole_span] == ["drop", "length", "knockout", "placeholder"]
    assert [n for n, d in REGISTRY.items() if d.needs_embedding] == ["placeholder"]
    assert [n for n, d in REGISTRY.items() if d.kind == "attention"] == ["knockout"]
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    new, mask = sequence_override(parse_spec("drop@1"), base, None, "k", 0)
    assert new.shape == (0, 4) and mask is None  # a whole-span intervention ignores @steps
    new, mask = sequence_override(parse_spec("reverse@0,2"), base, None, "k", 0)
    assert mask.tolist() == [True, False, True] and np.array_equal(new, base[::-1])


def test_replay_reads_its_file_through_the_registry(tmp_path):
    from latentcheck.core.interventions import parse_spec, sequence_override

    z = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    new, mask = sequence_override(parse_spec(f"replay:path={tmp_path / 'z.npy'}"), np.zeros((3, 4)), None, "k", 0)
    assert np.array_equal(new, z) and mask is None
    with pytest.raises(LatentcheckError, match="replay: parameter 'path' must name an existing .npy file"):
        sequence_override(parse_spec("replay"), np.zeros((3, 4)), None, "k", 0)


def test_load_plugin_from_a_file_once(tmp_path):
    from latentcheck.core.extract import EXTRACTORS, get_extractor

    f = tmp_path / "my_plugin_ext.py"
    f.write_text("from latentcheck.core.extract import register_extractor\n"
                 "@register_extractor('_plugin_last_word')\n"
                 "def last_word(text, options):\n"
                 "    return text.split()[-1] if text.split() else None\n")
    try:
        mod = load_plugin(str(f))
        assert load_plugin(str(f)) is mod  # a second load does not re-register
        assert get_extractor("_plugin_last_word")("so it is B", None) == "B"
    finally:
        EXTRACTORS.remove("_plugin_last_word")
    with pytest.raises(LatentcheckError, match="no such file"):
        load_plugin(str(tmp_path / "missing.py"))
    with pytest.raises(LatentcheckError, match="no module named 'no_such_plugin_mod'"):
        load_plugin("no_such_plugin_mod")
