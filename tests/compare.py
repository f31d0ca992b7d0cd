"""The golden tests' comparison: ours within a tolerance of a reference array's scale."""
from __future__ import annotations

import numpy as np

TOL = 1e-5


def close(ours, reference, what: str, tol: float = TOL) -> None:
    """Max |ours − reference| ≤ tol · max(1, max |reference|)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape}, reference {reference.shape}"
    bound = tol * max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(ours - reference).max())
    assert error <= bound, f"{what}: max difference {error:.3g} exceeds {bound:.3g}"
