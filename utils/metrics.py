"""Exact image- and pixel-level anomaly-detection metrics (docs/metrics.md).

Every metric of a call comes from one sort of the scores. A distinct score is one
threshold and a sample is predicted anomalous when its score is >= the threshold, exactly as
in scikit-learn (``roc_auc_score``, ``average_precision_score``, ``precision_recall_curve``).

The normal and the anomalous samples are sorted apart: the counts of any threshold are then
binary searches away in either array, and all curves are piecewise linear with corners only
at the tie groups that contain an anomalous sample (between them only false positives
accrue), so the ROC and PRO curves are built from those corners: the work beyond the sort
grows with the number of anomalous samples, not pixels. Sorting apart also keeps the memory
small: a normal pixel costs 4 bytes of working memory (its order key), and the pixel
evaluation builds the keys image by image, so a category's maps are never copied whole.
The same corners are the curve points :class:`Evaluation` hands out (ROC, precision-recall,
PRO) together with the F1-optimal threshold, so curves and metrics never disagree.

Inputs may be numpy arrays or torch tensors; CUDA tensors are processed on their GPU.
A metric that is undefined for the given labels is ``None`` (tables print "n/a").
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import cv2
import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor
Metrics = dict[str, float | None]

MAX_FPR = 0.3
LEGACY_PRO_STEPS = 200
PLOT_POINTS = 1000
PIXEL_CHUNK = 1 << 22  # pixels whose keys are built at once (about 16 images at 518 px)


@dataclass
class Ranking:
    """Sorted scores of one evaluation set and the corners of its curves.

    ``normal`` / ``anomalous``: the scores of the normal and of the anomalous samples, each
    sorted ascending (contiguous), as float64 or as int32 order keys (see :func:`_order_key`);
    equal anomalous scores are ordered by region id. ``pro_prefix``: cumulative PRO weight of
    the anomalous samples in that order, leading 0.

    ``fp``/``tp``/``pro`` (float64, length 2K + 2 for K tie groups with anomalous samples)
    are the corners of the ROC and PRO curves from the lowest threshold up: the totals (all
    negatives, all positives, total weight), then for each such group, ascending, the point
    including it and the point just above it, then (0, 0, 0). Counts are exact integers.
    ``thresholds`` (float64, same length) holds for each corner a score cut that produces it
    (a sample counts as anomalous when its score is >= the cut; ``inf`` flags nothing).
    """

    normal: torch.Tensor
    anomalous: torch.Tensor
    pro_prefix: torch.Tensor
    fp: torch.Tensor
    tp: torch.Tensor
    pro: torch.Tensor
    thresholds: torch.Tensor
    n_pos: int
    n_neg: int

    def lowest(self) -> float:
        return min(_key_value(a[0]) for a in (self.normal, self.anomalous) if a.numel())

    def highest(self) -> float:
        return max(_key_value(a[-1]) for a in (self.normal, self.anomalous) if a.numel())


@dataclass
class Curve:
    """Points of one curve from the lowest threshold up (float64 arrays of equal length M).

    ``thresholds[i]`` is the score cut giving point i (anomalous when score >= cut; ``inf``
    flags nothing; ``nan`` marks a point interpolated between two cuts).
    """

    x: np.ndarray
    y: np.ndarray
    thresholds: np.ndarray

    def downsample(self, max_points: int = PLOT_POINTS) -> "Curve":
        """At most about ``max_points`` of the points, evenly spaced along the curve's length
        (axes scaled to unit range), always keeping both ends; for plots and CSV files."""
        n = len(self.x)
        if n <= max_points:
            return self
        spans = [max(float(np.ptp(v)), 1e-300) for v in (self.x, self.y)]
        step = np.hypot(np.diff(self.x) / spans[0], np.diff(self.y) / spans[1])
        length = np.concatenate([[0.0], np.cumsum(step)])
        picks = np.searchsorted(length, np.linspace(0.0, length[-1], max_points))
        keep = np.unique(np.concatenate([[0, n - 1], np.minimum(picks, n - 1)]))
        return Curve(self.x[keep], self.y[keep], self.thresholds[keep])


@dataclass
class OperatingPoint:
    """The F1-optimal threshold (anomalous when score >= threshold) and its rates."""

    threshold: float
    precision: float
    recall: float
    f1: float


@dataclass
class Evaluation:
    """Metrics of one evaluation set and, from the same sort, its curves.

    A curve (or the operating point) exists exactly where its metric is defined:
    ROC with AUROC, precision-recall with AP, PRO with AUPRO, the operating point with F1-max.
    """

    metrics: Metrics
    ranking: Ranking

    def roc(self) -> Curve | None:
        """FPR (x) and TPR (y) at every corner; its trapezoid area is the AUROC."""
        if self.metrics.get("auroc") is None:
            return None
        r = self.ranking
        return _curve(r.fp / r.n_neg, r.tp / r.n_pos, r.thresholds)

    def pr(self) -> Curve | None:
        """Recall (x) and precision (y) at the thresholds that include a group with
        anomalous samples (where recall moves); AP sums precision over these steps."""
        if self.metrics.get("ap") is None:
            return None
        r = self.ranking
        tp, fp = r.tp[1:-1:2], r.fp[1:-1:2]
        return _curve(tp / r.n_pos, tp / (tp + fp), r.thresholds[1:-1:2])

    def pro(self, max_fpr: float = MAX_FPR) -> Curve | None:
        """FPR (x) and PRO (y) for FPR <= ``max_fpr``, starting with the point interpolated at
        exactly ``max_fpr``; its trapezoid area divided by ``max_fpr`` is the AUPRO."""
        if self.metrics.get("aupro") is None:
            return None
        first, x, y, cut = _pro_corners(self.ranking, max_fpr)
        thresholds = self.ranking.thresholds[first:]
        if cut is not None:
            nan = torch.full((1,), float("nan"), dtype=torch.float64, device=x.device)
            x, y = torch.cat([x.new_tensor([max_fpr]), x]), torch.cat([y.new_tensor([cut]), y])
            thresholds = torch.cat([nan, thresholds])
        return _curve(x, y, thresholds)

    def best_f1(self) -> OperatingPoint | None:
        """The threshold of F1-max (the lowest one where several tie) with its precision and
        recall; flagging the samples with score >= threshold reproduces F1-max."""
        if self.metrics.get("f1_max") is None:
            return None
        r = self.ranking
        tp, fp = r.tp[1:-1:2], r.fp[1:-1:2]
        f1 = _f1(r)
        j = int(torch.argmax(f1))
        return OperatingPoint(threshold=float(r.thresholds[2 * j + 1]), precision=float(tp[j] / (tp[j] + fp[j])),
                              recall=float(tp[j] / r.n_pos), f1=float(f1[j]))


def _curve(x: torch.Tensor, y: torch.Tensor, thresholds: torch.Tensor) -> Curve:
    return Curve(*(v.double().cpu().numpy() for v in (x, y, thresholds)))


# --- public entry points ---


def image_metrics(labels: ArrayLike, scores: ArrayLike) -> Metrics:
    """Image-level AUROC, AP and F1-max.

    Args:
        labels: shape (N,), anomalous where ``label > 0.5``.
        scores: shape (N,), higher means more anomalous.

    Returns:
        ``{"auroc", "ap", "f1_max"}``, all ``None`` unless both classes are present.
    """
    return evaluate_images(labels, scores).metrics


def pixel_metrics(masks: ArrayLike, maps: ArrayLike) -> Metrics:
    """Pixel-level AUROC, AP, F1-max, AUPRO and legacy PRO of one category.

    All pixels of the category are pooled (never averaged per image) and sorted once.

    Args:
        masks: ground truth (N, H, W) (or reshapeable to it, e.g. (N, 1, H, W)), anomalous
            where ``mask > 0.5``.
        maps: anomaly maps of the same shape; float32 takes the fast path.

    Returns:
        ``{"auroc", "ap", "f1_max", "aupro", "pro_legacy"}``. Without anomalous pixels all
        are ``None``; without normal pixels AUROC, AUPRO and legacy PRO are ``None``.
    """
    return evaluate_pixels(masks, maps).metrics


def evaluate_images(labels: ArrayLike, scores: ArrayLike) -> Evaluation:
    """:func:`image_metrics` with the curves and the F1-optimal threshold of the same sort."""
    device = _pick_device(labels, scores)
    y = _as_tensor(labels, device).reshape(-1) > 0.5
    s = _as_tensor(scores, device).reshape(-1)
    if y.numel() != s.numel():
        raise ValueError(f"labels has {y.numel()} entries but scores has {s.numel()}")
    ranking = rank(s, y.to(torch.int32), torch.zeros(2, dtype=torch.float64, device=device))
    if ranking.n_pos == 0 or ranking.n_neg == 0:
        return Evaluation({"auroc": None, "ap": None, "f1_max": None}, ranking)
    return Evaluation({"auroc": auroc(ranking), "ap": average_precision(ranking), "f1_max": f1_max(ranking)},
                      ranking)


def evaluate_pixels(masks: ArrayLike, maps: ArrayLike) -> Evaluation:
    """:func:`pixel_metrics` with the curves and the F1-optimal threshold of the same sort.

    Beyond its inputs this needs 4 bytes per pixel (the sort keys) and a few megabytes: the
    keys and region ids are built a chunk of images at a time, never from a full-size copy
    of the maps or masks (bool masks are read as they are)."""
    if tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(f"masks {tuple(masks.shape)} and maps {tuple(maps.shape)} differ")
    if len(maps.shape) < 2:
        raise ValueError("pixel metrics need (N, H, W) inputs")
    device = _pick_device(masks, maps)
    height, width = maps.shape[-2], maps.shape[-1]
    ranking = _rank_pixels(_as_tensor(masks, device).reshape(-1, height, width),
                           _as_tensor(maps, device).reshape(-1, height, width))
    return Evaluation({
        "auroc": auroc(ranking),
        "ap": average_precision(ranking),
        "f1_max": f1_max(ranking),
        "aupro": aupro(ranking),
        "pro_legacy": pro_legacy(ranking),
    }, ranking)


def macro_mean(per_category: dict[str, Metrics]) -> Metrics:
    """Mean of each metric over the categories where it is defined (not ``None``).

    This is the macro average the tables report; samples are never pooled across
    categories. A metric that no category defines stays ``None``.
    """
    keys: list[str] = []
    for metrics in per_category.values():
        keys.extend(k for k in metrics if k not in keys)
    out: Metrics = {}
    for key in keys:
        values = [m[key] for m in per_category.values() if m.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected anomalous regions of binary masks, 8-connectivity, separately per image.

    Args:
        masks: bool array (N, H, W).

    Returns:
        ``(regions, weights)``: int32 (N, H, W) with 0 for normal pixels and region ids
        1..C numbered across the whole set, and float64 ``weights`` (length C + 1) with
        ``weights[c] = 1 / (|c| * C)`` and ``weights[0] = 0``, so that the summed weight of
        the detected pixels is the mean over regions of the detected fraction (PRO).
    """
    regions = np.zeros(masks.shape, dtype=np.int32)
    areas: list[np.ndarray] = []
    for i in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)):
        regions[i] = _image_regions(masks[i], areas)
    return regions, _region_weights(areas)


