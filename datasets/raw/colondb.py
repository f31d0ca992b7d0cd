"""CVC-ColonDB (Bernal et al., 2012): 380 colonoscopy frames, each with a polyp mask."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image, write_mask
from datasets.raw.common import add_image_mask_folders, first_dir

IMAGES = ("images", "Original")
MASKS = ("masks", "Ground Truth")


def build(root: Path, plan: Plan) -> None:
    """Every frame anomalous with the mask of the same file name; class "colon"."""
    add_image_mask_folders(plan, "colon", first_dir(root, IMAGES, "the images"), first_dir(root, MASKS, "the masks"))


def sample(root: Path, protocol: str = "") -> Sample:
    for name in ("1", "2"):
        write_image(root / IMAGES[0] / f"{name}.png", seed=len(name), defect=(6, 6, 20, 16))
        write_mask(root / MASKS[0] / f"{name}.png", box=(6, 6, 20, 16))
    return Sample(image_with_mask=(root / IMAGES[0] /
                                   "2.png",
                                   root / MASKS[0] / "2.png"),
                  class_dir=root / IMAGES[0], images=[root / IMAGES[0] / "1.png"])


DATASET = RawDataset(
    name="colondb", title="CVC-ColonDB", order=42, kind="medical", aliases=("cvc-colondb",),
    url="https://figshare.com/articles/figure/Polyp_DataSet_zip/21221579 (TestDataset/CVC-ColonDB)",
    licence="research use; cite Bernal et al. 2012",
    checked="the reference code and Bayes-PFL's published file list (meta_ColonDB.json)",
    layout="images/N.png and masks/N.png (N = 1..380)",
    protocols=(Protocol("anomalyclip",
                        "the 380 frames, all anomalous, with their polyp masks",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/colonDB.py", build),),
    notes="No normal images: image-level metrics are n/a.",
    sample=sample)
