"""RSDD, the Rail Surface Defect Datasets (Gan et al., 2017): Type-I express and Type-II heavy-haul rails."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Derived, Plan, Protocol, RawDataset, Sample, mask_above, mask_for, need_dir, \
    need_images, unused_masks, write_image, write_mask
from datasets.raw.common import first_dir
from datasets.scan import list_dirs

TYPES = {"Type-I RSDDs dataset": "type_I", "Type-II RSDDs dataset": "type_II"}


def build_raw(root: Path, plan: Plan) -> None:
    """The original rail images, every one with a defect, and their ground truth binarised at > 128
    (JPEG masks); one class per rail type. No normal images: image metrics are n/a."""
    for folder, cls in TYPES.items():
        top = need_dir(root / folder, f"the {cls} rails")
        images = need_images(top / "Rail surface images", f"the {cls} rail images")
        masks_dir = first_dir(top, ("GroundTruth", "Ground Truth"), f"the {cls} ground truth")
        masks = {m.stem: m for m in need_images(masks_dir, f"the {cls} ground truth")}
        for img in images:
            plan.add("test", cls, "defect", 1, img, Derived(mask_for(img, masks, masks_dir), mask_above(128), "> 128"))
        unused_masks(masks, [masks[i.stem] for i in images])


def build_release(root: Path, plan: Plan) -> None:
    """Bayes-PFL's own copy (RSDD/ of its DATA_three.zip): crops of both rail types, already in the
    MVTec layout (``Metal15/test/{good,anomaly}``, ``ground_truth/anomaly/<name>.png``). Its crops are
    random and unpublished, so this copy is the only way to its figures."""
    top = root / "RSDD" if (root / "RSDD").is_dir() else root
    classes = [d for d in list_dirs(top) if (d / "test").is_dir()]
    if not classes:
        need_dir(top / "Metal15" / "test", "Bayes-PFL's RSDD copy (Metal15/test)")
    for cls_dir in classes:
        for img in need_images(cls_dir / "test" / "good", f"the normal crops of {cls_dir.name}"):
            plan.add("test", cls_dir.name, "good", 0, img)
        gt = cls_dir / "ground_truth" / "anomaly"
        masks = {m.stem: m for m in need_images(gt, f"the masks of {cls_dir.name}")}
        images = need_images(cls_dir / "test" / "anomaly", f"the defect crops of {cls_dir.name}")
        for img in images:
            plan.add("test", cls_dir.name, "anomaly", 1, img, mask_for(img, masks, gt))
        unused_masks(masks, [masks[i.stem] for i in images])


def sample(root: Path, protocol: str = "") -> Sample:
    if protocol == "bayes-pfl":  # Bayes-PFL's copy
        release = root / "RSDD" / "Metal15"
        for i in range(2):
            stem = f"RSDD_I-metal-defect-00000{i}_{i + 2:010d}"
            write_image(release / "test/good" / f"RSDD_I-metal-null-00015{i}_{i:010d}.bmp", size=(16, 16), seed=i)
            write_image(release / "test/anomaly" / f"{stem}.bmp", size=(16, 16), seed=i, defect=(4, 4, 8, 8))
            write_mask(release / "ground_truth/anomaly" / f"{stem}.png", size=(16, 16), box=(4, 4, 8, 8))
        (release / "train/good").mkdir(parents=True)
        return Sample(image_with_mask=(release / "test/anomaly" / f"{stem}.bmp",
                                       release / "ground_truth/anomaly" / f"{stem}.png"),
                      class_dir=release / "test" / "good",
                      images=[release / "test/good/RSDD_I-metal-null-000150_0000000000.bmp"])
    for folder, size in (("Type-I RSDDs dataset", (16, 100)), ("Type-II RSDDs dataset", (6, 125))):
        for i in range(1, 3):
            write_image(root / folder / "Rail surface images" / f"rail_{i}.jpg", size=size, seed=i, gray=True,
                        defect=(1, 40, 5, 60))
            write_mask(root / folder / "GroundTruth" / f"rail_{i}.jpg", size=size, box=(1, 40, 5, 60))
    return Sample(image_with_mask=(root / "Type-II RSDDs dataset/Rail surface images/rail_2.jpg",
                                   root / "Type-II RSDDs dataset/GroundTruth/rail_2.jpg"),
                  class_dir=root / "Type-I RSDDs dataset",
                  images=[root / "Type-I RSDDs dataset/Rail surface images/rail_1.jpg"])


DATASET = RawDataset(
    name="rsdd", title="RSDD", order=13, aliases=("rsdds",),
    url="Gan et al., IEEE Sensors J. 2017 (mirrors only); Bayes-PFL's copy: its README's DATA_three.zip",
    licence="research use; no licence stated",
    checked="the reference code and Bayes-PFL's published file list (meta_RSDD.json)",
    layout="'Type-I RSDDs dataset'/{Rail surface images,GroundTruth}/*.jpg (67 images, 160x1000) and "
           "'Type-II RSDDs dataset'/... (128 images, 55x1250); every image has a defect",
    protocols=(Protocol("raw", "the original images of both rail types, all anomalous, ground truth at > 128",
                        ("none of the three (the source's own images)",),
                        "Gan et al. 2017 (the released images)", build_raw),
               Protocol("bayes-pfl", "Bayes-PFL's copy as it ships: 387 defect crops and 387 defect-free crops",
                        ("Bayes-PFL",), "xiaozhen228/Bayes-PFL@8f155a0:dataset/datasets/RSDD.py (README: "
                                        "DATA_three.zip)", build_release)),
    notes="Bayes-PFL's figures come from random crops it made and did not publish: they cannot be rebuilt from "
          "the original images; prepare its copy with --protocol bayes-pfl --root <DATA_three>/RSDD.",
    sample=sample)
