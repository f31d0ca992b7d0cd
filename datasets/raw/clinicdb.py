"""CVC-ClinicDB (Bernal et al., 2015): 612 colonoscopy frames, each with a polyp mask."""
from __future__ import annotations

from datasets.raw.base import Protocol, RawDataset
from datasets.raw.common import ImageMaskFolders

FOLDERS = ImageMaskFolders(
    cls="colon", images=("Original", "PNG/Original", "images"),
    masks=("Ground Truth", "PNG/Ground Truth", "masks"), names=("1", "2"), image_ext=".tif", mask_ext=".tif")

DATASET = RawDataset(
    name="clinicdb", title="CVC-ClinicDB", order=41, kind="medical", aliases=("cvc-clinicdb", "clinic"),
    url="https://polyp.grand-challenge.org/CVCClinicDB/ (CVC-ClinicDB.zip)",
    licence="research use; cite Bernal et al. 2015",
    checked="the reference code and Bayes-PFL's published file list (meta_ClinicDB.json)",
    layout="Original/N.tif and Ground Truth/N.tif (N = 1..612; the PNG edition: PNG/Original, PNG/Ground Truth; "
           "the PraNet copy: images/, masks/)",
    protocols=(Protocol("anomalyclip",
                        "the 612 frames, all anomalous, with their polyp masks",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/clinicDB.py", FOLDERS.build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=FOLDERS.sample)
