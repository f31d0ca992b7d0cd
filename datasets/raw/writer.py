"""Write a converter's plan: the output folder, its meta.json and its provenance file.

The raw download is only read. Every file of the plan becomes a symbolic link to its source (the
default: no space used, the download must stay where it is) or a copy (``--copy``); computed
images (crops, tiles, converted masks) are written as PNG. The folder is built under a
temporary name beside ``--out`` and swapped into place at the end, so an error leaves any
earlier output as it was, and a second run gives the same meta.json byte for byte.
``prepare.json`` records the dataset, the protocol, the source folder and the counts; a
folder without it is not ours, and is never replaced.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict

from PIL import Image
from tqdm import tqdm

from datasets.raw.base import Derived, Plan
from utils.errors import UserError
from utils.io import write_json

log = logging.getLogger("zsad.datasets")

PROVENANCE = "prepare.json"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out(out: Path, root: Path) -> None:
    """Refuse an output folder that overlaps the download or holds something not ours."""
    if _inside(out, root):
        raise UserError(f"--out {out} is inside the raw download {root}; choose a folder outside it "
                        "(the download is never written to)")
    if _inside(root, out):
        raise UserError(f"--out {out} contains the raw download {root}; choose a folder beside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PROVENANCE).is_file():
        raise UserError(f"--out {out} is not empty and was not written by datasets.prepare (no {PROVENANCE}); "
                        "choose a new folder or empty it")


def _materialise(src, dest: Path, copy: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, Derived):
        try:
            pixels = src.make(src.src)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {src.src} ({err}); replace it with the file from the download")
        Image.fromarray(pixels).save(dest, format="PNG")
    elif copy:
        shutil.copyfile(src, dest)  # not copy2: a read-only source must not give read-only copies
    else:
        os.symlink(Path(src).resolve(), dest)


def sorted_meta(plan: Plan) -> Dict[str, "OrderedDict[str, list]"]:
    """meta.json content: classes sorted by name, records in the converter's (sorted) order."""
    return {split: OrderedDict(sorted(classes.items())) for split, classes in plan.meta.items()}


def write_plan(plan: Plan, out: Path, provenance: Dict[str, Any], copy: bool = False) -> Path:
    """Write ``plan`` to ``out`` (see module doc); return the meta.json path."""
    out = Path(out).expanduser().absolute()
    check_out(out.resolve(), plan.root.resolve())
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise UserError(f"cannot write under --out {out} ({err.strerror}); choose a writable folder") from None
    try:
        for rel, src in tqdm(plan.files.items(), desc=f"writing {out.name}", unit="file",
                             disable=len(plan.files) < 200):
            _materialise(src, tmp / rel, copy)
        write_json(tmp / "meta.json", sorted_meta(plan))
        write_json(tmp / PROVENANCE, {**provenance, "files": "copies" if copy else "symbolic links"})
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        if isinstance(err, OSError):  # a full disk, a vanished folder: the earlier output is back in place
            raise UserError(f"writing {out} failed ({err.strerror or err}); nothing changed there") from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out / "meta.json"
