"""The embedded default: the toy world (``world.py``), the toy zoo (``zoo.py``) and tiny checkpoints (``tiny.py``).

Importing this package (``latentcheck`` does) registers the zoo's model names (``toy-*``) with the loader and the toy
world's task files as the default data, so core never imports the toy world or zoo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latentcheck.core.loader import register_model_resolver
from latentcheck.core.runner import register_default_data


def zoo_resolver(name: str) -> Path | None:
    """The folder of a zoo model for a ``toy-*`` name (an error when it is unknown or not built); None otherwise."""
    if not name.startswith("toy-"):
        return None
    from latentcheck.toy.zoo import zoo_model_path

    return zoo_model_path(name)


def toy_world_data(split: str, model: Any = None) -> Path:
    """The toy world's task file for ``split`` (written on first use): the world ``model`` was trained on when it is
    a zoo model (name or folder with a zoo card; toy-binding: the binding world), else the zoom world (v3)."""
    from latentcheck.toy.zoo import default_data, world_of

    return default_data(split, world_of(model))


register_model_resolver(zoo_resolver)
register_default_data(toy_world_data)
