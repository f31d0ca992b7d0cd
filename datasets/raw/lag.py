"""LAG, the Large-scale Attention-based Glaucoma database (Li et al., CVPR 2019): fundus photographs."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image
from datasets.raw.common import add_label_folders, first_dir, image_folder

CLASS = "LAG"  # FAPrompt's class name


def build(root: Path, plan: Plan) -> None:
    """non_glaucoma normal, suspicious_glaucoma anomalous (the fundus images only, not the attention maps)."""
    top = first_dir(root, ("LAG", "."), "the glaucoma folders")
    add_label_folders(plan, CLASS, {image_folder(top / "non_glaucoma", "image", "the non-glaucoma images"): 0,
                                    image_folder(top / "suspicious_glaucoma", "image", "the glaucoma images"): 1},
                      specie="glaucoma")


def sample(root: Path, protocol: str = "") -> Sample:
    top = root / "LAG"
    for folder, n in (("non_glaucoma", 3), ("suspicious_glaucoma", 2)):
        for i in range(n):
            write_image(top / folder / "image" / f"{i}.jpg", seed=i,
                        defect=(8, 8, 16, 16) if "susp" in folder else None)
            write_image(top / folder / "attention_map" / f"{i}.jpg", seed=i, gray=True)
    return Sample(class_dir=top / "suspicious_glaucoma", images=[top / "non_glaucoma" / "image" / "2.jpg"])


DATASET = RawDataset(
    name="lag", title="LAG", order=34, kind="medical",
    url="https://github.com/smilell/AG-CNN (LAG database part 1, on request)",
    licence="academic use only; redistribution not allowed",
    checked="the reference code only (the database may not be redistributed)",
    layout="LAG/{suspicious_glaucoma,non_glaucoma}/{image,attention_map}/N.jpg",
    protocols=(Protocol("faprompt", "non_glaucoma normal, suspicious_glaucoma anomalous; no masks", ("FAPrompt",),
                        "mala-lab/FAPrompt@7e9d9d2:dataset.py (class LAG; no converter published)", build),),
    notes="Classification-only. FAPrompt publishes no converter or file list for LAG; the expected counts are the "
          "full database's (AG-CNN README), larger than the public part 1.",
    sample=sample)
