"""KolektorSDD (Tabernik et al., 2019): electrical commutators, 50 parts of 8 surface images each."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np
from datasets.raw.base import Derived, Plan, Protocol, RawDataset, Sample, binary, load_array, need_images, \
    write_image, write_mask
from datasets.raw.common import add_seeded_split
from datasets.scan import list_dirs
from utils.errors import UserError

CLASS = "SDD"  # FAPrompt's class name
THIRDS = 3


def _third(k: int, mask: bool = False):
    """The ``k``-th horizontal band of an image (rows ``k*H//3`` to ``(k+1)*H//3``)."""
    def make(path: Path) -> np.ndarray:
        pixels = load_array(path, gray=mask)
        h = pixels.shape[0]
        band = pixels[k * h // THIRDS:(k + 1) * h // THIRDS]
        return binary(band) if mask else band
    return make


def build(root: Path, plan: Plan) -> None:
    """Every ``PartN.jpg`` with its ``PartN_label.bmp`` is cut into three horizontal bands; a band
    whose label has a defect pixel is anomalous, the others normal, split 75/25 into train and test
    by ``train_test_split(random_state=42)`` (the DRA/InCTRL converter; listings are sorted here,
    the converter's follow the file system, so which bands land in train may differ; counts do not)."""
    parts = [d for d in list_dirs(root) if d.name.lower().startswith("kos")]
    if not parts:
        raise UserError(f"{root} has no kosNN/ folders with PartN.jpg and PartN_label.bmp; is --root the "
                        "KolektorSDD download?")
    normal: List[Tuple[str, Derived]] = []
    for part in parts:
        images = need_images(part, f"images of {part.name}", pattern="*.jpg")
        stray = sorted(set(p.name for p in part.glob("*_label.bmp")) - {f"{i.stem}_label.bmp" for i in images})
        if stray:
            raise UserError(f"{part / stray[0]} (a mask) has no image {stray[0].replace('_label.bmp', '.jpg')}; "
                            "restore it from the download")
        for img in images:
            label = part / f"{img.stem}_label.bmp"
            if not label.is_file():
                raise UserError(f"{img} has no {label.name} beside it; restore it from the download")
            with_defect = load_array(label, gray=True)
            h = with_defect.shape[0]
            for k in range(THIRDS):
                name = f"{part.name}_{img.stem}_{k}.png"
                if with_defect[k * h // THIRDS:(k + 1) * h // THIRDS].max() > 0:
                    plan.add("test", CLASS, "defect", 1, Derived(img, _third(k), f"band {k}"),
                             Derived(label, _third(k, mask=True), f"band {k}"), name=name)
                else:
                    normal.append((name, Derived(img, _third(k), f"band {k}")))
    add_seeded_split(plan, CLASS, normal)


def sample(root: Path, protocol: str = "") -> Sample:
    for part in ("kos01", "kos02"):
        for i in range(2):
            defect = part == "kos01" and i == 1
            write_image(root / part / f"Part{i}.jpg", size=(20, 60), seed=i, gray=True,
                        defect=(5, 25, 15, 30) if defect else None)
            write_mask(root / part / f"Part{i}_label.bmp", size=(20, 60), box=(5, 25, 15, 30),
                       value=255 if defect else 0)
    return Sample(image_with_mask=(root / "kos01/Part1.jpg", root / "kos01/Part1_label.bmp"),
                  class_dir=root / "kos02", images=[root / "kos02/Part0.jpg"])


DATASET = RawDataset(
    name="sdd", title="KolektorSDD (SDD)", order=9, aliases=("kolektorsdd", "ksdd", "ksdd1"),
    url="https://www.vicos.si/resources/kolektorsdd/ (KolektorSDD.zip)",
    licence="CC BY-NC-SA 4.0",
    checked=("a real copy of the 399 images (stoy95536/KolektorSDD_Yolov8_Datasets@81e5cf3, renamed; its defect "
             "outlines drawn back into label images): converted with --strict, every count as expected"),
    layout="kosNN/PartN.jpg (grey, about 500x1250) with kosNN/PartN_label.bmp (0/255 defect mask), 50 folders",
    protocols=(Protocol("dra", "each image cut into three horizontal bands; bands with a defect anomalous, the "
                               "others normal (75/25 train/test, seed 42)", ("FAPrompt", "AnomalyCLIP"),
                        "mala-lab/InCTRL@cc535d0:datasets/preprocess/convert_SDD.py (the DRA converter)", build),),
    sample=sample)
