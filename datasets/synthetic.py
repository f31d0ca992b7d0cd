"""A small procedural anomaly dataset in MVTec layout, for tests and smoke runs.

``python -m datasets.synthetic --out PATH [--seed 0] [--size 256] [--categories ...]
[--train N] [--test-good N] [--test-defect N]`` writes ``CAT/train/good/NNN.png``,
``CAT/test/{good,<defect>}/NNN.png``, ``CAT/ground_truth/<defect>/NNN_mask.png`` (0/255) and a
``meta.json`` made by the MVTec generator of :mod:`datasets.prepare`.

Every image is drawn from its own RNG, seeded from (seed, category, split, specie, index), so
the same seed gives byte-identical files and :func:`render` re-creates any sample together with
its defect-free twin. A defect changes exactly the pixels of its mask: the defect is drawn as a
pixel region, only that region is modified, and any region pixel that the drawing happened to
leave unchanged is nudged, so ``mask == (defective != clean).any(-1)`` holds to the pixel.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import zlib
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from datasets.prepare import build_mvtec, summary_table
from utils.errors import UserError, exit_with
from utils.io import write_json
from utils.log import setup_logging

log = logging.getLogger("zsad.datasets")

# Category -> its defect kinds. All five kinds (scratch, spot, crack, missing, stain) occur.
CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "weave": ("stain", "spot", "scratch"),
    "wood": ("crack", "scratch", "stain"),
    "washer": ("missing", "scratch", "spot"),
}
DEFECTS = ("scratch", "spot", "crack", "missing", "stain")
MARKER = ".zsad_synthetic"


# ---- clean renderers: (rng, size) -> (RGB uint8, region where defects may go, extras) ---------
def _smooth(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with features about ``cell`` pixels wide."""
    n = max(2, int(round(size / cell)) + 1)
    field = cv2.resize(rng.standard_normal((n, n)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(theta) + yy * np.sin(theta)) * rng.uniform(0.1, 0.25)
    vignette = (xx ** 2 + yy ** 2) * rng.uniform(0.2, 0.5)
    return (1.0 + ramp - vignette)[..., None]


def _finish(rng: np.random.Generator, img: np.ndarray, light: np.ndarray) -> np.ndarray:
    noise = rng.normal(0, rng.uniform(2.0, 4.0), img.shape).astype(np.float32)
    return img * light + noise


def _interior(size: int) -> np.ndarray:
    """Where texture defects may be centred: everything but an 8 % border."""
    inside = np.zeros((size, size), bool)
    m = int(0.08 * size)
    inside[m:size - m, m:size - m] = True
    return inside


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _weave(rng, size):
    palette = np.array([[60, 80, 130], [190, 170, 130], [130, 45, 50], [110, 115, 70],
                        [140, 140, 135]], np.float32)
    base = palette[rng.integers(len(palette))] * rng.uniform(0.9, 1.1, 3)
    weft = base * rng.uniform(0.8, 0.95)
    period = rng.uniform(7, 10) * size / 256
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx + 1.5 * _smooth(rng, size, 24)) / period
    v = (yy + 1.5 * _smooth(rng, size, 24)) / period
    fu, fv = u - np.floor(u), v - np.floor(v)
    warp_on_top = ((np.floor(u) + np.floor(v)) % 2 == 0)[..., None]
    warp_shade = (np.sin(np.pi * fu) ** 0.6 * (0.75 + 0.25 * np.sin(np.pi * fv)))[..., None]
    weft_shade = (np.sin(np.pi * fv) ** 0.6 * (0.75 + 0.25 * np.sin(np.pi * fu)))[..., None]
    fibre = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.8)
    img = np.where(warp_on_top, base * (0.35 + 0.75 * warp_shade),
                   weft * (0.35 + 0.75 * weft_shade)) * (1 + 0.06 * fibre[..., None])
    clean = _to_u8(_finish(rng, img, _lighting(rng, size)))
    extra = {"bright_scratch": True, "centres": _interior(size)}
    return clean, np.ones((size, size), bool), extra


