"""The method registry: one module per method in this folder, each defining ``METHOD``.

Every module of ``models/methods/`` except ``base`` is a method; its ``METHOD`` (a
:class:`models.methods.base.Method`) is registered under the module's name, which is the
``--method`` value. Nothing else lists the methods: the factory, the scripts, ``train.sh`` /
``test.sh`` and the README's methods table read this registry, so a new method is one new file
here (docs/adding_a_method.md).

    >>> from models import methods
    >>> methods.names(trainable=True)
    ('faprompt', 'bayes_pfl', 'fapfl', 'anomalyclip')
    >>> methods.get("faprompt").recipe.epochs
    15
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional, Tuple

from models.methods.base import Method, OfficialCheckpoint, Paper, Recipe, State
from utils.registry import discover

__all__ = ["Method", "OfficialCheckpoint", "Paper", "Recipe", "UnknownMethod", "detect_official", "get", "names",
           "official", "preset", "registry"]


class UnknownMethod(ValueError):
    """No method of that name is registered."""

    def __init__(self, name: str):
        super().__init__(f"unknown method {name!r}; registered: {', '.join(names())}")
        self.name = name


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[Method, ...]:
    """Import every method module once, in (order, name) order."""
    return discover(__name__, __path__, "METHOD", Method, skip=("base",))


def registry() -> Dict[str, Method]:
    """Every registered method by name, in listing order."""
    return {method.name: method for method in _load()}


def names(trainable: Optional[bool] = None) -> Tuple[str, ...]:
    """Registered names in listing order (only the trainable, or only the training-free ones)."""
    return tuple(m.name for m in _load() if trainable is None or m.trainable == trainable)


def get(name: str) -> Method:
    for method in _load():
        if method.name == name:
            return method
    raise UnknownMethod(name)


def preset(name: str, **fields: Any):
    """The configuration of method ``name`` with ``fields`` on top."""
    return get(name).config(**fields)


def official(name: str, config):
    """``config`` with every official-code behaviour of method ``name`` switched on."""
    return get(name).official_config(config)


def detect_official(payload: Mapping[str, Any]) -> Optional[Tuple[Method, State]]:
    """(method, official state dict) of the first method whose official format ``payload`` is."""
    for method in _load():
        if method.checkpoint is not None:
            state = method.checkpoint.detect(payload)
            if state is not None:
                return method, state
    return None
