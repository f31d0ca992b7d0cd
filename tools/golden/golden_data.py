"""The golden images: two MVTec categories, two normal and two anomalous 48-px images each.

``metal_nut`` exercises the readable-name mapping ("metal nut") and Bayes-PFL's top-2000 map
score, ``screw`` its top-20 one. Each anomalous image has an irregular defect; one has two
separate regions, so AUPRO sees more regions than images. NumPy and Pillow only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np

CLASSES = ("metal_nut", "screw")
SIZE = 48
DATA_SEED = 7


def _texture(rng: np.random.RandomState, tint) -> np.ndarray:
    coarse = rng.uniform(0, 1, (6, 6, 3))
    base = np.kron(coarse, np.ones((8, 8, 1)))
    smooth = (base + np.roll(base, 4, 0) + np.roll(base, 4, 1) + np.roll(base, (4, 4), (0, 1))) / 4
    return np.clip(0.35 + 0.3 * smooth * np.array(tint) + rng.normal(0, 0.03, (SIZE, SIZE, 3)), 0, 1)


def golden_images() -> Dict[str, np.ndarray]:
    """images uint8 [8, 48, 48, 3], masks uint8 [8, 48, 48] (0/1), labels [8], classes [8]."""
    rng = np.random.RandomState(DATA_SEED)
    images, masks, labels, classes = [], [], [], []
    for cls, tint in zip(CLASSES, ((1.0, 0.8, 0.6), (0.6, 0.7, 1.0))):
        for index in range(4):
            img, mask = _texture(rng, tint), np.zeros((SIZE, SIZE), np.uint8)
            if index >= 2:
                y, x = rng.randint(6, 30, 2)
                mask[y:y + 10, x:x + 5] = 1
                mask[y + 6:y + 10, x:x + 14] = 1  # an L shape
                if index == 3:
                    mask[2:6, 40:46] = 1  # a second, separate region
                colour = np.array((0.95, 0.9, 0.2)) if cls == "metal_nut" else np.array((0.1, 0.05, 0.1))
                img = np.where(mask[..., None] > 0, colour, img)
            images.append(np.round(img * 255).astype(np.uint8))
            masks.append(mask)
            labels.append(int(index >= 2))
            classes.append(cls)
    return {"images": np.stack(images), "masks": np.stack(masks), "labels": np.array(labels),
            "classes": np.array(classes)}


def write_dataset(root: Path, data: Dict[str, np.ndarray]) -> List[dict]:
    """PNG files and an AnomalyCLIP ``meta.json`` (also as ``meta_mvtec.json`` for Bayes-PFL)."""
    from PIL import Image

    root = Path(root)
    meta: Dict[str, Dict[str, list]] = {"train": {}, "test": {}}
    records = []
    counters: Dict[str, int] = {}
    for image, mask, label, cls in zip(data["images"], data["masks"], data["labels"], data["classes"]):
        cls = str(cls)
        index = counters.get(cls, 0)
        counters[cls] = index + 1
        specie = "defect" if label else "good"
        img_path = f"{cls}/test/{specie}/{index:03d}.png"
        (root / img_path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / img_path)
        mask_path = ""
        if label:
            mask_path = f"{cls}/ground_truth/{specie}/{index:03d}_mask.png"
            (root / mask_path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask * 255).save(root / mask_path)
        record = {"img_path": img_path, "mask_path": mask_path, "cls_name": cls, "specie_name": specie,
                  "anomaly": int(label)}
        meta["test"].setdefault(cls, []).append(record)
        records.append(record)
    for name in ("meta.json", "meta_mvtec.json"):
        (root / name).write_text(json.dumps(meta, indent=1))
    return records
