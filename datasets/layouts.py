"""The meta.json generators of three folder layouts (docs/data.md).

Layouts (one generator each, sharing the folder scan and mask matching below):

* ``mvtec``  - MVTec-AD, MPDD, BTAD, DTD-Synthetic, ...: ``CLS/train/good/*``,
  ``CLS/test/<specie>/*``, ``CLS/ground_truth/<specie>/*``.
* ``folder`` - medical and other sets: ``CLS/test/{good,<abnormal>}/*``, optional
  ``CLS/ground_truth/<abnormal>/*`` and optional ``CLS/train/good/*``.
* ``visa``   - VisA: the split is read from ``split_csv/1cls.csv``.

Masks are matched to images by file stem, never by sort order: a mask matches when its stem
equals the image stem (BTAD ``0000.bmp`` <-> ``0000.png``) or the image stem plus a suffix
such as ``_mask``/``_gt``/``_label`` (MVTec ``000.png`` <-> ``000_mask.png``). A class without
a ``ground_truth`` folder is classification-only (``mask_path`` ""). Record paths are relative
to the root, with forward slashes.

``python -m datasets.prepare --layout {mvtec,visa,folder} --root PATH`` runs them.
"""
from __future__ import annotations

import csv
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional

from tabulate import tabulate

from datasets.scan import NORMAL, list_dirs, list_images, match_masks
from utils.errors import UserError

log = logging.getLogger("zsad.datasets")

LAYOUTS = ("mvtec", "visa", "folder")

Record = Dict[str, Any]
Meta = Dict[str, "OrderedDict[str, List[Record]]"]


def _record(root: Path, img: Path, mask: Optional[Path], cls: str, specie: str,
            anomaly: int) -> Record:
    return {"img_path": img.relative_to(root).as_posix(),
            "mask_path": mask.relative_to(root).as_posix() if mask else "",
            "cls_name": cls, "specie_name": specie, "anomaly": int(anomaly)}


def _scan_class(root: Path, cls_dir: Path) -> Dict[str, List[Record]]:
    """Records of one class in MVTec/folder layout: {"train": [...], "test": [...]}."""
    cls = cls_dir.name
    gt_dir = cls_dir / "ground_truth"
    has_gt = gt_dir.is_dir()
    test: List[Record] = []
    for specie_dir in list_dirs(cls_dir / "test"):
        specie = specie_dir.name
        images = list_images(specie_dir)
        if specie == NORMAL:
            test += [_record(root, p, None, cls, specie, 0) for p in images]
            continue
        masks = match_masks(images, list_images(gt_dir / specie)) if has_gt else {}
        if has_gt:
            unused = len(list_images(gt_dir / specie)) - len(set(masks.values()))
            if unused > 0:
                log.warning("%d masks in %s match no image", unused, gt_dir / specie)
            unmatched = [p.name for p in images if p not in masks]
            if unmatched:
                raise UserError(
                    f"{len(unmatched)} anomalous images in {specie_dir} have no mask in "
                    f"{gt_dir / specie} (e.g. {', '.join(unmatched[:3])}); add the masks or "
                    f"remove {gt_dir} to treat '{cls}' as classification-only")
        test += [_record(root, p, masks.get(p), cls, specie, 1) for p in images]
    train = [_record(root, p, None, cls, NORMAL, 0)
             for p in list_images(cls_dir / "train" / NORMAL)]
    return {"train": train, "test": test}


def _scan_tree(root: Path, layout: str) -> Meta:
    meta: Meta = {"train": OrderedDict(), "test": OrderedDict()}
    for cls_dir in list_dirs(root):
        if not (cls_dir / "test").is_dir():
            log.debug("skipping %s: no test/ folder", cls_dir)
            continue
        recs = _scan_class(root, cls_dir)
        if not recs["test"]:
            log.warning("class %s has no test images in %s; skipped", cls_dir.name,
                        cls_dir / "test")
            continue
        if recs["train"]:
            meta["train"][cls_dir.name] = recs["train"]
        elif layout == "mvtec":
            log.warning("class %s has no %s/train/good images", cls_dir.name, cls_dir)
        meta["test"][cls_dir.name] = recs["test"]
    if not meta["test"]:
        raise UserError(f"no classes found in {root}: expected CLS/test/<specie>/ image folders "
                        f"(layout {layout})")
    return meta


# ---- one generator per layout ---------------------------------------------------------------
def build_mvtec(root: Path) -> Meta:
    """MVTec layout: ``CLS/train/good``, ``CLS/test/<specie>``, ``CLS/ground_truth/<specie>``."""
    return _scan_tree(Path(root), "mvtec")


def build_folder(root: Path) -> Meta:
    """Folder layout: ``CLS/test/{good,<abnormal>}``, optional ground_truth and train/good."""
    return _scan_tree(Path(root), "folder")


def build_visa(root: Path) -> Meta:
    """VisA: records from ``split_csv/1cls.csv`` (object, split, label, image, mask)."""
    root = Path(root)
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise UserError(f"{csv_path} does not exist; pass the VisA root (the folder holding "
                        "split_csv/ and the class folders)")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        need = ["object", "split", "label", "image", "mask"]
        missing_cols = [c for c in need if c not in (reader.fieldnames or [])]
        if missing_cols:
            raise UserError(f"{csv_path} lacks the columns {', '.join(missing_cols)}")
        rows = list(reader)
    meta: Meta = {"train": OrderedDict(), "test": OrderedDict()}
    missing: List[str] = []
    for n, row in enumerate(rows, start=2):
        split, label = row["split"].strip(), row["label"].strip().lower()
        if split not in meta or label not in ("normal", "anomaly"):
            raise UserError(f"{csv_path} line {n}: split must be train/test and label "
                            f"normal/anomaly, got '{split}', '{label}'")
        anomaly = int(label == "anomaly")
        img_rel, mask_rel = row["image"].strip(), (row["mask"] or "").strip()
        if anomaly and not mask_rel:
            raise UserError(f"{csv_path} line {n}: anomalous image {img_rel} has no mask")
        for rel in (img_rel, mask_rel if anomaly else ""):
            if rel and not (root / rel).is_file():
                missing.append(rel)
        cls = row["object"].strip()
        meta[split].setdefault(cls, []).append({
            "img_path": img_rel, "mask_path": mask_rel if anomaly else "", "cls_name": cls,
            "specie_name": "bad" if anomaly else NORMAL, "anomaly": anomaly})
    if missing:
        raise UserError(f"{len(missing)} files listed in {csv_path} do not exist, e.g. "
                        f"{', '.join(missing[:3])}; check --root")
    if not meta["test"]:
        raise UserError(f"no classes found in {csv_path}: it has no test rows")
    return meta


BUILDERS = {"mvtec": build_mvtec, "visa": build_visa, "folder": build_folder}


def build_meta(layout: str, root: Path) -> Meta:
    """Build the meta dict of ``root`` in ``layout``; all input problems raise UserError."""
    if layout not in BUILDERS:
        raise UserError(f"unknown layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset root {root} does not exist or is not a folder")
    return BUILDERS[layout](root)


def summary_table(meta: Meta) -> str:
    """Per-class counts: train good, test good, test anomalous, masks."""
    rows = []
    for cls in meta["test"]:
        test = meta["test"][cls]
        rows.append([cls, len(meta["train"].get(cls, [])),
                     sum(r["anomaly"] == 0 for r in test), sum(r["anomaly"] == 1 for r in test),
                     sum(bool(r["mask_path"]) for r in test)])
    return tabulate(rows, headers=["class", "train good", "test good", "test anomalous", "masks"])
