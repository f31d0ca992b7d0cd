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
import importlib
import pkgutil
from typing import Dict, Tuple

from datasets.raw.base import RawDataset
from utils.errors import UserError

_NOT_DATASETS = frozenset({"base", "common", "counts", "writer"})


@functools.lru_cache(maxsize=None)
def _load() -> Tuple[RawDataset, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_DATASETS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        dataset = getattr(module, "DATASET", None)
        if not isinstance(dataset, RawDataset):
            raise TypeError(f"datasets/raw/{info.name}.py defines no DATASET = RawDataset(...)")
        if dataset.name != info.name:
            raise ValueError(f"datasets/raw/{info.name}.py registers {dataset.name!r}; "
                             "a dataset's name is its module's")
        found.append(dataset)
    return tuple(sorted(found, key=lambda d: (d.order, d.name)))


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