def _wood(rng, size):
    light = np.array([205, 160, 110], np.float32) * rng.uniform(0.9, 1.05, 3)
    dark = np.array([125, 80, 45], np.float32) * rng.uniform(0.85, 1.1, 3)
    theta = rng.uniform(-0.15, 0.15)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    across = -xx * np.sin(theta) + yy * np.cos(theta)
    warp = (7.0 * _smooth(rng, size, 60) + 2.0 * _smooth(rng, size, 16)) * size / 256
    rings = (across + warp) / (rng.uniform(10, 16) * size / 256)
    grain = (0.5 + 0.5 * np.sin(2 * np.pi * rings)) ** 2.5
    lines = rng.standard_normal(4 * size).astype(np.float32)
    lines = cv2.GaussianBlur(lines[None], (0, 0), 1.2)[0]
    streak = lines[np.clip(np.round(across + warp + 1.5 * size).astype(int), 0, 4 * size - 1)]
    mix = np.clip(0.55 * grain + 0.12 * streak + 0.2, 0, 1)[..., None]
    img = light * (1 - mix) + dark * mix
    clean = _to_u8(_finish(rng, img, _lighting(rng, size)))
    extra = {"bright_scratch": False, "centres": _interior(size)}
    return clean, np.ones((size, size), bool), extra


def _washer(rng, size):
    bg_col = np.array([85, 92, 105], np.float32) * rng.uniform(0.8, 1.2, 3)
    mottle = (1 + 0.08 * _smooth(rng, size, 40))[..., None]
    bg = bg_col * mottle
    cx, cy = size / 2 + rng.normal(0, 0.03, 2) * size
    outer = rng.uniform(0.31, 0.37) * size
    inner = outer * rng.uniform(0.4, 0.5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist, phi = np.hypot(xx - cx, yy - cy), np.arctan2(yy - cy, xx - cx)
    alpha = np.clip(outer - dist + 0.5, 0, 1) * np.clip(dist - inner + 0.5, 0, 1)
    off = 4.0 * size / 256
    sdist = np.hypot(xx - cx - off, yy - cy - off)
    shadow = (sdist < outer) & (sdist > inner)
    shadow = cv2.GaussianBlur(shadow.astype(np.float32), (0, 0), 3.0 * size / 256)
    bg = bg * (1 - 0.4 * shadow)[..., None]
    t = np.clip((dist - inner) / (outer - inner), 0, 1)
    rings = rng.standard_normal(size).astype(np.float32)
    brushed = cv2.GaussianBlur(rings[None], (0, 0), 1.0)[0][np.clip(dist.astype(int), 0,
                                                                    size - 1)]
    psi = rng.uniform(0, 2 * np.pi)
    shade = 0.8 + 0.18 * np.cos(phi - psi) * (1 - np.sin(np.pi * t)) + 0.05 * brushed
    metal = np.array([175, 178, 182], np.float32) * rng.uniform(0.9, 1.05) * shade[..., None]
    light = _lighting(rng, size)
    noise = rng.normal(0, rng.uniform(2.0, 4.0), (size, size, 3)).astype(np.float32)
    comp = bg * (1 - alpha[..., None]) + metal * alpha[..., None]
    clean = _to_u8(comp * light + noise)
    unshadowed = bg_col * mottle
    extra = {"bright_scratch": True, "center": (cx, cy), "outer": outer, "object": alpha > 0,
             "background": unshadowed * light + noise}
    return clean, alpha >= 0.999, extra


RENDERERS: Dict[str, Callable] = {"weave": _weave, "wood": _wood, "washer": _washer}


def _rng(seed: int, category: str, split: str, specie: str, index: int) -> np.random.Generator:
    keys = [zlib.crc32(s.encode()) for s in (category, split, specie)]
    return np.random.default_rng([int(seed), *keys, int(index)])


# ---- defects: each returns (region bool [H, W], new float image) ------------------------------
def _points_in(rng: np.random.Generator, allowed: np.ndarray,
               extra: dict) -> Tuple[int, int]:
    """A random defect centre: inside ``extra["centres"]`` if given, else inside ``allowed``."""
    ys, xs = np.nonzero(extra.get("centres", allowed))
    i = rng.integers(len(ys))
    return int(xs[i]), int(ys[i])


def _scratch(rng, img, allowed, extra):
    size = img.shape[0]
    canvas = np.zeros(img.shape[:2], np.uint8)
    x, y = _points_in(rng, allowed, extra)
    angle, length = rng.uniform(0, np.pi), rng.uniform(0.2, 0.45) * size
    bend = rng.uniform(-0.3, 0.3)
    pts = []
    for t in np.linspace(-0.5, 0.5, 12):
        a = angle + bend * t
        pts.append((x + t * length * np.cos(a), y + t * length * np.sin(a)))
    thickness = max(1, int(round(size / 200)))
    cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 255, thickness, cv2.LINE_8)
    region = (canvas > 0) & allowed
    sign = 1.0 if extra["bright_scratch"] else -1.0
    gain = rng.uniform(45, 75) * (0.8 + 0.2 * rng.random(img.shape[:2]))[..., None]
    return region, img + sign * gain


