"""DTD-Synthetic (Aota et al., WACV 2023): 12 texture classes of DTD with synthetic defects."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample
from datasets.raw.common import add_mvtec_tree, mvtec_sample

CLASSES = ("Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037", "Stratified_154",
           "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127")


def build(root: Path, plan: Plan) -> None:
    """The download is in the MVTec layout (``test/{good,bad}``, masks ``NNN_mask.png``)."""
    add_mvtec_tree(plan, root, CLASSES, mask_stem=lambda s: s.removesuffix("_mask"))


def sample(root: Path, protocol: str = "") -> Sample:
    return mvtec_sample(root, CLASSES, "bad", twice="Mesh_114")


DATASET = RawDataset(
    name="dtd", title="DTD-Synthetic", order=8, aliases=("dtd-synthetic", "dtd_synthetic"),
    url="https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1 (Aota et al.)",
    licence="research use (DTD textures: research-only; defects by Aota et al.)",
    checked="the reference code and Bayes-PFL's published file list (meta_DTD.json)",
    layout="CLASS_NNN/{train/good, test/{good,bad}, ground_truth/bad}/NNN.png, masks NNN_mask.png (MVTec layout)",
    protocols=(Protocol("anomalyclip", "every image of the 12 texture classes as shipped",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/DTD.py", build),),
    notes="Bayes-PFL renames the classes (Woven_127 woven1, Woven_125 woven2, Woven_104 woven3, Woven_068 woven4, "
          "Woven_001 woven5, Matted_069 matted1, Marbled_078 marbled2, ...); the images are the same.",
    sample=sample)
