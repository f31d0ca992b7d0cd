"""ISIC 2016 skin-lesion segmentation, task 1 test set (Gutman et al., 2016): every image a lesion."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image, write_mask
from datasets.raw.common import add_image_mask_folders, first_dir

IMAGES = ("ISBI2016_ISIC_Part1_Test_Data",)
MASKS = ("ISBI2016_ISIC_Part1_Test_GroundTruth",)


def build(root: Path, plan: Plan) -> None:
    """The 379 test images, each anomalous with ``<stem>_Segmentation.png``; class "skin"."""
    add_image_mask_folders(plan, "skin", first_dir(root, IMAGES, "the test images"),
                           first_dir(root, MASKS, "the test masks"),
                           mask_stem=lambda s: s.removesuffix("_Segmentation"))


def sample(root: Path, protocol: str = "") -> Sample:
    for i in (3, 12):
        write_image(root / IMAGES[0] / f"ISIC_{i:07d}.jpg", seed=i, defect=(6, 6, 20, 16))
        write_mask(root / MASKS[0] / f"ISIC_{i:07d}_Segmentation.png", box=(6, 6, 20, 16))
    return Sample(image_with_mask=(root / IMAGES[0] / "ISIC_0000012.jpg",
                                   root / MASKS[0] / "ISIC_0000012_Segmentation.png"),
                  class_dir=root / IMAGES[0], images=[root / MASKS[0] / "ISIC_0000003_Segmentation.png"])


DATASET = RawDataset(
    name="isic", title="ISIC 2016", order=40, kind="medical", aliases=("isic2016", "isbi"),
    url="https://challenge.isic-archive.com/data/#2016 (Task 1 test data and ground truth)",
    licence="CC BY-NC 4.0 (ISIC archive)",
    checked="the reference code and Bayes-PFL's published file list (meta_ISIC.json)",
    layout="ISBI2016_ISIC_Part1_Test_Data/ISIC_NNNNNNN.jpg, ISBI2016_ISIC_Part1_Test_GroundTruth/"
           "ISIC_NNNNNNN_Segmentation.png (0/255)",
    protocols=(Protocol("anomalyclip", "the 379 test images, all anomalous, with their lesion masks",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/isbi.py", build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=sample)