def _image_regions(mask: np.ndarray, areas: list[np.ndarray]) -> np.ndarray:
    """int32 region ids of one (H, W) bool mask, numbered on from the regions in ``areas``
    (whose pixel counts this appends to)."""
    offset = sum(len(a) for a in areas)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8), connectivity=8,
        ltype=cv2.CV_32S)
    labels[labels > 0] += offset
    areas.append(stats[1:, cv2.CC_STAT_AREA])
    return labels


def _region_weights(areas: list[np.ndarray]) -> np.ndarray:
    """PRO weight per region id: ``1 / (|c| * C)``, 0 for id 0 (normal)."""
    total = sum(len(a) for a in areas)
    weights = np.zeros(total + 1, dtype=np.float64)
    if total:
        weights[1:] = 1.0 / (np.concatenate(areas).astype(np.float64) * total)
    return weights


# --- metrics of a ranking ---


def auroc(r: Ranking) -> float | None:
    """Area under the ROC curve (TPR over FPR) by the trapezoid rule through every
    threshold. ``None`` unless both classes are present."""
    if r.n_pos == 0 or r.n_neg == 0:
        return None
    twice_area = float(((r.fp[:-1] - r.fp[1:]) * (r.tp[:-1] + r.tp[1:])).sum())
    return twice_area / (2.0 * r.n_pos * r.n_neg)


