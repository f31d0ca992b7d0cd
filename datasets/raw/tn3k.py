"""TN3K (Gong et al., 2021): thyroid-nodule ultrasound, the 614 test images with nodule masks."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image, write_mask
from datasets.raw.common import add_image_mask_folders, first_dir

IMAGES = ("test-image",)
MASKS = ("test-mask",)


def build(root: Path, plan: Plan) -> None:
    """The test split: every image anomalous with the mask of the same file name; class "thyroid"."""
    add_image_mask_folders(plan, "thyroid", first_dir(root, IMAGES, "the images"), first_dir(root, MASKS, "the masks"))


def sample(root: Path, protocol: str = "") -> Sample:
    for name in ("0000", "0001"):
        write_image(root / IMAGES[0] / f"{name}.jpg", seed=len(name), defect=(6, 6, 20, 16))
        write_mask(root / MASKS[0] / f"{name}.jpg", box=(6, 6, 20, 16))
    return Sample(image_with_mask=(root / IMAGES[0] /
                                   "0001.jpg",
                                   root / MASKS[0] / "0001.jpg"),
                  class_dir=root / IMAGES[0], images=[root / IMAGES[0] / "0000.jpg"])


DATASET = RawDataset(
    name="tn3k", title="TN3K", order=45, kind="medical", aliases=("thyroid",),
    url="https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation (tn3k)",
    licence="research use; cite Gong et al. 2021",
    checked="the reference code only",
    layout="tn3k/{trainval,test}-image/NNNN.jpg and {trainval,test}-mask/NNNN.jpg; only test-* is used",
    protocols=(Protocol("anomalyclip",
                        "the 614 test images, all anomalous, with their nodule masks",
                        ("FAPrompt", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/tn3k.py", build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=sample)
