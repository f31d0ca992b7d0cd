"""Converters from each dataset's original download: one module per dataset in this folder.

Every module except ``base``, ``common``, ``counts`` and ``writer`` is a dataset; its ``DATASET`` (a
:class:`datasets.raw.base.RawDataset`) is registered under the module's name, the
``--dataset`` value of ``python -m datasets.prepare`` (docs/datasets.md).

    >>> from datasets import raw
    >>> raw.get("headct").default.name
    'adaclip'
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

from datasets.raw.base import RawDataset
from utils.errors import UserError
from utils.registry import discover

_NOT_DATASETS = frozenset({"base", "common", "counts", "writer"})


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[RawDataset, ...]:
    """Import every dataset module once, in (order, name) order."""
    return discover(__name__, __path__, "DATASET", RawDataset, skip=_NOT_DATASETS)


def registry() -> Dict[str, RawDataset]:
    """Every dataset by name, industrial first, in the papers' table order."""
    return {d.name: d for d in _load()}


def names() -> Tuple[str, ...]:
    return tuple(d.name for d in _load())


def get(name: str) -> RawDataset:
    """The dataset of that name or alias (case-insensitive); :class:`UserError` otherwise."""
    key = name.strip().lower()
    for dataset in _load():
        if key == dataset.name or key in dataset.aliases:
            return dataset
    raise UserError(f"--dataset {name} is not known; choose one of {', '.join(names())} "
                    "(or --layout folder for your own data)")
