"""Atomic file writes: a reader never sees a half-written result or checkpoint.

Everything is written to a temporary file in the destination folder and moved into place with
``os.replace`` (atomic on POSIX and Windows when source and target share a file system).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: PathLike, text: str) -> None:
    """Atomically write a text file (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    """Atomically write ``obj`` as JSON."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_bytes(path: PathLike, data: bytes) -> None:
    """Atomically write a binary file."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def torch_save(obj: Any, path: PathLike) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path``."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
