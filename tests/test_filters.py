"""utils.filters.gaussian_blur against scipy.ndimage.gaussian_filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from utils.filters import gaussian_blur


def scipy_blur(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    return gaussian_filter(x, sigma, mode="reflect", truncate=truncate, axes=(-2, -1))


@pytest.mark.parametrize("sigma", [8.0, 10.0])
def test_matches_scipy_over_last_two_axes(sigma: float) -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 3, 64, 80), dtype=np.float32)
    maps[..., 10:20, 30:50] += 2.0  # an edge, so the result is not near-constant
    got = gaussian_blur(torch.from_numpy(maps), sigma)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert got.shape == maps.shape
    np.testing.assert_allclose(got.numpy(), scipy_blur(maps, sigma), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 1, 9), (12, 30)])
def test_radius_larger_than_image(shape: tuple[int, ...]) -> None:
    # radius 40 > every side: the reflection has to repeat several times
    maps = np.random.default_rng(1).random(shape, dtype=np.float32) * 10
    got = gaussian_blur(maps, 10.0)
    assert isinstance(got, np.ndarray) and got.shape == maps.shape
    np.testing.assert_allclose(got, scipy_blur(maps, 10.0), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("sigma", "truncate"), [(1.4, 4.0), (2.3, 2.0)])
def test_numpy_float64_and_rounded_radius(sigma: float, truncate: float) -> None:
    # truncate * sigma has fraction >= 0.5 here, so the radius rounds up
    maps = np.random.default_rng(2).random((4, 33, 17))
    got = gaussian_blur(maps, sigma, truncate=truncate)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, scipy_blur(maps, sigma, truncate), rtol=0, atol=1e-12)


def test_non_positive_sigma_is_identity() -> None:
    maps = torch.rand(2, 8, 8)
    assert gaussian_blur(maps, 0.0) is maps
    assert gaussian_blur(maps, -1.0) is maps


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    maps = torch.rand(2, 64, 80)
    got = gaussian_blur(maps.cuda(), 8.0)
    assert got.is_cuda and got.dtype == torch.float32
    np.testing.assert_allclose(got.cpu().numpy(), scipy_blur(maps.numpy(), 8.0), atol=1e-5)
