"""Kvasir-SEG (Jha et al., MMM 2020): 1000 gastrointestinal polyp images with masks."""
from __future__ import annotations

from datasets.raw.base import Protocol, RawDataset
from datasets.raw.common import ImageMaskFolders

FOLDERS = ImageMaskFolders(
    cls="colon", images=("images",), masks=("masks",),
    names=("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4"), image_ext=".jpg", mask_ext=".jpg")

DATASET = RawDataset(
    name="kvasir", title="Kvasir-SEG", order=43, kind="medical", aliases=("kvasir-seg",),
    url="https://datasets.simula.no/kvasir-seg/ (kvasir-seg.zip)",
    licence="research and educational use (Simula)",
    checked=("a real partial copy (5 images with their masks, nickyisadog/latent-diffusion-inpainting@4fa007b "
             "Kvasir-SEG/): converted, layout and names as expected"),
    layout="Kvasir-SEG/images/<id>.jpg and Kvasir-SEG/masks/<id>.jpg (JPEG masks: binarised > 0), kavsir_bboxes.json",
    protocols=(Protocol("anomalyclip",
                        "every image, all anomalous, with its polyp mask",
                        ("FAPrompt", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/kvasir.py", FOLDERS.build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=FOLDERS.sample)
