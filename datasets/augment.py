"""Bayes-PFL's training augmentation, re-expressed with torchvision.transforms.v2.

The official code uses albumentations on the image and mask together:
``Rotate(limit=30, p=.5)``, ``RandomRotate90(p=.5)``, ``RandomBrightnessContrast(p=.5)``,
``GaussNoise(p=.5)``, ``OneOf([Blur(3), ColorJitter, GaussianBlur], p=.5)``, plus a 2x2 mosaic
of anomalous images (40 % of the time, only when MVTec is the auxiliary set; the caller picks
``mosaic_prob``). APRIL-GAN's mosaic (tiles by defect type, 20 % on MVTec-AD) runs alone, the
pipeline off. Here the image is a ``tv_tensors.Image`` and the mask a ``tv_tensors.Mask``
passed through one ``v2.Compose``: geometric ops move both identically (the mask always with
nearest interpolation), photometric ops touch the image only. Differences from the official
albumentations pipeline:

* rotation borders are filled with 0 (image and mask); albumentations used reflect-101, which
  mirrors image content (and mask) into the corners;
* rot90 draws k from {1, 2, 3} (albumentations draws from {0, 1, 2, 3});
* Gaussian blur uses a 7-tap kernel with sigma in [0.8, 1.4] (what albumentations' kernel
  sizes 3..7 with sigma 0 amount to), rather than a random kernel size.

Randomness: with ``seed=None`` every draw comes from the global torch RNG (the v2 ops) and
Python's ``random`` module (mosaic), both of which the DataLoader seeds per worker, so
``torch.manual_seed`` before building the loader makes a run reproducible. With a ``seed``
the augmenter owns a ``random.Random(seed)`` and runs each call under a forked torch RNG
seeded from it (deterministic sequence; use it in single-process code and tests, since
every DataLoader worker would replay the same sequence).
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


MOSAIC_POOLS = ("anomalous", "defect_types", "records")


class _ImageOnly(v2.Transform):
    """Base for photometric ops: applied to ``tv_tensors.Image`` only (masks pass through)."""

    _transformed_types = (tv_tensors.Image,)

    def apply(self, img: torch.Tensor, params: Dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        out = self.apply(inpt.as_subclass(torch.Tensor).float(), params)
        return tv_tensors.wrap(out.round().clamp(0, 255).to(inpt.dtype), like=inpt)


class BrightnessContrast(_ImageOnly):
    """albumentations' RandomBrightnessContrast: ``x * (1 + c) + b * 255``, c, b in +-limit."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, contrast

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        u = torch.empty(2).uniform_(-1.0, 1.0)
        return {"alpha": 1.0 + float(u[0]) * self.contrast, "beta": float(u[1]) * self.brightness}

    def apply(self, img: torch.Tensor, params: Dict[str, Any]) -> torch.Tensor:
        return img * params["alpha"] + params["beta"] * 255.0


class GaussNoise(_ImageOnly):
    """Per-pixel, per-channel Gaussian noise with variance in ``var_limit`` (0..255 scale)."""

    def __init__(self, var_limit: Tuple[float, float] = (10.0, 50.0)) -> None:
        super().__init__()
        self.var_limit = var_limit

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        var = float(torch.empty(1).uniform_(*self.var_limit))
        return {"std": var ** 0.5}

    def apply(self, img: torch.Tensor, params: Dict[str, Any]) -> torch.Tensor:
        return img + torch.randn_like(img) * params["std"]


