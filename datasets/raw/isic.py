"""ISIC 2016 skin-lesion segmentation, task 1 test set (Gutman et al., 2016): every image a lesion."""
from __future__ import annotations

from datasets.raw.base import Protocol, RawDataset
from datasets.raw.common import ImageMaskFolders

FOLDERS = ImageMaskFolders(
    cls="skin", images=("ISBI2016_ISIC_Part1_Test_Data",), masks=("ISBI2016_ISIC_Part1_Test_GroundTruth",),
    names=("ISIC_0000003", "ISIC_0000012"), image_ext=".jpg", mask_ext=".png", mask_suffix="_Segmentation")

DATASET = RawDataset(
    name="isic", title="ISIC 2016", order=40, kind="medical", aliases=("isic2016", "isbi"),
    url="https://challenge.isic-archive.com/data/#2016 (Task 1 test data and ground truth)",
    licence="CC BY-NC 4.0 (ISIC archive)",
    checked="the reference code and Bayes-PFL's published file list (meta_ISIC.json)",
    layout="ISBI2016_ISIC_Part1_Test_Data/ISIC_NNNNNNN.jpg, ISBI2016_ISIC_Part1_Test_GroundTruth/"
           "ISIC_NNNNNNN_Segmentation.png (0/255)",
    protocols=(Protocol("anomalyclip", "the 379 test images, all anomalous, with their lesion masks",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/isbi.py", FOLDERS.build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=FOLDERS.sample)
