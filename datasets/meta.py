"""A torch Dataset over an AnomalyCLIP-style ``meta.json`` (docs/data.md).

``meta.json`` = ``{"train": {cls: [RECORD, ...]}, "test": {...}}`` with
``RECORD = {"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}`` and paths relative
to the dataset root. Every input problem found at construction raises :class:`UserError` with
one line naming the file, so a run fails before training or evaluation starts.
"""
from __future__ import annotations

import json
import logging
import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm import tqdm

from datasets.scan import list_images
from datasets.transforms import image_to_tensor, load_image, load_mask, mask_to_pil, mask_to_tensor
from utils.errors import UserError

log = logging.getLogger("zsad.datasets")

RECORD_KEYS = ("img_path", "mask_path", "cls_name", "specie_name", "anomaly")
PREPARE_HINT = "generate it with: python -m datasets.prepare --layout {mvtec,visa,folder} --root"

# augment(pil_image, pil_mask_L, record, dataset) -> (image, mask) or (image, mask, info);
# ``info`` may override "label" and "has_mask" (the mosaic makes a sample anomalous).
Augment = Callable[[Image.Image, Image.Image, Dict[str, Any], "MetaDataset"], tuple]


def _examples(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(str(i) for i in items[:n])


def load_meta(root: Path) -> Dict[str, Any]:
    """Read and sanity-check ``root/meta.json``; raise :class:`UserError` on any problem."""
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        combined = sorted(p.name for p in root.glob("meta_*.json"))
        if combined:  # Bayes-PFL keeps meta_<dataset>.json for several datasets in one folder
            raise UserError(f"{meta_path} does not exist ({', '.join(combined)} is Bayes-PFL's layout of several "
                            f"datasets in one folder); point the path at one dataset's folder and {PREPARE_HINT} "
                            f"{root}/<dataset>")
        raise UserError(f"{meta_path} does not exist; {PREPARE_HINT} {root}")
    try:
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot parse {meta_path} ({err}); regenerate it: {PREPARE_HINT} {root}")
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise UserError(f"{meta_path} is not an AnomalyCLIP meta.json "
                        f"({{split: {{class: [records]}}}}); {PREPARE_HINT} {root}")
    return meta


def _check_records(records: Any, where: str) -> None:
    if not isinstance(records, list):
        raise UserError(f"{where} must be a list of records; regenerate meta.json")
    for rec in records:
        if not isinstance(rec, dict) or any(k not in rec for k in RECORD_KEYS):
            raise UserError(f"{where} has a record without the keys {', '.join(RECORD_KEYS)}: "
                            f"{str(rec)[:120]}; regenerate meta.json")


def holdout_split(records: Sequence[Dict[str, Any]], fraction: float,
                  seed: int = 0) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Split records into (train, val), stratified by (class, label) and deterministic by seed.

    Each (class, label) group sends ``round(fraction * n)`` records to val, but at least one
    record of every non-empty group stays in train. Both lists keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"hold-out fraction must be in [0, 1), got {fraction}")
    groups: "OrderedDict[Tuple[str, int], List[int]]" = OrderedDict()
    for i, rec in enumerate(records):
        groups.setdefault((str(rec["cls_name"]), int(rec["anomaly"])), []).append(i)
    rng = random.Random(seed)
    val_idx = set()
    for key in sorted(groups):
        idx = groups[key]
        n_val = min(int(round(fraction * len(idx))), len(idx) - 1)
        val_idx.update(rng.sample(idx, n_val))
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val


