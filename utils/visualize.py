"""Anomaly-map pictures: per-image overlays and a per-category strip of the top images.

Maps are shown on one colour scale per category (its min..max), so a normal image looks
calm rather than being stretched to full red as a per-image normalisation would do.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import torch
from PIL import Image

from utils.io import write_bytes

CONTOUR = (0, 255, 0)  # BGR green: ground truth
PREDICTED = (255, 0, 255)  # BGR magenta: pixels at or above a decision threshold


def load_rgb(path: str, size: int) -> np.ndarray:
    """The image as RGB uint8 [size, size, 3], resized as the overlays show it."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC))


def heat(image_rgb: np.ndarray, amap: np.ndarray, low: float, high: float, alpha: float = 0.5) -> np.ndarray:
    """BGR overlay of ``amap`` (scaled from [low, high] to the JET colour map) on the image."""
    scaled = np.clip((amap - low) / max(high - low, 1e-12), 0, 1)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)


def draw_contour(image_bgr: np.ndarray, mask: Optional[np.ndarray], colour=CONTOUR,
                 thickness: Optional[int] = None) -> np.ndarray:
    """The outline of ``mask`` drawn on a copy (thickness: about 1 px per 256 px by default)."""
    if mask is None or not mask.any():
        return image_bgr
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = thickness or max(1, image_bgr.shape[0] // 256)
    return cv2.drawContours(image_bgr.copy(), contours, -1, colour, thickness)


def panel(image_rgb: np.ndarray, amap: np.ndarray, mask: Optional[np.ndarray], low: float, high: float,
          caption: str = "", predicted: Optional[np.ndarray] = None, thickness: Optional[int] = None) -> np.ndarray:
    """[image + GT contour (+ predicted contour) | heat map + GT contour] side by side (BGR)."""
    left = draw_contour(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), predicted, PREDICTED, thickness)
    left = draw_contour(left, mask, thickness=thickness)
    right = draw_contour(heat(image_rgb, amap, low, high), mask, thickness=thickness)
    out = np.concatenate([left, np.full((left.shape[0], 4, 3), 255, np.uint8), right], axis=1)
    if caption:  # a white band above the pictures keeps the text legible at any size
        band = max(20, out.shape[0] // 12)
        scale = band / 40
        header = np.full((band, out.shape[1], 3), 255, np.uint8)
        cv2.putText(header, caption, (4, int(band * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    max(1, int(2 * scale)), cv2.LINE_AA)
        out = np.concatenate([header, out], axis=0)
    return out


def write_png(path: Path, image_bgr: np.ndarray) -> None:
    """Atomically write a BGR image as PNG."""
    ok, data = cv2.imencode(".png", image_bgr)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    write_bytes(path, data.tobytes())


class Visualiser:
    """Writes ``vis/<category>/<image>.png`` overlays and ``vis/<category>_top.png`` strips."""

    def __init__(self, root: Path, dataset_root: Path, top_k: int = 8, strip_height: int = 256):
        self.root, self.dataset_root = Path(root), Path(dataset_root)
        self.top_k, self.strip_height = top_k, strip_height

    def _target(self, category: str, img_path: str) -> Path:
        try:
            rel = Path(img_path).resolve().relative_to(self.dataset_root.resolve())
        except ValueError:
            rel = Path(Path(img_path).name)
        return self.root / category / rel.with_suffix(".png")

    def __call__(self, cat, scores: torch.Tensor) -> List[Path]:
        maps = [m.numpy() for m in cat.maps]
        low = float(min(m.min() for m in maps))
        high = float(max(m.max() for m in maps))
        size = maps[0].shape[0]
        written, panels = [], []
        order = torch.argsort(scores, descending=True).tolist()
        top = set(order[: self.top_k])
        for i, path in enumerate(cat.paths):
            mask = cat.masks[i].numpy() > 0.5 if cat.has_mask[i] else None
            label = {1: "anomalous", 0: "normal"}.get(cat.labels[i], "")
            caption = f"score {float(scores[i]):.3f} {label}".strip()
            image = panel(load_rgb(path, size), maps[i], mask, low, high, caption)
            target = self._target(cat.name, path)
            write_png(target, image)
            written.append(target)
            if i in top:
                small = cv2.resize(image, (image.shape[1] * self.strip_height // image.shape[0], self.strip_height),
                                   interpolation=cv2.INTER_AREA)
                panels.append((float(scores[i]), small))
        panels.sort(key=lambda item: -item[0])
        gap = np.full((self.strip_height, 8, 3), 255, np.uint8)
        strip = np.concatenate([part for _, p in panels for part in (p, gap)][:-1], axis=1)
        strip_path = self.root / f"{cat.name}_top.png"
        write_png(strip_path, strip)
        return written + [strip_path]
