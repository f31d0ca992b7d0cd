"""A synthetic category of predictions: ground-truth masks and anomaly score maps.

For checking and timing the metrics (``utils.metrics``) and the per-category evaluation
without a model: the maps look like a detector's output (smooth background noise, higher
scores on and around the defects), and any number and size of images comes in seconds.
Used by ``benchmarks/metrics.py`` (pixel metrics against the scikit-learn baseline),
``benchmarks/device_check.py`` (metrics on the GPU against the CPU) and ``benchmarks/run.py``
(a category's host memory). :mod:`datasets.synthetic` makes images, not maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.filters import gaussian_blur


def synthetic_category(images: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks ``(N, S, S)`` bool and maps ``(N, S, S)`` float32, CPU tensors, from ``seed``.

    Every other image (indices 0, 2, ...) has 1 to 4 axis-aligned elliptic defects, centred in
    the middle 80 % of the image with radii of S/60 + 1 to S/60 + S/12 + 1 pixels; the others
    are defect-free. A map is smooth noise (uniform values in [0, 1) on a grid of S // 24 + 2
    points, upsampled bicubically) plus 0.6 times the mask blurred with sigma S/100.
    """
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    masks = torch.zeros(images, size, size, dtype=torch.bool)
    for i in range(0, images, 2):
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            cy, cx = (torch.rand(2, generator=g) * 0.8 + 0.1) * size
            ry, rx = torch.rand(2, generator=g) * size / 12 + size / 60 + 1
            masks[i] |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    noise = torch.rand(images, 1, size // 24 + 2, size // 24 + 2, generator=g)
    smooth = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    maps = smooth + 0.6 * gaussian_blur(masks.float(), size / 100)
    return masks, maps.float().contiguous()
