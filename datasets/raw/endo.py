"""Endo: the EndoTect 2020 segmentation test set (HyperKvasir lineage): 200 polyp images with masks."""
from __future__ import annotations

from datasets.raw.base import Protocol, RawDataset
from datasets.raw.common import ImageMaskFolders

FOLDERS = ImageMaskFolders(
    cls="colon", images=("images",), masks=("masks",),
    names=("003ab8b5-cf6d-442a-849d-80ddf0d1edaf", "6eacc283-1446-4682-a36a-5a362ecac3ef"), image_ext=".jpg",
    mask_ext=".png")

DATASET = RawDataset(
    name="endo", title="EndoTect 2020 (Endo)", order=44, kind="medical", aliases=("endotect", "hyperkvasir"),
    url="https://drive.google.com/file/d/1LNpLkv5ZlEUzr_RPN5rdOHaqk0SkZa3m (EndoTect_2020_Segmentation_Test_Dataset)",
    licence="CC BY 4.0 (HyperKvasir)",
    checked="the reference code and Bayes-PFL's published file list (meta_Endo.json)",
    layout="EndoTect_2020_Segmentation_Test_Dataset/images/<uuid>.jpg and masks/<uuid>.png",
    protocols=(Protocol("anomalyclip",
                        "the 200 test images, all anomalous, with their masks",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/endoTect.py", FOLDERS.build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=FOLDERS.sample)
