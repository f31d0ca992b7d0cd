"""BTAD, the beanTech anomaly detection set (Mishra et al., 2021): three industrial products."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image, write_mask
from datasets.raw.common import add_mvtec_tree

CLASSES = ("01", "02", "03")
# The download mixes formats: images .bmp (01, 03) or .png (02); masks .png (01, 02) or .bmp (03).
FORMATS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


def build(root: Path, plan: Plan) -> None:
    """MVTec layout with ``ok`` for normal and ``ko`` for anomalous; masks share the image stem."""
    add_mvtec_tree(plan, root, CLASSES, normal="ok")


def sample(root: Path, protocol: str = "") -> Sample:
    for cls, (image_ext, mask_ext) in FORMATS.items():
        for i in range(2):
            write_image(root / cls / "train/ok" / f"{i:04d}{image_ext}", seed=i)
        write_image(root / cls / "test/ok" / f"0000{image_ext}", seed=3)
        for i in range(2):
            write_image(root / cls / "test/ko" / f"{i:04d}{image_ext}", seed=5 + i, defect=(4, 4, 12, 10))
            write_mask(root / cls / "ground_truth/ko" / f"{i:04d}{mask_ext}")
    return Sample(image_with_mask=(root / "03/test/ko/0001.bmp", root / "03/ground_truth/ko/0001.bmp"),
                  class_dir=root / "02", images=[root / "02/test/ko/0000.png"])


DATASET = RawDataset(
    name="btad", title="BTAD", order=4,
    url="https://avires.dimi.uniud.it/papers/btad/btad.zip (BTech_Dataset_transformed)",
    licence="CC BY-SA 4.0",
    checked="the reference code and Bayes-PFL's published file list (meta_BTAD.json)",
    layout="{01,02,03}/{train/ok, test/{ok,ko}, ground_truth/ko}/NNNN.{bmp,png}: images .bmp in 01 and 03, .png "
           "in 02; masks .png in 01 and 02, .bmp in 03, named as their image",
    protocols=(Protocol("anomalyclip", "every image of the three products as shipped (ok normal, ko anomalous)",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/btad.py", build),),
    notes="Bayes-PFL names the products metal1 (01), wood (02) and metal2 (03); its counts are the same.",
    sample=sample)
