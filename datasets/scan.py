"""Folder scanning shared by the meta.json generators and the raw-download converters.

Listings are sorted by path and skip hidden files, so every generator is deterministic. Masks are
matched to images by file stem, never by sort order (docs/data.md).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from utils.errors import UserError

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
NORMAL = "good"
# Preferred mask suffixes, in order; any other "_word"/"-word" suffix is accepted after them.
MASK_SUFFIXES = ("_mask", "_gt", "_label", "_labels", "_segmentation", "-mask")
_ALPHA_SUFFIX = re.compile(r"[_-][A-Za-z]+")


def list_images(folder: Path, recursive: bool = False) -> List[Path]:
    """Image files in ``folder`` (and its sub-folders if ``recursive``), sorted by path,
    hidden files skipped."""
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def list_dirs(folder: Path) -> List[Path]:
    """Sub-folders of ``folder``, sorted by name, hidden ones skipped."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _mask_rank(image_stem: str, mask_stem: str) -> Optional[int]:
    """How well a mask stem matches an image stem: 0 exact, 1.. known suffix, None no match."""
    if mask_stem == image_stem:
        return 0
    if not mask_stem.startswith(image_stem):
        return None
    suffix = mask_stem[len(image_stem):]
    if suffix.lower() in MASK_SUFFIXES:
        return 1 + MASK_SUFFIXES.index(suffix.lower())
    return 1 + len(MASK_SUFFIXES) if _ALPHA_SUFFIX.fullmatch(suffix) else None


def match_masks(images: Sequence[Path], masks: Sequence[Path]) -> Dict[Path, Path]:
    """Map each image to its mask by stem (see module doc); images without a mask are absent.

    Two equally good candidates for one image raise :class:`UserError`.
    """
    by_prefix: Dict[str, List[Path]] = {}
    for m in masks:  # index masks under every prefix ending before a "_"/"-" and the full stem
        stem = m.stem
        keys = {stem} | {stem[:i] for i, ch in enumerate(stem) if ch in "_-" and i > 0}
        for key in keys:
            by_prefix.setdefault(key, []).append(m)
    result: Dict[Path, Path] = {}
    for img in images:
        ranked = sorted(((r, m) for m in by_prefix.get(img.stem, [])
                         if (r := _mask_rank(img.stem, m.stem)) is not None), key=lambda t: t[0])
        if not ranked:
            continue
        if len(ranked) > 1 and ranked[0][0] == ranked[1][0]:
            raise UserError(f"image {img} matches several masks ({ranked[0][1].name}, "
                            f"{ranked[1][1].name}); keep one mask per image")
        result[img] = ranked[0][1]
    return result