def average_precision(r: Ranking) -> float | None:
    """AP = sum_n (R_n - R_{n-1}) * P_n over the distinct thresholds, descending, without
    interpolation. Recall only moves at groups with anomalous samples, whose including
    corners are the odd ones. ``None`` without anomalous samples."""
    if r.n_pos == 0:
        return None
    tp, fp = r.tp[1:-1:2], r.fp[1:-1:2]
    gain = tp - r.tp[2::2]
    return float((gain * tp / (tp + fp)).sum()) / r.n_pos


def f1_max(r: Ranking) -> float | None:
    """Maximum over thresholds of F1 = 2PR / (P + R) = 2TP / (TP + FP + #positives).

    Between groups with anomalous samples TP is constant while FP grows, so the maximum
    lies at a threshold that includes such a group. ``None`` without anomalous samples.
    """
    if r.n_pos == 0:
        return None
    return float(_f1(r).max())


def _f1(r: Ranking) -> torch.Tensor:
    """F1 at the thresholds that include a group with anomalous samples, ascending."""
    tp, fp = r.tp[1:-1:2], r.fp[1:-1:2]
    return 2.0 * tp / (tp + fp + r.n_pos)


def aupro(r: Ranking, max_fpr: float = MAX_FPR) -> float | None:
    """Normalised area under the per-region-overlap curve (MVTec AD definition).

    PRO(t) is the mean over all ground-truth regions of the fraction of the region's pixels
    scoring >= t; FPR(t) is the fraction of all normal pixels of the category scoring >= t.
    The curve starts at (0, 0), has a point at every distinct threshold, and is integrated
    with the trapezoid rule over FPR in [0, max_fpr], linearly interpolated at exactly
    ``max_fpr``; the area is divided by ``max_fpr``. ``None`` without regions or without
    normal pixels.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must lie in (0, 1], got {max_fpr}")
    if r.n_pos == 0 or r.n_neg == 0:
        return None
    _, x, y, y_cut = _pro_corners(r, max_fpr)
    area = float((0.5 * (y[1:] + y[:-1]) * (x[:-1] - x[1:])).sum())
    if y_cut is not None:
        x0, y0 = float(x[0]), float(y[0])
        area += 0.5 * (y0 + y_cut) * (max_fpr - x0)
    return area / max_fpr


def _pro_corners(r: Ranking, max_fpr: float) -> tuple[int, torch.Tensor, torch.Tensor, float | None]:
    """``(first, fpr, pro, pro_cut)``: the corners from index ``first`` on, those with
    FPR <= max_fpr, and the PRO interpolated at exactly ``max_fpr`` (``None`` when a
    corner lies there)."""
    fpr = r.fp / r.n_neg
    first = len(fpr) - int(torch.count_nonzero(fpr <= max_fpr))  # FPR falls: these trail
    x, y = fpr[first:], r.pro[first:]
    x0, y0 = float(x[0]), float(y[0])
    if x0 >= max_fpr:
        return first, x, y, None
    # the first corner has FPR 1, so one beyond max_fpr exists
    x1, y1 = float(fpr[first - 1]), float(r.pro[first - 1])
    return first, x, y, y0 + (max_fpr - x0) * (y1 - y0) / (x1 - x0)


def pro_legacy(r: Ranking, steps: int = LEGACY_PRO_STEPS, max_fpr: float = MAX_FPR) -> float | None:
    """Legacy PRO: the 200-threshold value the FAPrompt/AnomalyCLIP tables report.

    Thresholds t_i = min + i * (max - min) / steps for i = 0..steps-1 over the category's
    scores; a pixel is on when its score is strictly greater than t_i. PRO_i is the mean over
    regions of the on fraction, FPR_i the on fraction of the normal pixels. Points with
    FPR_i < max_fpr are kept, their FPRs rescaled min-max to [0, 1], and the area under PRO
    over the rescaled FPR taken with the trapezoid rule (``sklearn.metrics.auc``). This is
    not the MVTec AUPRO and differs from it by up to about a point.

    ``None`` without regions or normal pixels, when max == min, when fewer than two points
    are kept, or when the kept FPRs are all equal (the rescale is undefined).
    """
    if r.n_pos == 0 or r.n_neg == 0:
        return None
    low, high = r.lowest(), r.highest()
    if high == low:
        return None
    delta = (high - low) / steps
    cuts = low + torch.arange(steps, dtype=torch.float64, device=r.normal.device) * delta
    cut_keys = _as_keys(cuts, r.normal.dtype)  # score <= t_i below
    off_positive = torch.searchsorted(r.anomalous, cut_keys, right=True)
    fpr = (r.n_neg - torch.searchsorted(r.normal, cut_keys, right=True)).double() / r.n_neg
    pro = r.pro_prefix[-1] - r.pro_prefix[off_positive]
    keep = fpr < max_fpr
    if int(keep.sum()) < 2:
        return None
    fpr, pro = fpr[keep], pro[keep]
    span = float(fpr.max() - fpr.min())
    if span == 0.0:
        return None
    x = (fpr - fpr.min()) / span
    # FPR falls as t_i rises, so x is non-increasing: the area is the negated trapezoid sum.
    return float((0.5 * (pro[1:] + pro[:-1]) * (x[:-1] - x[1:])).sum())


# --- the single sort ---


def rank(scores: torch.Tensor, regions: torch.Tensor, weights: torch.Tensor) -> Ranking:
    """Sort flat ``scores`` once, normal and anomalous samples apart, and derive the curve
    corners. ``regions`` (flat ints): 0 = normal, c > 0 = anomalous region c, whose pixels
    have PRO weight ``weights[c]``.

    Half-precision and float32 scores are sorted as int32 order keys; other dtypes are
    compared in float64 so that no two distinct input scores merge into one threshold.
    """
    if scores.numel() == 0:
        raise ValueError("no scores given")
    keys = _keys(scores.reshape(-1))
    anomalous = regions.reshape(-1) != 0
    return _ranking(_sort(keys[~anomalous]), keys[anomalous], regions.reshape(-1)[anomalous], weights)


def _rank_pixels(masks: torch.Tensor, maps: torch.Tensor) -> Ranking:
    """:func:`rank` of (N, H, W) maps against masks, with the 8-connected regions of each
    mask as PRO regions, built ``PIXEL_CHUNK`` pixels at a time."""
    images, height, width = maps.shape
    if maps.numel() == 0:
        raise ValueError("no scores given")
    step = max(1, PIXEL_CHUNK // (height * width))
    chunks = [masks[start:start + step] for start in range(0, images, step)]
    n_pos = sum(int(gt.sum() if gt.dtype == torch.bool else (gt > 0.5).sum()) for gt in chunks)
    dtype = _key_dtype(maps.dtype)
    normal = torch.empty(maps.numel() - n_pos, dtype=dtype, device=maps.device)
    anomalous = torch.empty(n_pos, dtype=dtype, device=maps.device)
    ids = torch.empty(n_pos, dtype=torch.int32, device=maps.device)
    areas: list[np.ndarray] = []
    filled_normal = filled_anomalous = 0
    for start, gt in zip(range(0, images, step), chunks):
        gt = (gt if gt.dtype == torch.bool else gt > 0.5).reshape(-1)
        keys = _keys(maps[start:start + step].reshape(-1))
        chunk = keys[~gt]
        normal[filled_normal:filled_normal + chunk.numel()] = chunk
        filled_normal += chunk.numel()
        if not bool(gt.any()):
            continue
        chunk = keys[gt]
        anomalous[filled_anomalous:filled_anomalous + chunk.numel()] = chunk
        regions = np.zeros((len(gt) // (height * width), height, width), dtype=np.int32)
        gt_cpu = gt.cpu().numpy().reshape(regions.shape)
        for i in np.flatnonzero(gt_cpu.reshape(len(regions), -1).any(axis=1)):
            regions[i] = _image_regions(gt_cpu[i], areas)
        ids[filled_anomalous:filled_anomalous + chunk.numel()] = \
            torch.from_numpy(regions.reshape(-1)[gt_cpu.reshape(-1)]).to(ids.device)
        filled_anomalous += chunk.numel()
    weights = torch.from_numpy(_region_weights(areas)).to(maps.device)
    return _ranking(_sort(normal), anomalous, ids, weights)


def _ranking(normal: torch.Tensor, anomalous: torch.Tensor, regions: torch.Tensor,
             weights: torch.Tensor) -> Ranking:
    """The corners from the sorted normal keys and the (unsorted) anomalous keys with their
    region ids."""
    anomalous, regions = _sort_pairs(anomalous, regions)
    for keys in (normal, anomalous):
        if keys.numel() and (np.isnan(_key_value(keys[0])) or np.isnan(_key_value(keys[-1]))):
            raise ValueError("scores contain NaN")  # NaN sorts to an end
    device = normal.device
    n_neg, n_pos = normal.numel(), anomalous.numel()
    pro_prefix = torch.zeros(n_pos + 1, dtype=torch.float64, device=device)
    torch.cumsum(weights[regions.long()], dim=0, out=pro_prefix[1:])

    # Tie groups holding anomalous samples, ascending.
    group_keys, per_group = torch.unique_consecutive(anomalous, return_counts=True)
    below = torch.searchsorted(normal, group_keys)  # normal samples under the group's score
    through = torch.searchsorted(normal, group_keys, right=True)  # ... up to and including it
    pos_through = torch.cumsum(per_group, dim=0)  # anomalous samples up to the group's end
    pos_above = n_pos - pos_through
    neg_above = n_neg - through
    neg_in = through - below
    pro_above = pro_prefix[-1] - pro_prefix[pos_through]
    pro_in = pro_prefix[pos_through] - pro_prefix[pos_through - per_group]

    # Corner thresholds: the lowest score flags everything; a group's own score flags it;
    # the next score above a group (the next normal one or the next group's, inf past the
    # top) flags what lies above it.
    inf = torch.full((1,), float("inf"), dtype=torch.float64, device=device)
    next_normal = _key_values(normal[through.clamp(max=max(n_neg - 1, 0))]) if n_neg else inf.expand(len(through))
    next_normal = torch.where(through < n_neg, next_normal, inf)
    cut_above = torch.minimum(next_normal, torch.cat([_key_values(group_keys[1:]), inf]))
    thresholds = torch.empty(2 * group_keys.numel() + 2, dtype=torch.float64, device=device)
    thresholds[0] = min(_key_value(keys[0]) for keys in (normal, anomalous) if keys.numel())
    thresholds[-1] = float("inf")
    thresholds[1:-1:2] = _key_values(group_keys)
    thresholds[2:-1:2] = cut_above

    def corners(above: torch.Tensor, inside: torch.Tensor, total: float) -> torch.Tensor:
        out = torch.empty(2 * above.numel() + 2, dtype=torch.float64, device=above.device)
        out[0], out[-1] = total, 0.0
        out[1:-1:2] = above + inside
        out[2:-1:2] = above
        return out

    return Ranking(
        normal=normal,
        anomalous=anomalous,
        pro_prefix=pro_prefix,
        fp=corners(neg_above, neg_in, float(n_neg)),
        tp=corners(pos_above, per_group, float(n_pos)),
        pro=corners(pro_above, pro_in, float(pro_prefix[-1])),
        thresholds=thresholds,
        n_pos=n_pos,
        n_neg=n_neg,
    )


def _key_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.int32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64


def _keys(scores: torch.Tensor) -> torch.Tensor:
    """Sort keys of flat scores: int32 order keys of float32 (and half-precision) scores,
    float64 values of anything else."""
    if _key_dtype(scores.dtype) == torch.int32:
        return _order_key(scores.to(torch.float32).contiguous())
    return scores.double()


def _sort(keys: torch.Tensor) -> torch.Tensor:
    """Ascending sort of 1-D keys; on CPU in place with numpy, whose vectorised sort is
    several times faster than ``torch.sort`` there and needs no second buffer."""
    keys = keys.contiguous()
    if keys.device.type == "cpu":
        keys.numpy().sort()  # shares memory with ``keys``
        return keys
    return torch.sort(keys).values


def _sort_pairs(keys: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort keys ascending with their region ids, equal keys by region id; returns both
    contiguous.

    int32 keys are sorted as 64-bit integers whose high half is the key and whose low half
    the region id, which avoids an argsort and the gather that follows it.
    """
    if keys.dtype != torch.int32:
        order = torch.argsort(regions, stable=True)
        order = order[torch.argsort(keys[order], stable=True)]
        return keys[order].contiguous(), regions[order].contiguous()
    if sys.byteorder != "little":  # the half-word views below assume little endian
        raise RuntimeError("packed sort needs a little-endian machine")
    packed = torch.empty(keys.numel(), dtype=torch.int64, device=keys.device)
    halves = packed.view(torch.int32)
    halves[1::2] = keys
    halves[0::2] = regions.to(torch.int32)
    halves = _sort(packed).view(torch.int32)
    return halves[1::2].contiguous(), halves[0::2].contiguous()


