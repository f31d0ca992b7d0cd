"""KolektorSDD2 (Bozic et al., 2021): 3335 surface images of electrical commutators, 356 with defects."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Derived, Plan, Protocol, RawDataset, Sample, load_array, mask_above, need_images, \
    write_image, write_mask
from utils.errors import UserError

CLASS = "Metal"  # Bayes-PFL's class name


def build(root: Path, plan: Plan) -> None:
    """Every image of train/ and test/ whose ``NNNNN_GT.png`` has a defect pixel is anomalous (mask
    binarised at > 128, as Bayes-PFL does); as many defect-free images are taken as normal, the first
    ones in (split, name) order. Bayes-PFL drew its normal images from a renumbered copy whose
    mapping to the download's names is not published: the counts match, the chosen normal images may
    not (its release DATA_three.zip holds the exact files)."""
    pairs = []
    for split in ("train", "test"):
        files = need_images(root / split, f"the {split} images")
        gts = {p.stem[:-3]: p for p in files if p.stem.endswith("_GT")}
        images = [p for p in files if not p.stem.endswith("_GT")]
        stray = sorted(set(gts) - {p.stem for p in images})
        if stray:
            raise UserError(f"{gts[stray[0]]} (a mask) has no image {stray[0]}.png; restore it from the download")
        for img in images:
            if img.stem not in gts:
                raise UserError(f"{img} has no mask {img.stem}_GT.png beside it; restore it from the download")
            pairs.append((split, img, gts[img.stem]))
    if not pairs:
        raise UserError(f"{root}/train and {root}/test hold no NNNNN.png images; is --root the KolektorSDD2 "
                        "download?")
    has_defect = [load_array(g, gray=True).max() > 0 for _, _, g in pairs]
    defective = [p for p, d in zip(pairs, has_defect) if d]
    clean = [p for p, d in zip(pairs, has_defect) if not d]
    for split, img, gt in defective:
        plan.add("test", CLASS, "anomaly", 1, img, Derived(gt, mask_above(128), "> 128"), name=f"{split}_{img.name}")
    for split, img, _ in clean[:len(defective)]:
        plan.add("test", CLASS, "good", 0, img, name=f"{split}_{img.name}")


def sample(root: Path, protocol: str = "") -> Sample:
    for split, ids in (("train", (10000, 10001, 10002)), ("test", (20000, 20001))):
        for n in ids:
            defect = n in (10001, 20000)
            write_image(root / split / f"{n}.png", size=(20, 50), seed=n, defect=(5, 20, 15, 30) if defect else None)
            write_mask(root / split / f"{n}_GT.png", size=(20, 50), box=(5, 20, 15, 30), value=255 if defect else 0)
    return Sample(image_with_mask=(root / "test/20000.png", root / "test/20000_GT.png"), class_dir=root / "test",
                  images=[root / "train/10002.png"])


DATASET = RawDataset(
    name="ksdd2", title="KolektorSDD2", order=12, aliases=("kolektorsdd2", "ksdd-2"),
    url="https://www.vicos.si/resources/kolektorsdd2/",
    licence="CC BY-NC-SA 4.0",
    checked="the reference code and Bayes-PFL's published file list (meta_KSDD2.json)",
    layout="{train,test}/NNNNN.png (RGB, about 230x630) with NNNNN_GT.png (defect mask; empty for good images)",
    protocols=(Protocol("bayes-pfl", "every defective image of both splits anomalous, as many defect-free ones "
                                     "normal (the first in name order); masks at > 128", ("Bayes-PFL",),
                        "xiaozhen228/Bayes-PFL@8f155a0:dataset/datasets/KSDD2.py (from its pos/neg copy)", build),),
    notes="Bayes-PFL's own copy (DATA_three.zip) is already in the MVTec layout: prepare it with --layout mvtec "
          "to test on its exact files.",
    sample=sample)
