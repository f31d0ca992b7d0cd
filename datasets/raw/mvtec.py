"""MVTec AD (Bergmann et al., CVPR 2019): 15 object and texture classes, pixel masks."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image, write_mask
from datasets.raw.common import add_mvtec_tree

CLASSES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
           "tile", "toothbrush", "transistor", "wood", "zipper")


def build(root: Path, plan: Plan) -> None:
    """The download is already in the MVTec layout; masks are ``NNN_mask.png`` beside ``NNN.png``."""
    present = [c for c in CLASSES if (root / c).is_dir()]
    add_mvtec_tree(plan, root, present or CLASSES, mask_stem=lambda s: s.removesuffix("_mask"))


def sample(root: Path, protocol: str = "") -> Sample:
    for cls in ("bottle", "carpet"):
        for i in range(2):
            write_image(root / cls / "train/good" / f"{i:03d}.png", seed=i)
        write_image(root / cls / "test/good/000.png", seed=5)
        for i in range(2):
            write_image(root / cls / "test/broken" / f"{i:03d}.png", seed=10 + i)
            write_mask(root / cls / "ground_truth/broken" / f"{i:03d}_mask.png")
    (root / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return Sample(image_with_mask=(root / "bottle/test/broken/000.png",
                                   root / "bottle/ground_truth/broken/000_mask.png"),
                  class_dir=root / "carpet", images=[root / "bottle/test/good/000.png"])


DATASET = RawDataset(
    name="mvtec", title="MVTec AD", order=1, aliases=("mvtec-ad", "mvtec_ad", "mvtecad"),
    url="https://www.mvtec.com/company/research/datasets/mvtec-ad",
    licence="CC BY-NC-SA 4.0 (non-commercial)",
    checked="the reference code and Bayes-PFL's published file list (meta_mvtec.json)",
    layout="mvtec_anomaly_detection/CLS/{train/good, test/{good,DEFECT}, ground_truth/DEFECT}/NNN.png; "
           "masks NNN_mask.png, 0/255",
    protocols=(Protocol("anomalyclip", "every image of the 15 classes as shipped", ("FAPrompt", "Bayes-PFL",
                                                                                    "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/mvtec.py", build),),
    sample=sample)
