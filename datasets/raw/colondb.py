"""CVC-ColonDB (Bernal et al., 2012): 380 colonoscopy frames, each with a polyp mask."""
from __future__ import annotations

from datasets.raw.base import Protocol, RawDataset
from datasets.raw.common import ImageMaskFolders

FOLDERS = ImageMaskFolders(
    cls="colon", images=("images", "Original"), masks=("masks", "Ground Truth"), names=("1", "2"),
    image_ext=".png", mask_ext=".png")

DATASET = RawDataset(
    name="colondb", title="CVC-ColonDB", order=42, kind="medical", aliases=("cvc-colondb",),
    url="https://figshare.com/articles/figure/Polyp_DataSet_zip/21221579 (TestDataset/CVC-ColonDB)",
    licence="research use; cite Bernal et al. 2012",
    checked="the reference code and Bayes-PFL's published file list (meta_ColonDB.json)",
    layout="images/N.png and masks/N.png (N = 1..380)",
    protocols=(Protocol("anomalyclip",
                        "the 380 frames, all anomalous, with their polyp masks",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/colonDB.py", FOLDERS.build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=FOLDERS.sample)
