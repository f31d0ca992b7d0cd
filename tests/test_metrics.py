"""utils.metrics against scikit-learn and brute-force threshold sweeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import measure
from sklearn.metrics import average_precision_score, roc_auc_score

from utils import metrics
from utils.metrics import image_metrics, label_regions, macro_mean, pixel_metrics
from utils.metrics_reference import legacy_pro, sklearn_f1_max


def brute_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Every distinct score as a threshold, FPR and PRO counted directly."""
    regions = _image_regions(masks)
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        on = maps >= t
        xs.append((on & normal).sum() / normal.sum())
        ys.append(np.mean([on[i][region].mean() for i, region in regions]))
    area = 0.0
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # interpolate the segment at exactly max_fpr
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    labels = measure.label(mask, connectivity=2)
    return [labels == k for k in range(1, labels.max() + 1)]


def _image_regions(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    return [(i, region) for i, mask in enumerate(masks) for region in _regions(mask)]


def make_category(seed: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Small masks with several regions per image (one pair touching only diagonally,
    which 8-connectivity joins), two defect-free images, and heavily tied scores."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((6, 24, 30), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[0, 6:9, 6:9] = True  # touches the first square at a corner only
    masks[0, 15:20, 20:28] = True
    masks[1, 10:12, 3:25] = True
    masks[3, 1, 1] = True
    masks[3, 18:23, 2:5] = True
    masks[4] = rng.random((24, 30)) < 0.05  # scattered specks: many tiny regions
    maps = rng.random(masks.shape) + 0.35 * masks
    return masks, np.round(maps, 2).astype(dtype)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_metrics_match_references(seed: int, dtype) -> None:
    masks, maps = make_category(seed, dtype)
    assert len(np.unique(maps)) < maps.size // 10  # ties are really exercised
    got = pixel_metrics(masks, maps)
    y, s = masks.ravel(), maps.ravel()
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert got["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert got["f1_max"] == pytest.approx(sklearn_f1_max(y, s), abs=1e-9)
    assert got["aupro"] == pytest.approx(brute_aupro(masks, maps), abs=1e-6)
    assert got["pro_legacy"] == pytest.approx(legacy_pro(masks, maps), abs=1e-9)
    assert all(isinstance(v, float) for v in got.values())


def test_pixel_metrics_many_distinct_scores() -> None:
    rng = np.random.default_rng(7)
    masks = np.zeros((8, 40, 40), dtype=bool)
    masks[::2, 5:15, 10:30] = True
    maps = (rng.normal(size=masks.shape) + masks).astype(np.float32)  # negatives too
    got = pixel_metrics(masks, maps)
    y, s = masks.ravel(), maps.ravel()
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-9)
    assert got["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    assert got["f1_max"] == pytest.approx(sklearn_f1_max(y, s), abs=1e-9)
    assert got["aupro"] == pytest.approx(brute_aupro(masks, maps), abs=1e-6)


@pytest.mark.parametrize("levels", ["integers", "float32_fractions"])
def test_pro_legacy_when_thresholds_hit_scores(levels: str) -> None:
    # Integer scores 0..200 make every t_i equal a score (tests "strictly greater");
    # float32(i / 200) scores sit just above or below the float64 t_i (tests rounding).
    rng = np.random.default_rng(5)
    masks, _ = make_category(5)
    steps = np.where(masks, rng.integers(80, 201, masks.shape), rng.integers(0, 150, masks.shape))
    steps[2, 0, :2] = [0, 200]  # min and max, so t_i = i exactly, or i / 200 in float64
    maps = (steps if levels == "integers" else steps / 200).astype(np.float32)
    assert pixel_metrics(masks, maps)["pro_legacy"] == pytest.approx(
        legacy_pro(masks, maps), abs=1e-9
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_image_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.4
    scores = np.round(rng.random(200) + 0.3 * labels, 1)  # about ten distinct scores
    got = image_metrics(labels.astype(np.int64), scores)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert got["f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-9)
    assert image_metrics(labels, scores.astype(np.float32)) == got


def test_signed_zeros_are_one_threshold() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.0, -0.0, -0.0, 0.0, -1.0, 2.0], dtype=np.float32)
    got = image_metrics(labels, scores)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_undefined_cases_are_none() -> None:
    scores = np.array([0.1, 0.5, 0.7])
    assert image_metrics(np.zeros(3), scores) == {"auroc": None, "ap": None, "f1_max": None}
    assert image_metrics(np.ones(3), scores) == {"auroc": None, "ap": None, "f1_max": None}

    masks, maps = make_category(0)
    none = pixel_metrics(np.zeros_like(masks), maps)
    assert none == dict.fromkeys(["auroc", "ap", "f1_max", "aupro", "pro_legacy"])

    full = pixel_metrics(np.ones_like(masks), maps)
    assert full["auroc"] is None and full["aupro"] is None and full["pro_legacy"] is None
    assert full["ap"] == pytest.approx(1.0) and full["f1_max"] == pytest.approx(1.0)

    flat = pixel_metrics(masks, np.full(masks.shape, 0.25, dtype=np.float32))
    assert flat["pro_legacy"] is None  # max == min: no thresholds
    assert flat["auroc"] == pytest.approx(0.5)
    assert flat["aupro"] == pytest.approx(0.15)  # the diagonal up to FPR 0.3, / 0.3


def test_torch_inputs_equal_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    masks, maps = make_category(3)
    expected = pixel_metrics(masks, maps)
    assert pixel_metrics(torch.from_numpy(masks), torch.from_numpy(maps)) == expected
    assert pixel_metrics(masks, torch.from_numpy(maps)[:, None].squeeze(1)) == expected
    # the GPU branch sorts with torch.sort; run it on the CPU
    monkeypatch.setattr(metrics, "_sort", lambda v: torch.sort(v).values)
    assert pixel_metrics(torch.from_numpy(masks), torch.from_numpy(maps)) == expected
    labels, scores = masks.reshape(6, -1).any(1), maps.reshape(6, -1).max(1)
    assert image_metrics(torch.from_numpy(labels), torch.from_numpy(scores)) == image_metrics(
        labels, scores
    )


def test_label_regions_match_skimage() -> None:
    masks, _ = make_category(4)
    regions, weights = label_regions(masks)
    expected = _image_regions(masks)
    assert regions.max() == len(expected) == len(weights) - 1
    for i, region in expected:  # each skimage region is exactly one of ours
        ids = np.unique(regions[i][region])
        assert len(ids) == 1 and (regions[i] == ids[0]).sum() == region.sum()
        assert weights[ids[0]] == pytest.approx(1 / (region.sum() * len(expected)))
    assert (regions[2] == 0).all() and (regions[5] == 0).all()


def test_nan_scores_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(np.array([0, 1]), np.array([0.5, np.nan], dtype=np.float32))


def test_macro_mean_skips_undefined() -> None:
    per_category = {
        "a": {"auroc": 0.8, "aupro": None},
        "b": {"auroc": 0.6, "aupro": 0.5},
        "c": {"auroc": None, "aupro": None, "ap": None},
    }
    assert macro_mean(per_category) == {"auroc": pytest.approx(0.7), "aupro": 0.5, "ap": None}


def _flag_rates(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float, float]:
    """(FPR, TPR, precision) of flagging score >= t, counted directly."""
    on = s >= t
    tp, fp = (on & y).sum(), (on & ~y).sum()
    return fp / (~y).sum(), tp / y.sum(), tp / max(tp + fp, 1)


@pytest.mark.parametrize("kind", ["image", "pixel_ties", "pixel_float32"])
def test_curves_come_from_the_metrics_sort(kind: str) -> None:
    rng = np.random.default_rng(11)
    if kind == "image":
        y = rng.random(300) < 0.3
        s = np.round(rng.random(300) + 0.4 * y, 2)  # float64 with ties
        ev = metrics.evaluate_images(y, s)
        masks = None
    else:
        masks, maps = make_category(1) if kind == "pixel_ties" else (None, None)
        if masks is None:
            masks = rng.random((4, 30, 30)) < 0.08
            maps = (rng.normal(size=masks.shape) + masks).astype(np.float32)
        ev = metrics.evaluate_pixels(masks, maps)
        y, s = masks.ravel(), maps.ravel()
    roc, pr, op = ev.roc(), ev.pr(), ev.best_f1()
    # ROC: trapezoid area equals AUROC; every point is what its threshold gives
    assert np.trapezoid(roc.y[::-1], roc.x[::-1]) == pytest.approx(ev.metrics["auroc"], abs=1e-9)
    assert (roc.x[0], roc.y[0], roc.x[-1], roc.y[-1]) == (1.0, 1.0, 0.0, 0.0)
    for t, fpr, tpr in zip(roc.thresholds, roc.x, roc.y):
        assert _flag_rates(y, s, t)[:2] == pytest.approx((fpr, tpr), abs=1e-12)
    # PR: AP is the sum of precision over the recall steps; points as their thresholds give
    steps = pr.x - np.append(pr.x[1:], 0.0)
    assert float((steps * pr.y).sum()) == pytest.approx(ev.metrics["ap"], abs=1e-9)
    assert (steps >= 0).all() and pr.x[0] == 1.0
    for t, recall, precision in zip(pr.thresholds, pr.x, pr.y):
        assert _flag_rates(y, s, t)[1:] == pytest.approx((recall, precision), abs=1e-12)
    # F1-optimal threshold: flagging score >= threshold reproduces F1-max, P and R
    assert op.f1 == ev.metrics["f1_max"]
    _, tpr, precision = _flag_rates(y, s, op.threshold)
    assert (precision, tpr) == pytest.approx((op.precision, op.recall), abs=1e-12)
    assert 2 * precision * tpr / (precision + tpr) == pytest.approx(ev.metrics["f1_max"], abs=1e-12)
    if kind == "image":
        assert ev.pro() is None
        return
    pro = ev.pro()
    assert pro.x.max() == pytest.approx(0.3) and np.isnan(pro.thresholds[0]) and pro.x[-1] == 0.0
    assert np.trapezoid(pro.y[::-1], pro.x[::-1]) / 0.3 == pytest.approx(ev.metrics["aupro"], abs=1e-9)
    regions = _image_regions(masks)
    for t, fpr, value in zip(pro.thresholds[1:], pro.x[1:], pro.y[1:]):
        on = maps >= t
        assert (on & ~masks).sum() / (~masks).sum() == pytest.approx(fpr, abs=1e-12)
        assert np.mean([on[i][region].mean() for i, region in regions]) == pytest.approx(value, abs=1e-12)


def test_downsampled_curves_keep_ends_and_shape() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((6, 60, 60)) < 0.1
    maps = (rng.normal(size=masks.shape) + 1.5 * masks).astype(np.float32)
    ev = metrics.evaluate_pixels(masks, maps)
    full = ev.roc()
    small = full.downsample(200)
    assert len(full.x) > 2000 and 150 <= len(small.x) <= 202
    assert (small.x[0], small.y[0], small.x[-1], small.y[-1]) == (1.0, 1.0, 0.0, 0.0)
    kept = np.searchsorted(full.thresholds, small.thresholds)  # one threshold, one point: a subset
    assert np.array_equal(full.x[kept], small.x) and np.array_equal(full.y[kept], small.y)
    assert np.trapezoid(small.y[::-1], small.x[::-1]) == pytest.approx(ev.metrics["auroc"], abs=2e-3)
    assert full.downsample(len(full.x)) is full


def test_undefined_curves_are_none() -> None:
    ev = metrics.evaluate_images(np.ones(4), np.arange(4.0))
    assert (ev.roc(), ev.pr(), ev.pro(), ev.best_f1()) == (None, None, None, None)
    masks, maps = make_category(0)
    full = metrics.evaluate_pixels(np.ones_like(masks), maps)
    assert full.roc() is None and full.pro() is None and full.best_f1().recall == 1.0
    assert metrics.evaluate_pixels(np.zeros_like(masks), maps).pr() is None
