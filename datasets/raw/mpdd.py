"""MPDD, the Metal Parts Defect Detection dataset (Jezek et al., ICUMT 2021): six metal parts."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample
from datasets.raw.common import add_mvtec_tree, mvtec_sample

CLASSES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")


def build(root: Path, plan: Plan) -> None:
    """The download is in the MVTec layout; masks are ``NNN_mask.png``."""
    add_mvtec_tree(plan, root, CLASSES, mask_stem=lambda s: s.removesuffix("_mask"))


def sample(root: Path, protocol: str = "") -> Sample:
    return mvtec_sample(root, CLASSES, "scratches", twice="tubes")


DATASET = RawDataset(
    name="mpdd", title="MPDD", order=3,
    url="https://github.com/stepanje/MPDD",
    licence="CC BY-NC-SA 4.0",
    checked="a published file list (xiaozhen228/DictAS@3253312 meta_MPDD.json); no copy of the images",
    layout="CLS/{train/good, test/{good,DEFECT}, ground_truth/DEFECT}/NNN.png, masks NNN_mask.png (MVTec layout)",
    protocols=(Protocol("anomalyclip", "every image of the six parts as shipped", ("FAPrompt", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/mpdd.py", build),),
    sample=sample)
