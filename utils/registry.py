"""Discovery of a one-module-per-entry registry (the methods in ``models/methods/``, the dataset
converters in ``datasets/raw/``): every module of a package, except the helpers named, defines
one entry under a fixed attribute, named as the module."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Iterable, Tuple


def discover(package: str, path: Iterable[str], attribute: str, kind: type,
             skip: Iterable[str] = ()) -> Tuple[Any, ...]:
    """Import every module of ``package`` (its ``__path__``) except ``skip`` and private ones, and
    return their ``attribute`` entries sorted by (``order``, ``name``). An entry that is missing,
    not a ``kind``, or named other than its module is a programming error."""
    folder = package.replace(".", "/")
    found = []
    for info in pkgutil.iter_modules(path):
        if info.name in set(skip) or info.name.startswith("_"):
            continue
        entry = getattr(importlib.import_module(f"{package}.{info.name}"), attribute, None)
        if not isinstance(entry, kind):
            raise TypeError(f"{folder}/{info.name}.py defines no {attribute} = {kind.__name__}(...)")
        if entry.name != info.name:
            raise ValueError(f"{folder}/{info.name}.py registers the name {entry.name!r}; an entry's name is its "
                             "module's")
        found.append(entry)
    return tuple(sorted(found, key=lambda e: (e.order, e.name)))
