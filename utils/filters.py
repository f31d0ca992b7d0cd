"""Gaussian smoothing of anomaly maps with ``scipy.ndimage.gaussian_filter`` semantics."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_blur(
    maps: torch.Tensor | np.ndarray, sigma: float, truncate: float = 4.0
) -> torch.Tensor | np.ndarray:
    """Blur the last two axes of ``maps`` (..., H, W) with a Gaussian of std ``sigma``.

    Equal to ``scipy.ndimage.gaussian_filter(maps, sigma, mode="reflect", truncate=truncate,
    axes=(-2, -1))``: the kernel has radius ``int(truncate * sigma + 0.5)`` and weights
    ``exp(-x**2 / (2 sigma**2))`` normalised to sum 1, and the image is extended by
    half-sample symmetric reflection (d c b a | a b c d | d c b a), repeated as often as a
    radius larger than the image needs. Applied as two 1-D passes.

    Args:
        maps: tensor (CPU or CUDA) or numpy array, shape (..., H, W). Integer input is
            blurred as float32.
        sigma: standard deviation in pixels; ``sigma <= 0`` returns ``maps`` unchanged.
        truncate: kernel radius in standard deviations.

    Returns:
        Same type, shape and device as ``maps``; float64 stays float64, else float32.
    """
    if sigma <= 0:
        return maps
    if isinstance(maps, np.ndarray):
        return gaussian_blur(torch.from_numpy(np.ascontiguousarray(maps)), sigma, truncate).numpy()
    if maps.ndim < 2:
        raise ValueError(f"need (..., H, W) maps, got shape {tuple(maps.shape)}")
    out_dtype = maps.dtype if maps.dtype == torch.float64 else torch.float32
    # On CUDA, float32 convolutions may run in TF32 (about 3 decimal digits) depending on
    # global flags; float64 is never downgraded and is cheap at these sizes.
    work_dtype = torch.float64 if maps.is_cuda else out_dtype
    radius = int(truncate * sigma + 0.5)
    weights = torch.from_numpy(_gaussian_kernel(sigma, radius)).to(maps.device, work_dtype)
    height, width = maps.shape[-2:]
    x = maps.detach().to(work_dtype).reshape(-1, 1, height, width)
    x = x.index_select(3, _reflect_index(width, radius, maps.device))
    x = F.conv2d(x, weights.view(1, 1, 1, -1))
    x = x.index_select(2, _reflect_index(height, radius, maps.device))
    x = F.conv2d(x, weights.view(1, 1, -1, 1))
    return x.reshape(maps.shape).to(out_dtype)


def _gaussian_kernel(sigma: float, radius: int) -> np.ndarray:
    """Normalised float64 Gaussian weights at offsets -radius..radius."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _reflect_index(length: int, radius: int, device: torch.device) -> torch.Tensor:
    """Source index of every position in -radius..length+radius-1 under half-sample
    symmetric reflection, which is periodic with period 2 * length."""
    positions = torch.arange(-radius, length + radius, device=device)
    folded = torch.remainder(positions, 2 * length)
    return torch.where(folded < length, folded, 2 * length - 1 - folded)