class MetaDataset(Dataset):
    """Images, masks and labels of one split of a dataset root with a ``meta.json``.

    Items are dicts: ``image`` FloatTensor [3, S, S] (CLIP-normalised), ``mask`` FloatTensor
    [S, S] of 0/1, ``label`` int, ``cls_name`` str, ``img_path`` str (absolute), ``has_mask``
    bool (False only for anomalous records without a mask: no pixel metrics for them).

    ``records`` replaces the split's records (e.g. one side of :func:`holdout_split`);
    ``classes`` keeps only those classes (in meta.json order); ``augment`` is a training hook
    called on the PIL image and 0/255 "L" mask before preprocessing (see ``Augment`` above).
    ``check_files`` also reads every image/mask header to catch unreadable files and masks
    whose size differs from their image.
    """

    def __init__(self, root: os.PathLike | str, split: str = "test",
                 classes: Optional[Sequence[str]] = None, image_size: int = 518,
                 augment: Optional[Augment] = None,
                 records: Optional[Sequence[Dict[str, Any]]] = None,
                 check_files: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.meta_path = self.root / "meta.json"
        self.split = split
        self.image_size = int(image_size)
        self.augment = augment
        if not self.root.is_dir():
            raise UserError(f"dataset root {self.root} does not exist or is not a folder; "
                            "check the path")
        if records is None:
            by_class = self._load_split()
        else:
            _check_records(list(records), f"records passed for {self.meta_path}")
            by_class = OrderedDict()
            for rec in records:
                by_class.setdefault(str(rec["cls_name"]), []).append(rec)
        self.classes = self._select_classes(by_class, classes, records is not None)
        self.records: List[Dict[str, Any]] = [r for c in self.classes for r in by_class[c]]
        if not self.records:
            raise UserError(f"no records selected from {self.meta_path} (split '{split}')")
        self._check_paths()
        if check_files:
            self._check_headers()
        log.debug("%s: %d records in %d classes (split %s)", self.meta_path,
                  len(self.records), len(self.classes), split)

    # ---- construction helpers -----------------------------------------------------------
    def _load_split(self) -> "OrderedDict[str, List[Dict[str, Any]]]":
        meta = load_meta(self.root)
        if self.split not in meta:
            raise UserError(f"split '{self.split}' is not in {self.meta_path} "
                            f"(available: {', '.join(meta) or 'none'})")
        by_class = OrderedDict()
        for cls, recs in meta[self.split].items():
            _check_records(recs, f"{self.meta_path} [{self.split}][{cls}]")
            by_class[cls] = recs
        return by_class

    def _select_classes(self, by_class: Dict[str, list], wanted: Optional[Sequence[str]],
                        from_records: bool) -> List[str]:
        available = list(by_class)
        if wanted is None:
            chosen = available
        else:
            if isinstance(wanted, str):
                wanted = [wanted]
            unknown = [c for c in wanted if c not in by_class]
            if unknown:
                raise UserError(f"unknown class '{unknown[0]}' for split '{self.split}' of "
                                f"{self.meta_path} (available: {', '.join(available) or 'none'})")
            chosen = [c for c in available if c in set(wanted)]
        if not chosen:
            raise UserError(f"split '{self.split}' of {self.meta_path} has no classes; "
                            f"{PREPARE_HINT} {self.root}")
        for cls in chosen:
            if not by_class[cls] and not from_records:
                raise UserError(f"class '{cls}' has no records in split '{self.split}' of "
                                f"{self.meta_path}; regenerate meta.json or leave the class out")
        return chosen

    def abs_path(self, rel: str) -> str:
        """Absolute path of a path stored in meta.json (relative to the root)."""
        return str(self.root / rel) if rel else ""

    def _check_paths(self) -> None:
        missing: List[str] = []
        for rec in self.records:
            for key in ("img_path", "mask_path"):
                rel = rec[key]
                if (rel or key == "img_path") and not os.path.isfile(self.abs_path(rel)):
                    missing.append(rel)
        if missing:
            raise UserError(f"{len(missing)} files listed in {self.meta_path} do not exist, e.g. "
                            f"{_examples(missing)}; fix the root or regenerate meta.json")

    def _check_headers(self) -> None:
        mismatched: List[str] = []
        recs = self.records
        for rec in tqdm(recs, desc="checking files", leave=False, disable=len(recs) < 2000):
            img_size = self._header_size(rec["img_path"])
            if rec["mask_path"]:
                mask_size = self._header_size(rec["mask_path"])
                if mask_size != img_size:
                    mismatched.append(f"{rec['mask_path']} {mask_size[0]}x{mask_size[1]} vs "
                                      f"image {img_size[0]}x{img_size[1]}")
        if mismatched:
            raise UserError(f"{len(mismatched)} masks listed in {self.meta_path} differ in size "
                            f"from their image, e.g. {_examples(mismatched, 2)}; fix the masks")

    def _header_size(self, rel: str) -> Tuple[int, int]:
        path = self.abs_path(rel)
        try:
            with Image.open(path) as img:
                return img.size
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise UserError(f"cannot read image {path} listed in {self.meta_path} ({err}); "
                            "replace the file or remove it from meta.json")

    # ---- items -----------------------------------------------------------------------------
    def item_classes(self) -> List[str]:
        """The class name of every item, in order."""
        return [str(r["cls_name"]) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @staticmethod
    def record_has_mask(rec: Dict[str, Any]) -> bool:
        """False for an anomalous record without a mask (classification-only data)."""
        return not (int(rec["anomaly"]) == 1 and not rec["mask_path"])

    def load_pair(self, rec: Dict[str, Any], with_image: bool = True) -> Tuple[Optional[Image.Image], Image.Image]:
        """The record's PIL image (None unless ``with_image``) and its 0/255 "L" mask at the
        image's size."""
        img = load_image(self.abs_path(rec["img_path"])) if with_image else None
        size = img.size if img is not None else self._header_size(rec["img_path"])
        if rec["mask_path"]:
            mask = mask_to_pil(load_mask(self.abs_path(rec["mask_path"])))
            if mask.size != size:  # only reachable with check_files=False
                mask = mask.resize(size, Image.NEAREST)
        else:
            mask = Image.new("L", size, 0)
        return img, mask

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.item(index)

    def item(self, index: int, with_image: bool = True) -> Dict[str, Any]:
        """The record's sample; ``with_image=False`` leaves the image out (the feature cache
        supplies its features), which augmentation cannot do."""
        rec = self.records[index]
        if not with_image and self.augment is not None:
            raise ValueError("an augmented dataset cannot leave out the image")
        img, mask = self.load_pair(rec, with_image)
        label = int(rec["anomaly"])
        has_mask = self.record_has_mask(rec)
        if self.augment is not None:
            out = self.augment(img, mask, rec, self)
            img, mask = out[0], out[1]
            if len(out) > 2 and out[2]:
                label = int(out[2].get("label", label))
                has_mask = bool(out[2].get("has_mask", has_mask))
        item = {
            "mask": mask_to_tensor(np.asarray(mask) > 0, self.image_size),
            "label": label,
            "cls_name": str(rec["cls_name"]),
            "img_path": self.abs_path(rec["img_path"]),
            "has_mask": has_mask,
        }
        if img is not None:
            item["image"] = image_to_tensor(img, self.image_size)
        return item


class ImageList(Dataset):
    """Images without ground truth (``test.py --image``): a file, or every image under a
    folder (sorted); items as :class:`MetaDataset`'s with ``label`` -1, an empty mask and
    ``has_mask`` False. Every file is decoded once here, so a bad one fails before any work."""

    def __init__(self, path: os.PathLike | str, class_name: str, image_size: int = 518):
        root = Path(path).expanduser()
        if root.is_file():
            self.paths, self.root = [root], root.parent
        elif root.is_dir():
            self.paths = list_images(root, recursive=True)
            self.root = root
            if not self.paths:
                raise UserError(f"--image {path}: the folder holds no image files")
        else:
            raise UserError(f"--image {path}: no such file or folder")
        self.class_name, self.image_size = class_name, int(image_size)
        for p in self.paths:
            load_image(p).close()

    def item_classes(self) -> List[str]:
        """The class name of every item (one for all of them)."""
        return [str(self.class_name)] * len(self)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {"image": image_to_tensor(load_image(self.paths[index]), self.image_size),
                "mask": torch.zeros(self.image_size, self.image_size), "label": -1,
                "cls_name": self.class_name, "img_path": str(self.paths[index]), "has_mask": False}


def collate(batch: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Default-collate-like batching that keeps strings and bools as lists/tensors; "image" is
    None for items without one, and an "index" entry (the feature cache's) is kept."""
    out = {
        "image": torch.stack([b["image"] for b in batch]) if "image" in batch[0] else None,
        "mask": torch.stack([b["mask"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "cls_name": [b["cls_name"] for b in batch],
        "img_path": [b["img_path"] for b in batch],
        "has_mask": torch.tensor([b["has_mask"] for b in batch], dtype=torch.bool),
    }
    if "index" in batch[0]:
        out["index"] = torch.tensor([b["index"] for b in batch], dtype=torch.long)
    return out


def combine(parts: Sequence["MetaDataset"]) -> "MetaDataset":
    """One training set of several auxiliary datasets' records (AdaCLIP trains on MVTec-AD and
    ColonDB together): the first dataset's root; the other datasets' paths made absolute (a path
    joined to an absolute one is that path). A class name in two of them is a :class:`UserError`."""
    if len(parts) == 1:
        return parts[0]
    seen: Dict[str, Path] = {}
    records: List[Dict[str, Any]] = []
    for part in parts:
        for cls in part.classes:
            if cls in seen:
                raise UserError(f"class '{cls}' is in {seen[cls]} and in {part.root}; the datasets trained on "
                                "together need distinct class names (--train_classes can leave one out)")
            seen[cls] = part.root
        for rec in part.records:
            rec = dict(rec)
            for key in ("img_path", "mask_path"):
                rec[key] = part.abs_path(rec[key]) if rec[key] else ""
            records.append(rec)
    first = parts[0]
    return MetaDataset(first.root, first.split, image_size=first.image_size, records=records, check_files=False)
