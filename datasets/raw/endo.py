"""Endo: the EndoTect 2020 segmentation test set (HyperKvasir lineage): 200 polyp images with masks."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image, write_mask
from datasets.raw.common import add_image_mask_folders, first_dir

IMAGES = ("images",)
MASKS = ("masks",)


def build(root: Path, plan: Plan) -> None:
    """Every image anomalous with the mask of the same stem; class "colon"."""
    add_image_mask_folders(plan, "colon", first_dir(root, IMAGES, "the images"), first_dir(root, MASKS, "the masks"))


def sample(root: Path, protocol: str = "") -> Sample:
    for name in ("003ab8b5-cf6d-442a-849d-80ddf0d1edaf", "6eacc283-1446-4682-a36a-5a362ecac3ef"):
        write_image(root / IMAGES[0] / f"{name}.jpg", seed=len(name), defect=(6, 6, 20, 16))
        write_mask(root / MASKS[0] / f"{name}.png", box=(6, 6, 20, 16))
    return Sample(image_with_mask=(root / IMAGES[0] /
                                   "6eacc283-1446-4682-a36a-5a362ecac3ef.jpg",
                                   root / MASKS[0] / "6eacc283-1446-4682-a36a-5a362ecac3ef.png"),
                  class_dir=root / IMAGES[0], images=[root / IMAGES[0] / "003ab8b5-cf6d-442a-849d-80ddf0d1edaf.jpg"])


DATASET = RawDataset(
    name="endo", title="EndoTect 2020 (Endo)", order=44, kind="medical", aliases=("endotect", "hyperkvasir"),
    url="https://drive.google.com/file/d/1LNpLkv5ZlEUzr_RPN5rdOHaqk0SkZa3m (EndoTect_2020_Segmentation_Test_Dataset)",
    licence="CC BY 4.0 (HyperKvasir)",
    checked="the reference code and Bayes-PFL's published file list (meta_Endo.json)",
    layout="EndoTect_2020_Segmentation_Test_Dataset/images/<uuid>.jpg and masks/<uuid>.png",
    protocols=(Protocol("anomalyclip",
                        "the 200 test images, all anomalous, with their masks",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/endoTect.py", build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=sample)
