"""The fresh-machine check that .ci/run turns on (LATENTCHECK_FRESH_CHECK=1): it must flag a module loaded from the
base interpreter's site-packages and accept modules of the test environment."""

from __future__ import annotations

import sys
import types


def _check(request):
    for plugin in request.config.pluginmanager.get_plugins():
        if hasattr(plugin, "foreign_modules"):
            return plugin
    raise AssertionError("conftest's freshness check is not loaded")


def _module(path: str) -> types.ModuleType:
    m = types.ModuleType("m")
    m.__file__ = path
    return m


def test_flags_a_package_from_the_base_interpreter(request, tmp_path):
    conf = _check(request)
    env, base = tmp_path / "venv", tmp_path / "base" / "site-packages"
    (env / "lib").mkdir(parents=True)
    base.mkdir(parents=True)
    mods = {"ours": _module(str(env / "lib" / "typer.py")), "theirs": _module(str(base / "typer" / "__init__.py")),
            "builtin": types.ModuleType("builtin")}
    assert conf.foreign_modules(mods, str(env), [str(base)]) == ["theirs"]


def test_this_run_imports_nothing_from_outside(request):
    """In CI's venv nothing loaded so far comes from the base interpreter (the same check runs at session end)."""
    conf = _check(request)
    if sys.prefix == sys.base_prefix:
        import pytest

        pytest.skip("not running in a virtualenv")
    assert conf.foreign_modules(sys.modules, sys.prefix, conf.outside_site_dirs()) == []
