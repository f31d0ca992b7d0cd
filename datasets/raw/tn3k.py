"""TN3K (Gong et al., 2021): thyroid-nodule ultrasound, the 614 test images with nodule masks."""
from __future__ import annotations

from datasets.raw.base import Protocol, RawDataset
from datasets.raw.common import ImageMaskFolders

FOLDERS = ImageMaskFolders(
    cls="thyroid", images=("test-image",), masks=("test-mask",), names=("0000", "0001"), image_ext=".jpg",
    mask_ext=".jpg")

DATASET = RawDataset(
    name="tn3k", title="TN3K", order=45, kind="medical", aliases=("thyroid",),
    url="https://github.com/haifangong/TRFE-Net-for-thyroid-nodule-segmentation (tn3k)",
    licence="research use; cite Gong et al. 2021",
    checked="the reference code only",
    layout="tn3k/{trainval,test}-image/NNNN.jpg and {trainval,test}-mask/NNNN.jpg; only test-* is used",
    protocols=(Protocol("anomalyclip",
                        "the 614 test images, all anomalous, with their nodule masks",
                        ("FAPrompt", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/tn3k.py", FOLDERS.build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=FOLDERS.sample)
