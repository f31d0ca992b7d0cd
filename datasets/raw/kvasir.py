"""Kvasir-SEG (Jha et al., MMM 2020): 1000 gastrointestinal polyp images with masks."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image, write_mask
from datasets.raw.common import add_image_mask_folders, first_dir

IMAGES = ("images",)
MASKS = ("masks",)


def build(root: Path, plan: Plan) -> None:
    """Every image anomalous with the mask of the same file name; class "colon"."""
    add_image_mask_folders(plan, "colon", first_dir(root, IMAGES, "the images"), first_dir(root, MASKS, "the masks"))


def sample(root: Path, protocol: str = "") -> Sample:
    for name in ("cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4"):
        write_image(root / IMAGES[0] / f"{name}.jpg", seed=len(name), defect=(6, 6, 20, 16))
        write_mask(root / MASKS[0] / f"{name}.jpg", box=(6, 6, 20, 16))
    return Sample(image_with_mask=(root / IMAGES[0] /
                                   "cju0qoxqj9q6s0835b43399p4.jpg",
                                   root / MASKS[0] / "cju0qoxqj9q6s0835b43399p4.jpg"),
                  class_dir=root / IMAGES[0], images=[root / IMAGES[0] / "cju0qkwl35piu0993l0dewei2.jpg"])


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
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/kvasir.py", build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=sample)
