"""AITEX fabric defects (Silvestre-Blanes et al., 2019): 4096x256 fabric strips, defect masks."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Tuple

import numpy as np
from datasets.raw.base import Derived, Plan, Protocol, RawDataset, Sample, binary, image_size, load_array, \
    need_images, write_image, write_mask
from datasets.raw.common import add_seeded_split, first_dir
from datasets.scan import list_dirs
from utils.errors import UserError

CLASS = "AITEX"  # FAPrompt's class name
DEFECTS = {"002": "Broken_end", "006": "Broken_yarn", "010": "Broken_pick", "016": "Weft_curling", "019": "Fuzzyball",
           "022": "Cut_selvage", "023": "Crease", "025": "Warp_ball", "027": "Knots", "029": "Contamination",
           "030": "Nep", "036": "Weft_crack"}


def _union(masks) -> np.ndarray:
    """The pixel-wise maximum of a strip's mask files (one file, or NAME_mask1.png, ...)."""
    return np.maximum.reduce([load_array(m, gray=True) for m in masks])


def _tile(k: int, masks: Tuple[Path, ...] = ()):
    """Columns ``k*H`` to ``(k+1)*H`` of a strip (square tiles, 256 px on the real data); for a mask,
    the union of its mask files as 0/255."""
    def make(path: Path) -> np.ndarray:
        pixels = _union(masks) if masks else load_array(path, gray=True)
        h = pixels.shape[0]
        tile = pixels[:, k * h:(k + 1) * h]
        return binary(tile) if masks else tile
    return make


def build(root: Path, plan: Plan) -> None:
    """Normal strips cut into 16 square tiles, split 75/25 into train and test by
    ``train_test_split(random_state=42)``; defect strips cut into ceil(W/H) tiles, of which only
    those with a defect pixel are kept, as anomalous tiles of their defect type (the code in the
    file name). Listings are sorted (the DRA converter's follow the file system), so which normal
    tiles land in train may differ from theirs; the counts do not."""
    defects = first_dir(root, ("Defect_images/Defect_images", "Defect_images"), "the defect images")
    masks_dir = first_dir(root, ("Mask_images/Mask_images", "Mask_images"), "the defect masks")
    normal_root = first_dir(root, ("NODefect_images",), "the defect-free images")
    masks = {}
    for m in need_images(masks_dir, "the defect masks"):
        masks.setdefault(m.stem.split("_mask")[0], []).append(m)
    images = need_images(defects, "the defect images")
    stray = sorted(set(masks) - {i.stem for i in images})
    if stray:
        raise UserError(f"{masks[stray[0]][0]} (a mask) has no image {stray[0]}.png in {defects}; restore it")
    for img in images:
        code = img.stem.split("_")[1] if img.stem.count("_") >= 1 else ""
        if code not in DEFECTS:
            raise UserError(f"{img.name}: no known defect code in its name (NNNN_CODE_NN.png, CODE one of "
                            f"{', '.join(DEFECTS)})")
        if img.stem not in masks:
            raise UserError(f"{img} has no mask {img.stem}_mask.png in {masks_dir}; restore it from the download")
        width, height = image_size(img)
        mask = _union(masks[img.stem])
        for k in range(math.ceil(width / height)):
            if mask[:, k * height:(k + 1) * height].max() > 0:
                plan.add("test", CLASS, DEFECTS[code], 1, Derived(img, _tile(k), f"tile {k}"),
                         Derived(img, _tile(k, tuple(masks[img.stem])), f"mask tile {k}"), name=f"{img.stem}_{k}.png")
    normal: List[Tuple[str, Derived]] = []
    for fabric in list_dirs(normal_root):
        for img in need_images(fabric, f"defect-free images of {fabric.name}"):
            width, height = image_size(img)
            normal += [(f"{fabric.name}_{img.stem}_{k}.png", Derived(img, _tile(k), f"tile {k}"))
                       for k in range(width // height)]
    if not normal:
        raise UserError(f"{normal_root} holds no fabric folders with images; restore it from the download")
    add_seeded_split(plan, CLASS, normal)


def sample(root: Path, protocol: str = "") -> Sample:
    for fabric in ("fabric1", "fabric2"):
        write_image(root / "NODefect_images" / fabric / "0001_000_01.png", size=(64, 16), seed=1, gray=True)
    write_image(root / "Defect_images/Defect_images/0001_002_00.png", size=(64, 16), gray=True, defect=(20, 2, 28, 8))
    write_mask(root / "Mask_images/Mask_images/0001_002_00_mask.png", size=(64, 16), box=(20, 2, 28, 8))
    write_image(root / "Defect_images/Defect_images/0002_019_02.png", size=(64, 16), gray=True, defect=(40, 2, 44, 8))
    write_mask(root / "Mask_images/Mask_images/0002_019_02_mask.png", size=(64, 16), box=(40, 2, 44, 8))
    return Sample(image_with_mask=(root / "Defect_images/Defect_images/0002_019_02.png",
                                   root / "Mask_images/Mask_images/0002_019_02_mask.png"),
                  class_dir=root / "NODefect_images" / "fabric2",
                  images=[root / "NODefect_images" / "fabric1" / "0001_000_01.png"])


DATASET = RawDataset(
    name="aitex", title="AITEX", order=11, aliases=("aitex-fabric",),
    url="https://www.aitex.es/afid/",
    licence="research use; cite Silvestre-Blanes et al. 2019",
    checked="the reference code only",
    layout="Defect_images/NNNN_CODE_NN.png (4096x256 grey; CODE the defect type), Mask_images/NNNN_CODE_NN_mask.png, "
           "NODefect_images/<fabric>/NNNN_000_NN.png (each may be nested in a folder of the same name)",
    protocols=(Protocol("dra", "256x256 tiles: the defect tiles of defect strips anomalous by defect type, every "
                               "tile of the defect-free strips normal (75/25 train/test, seed 42)", ("FAPrompt",),
                        "mala-lab/InCTRL@cc535d0:datasets/preprocess/convert_AITEX.py (the DRA converter)", build),),
    notes="Where a strip ships with several masks (NAME_mask1.png, ...), their union is its mask.",
    sample=sample)