def _order_key(scores: torch.Tensor) -> torch.Tensor:
    """Map float32 to int32 so that integer order equals float order and -0.0 == +0.0:
    a negative float becomes the negated magnitude of its bit pattern."""
    bits = scores.view(torch.int32)
    sign = bits >> 31  # arithmetic shift: -1 for negative floats, else 0
    key = bits & 0x7FFFFFFF
    key ^= sign
    key -= sign
    return key


def _key_value(key: torch.Tensor) -> float:
    """The score of one sorted key (inverse of :func:`_order_key` for int32 keys)."""
    if key.dtype != torch.int32:
        return float(key)
    magnitude = float(key.abs().view(torch.float32))
    return -magnitude if int(key) < 0 else magnitude


def _key_values(keys: torch.Tensor) -> torch.Tensor:
    """float64 scores of sorted keys (vectorised :func:`_key_value`)."""
    if keys.dtype != torch.int32:
        return keys.double()
    magnitude = keys.abs().view(torch.float32).double()
    return torch.where(keys < 0, -magnitude, magnitude)


def _as_keys(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Keys such that ``key(score) <= result`` iff ``score <= value`` for float64 values."""
    if dtype != torch.int32:
        return values
    # A float32 score is <= v iff it is <= the largest float32 not above v.
    down = values.float()
    below = torch.nextafter(down, down.new_tensor(-np.inf))
    down = torch.where(down.double() > values, below, down)
    return _order_key(down.contiguous())


# --- input handling ---


def _pick_device(*arrays: ArrayLike) -> torch.device:
    """The device of the first CUDA tensor among the inputs, else the CPU."""
    for array in arrays:
        if isinstance(array, torch.Tensor) and array.device.type != "cpu":
            return array.device
    return torch.device("cpu")


def _as_tensor(array: ArrayLike, device: torch.device) -> torch.Tensor:
    """A tensor on ``device``, sharing memory with ``array`` where possible."""
    if isinstance(array, torch.Tensor):
        return array.detach().to(device)
    return torch.as_tensor(np.ascontiguousarray(array), device=device)
