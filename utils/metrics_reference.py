"""Slow, direct reference implementations, kept only to check ``utils.metrics`` against.

Nothing in training or testing calls these: the tests compare ``pixel_metrics`` and
``image_metrics`` with them, and ``benchmarks/metrics.py`` times them as the usual baseline.
They are written the way the metrics are classically computed, not for speed:

* :func:`legacy_pro`: the legacy PRO (``utils.metrics.pro_legacy``, the value the
  FAPrompt/AnomalyCLIP tables report) as their evaluation scripts loop for it: 200 evenly
  spaced thresholds between the smallest and largest score, every ground-truth region of
  every mask labelled with scikit-image (8-connectivity) and measured at every threshold, and
  the area under PRO over the rescaled false-positive rate, up to FPR 0.3;
* :func:`sklearn_f1_max`: the largest F1 over scikit-learn's precision-recall curve.
"""
from __future__ import annotations

import numpy as np
from skimage import measure
from sklearn.metrics import auc, precision_recall_curve


def legacy_pro(masks: np.ndarray, maps: np.ndarray, steps: int = 200, max_fpr: float = 0.3) -> float | None:
    """The legacy PRO of ``maps`` (N, H, W) against ``masks`` (N, H, W) bool.

    A pixel is predicted anomalous when its score is strictly greater than the threshold
    ``min + i * (max - min) / steps`` (float64, i = 0 .. steps - 1). Per threshold the PRO is
    the mean, over all regions, of the fraction of the region predicted anomalous, and the FPR
    that of the normal pixels. The thresholds with FPR < ``max_fpr`` are kept, their FPRs
    rescaled to [0, 1], and the trapezoid area under PRO returned; None where fewer than two
    thresholds are kept.
    """
    low, high = np.float64(maps.min()), np.float64(maps.max())
    delta = (high - low) / steps
    normal = ~masks
    on = np.zeros_like(masks)
    pros, fprs = [], []
    for i in range(steps):
        np.greater(maps, low + i * delta, out=on)
        overlaps = []
        for image_on, mask in zip(on, masks):
            for region in measure.regionprops(measure.label(mask, connectivity=2)):
                rows, cols = region.coords[:, 0], region.coords[:, 1]
                overlaps.append(image_on[rows, cols].sum() / region.area)
        pros.append(np.mean(overlaps))
        fprs.append(np.logical_and(normal, on).sum() / normal.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < max_fpr
    if keep.sum() < 2:
        return None
    kept = fprs[keep]
    return auc((kept - kept.min()) / (kept.max() - kept.min()), pros[keep])


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """The largest F1 over scikit-learn's precision-recall curve (0 where undefined)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nan_to_num(f1).max())