def _spot(rng, img, allowed, extra):
    size = img.shape[0]
    canvas = np.zeros(img.shape[:2], np.float32)
    x, y = _points_in(rng, allowed, extra)
    axes = (int(rng.uniform(4, 12) * size / 256) + 1, int(rng.uniform(4, 12) * size / 256) + 1)
    cv2.ellipse(canvas, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_8)
    alpha = cv2.GaussianBlur(canvas, (0, 0), 1.0 + size / 256)
    region = (alpha > 0.2) & allowed
    dark = rng.uniform(0.55, 0.75)
    return region, img * (1.0 - dark * alpha[..., None])


def _crack(rng, img, allowed, extra):
    size = img.shape[0]
    canvas = np.zeros(img.shape[:2], np.uint8)
    x, y = _points_in(rng, allowed, extra)
    step = 3.0 * size / 256
    for branch in range(int(rng.integers(1, 3))):
        angle = rng.uniform(0, 2 * np.pi)
        px, py, pts = float(x), float(y), [(x, y)]
        for _ in range(int(rng.integers(15, 35))):
            angle += rng.normal(0, 0.45)
            px, py = px + step * np.cos(angle), py + step * np.sin(angle)
            pts.append((px, py))
        thickness = 1 + int(rng.integers(0, 2)) * max(1, size // 256)
        cv2.polylines(canvas, [np.round(pts).astype(np.int32)], False, 255, thickness,
                      cv2.LINE_8)
    region = (canvas > 0) & allowed
    return region, img * rng.uniform(0.25, 0.4)


def _stain(rng, img, allowed, extra):
    size = img.shape[0]
    canvas = np.zeros(img.shape[:2], np.float32)
    x, y = _points_in(rng, allowed, extra)
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = x + rng.normal(0, 8) * size / 256, y + rng.normal(0, 8) * size / 256
        ax = (int(rng.uniform(6, 18) * size / 256) + 1, int(rng.uniform(6, 18) * size / 256) + 1)
        cv2.ellipse(canvas, (int(cx), int(cy)), ax, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    soft = cv2.GaussianBlur(canvas, (0, 0), 3.0 * size / 256)
    region = (soft > 0.5) & allowed
    tints = np.array([[115, 75, 30], [150, 45, 40], [55, 65, 140], [60, 60, 45]], np.float32)
    tint = tints[rng.integers(len(tints))]
    alpha = (rng.uniform(0.4, 0.65) * np.clip(soft * 1.5, 0, 1))[..., None]
    return region, img * (1 - alpha) + tint * alpha


def _missing(rng, img, allowed, extra):
    """A chunk broken off the object: the background shows through."""
    size = img.shape[0]
    cx, cy, radius = extra["center"][0], extra["center"][1], extra["outer"]
    phi = rng.uniform(0, 2 * np.pi)
    ex, ey = cx + radius * np.cos(phi), cy + radius * np.sin(phi)
    n = 9
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = rng.uniform(0.1, 0.22, n) * size
    poly = np.stack([ex + radii * np.cos(angles), ey + radii * np.sin(angles)], 1)
    canvas = np.zeros(img.shape[:2], np.uint8)
    cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], 255, cv2.LINE_8)
    region = (canvas > 0) & extra["object"]
    return region, extra["background"]


_DEFECT_FNS: Dict[str, Callable] = {"scratch": _scratch, "spot": _spot, "crack": _crack,
                                    "stain": _stain, "missing": _missing}


