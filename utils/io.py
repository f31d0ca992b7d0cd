"""Atomic file writes, and the one safe way we read torch files.

Everything is written to a temporary file in the destination folder and moved into place with
``os.replace`` (atomic on POSIX and Windows when source and target share a file system), so a
reader never sees a half-written result or checkpoint. The file gets the permissions a plain
``open`` would give it (``0666`` less the umask), not ``mkstemp``'s private ``0600``.

:func:`torch_load` reads with ``weights_only=True``: tensors, numbers, strings and containers
only; a pickle that names any other Python object is refused before anything runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Union

from utils.errors import UserError, first_sentence

PathLike = Union[str, os.PathLike]


def current_umask() -> int:
    """The process umask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide results from colleagues
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


class UnsafeFileError(UserError):
    """A torch file whose pickle names Python objects that safe loading refuses."""

    def __init__(self, message: str, refused: str):
        super().__init__(message)
        self.refused = refused


def torch_load(path: PathLike, where: str, kind: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; failures raise :class:`UserError`
    naming ``where`` (e.g. ``"--checkpoint_path x.pth"``) and ``kind`` (what the file should
    be). There is no unsafe fallback."""
    import pickle

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes would break the one-line error
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        refused = re.search(r"GLOBAL (\S+)", text)
        if refused:
            name = refused.group(1)
            raise UnsafeFileError(f"{where}: refused, the file would create the Python object {name} when "
                                  "loaded (it could run code); only files of tensors and plain values are "
                                  "loaded", name) from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        raise UserError(f"{where}: not a readable {kind} ({detail.group(1) if detail else first_sentence(err)})"
                        ) from None
    except Exception as err:  # torch raises many types for a file that is no torch file
        raise UserError(f"{where}: not a readable {kind} ({first_sentence(err)})") from None
