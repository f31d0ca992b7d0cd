"""Image and mask preprocessing shared by both methods (docs/data.md).

Images: PIL bicubic resize to ``size`` x ``size`` (torchvision ``Resize`` on a PIL image, which
antialiases), convert to RGB, ``ToTensor``, normalise with the OpenAI CLIP mean/std; no crop.
Masks: binarise with ``> 0``, bilinear resize of the 0/255 image, threshold 0.5.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from utils.errors import UserError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Modes PIL cannot resize bicubically (it silently falls back to nearest for "1"/"P"); these
# are converted to RGB first. Every other mode is resized first, as the official code does.
_CONVERT_FIRST = frozenset({"1", "P", "PA", "I;16", "I;16L", "I;16B", "I;16N"})

PathLike = Union[str, os.PathLike]


def load_image(path: PathLike) -> Image.Image:
    """Open and decode an image; an unreadable or missing file raises :class:`UserError`."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist; check the dataset root and meta.json")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read image {path} ({err}); replace or remove the file")
    return img


def load_mask(path: PathLike) -> np.ndarray:
    """Load a mask file as a boolean [H, W] array, binarised with ``> 0``.

    Works for 0/1 and 0/255 masks, JPEG masks, palette masks (index > 0) and colour masks
    (any colour channel > 0; an alpha channel is ignored).
    """
    img = load_image(path)
    arr = np.asarray(img)
    if arr.ndim == 3:
        if img.mode in ("RGBA", "LA", "PA"):
            arr = arr[..., :-1]
        arr = arr.max(axis=2)
    return arr > 0


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> normalised FloatTensor [3, size, size]."""
    if img.mode in _CONVERT_FIRST:
        img = img.convert("RGB")
    img = TF.resize(img, [size, size], interpolation=InterpolationMode.BICUBIC)
    if img.mode != "RGB":
        img = img.convert("RGB")
    tensor = TF.to_tensor(img)
    return TF.normalize(tensor, OPENAI_MEAN, OPENAI_STD)


def mask_to_pil(mask: np.ndarray) -> Image.Image:
    """Boolean (or 0/1, 0/255) [H, W] array -> 0/255 "L" image."""
    return Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)


def mask_to_tensor(mask: Union[np.ndarray, Image.Image], size: int) -> torch.Tensor:
    """Boolean [H, W] mask (or a 0/255 "L" image) -> float 0/1 tensor [size, size]."""
    pil = mask if isinstance(mask, Image.Image) else mask_to_pil(mask)
    if pil.mode != "L":
        pil = mask_to_pil(np.asarray(pil))
    pil = TF.resize(pil, [size, size], interpolation=InterpolationMode.BILINEAR)
    return (TF.to_tensor(pil)[0] > 0.5).float()