class BoxBlur(_ImageOnly):
    """Mean filter of size ``k`` with reflect-101 borders (albumentations ``Blur(3)``)."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k

    def apply(self, img: torch.Tensor, params: Dict[str, Any]) -> torch.Tensor:
        pad = self.k // 2
        x = F.pad(img.unsqueeze(0), (pad, pad, pad, pad), mode="reflect")
        return F.avg_pool2d(x, self.k, stride=1).squeeze(0)


class RandomRot90(v2.Transform):
    """Rotate image and mask by k * 90 degrees, k uniform in {1, 2, 3} (exact, no resampling)."""

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
        return {"k": int(torch.randint(1, 4, ()))}

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        out = torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1))
        return tv_tensors.wrap(out.contiguous(), like=inpt)


def build_pipeline(geometric: bool = True, photometric: bool = True,
                   interpolation: InterpolationMode = InterpolationMode.BILINEAR) -> v2.Transform:
    """The joint image/mask pipeline (see the module doc for the official counterpart)."""
    ops: List[v2.Transform] = []
    if geometric:
        ops += [v2.RandomApply([v2.RandomRotation(30, interpolation=interpolation, fill=0)], p=0.5),
                v2.RandomApply([RandomRot90()], p=0.5)]
    if photometric:
        ops += [v2.RandomApply([BrightnessContrast(0.2, 0.2)], p=0.5),
                v2.RandomApply([GaussNoise((10.0, 50.0))], p=0.5),
                v2.RandomApply([v2.RandomChoice([
                    BoxBlur(3),
                    v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2),
                    v2.GaussianBlur(kernel_size=7, sigma=(0.8, 1.4)),
                ])], p=0.5)]
    return v2.Compose(ops) if ops else v2.Identity()


def mosaic(images: List[Image.Image], masks: List[Image.Image]) -> Tuple[Image.Image, Image.Image]:
    """2x2 mosaic (row-major: top-left, top-right, bottom-left, bottom-right), each tile
    resized to the first image's size; masks likewise (nearest)."""
    w, h = images[0].size
    canvas, canvas_mask = Image.new("RGB", (2 * w, 2 * h)), Image.new("L", (2 * w, 2 * h), 0)
    for i, (img, mask) in enumerate(zip(images, masks)):
        img, mask = img.convert("RGB"), mask.convert("L")
        if img.size != (w, h):
            img = img.resize((w, h), Image.BICUBIC)
        if mask.size != (w, h):
            mask = mask.resize((w, h), Image.NEAREST)
        xy = ((i % 2) * w, (i // 2) * h)
        canvas.paste(img, xy)
        canvas_mask.paste(mask, xy)
    return canvas, canvas_mask


class TrainAugment:
    """``MetaDataset`` augment hook: ``(pil_image, pil_mask_L, record, dataset) -> (image, mask,
    info)``; ``info`` is ``{"label": 1, "has_mask": ...}`` after a mosaic, else ``{}``.

    ``mosaic_prob``: probability of replacing the sample by a 2x2 mosaic of 4 random images of
    its class, drawn by ``mosaic_pool``:

    * ``anomalous``: 4 of its anomalous images (Bayes-PFL; official 0.4 with MVTec as auxiliary
      set, else 0);
    * ``defect_types``: each tile a random defect type of the class ("good" included), then a
      random image of that type (APRIL-GAN's ``--aug_rate``, 0.2 on MVTec-AD; its code lists the
      category's test folders, which are the records here);
    * ``records``: 4 distinct images of the class, any label (AdaCLIP, 0.2 on MVTec-AD).

    The mosaic is anomalous when one of its tiles is (APRIL-GAN keeps the replaced sample's
    label; its loss reads masks only). ``mosaic_classes``: the classes whose samples may become
    mosaics (those of the auxiliary set with a mosaic rate, when several are trained on together);
    None: all. ``enabled=False`` returns the inputs unchanged.
    ``geometric``/``photometric`` (the Bayes-PFL pipeline; both off for a mosaic alone) and
    ``interpolation`` exist for the recipes, tests and ablations.
    """

    def __init__(self, mosaic_prob: float = 0.0, enabled: bool = True, seed: Optional[int] = None,
                 geometric: bool = True, photometric: bool = True,
                 interpolation: InterpolationMode = InterpolationMode.BILINEAR,
                 mosaic_pool: str = "anomalous", mosaic_classes: Optional[frozenset] = None) -> None:
        if not 0.0 <= mosaic_prob <= 1.0:
            raise ValueError(f"mosaic_prob must be in [0, 1], got {mosaic_prob}")
        if mosaic_pool not in MOSAIC_POOLS:
            raise ValueError(f"mosaic_pool must be one of {MOSAIC_POOLS}, got {mosaic_pool!r}")
        self.mosaic_prob, self.mosaic_pool = float(mosaic_prob), mosaic_pool
        self.mosaic_classes = mosaic_classes
        self.enabled = enabled
        self.seed = seed
        self._py = random.Random(seed) if seed is not None else None
        self.pipeline = build_pipeline(geometric, photometric, interpolation)
        self._anomalous: Dict[Tuple[int, str], List[int]] = {}
        self._by_type: Dict[Tuple[int, str], List[List[int]]] = {}

    def __call__(self, image: Image.Image, mask: Image.Image,
                 record: Optional[Dict[str, Any]] = None,
                 dataset: Any = None) -> Tuple[Image.Image, Image.Image, Dict[str, Any]]:
        if not self.enabled:
            return image, mask, {}
        if self._py is None:
            return self._run(image, mask, record, dataset, random)
        call_seed = self._py.getrandbits(63)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(call_seed)
            return self._run(image, mask, record, dataset, self._py)

    def _run(self, image, mask, record, dataset, rng) -> Tuple[Image.Image, Image.Image, dict]:
        info: Dict[str, Any] = {}
        eligible = record is not None and (self.mosaic_classes is None
                                           or str(record["cls_name"]) in self.mosaic_classes)
        if self.mosaic_prob > 0 and eligible and dataset is not None \
                and rng.random() < self.mosaic_prob:
            picked = self._pick_mosaic(record, dataset, rng)
            if picked:
                pairs = [dataset.load_pair(r) for r in picked]
                image, mask = mosaic([p[0] for p in pairs], [p[1] for p in pairs])
                info = {"label": int(any(int(r["anomaly"]) == 1 for r in picked)),
                        "has_mask": all(dataset.record_has_mask(r) for r in picked)}
        img_t = tv_tensors.Image(TF.pil_to_tensor(image.convert("RGB")))
        mask_t = tv_tensors.Mask(TF.pil_to_tensor(mask.convert("L")))
        img_t, mask_t = self.pipeline(img_t, mask_t)
        return TF.to_pil_image(img_t), TF.to_pil_image(mask_t), info

    def _pick_mosaic(self, record, dataset, rng) -> List[Dict[str, Any]]:
        """4 records of ``record``'s class by ``mosaic_pool``."""
        if self.mosaic_pool == "defect_types":
            return self._pick_by_type(record, dataset, rng)
        if self.mosaic_pool == "records":
            cls = str(record["cls_name"])
            pool = [r for r in dataset.records if str(r["cls_name"]) == cls]
            return rng.sample(pool, 4) if len(pool) >= 4 else [rng.choice(pool) for _ in range(4)]
        return self._pick_anomalous(record, dataset, rng)

    def _pick_by_type(self, record, dataset, rng) -> List[Dict[str, Any]]:
        """Per tile a random defect type of the class, then a random record of it (with
        replacement, as APRIL-GAN draws)."""
        cls = str(record["cls_name"])
        key = (id(dataset), cls)
        if key not in self._by_type:
            types: Dict[str, List[int]] = {}
            for i, r in enumerate(dataset.records):
                if str(r["cls_name"]) == cls:
                    types.setdefault(str(r.get("specie_name") or ("good" if int(r["anomaly"]) == 0 else "bad")),
                                     []).append(i)
            self._by_type[key] = [types[t] for t in sorted(types)]
        pools = self._by_type[key]
        return [dataset.records[rng.choice(rng.choice(pools))] for _ in range(4)] if pools else []

    def _pick_anomalous(self, record, dataset, rng) -> List[Dict[str, Any]]:
        """4 anomalous records of ``record``'s class (with replacement if fewer than 4)."""
        cls = str(record["cls_name"])
        key = (id(dataset), cls)
        if key not in self._anomalous:
            self._anomalous[key] = [i for i, r in enumerate(dataset.records)
                                    if str(r["cls_name"]) == cls and int(r["anomaly"]) == 1]
        pool = self._anomalous[key]
        if not pool:
            return []
        idx = rng.sample(pool, 4) if len(pool) >= 4 else [rng.choice(pool) for _ in range(4)]
        return [dataset.records[i] for i in idx]
