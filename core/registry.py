"""One registry class for everything looked up by name: profiles, interventions, treatments, benchmarks, extractors.

A :class:`Registry` maps names to definitions. Registering a name twice is an error (a plugin cannot silently replace
a built-in), looking up an unknown name is a :class:`LatentcheckError` listing the known names (sorted), and
iteration follows registration order (the order ``--list`` prints). Each definition declares its own capabilities
(needs dataset statistics, needs a partner sample, needs a file, parameters with types), so callers ask the
definition and never compare names.

Adding something is one module: define it and register it on the registry of its kind, e.g. ::

    from latentcheck.core.interventions import register

    @register("halve", "vector", "multiply every latent by 0.5")
    def _halve(v, steps, ctx, spec, seed):
        return v * 0.5

A module outside the package is loaded with ``latentcheck --plugin my_module`` (a module name or a ``.py`` file;
repeatable), see :func:`load_plugin`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Generic, Iterator, TypeVar

from latentcheck.core.errors import LatentcheckError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> definition, in registration order. ``what`` names the kind in error messages ("intervention")."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; a name that is already taken is an error."""
        if not isinstance(name, str) or not name:
            raise LatentcheckError(f"{self.what} name must be a non-empty string, got {name!r}")
        if name in self._items:
            raise LatentcheckError(f"{self.what} {name!r} is already registered")
        self._items[name] = item
        return item

    def decorator(self, name: str, make: Callable[[Callable], T] | None = None) -> Callable[[Callable], Callable]:
        """``@registry.decorator(name, make)``: register ``make(fn)`` (or ``fn`` itself) and return ``fn``."""

        def deco(fn: Callable) -> Callable:
            self.add(name, make(fn) if make else fn)
            return fn

        return deco

    def remove(self, name: str) -> T:
        """Unregister ``name`` (tests and plugins that clean up after themselves)."""
        return self._items.pop(name)

    def __delitem__(self, name: str) -> None:
        self.remove(name)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise LatentcheckError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._items.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)

    def values(self):
        return self._items.values()

    def items(self):
        return self._items.items()

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._items)})"


_LOADED: dict[str, object] = {}


def load_plugin(spec: str) -> object:
    """Import a plugin module that registers definitions: a dotted module name, or a path to a ``.py`` file. Loading
    the same plugin twice is a no-op (its registrations would otherwise collide)."""
    key = str(Path(spec).resolve()) if spec.endswith(".py") else spec
    if key in _LOADED:
        return _LOADED[key]
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise LatentcheckError(f"--plugin {spec}: no such file")
        name = f"latentcheck_plugin_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise LatentcheckError(f"--plugin {spec}: cannot load it as a Python module")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as e:
            if e.name and spec.startswith(e.name):
                raise LatentcheckError(f"--plugin {spec}: no module named {e.name!r}") from None
            raise
    _LOADED[key] = module
    return module


__all__ = ["Registry", "load_plugin"]