def _apply(clean: np.ndarray, region: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Copy ``new`` into ``clean`` on ``region`` only; nudge region pixels left unchanged."""
    out = clean.copy()
    new_u8 = np.clip(np.round(new), 0, 255).astype(np.uint8)
    out[region] = new_u8[region]
    same = region & np.all(out == clean, axis=2)
    if same.any():
        vals = clean[same].astype(np.int16)
        out[same] = np.where(vals > 127, vals - 12, vals + 12).astype(np.uint8)
    return out


def render(category: str, specie: str = "good", size: int = 256, seed: int = 0,
           split: str = "test", index: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-create one sample: (clean RGB uint8, defective RGB uint8, mask bool), all [H, W, ...].

    For ``specie == "good"`` the defective image equals the clean one and the mask is empty.
    """
    if category not in CATEGORIES:
        raise UserError(f"unknown synthetic category '{category}' "
                        f"(available: {', '.join(CATEGORIES)})")
    rng = _rng(seed, category, split, specie, index)
    clean, allowed, extra = RENDERERS[category](rng, size)
    if specie == "good":
        return clean, clean.copy(), np.zeros(clean.shape[:2], bool)
    if specie not in CATEGORIES[category]:
        raise UserError(f"category '{category}' has no defect '{specie}' "
                        f"(available: {', '.join(CATEGORIES[category])})")
    base = clean.astype(np.float32)
    min_px = max(4, size * size // 20000)
    for _ in range(50):
        region, new = _DEFECT_FNS[specie](rng, base, allowed, extra)
        if region.sum() >= min_px:
            break
    else:
        raise RuntimeError(f"could not place a '{specie}' defect on '{category}'")
    defective = _apply(clean, region, new)
    return clean, defective, region


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = arr[..., ::-1] if arr.ndim == 3 else arr  # RGB -> BGR for OpenCV
    if not cv2.imwrite(str(path), np.ascontiguousarray(data)):
        raise UserError(f"cannot write {path}; check the output folder")


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"--out {out} is not empty and is no synthetic set; "
                            "pass a new or empty folder")
        log.info("replacing the previous synthetic set in %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by python -m datasets.synthetic\n")


def generate(out, seed: int = 0, size: int = 256, categories: Optional[Sequence[str]] = None,
             n_train: int = 8, n_test_good: int = 4, n_test_defect: int = 2) -> Path:
    """Write the synthetic set (MVTec layout + meta.json) to ``out``; return ``out``."""
    cats = list(categories) if categories else list(CATEGORIES)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise UserError(f"unknown synthetic category '{unknown[0]}' "
                        f"(available: {', '.join(CATEGORIES)})")
    if size < 64:
        raise UserError(f"--size must be at least 64, got {size}")
    if min(n_train, n_test_good) < 0 or n_test_defect < 1:
        raise UserError("--train/--test-good must be >= 0 and --test-defect >= 1")
    out = Path(out).expanduser()
    _prepare_out(out)
    for cat in cats:
        for i in range(n_train):
            _write_png(out / cat / "train" / "good" / f"{i:03d}.png",
                       render(cat, "good", size, seed, "train", i)[0])
        for i in range(n_test_good):
            _write_png(out / cat / "test" / "good" / f"{i:03d}.png",
                       render(cat, "good", size, seed, "test", i)[0])
        for defect in CATEGORIES[cat]:
            for i in range(n_test_defect):
                _, img, mask = render(cat, defect, size, seed, "test", i)
                _write_png(out / cat / "test" / defect / f"{i:03d}.png", img)
                _write_png(out / cat / "ground_truth" / defect / f"{i:03d}_mask.png",
                           mask.astype(np.uint8) * 255)
    meta = build_mvtec(out)
    write_json(out / "meta.json", meta)
    log.info("synthetic set in %s:\n%s", out, summary_table(meta))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write a small procedural anomaly dataset.")
    parser.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--categories", nargs="+", default=None,
                        help=f"subset of: {' '.join(CATEGORIES)}")
    parser.add_argument("--train", type=int, default=8, help="train/good images per category")
    parser.add_argument("--test-good", type=int, default=4, help="test/good images per category")
    parser.add_argument("--test-defect", type=int, default=2, help="test images per defect kind")
    args = parser.parse_args(argv)
    setup_logging()
    generate(args.out, args.seed, args.size, args.categories, args.train, args.test_good,
             args.test_defect)
    return 0


if __name__ == "__main__":
    exit_with(main)
