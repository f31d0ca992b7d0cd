"""CVC-ClinicDB (Bernal et al., 2015): 612 colonoscopy frames, each with a polyp mask."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image, write_mask
from datasets.raw.common import add_image_mask_folders, first_dir

IMAGES = ("Original", "PNG/Original", "images")
MASKS = ("Ground Truth", "PNG/Ground Truth", "masks")


def build(root: Path, plan: Plan) -> None:
    """Every frame anomalous with the mask of the same file name; class "colon"."""
    add_image_mask_folders(plan, "colon", first_dir(root, IMAGES, "the images"), first_dir(root, MASKS, "the masks"))


def sample(root: Path, protocol: str = "") -> Sample:
    for name in ("1", "2"):
        write_image(root / IMAGES[0] / f"{name}.tif", seed=len(name), defect=(6, 6, 20, 16))
        write_mask(root / MASKS[0] / f"{name}.tif", box=(6, 6, 20, 16))
    return Sample(image_with_mask=(root / IMAGES[0] /
                                   "2.tif",
                                   root / MASKS[0] / "2.tif"),
                  class_dir=root / IMAGES[0], images=[root / IMAGES[0] / "1.tif"])


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
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/clinicDB.py", build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=sample)
