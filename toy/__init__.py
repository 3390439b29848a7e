"""The embedded default: the toy world (``world.py``), the toy zoo (``zoo.py``) and tiny checkpoints (``tiny.py``).

Importing this package (``latentcheck`` does) registers the zoo's model names (``toy-*``) with the loader and the toy
world's task files as the default data, so core never imports the toy world or zoo.
"""

from __future__ import annotations

from pathlib import Path

from latentcheck.core.loader import register_model_resolver
from latentcheck.core.runner import register_default_data


def zoo_resolver(name: str) -> Path | None:
    """The folder of a zoo model for a ``toy-*`` name (an error when it is unknown or not built); None otherwise."""
    if not name.startswith("toy-"):
        return None
    from latentcheck.toy.zoo import zoo_model_path

    return zoo_model_path(name)


def toy_world_data(split: str) -> Path:
    """The toy world's task file for ``split`` (written on first use)."""
    from latentcheck.toy.zoo import default_data

    return default_data(split)


register_model_resolver(zoo_resolver)
register_default_data(toy_world_data)
