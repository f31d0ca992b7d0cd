"""Evaluation: batched inference over a dataset, per-category metrics, tables and files.

A dataset is processed in its meta.json order (category by category): each category's
smoothed maps are kept, in one preallocated buffer, only until its metrics are computed.
Batches never straddle two categories. Under torchrun every process scores its contiguous part
of each category and rank 0 receives the other parts straight into that buffer
(:mod:`engine.distributed`), so N processes give exactly the single-process results; the
flow noise of Bayes-PFL follows the images' dataset positions, not the batches or processes.
Image scores are fused per category (``models.scoring``); metrics are macro-averaged over
categories (SPEC section 7). Each category's metrics, curves and F1-optimal thresholds come
from one sort per level (:mod:`utils.metrics`), on the GPU when the model runs there; the
curves feed the HTML report (:mod:`engine.report`).
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tabulate import tabulate
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.meta import MetaDataset, collate
from engine import distributed
from engine.fewshot import FewShotScorer
from models.scoring import fuse_image_scores
from utils.errors import UserError
from utils.filters import gaussian_blur
from utils.io import atomic_open, write_json, write_text
from utils.metrics import Evaluation, evaluate_images, evaluate_pixels, image_metrics, macro_mean, pixel_metrics
from utils.visualize import heat, load_rgb, write_png

log = logging.getLogger("zsad.evaluation")

IMAGE_KEYS = ("auroc", "ap", "f1_max")
PIXEL_KEYS = ("auroc", "ap", "f1_max", "aupro", "pro_legacy")
COLUMN_NAMES = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1_max": "I-F1max",
                "pixel_auroc": "P-AUROC", "pixel_ap": "P-AP", "pixel_f1_max": "P-F1max",
                "pixel_aupro": "P-AUPRO", "pixel_pro_legacy": "P-PRO(legacy)"}
METRIC_CHOICES = {"image": ("image",), "pixel": ("pixel",), "image-pixel": ("image", "pixel"),
                  "image-level": ("image",), "pixel-level": ("pixel",), "image-pixel-level": ("image", "pixel")}


class CategoryOutputs:
    """A category's collected predictions in dataset order.

    ``maps`` [N, S, S] float32 (smoothed) and ``masks`` [N, S, S] bool are views of CPU buffers
    allocated once for ``expected`` images and filled in place, so a category's maps exist
    once (a 2,000-image category at 518 px: 2.1 GB of maps, 0.5 GB of masks); the other
    fields are per-image lists (``fewshot_score`` only in a few-shot run).
    """

    def __init__(self, name: str, expected: int = 0, size: Optional[int] = None):
        self.name, self.expected, self.size = name, expected, size
        self._maps: Optional[torch.Tensor] = None
        self._masks: Optional[torch.Tensor] = None
        self.count = 0
        self.has_mask: List[bool] = []
        self.labels: List[int] = []
        self.class_prob: List[float] = []
        self.map_score: List[float] = []
        self.paths: List[str] = []
        self.fewshot_score: List[float] = []

    @property
    def maps(self) -> torch.Tensor:
        return self._rows(self._maps, torch.float32)

    @property
    def masks(self) -> torch.Tensor:
        return self._rows(self._masks, torch.bool)

    def _rows(self, buffer: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if buffer is None:
            return torch.empty(0, self.size or 0, self.size or 0, dtype=dtype)
        return buffer[:self.count]

    def _reserve(self, extra: int) -> None:
        needed = self.count + extra
        if extra == 0 or (self._maps is not None and needed <= len(self._maps)):
            return
        if self.size is None:
            raise ValueError("CategoryOutputs needs the map size before its first rows")
        capacity = max(needed, self.expected, 2 * len(self._maps) if self._maps is not None else 0)
        maps = torch.empty(capacity, self.size, self.size, dtype=torch.float32)
        masks = torch.empty(capacity, self.size, self.size, dtype=torch.bool)
        if self._maps is not None:  # only when more images come than expected
            maps[:self.count], masks[:self.count] = self.maps, self.masks
        self._maps, self._masks = maps, masks

    def extend(self, count: int, has_mask: Sequence[bool], labels: Sequence[int], class_prob: Sequence[float],
               map_score: Sequence[float], paths: Sequence[str], fewshot_score: Sequence[float] = ()) -> tuple:
        """Append ``count`` images' scalars; return the (maps, masks) rows they occupy, to be
        filled by the caller."""
        self._reserve(count)
        rows = slice(self.count, self.count + count)
        self.count += count
        self.has_mask += [bool(h) for h in has_mask]
        self.labels += [int(v) for v in labels]
        self.class_prob += [float(v) for v in class_prob]
        self.map_score += [float(v) for v in map_score]
        self.paths += list(paths)
        self.fewshot_score += [float(v) for v in fewshot_score]
        if self._maps is None:  # no rows yet and none asked for
            return self.maps, self.masks
        return self._maps[rows], self._masks[rows]

    def add(self, maps, masks, has_mask, labels, class_prob, map_score, paths, fewshot_score=()) -> None:
        """Append a batch: maps [B, S, S] (any device), masks [B, S, S] (0/1 or bool), and B
        of each scalar (the few-shot scores: none in a zero-shot run)."""
        if self.size is None:
            self.size = int(maps.shape[-1])
        map_rows, mask_rows = self.extend(len(maps), has_mask, labels, class_prob, map_score, paths, fewshot_score)
        map_rows.copy_(maps)
        mask_rows.copy_(masks if masks.dtype == torch.bool else masks > 0.5)

    def scalars(self) -> tuple:
        return self.has_mask, self.labels, self.class_prob, self.map_score, self.paths, self.fewshot_score


@dataclass
class CategoryPlan:
    """One category's images: its dataset positions and this process's contiguous part, in
    whole blocks of ``unit`` images (see :func:`engine.distributed.shard`)."""

    name: str
    indices: range
    local: range
    unit: int = 1


def category_plan(dataset, ctx: distributed.Context, batch_size: int = 1) -> List[CategoryPlan]:
    """The dataset's runs of equal category, in order, each split over the processes in whole
    batches (a category's batches start at its first image)."""
    if hasattr(dataset, "records"):
        names = [str(r["cls_name"]) for r in dataset.records]
    else:  # an ImageList: one class name for every image
        names = [str(dataset.class_name)] * len(dataset)
    plans, start = [], 0
    for end in range(1, len(names) + 1):
        if end == len(names) or names[end] != names[start]:
            part = ctx.shard(end - start, batch_size)
            plans.append(CategoryPlan(names[start], range(start, end),
                                      range(start + part.start, start + part.stop), batch_size))
            start = end
    return plans


def loader(dataset, batches: Sequence[Sequence[int]], num_workers: int, device: torch.device) -> DataLoader:
    """Images of the given index batches, decoded and resized in ``num_workers`` processes, in
    pinned memory for a GPU."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      pin_memory=device.type == "cuda")


def check_finite(maps: torch.Tensor, pred, names: Sequence[str], paths: Sequence[str]) -> None:
    """A diverged model's NaN/Inf outputs are a user error naming the category, not a metrics crash.

    maps: [B, S, S]; ``pred`` a Prediction whose ``class_prob`` and ``map_score`` are [B].
    """
    finite = torch.isfinite(maps).flatten(1).all(1) & torch.isfinite(pred.class_prob) & torch.isfinite(pred.map_score)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        raise UserError(f"the model produced non-finite scores (NaN or Inf) for category '{names[i]}' "
                        f"({paths[i]}): its weights have diverged; use another checkpoint or retrain with "
                        "lower learning rates")


def predict_maps(model, images: Optional[torch.Tensor], class_names: Sequence[str], sigma: float,
                 fewshot: Optional[FewShotScorer] = None, features=None):
    """Smoothed maps [N, S, S], the zero-shot Prediction and the few-shot score [N] (None
    without references) of one batch of images [N, 3, S, S] (or of their ``features``), on
    the model's device. With references the few-shot map is added, weighted, to the zero-shot
    map before the blur (:mod:`engine.fewshot`); the whole batch is blurred at once."""
    with torch.no_grad():
        if fewshot is None:
            pred, extra = model.predict(images, class_names, features=features), None
            anomaly = pred.anomaly_map.float()
        else:
            pred, extra = fewshot.predict(images, class_names, features)
            anomaly = pred.anomaly_map.float() + fewshot.weight * extra.map
        maps = gaussian_blur(anomaly, sigma)
    return maps, pred, None if extra is None else extra.score


def predict(model, batch: Dict[str, Any], device: torch.device, sigma: float, cache=None,
            fewshot: Optional[FewShotScorer] = None):
    """:func:`predict_maps` of one loader batch, checked for non-finite outputs. With a feature
    ``cache`` (:class:`engine.feature_cache.DatasetCache`) the model gets its features."""
    if cache is None:
        images, features = batch["image"].to(device, non_blocking=True), None
    else:
        images, features = None, cache.features(model, batch, device)
    maps, pred, shot = predict_maps(model, images, batch["cls_name"], sigma, fewshot, features)
    check_finite(maps, pred, batch["cls_name"], batch["img_path"])
    return maps, pred, shot


def skip_noise(model, images: int) -> None:
    """Advance the model's seeded test-time noise past ``images`` images another process
    scores, so every image gets the noise of its dataset position."""
    noise = getattr(model, "noise", None)
    if noise is not None and images > 0:
        noise.draw(images, "cpu")


def iterate_categories(model, dataset, device: torch.device, batch_size: int, num_workers: int, sigma: float,
                       desc: str = "test", ctx: Optional[distributed.Context] = None, cache=None,
                       fewshot: Optional[FewShotScorer] = None):
    """Yield one :class:`CategoryOutputs` per category, in dataset order, on rank 0 (the other
    processes score their parts and yield nothing); ``cache`` and ``fewshot`` (references: the
    categories then carry few-shot scores) as in :func:`predict`."""
    ctx = ctx or distributed.current()
    if hasattr(model, "start_evaluation"):
        model.start_evaluation()
    plans = category_plan(dataset, ctx, batch_size)
    batches = [list(p.local[i:i + batch_size]) for p in plans for i in range(0, len(p.local), batch_size)]
    stream = iter(loader(dataset if cache is None else cache.loader_dataset(), batches, num_workers, device))
    drawn = 0  # dataset positions whose noise has been drawn
    total = sum(len(p.local) for p in plans)
    label = desc if not ctx.enabled else f"{desc} (rank 0 of {ctx.world_size})"
    with tqdm(total=total, desc=label, unit="img", dynamic_ncols=True, disable=not ctx.is_main) as bar:
        for plan in plans:
            size = getattr(dataset, "image_size", None)
            cat = CategoryOutputs(plan.name, len(plan.indices) if ctx.is_main else len(plan.local), size)
            for start in range(0, len(plan.local), batch_size):
                skip_noise(model, plan.local.start + start - drawn)
                batch = next(stream)
                maps, pred, shot = predict(model, batch, device, sigma, cache, fewshot)
                drawn = plan.local.start + start + len(maps)
                cat.add(maps, batch["mask"], batch["has_mask"].tolist(), batch["label"].tolist(),
                        pred.class_prob.tolist(), pred.map_score.tolist(), batch["img_path"],  # maps only move once
                        () if shot is None else shot.tolist())
                bar.update(len(maps))
            if ctx.enabled:
                cat = gather_category(cat, plan, ctx)
            if cat is not None:
                yield cat


def gather_category(cat: CategoryOutputs, plan: CategoryPlan, ctx: distributed.Context) -> Optional[CategoryOutputs]:
    """Rank 0: its own rows followed by every other rank's, received into its buffer (the
    category in dataset order). Other ranks: send theirs and return None."""
    scalars = distributed.gather_object(cat.scalars(), ctx)
    if not ctx.is_main:
        distributed.send_to_main([cat.maps, cat.masks], ctx)
        return None
    for rank in range(1, ctx.world_size):
        count = len(distributed.shard(len(plan.indices), rank, ctx.world_size, plan.unit))
        maps, masks = cat.extend(count, *scalars[rank])
        distributed.receive_from(rank, [maps, masks], ctx)
    return cat




def category_scores(cat: CategoryOutputs, fusion: str, shot_weight: float = 0.0) -> torch.Tensor:
    """Fused image scores of one category. Bayes-PFL's min-max fusion uses the class
    probability alone where the category has no masks (classification-only data), and a lone
    image, which min-max cannot scale, is scored by its class probability. A few-shot run adds
    ``shot_weight`` times the few-shot score."""
    anomalous_masks = [h for h, label in zip(cat.has_mask, cat.labels) if label == 1]
    if fusion == "minmax" and anomalous_masks and not any(anomalous_masks):
        fusion = "class"
    if fusion in ("minmax", "class") and len(cat.paths) < 2:
        fusion = "prob"
    scores = fuse_image_scores(torch.tensor(cat.class_prob, dtype=torch.float64),
                               torch.tensor(cat.map_score, dtype=torch.float64), fusion)
    if cat.fewshot_score:
        scores = scores + shot_weight * torch.tensor(cat.fewshot_score, dtype=torch.float64)
    return scores


Thresholds = Dict[str, Optional[Dict[str, float]]]


@dataclass
class CategoryResult:
    """One category's metrics (``image_*``/``pixel_*``, None where undefined) and the
    evaluations they came from (None for a level not requested or without data)."""

    metrics: Dict[str, Optional[float]]
    image: Optional[Evaluation] = None
    pixel: Optional[Evaluation] = None

    def thresholds(self) -> Thresholds:
        """``{"image": ..., "pixel": ...}``: the F1-optimal threshold with its precision,
        recall and F1, or None where F1-max is undefined."""
        out: Thresholds = {}
        for level, evaluation in (("image", self.image), ("pixel", self.pixel)):
            point = evaluation.best_f1() if evaluation is not None else None
            out[level] = asdict(point) if point is not None else None
        return out


def metrics_device(device: Optional[torch.device], cat: CategoryOutputs) -> torch.device:
    """Where a category's pixel metrics run: on the model's GPU when its maps, masks and the
    sort (about 21 bytes per pixel) fit in the free memory there, else on the CPU."""
    if device is None or device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if 21 * cat.maps.numel() < 0.8 * free else torch.device("cpu")


def _pixel_inputs(cat: CategoryOutputs, device: Optional[torch.device]):
    """(masks, maps) of the images with ground truth, on the metrics device; None without an
    anomalous one among them. The buffers are used as they are when every image has a mask."""
    keep = [i for i, h in enumerate(cat.has_mask) if h]
    if not any(cat.labels[i] == 1 for i in keep):
        return None
    masks, maps = cat.masks, cat.maps
    if len(keep) < cat.count:  # classification-only images among them: a copy of the others
        index = torch.tensor(keep)
        masks, maps = masks[index], maps[index]
    target = metrics_device(device, cat)
    return masks.to(target), maps.to(target)


def evaluate_category(cat: CategoryOutputs, scores: torch.Tensor, kinds: Sequence[str],
                      device: Optional[torch.device] = None) -> CategoryResult:
    """Image and pixel metrics of one category with their curves (pixel metrics on
    :func:`metrics_device`)."""
    result = CategoryResult({})
    if "image" in kinds:
        result.image = evaluate_images(np.array(cat.labels), scores.numpy())
        result.metrics.update({f"image_{k}": v for k, v in result.image.metrics.items()})
    if "pixel" in kinds:
        inputs = _pixel_inputs(cat, device)
        if inputs is not None:
            result.pixel = evaluate_pixels(*inputs)
            values = result.pixel.metrics
        else:
            values = dict.fromkeys(PIXEL_KEYS)
        result.metrics.update({f"pixel_{k}": v for k, v in values.items()})
    return result


def columns(kinds: Sequence[str]) -> List[str]:
    cols = []
    if "image" in kinds:
        cols += [f"image_{k}" for k in IMAGE_KEYS]
    if "pixel" in kinds:
        cols += [f"pixel_{k}" for k in PIXEL_KEYS]
    return cols


def percent(value: Optional[float]) -> str:
    """A metric as the tables print it: percent with one decimal, "n/a" where undefined."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def results_table(per_category: Dict[str, Dict[str, Optional[float]]], mean: Dict[str, Optional[float]],
                  kinds: Sequence[str], fmt: str = "pipe") -> str:
    """Per-category table in percent (one decimal), "n/a" where undefined, macro mean last."""
    cols = columns(kinds)
    rows = [[name] + [percent(m.get(c)) for c in cols] for name, m in per_category.items()]
    rows.append(["mean"] + [percent(mean.get(c)) for c in cols])
    return tabulate(rows, headers=["category"] + [COLUMN_NAMES[c] for c in cols], tablefmt=fmt,
                    disable_numparse=True)


def write_results(save_path: Path, per_category: Dict[str, Dict[str, Optional[float]]], kinds: Sequence[str],
                  info: Dict[str, Any], thresholds: Optional[Dict[str, Thresholds]] = None) -> Dict[str, Optional[float]]:
    """Write results.md, results.json (with each category's F1-optimal ``thresholds``) and
    results.csv atomically; return the macro mean."""
    mean = macro_mean(per_category)
    table = results_table(per_category, mean, kinds)
    header = "\n".join(f"- {k}: {v}" for k, v in info.items() if not isinstance(v, dict))
    write_text(save_path / "results.md",
               f"# Results\n\n{header}\n\nMetrics in percent, macro mean over categories. "
               "P-AUPRO is the MVTec AD AUPRO (FPR ≤ 0.3); P-PRO(legacy) is the 200-threshold PRO "
               "of the FAPrompt/AnomalyCLIP tables. n/a: undefined for that category.\n\n" + table + "\n")
    write_json(save_path / "results.json", {**info, "per_category": per_category, "mean": mean,
                                            "metrics": columns(kinds), "thresholds": thresholds or {}})
    cols = columns(kinds)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category"] + cols)
    for name, m in list(per_category.items()) + [("mean", mean)]:
        writer.writerow([name] + ["" if m.get(c) is None else f"{m[c]:.6f}" for c in cols])
    write_text(save_path / "results.csv", buffer.getvalue())
    return mean


def decision(score: float, threshold: Optional[float]) -> str:
    """The decision column: 1 (anomalous) when score >= threshold, 0, or "" without one."""
    return "" if threshold is None else str(int(float(score) >= threshold))


class ScoreWriter:
    """``scores.csv``: every image's path, category, label, image score, class probability,
    map score and map file, and its decision at the category's F1-optimal image threshold;
    few-shot runs add the few-shot score (the maximum of the few-shot map) last."""

    HEADER = ["img_path", "category", "label", "image_score", "class_prob", "map_score", "map_file", "decision"]

    def __init__(self, path: Path, fewshot: bool = False):
        self.path = path
        self.header = self.HEADER + ["fewshot_score"] * fewshot
        self.rows: List[List[Any]] = []

    def add(self, cat: CategoryOutputs, scores: torch.Tensor, map_files: Sequence[str],
            threshold: Optional[float] = None) -> None:
        for i, p in enumerate(cat.paths):
            self.rows.append([p, cat.name, cat.labels[i] if cat.labels[i] >= 0 else "",
                              f"{float(scores[i]):.6f}", f"{cat.class_prob[i]:.6f}",
                              f"{cat.map_score[i]:.6f}", map_files[i] if map_files else "",
                              decision(float(scores[i]), threshold)] + fewshot_cells(cat, i))

    def write(self) -> None:
        with atomic_open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows)


def fewshot_cells(cat: CategoryOutputs, i: int) -> List[str]:
    """Image i's ``fewshot_score`` cell of scores.csv (none in a zero-shot run)."""
    return [f"{v:.6f}" for v in cat.fewshot_score[i:i + 1]]


def map_file_name(root: Path, dataset_root: Path, img_path: str) -> Path:
    """maps/<path relative to the dataset root>.npy (unique per image)."""
    try:
        rel = Path(img_path).resolve().relative_to(dataset_root.resolve())
    except ValueError:
        rel = Path(Path(img_path).name)
    return root / rel.with_suffix(".npy")


def save_maps(cat: CategoryOutputs, root: Path, dataset_root: Path) -> List[str]:
    """Write each image's smoothed float32 map; return the relative file names."""
    names = []
    for i, path in enumerate(cat.paths):
        target = map_file_name(root, dataset_root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target, "wb") as handle:
            np.save(handle, cat.maps[i].numpy().astype(np.float32))
        names.append(str(target.relative_to(root.parent)))
    return names


# ---------------------------------------------------------------------- validation
def validation_scores(model, dataset: MetaDataset, device: torch.device, batch_size: int,
                      num_workers: int, sample_num: Optional[int] = None, cache=None) -> Dict[str, Optional[float]]:
    """Macro pixel AP (unsmoothed maps) and image AP (class probability), as Bayes-PFL's
    early stopping reads them; ``sample_num`` temporarily replaces the model's R; ``cache`` is
    the validation set's feature cache."""
    was_training = model.training
    saved = getattr(model.config, "sample_num", None)
    if sample_num is not None and saved is not None:
        model.config.sample_num = sample_num
    model.eval()
    pixel, image = [], []
    try:
        for cat in iterate_categories(model, dataset, device, batch_size, num_workers, sigma=0.0, desc="validate",
                                      cache=cache):
            labels = np.array(cat.labels)
            image.append(image_metrics(labels, np.array(cat.class_prob))["ap"])
            inputs = _pixel_inputs(cat, device)
            if inputs is not None:
                pixel.append(pixel_metrics(*inputs)["ap"])
    finally:
        if saved is not None:
            model.config.sample_num = saved
        model.train(was_training)

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    # rank 0 computed them; every process decides early stopping on the same numbers
    return distributed.broadcast_object({"pixel_ap": mean(pixel), "image_ap": mean(image)}, distributed.current())


def run_images(model, dataset, device: torch.device, batch_size: int, num_workers: int, sigma: float,
               save_path: Path, thresholds, fewshot: Optional[FewShotScorer] = None) -> None:
    """Score images without ground truth (a ``datasets.meta.ImageList``) through the same
    prediction, smoothing and fusion as a dataset, and write ``maps/*.npy``, overlays on one
    colour scale in ``vis/``, and ``scores.csv``; with ``thresholds`` (an
    ``engine.thresholds.Decision``) also a decision column and a binary mask PNG per image;
    with few-shot references, their map and score added and a ``fewshot_score`` column."""
    cats = list(iterate_categories(model, dataset, device, batch_size, num_workers, sigma, desc="score",
                                   fewshot=fewshot))
    if not cats:  # a process other than rank 0: it scored its part
        return
    cat = cats[0]  # one class name for every image
    scores = category_scores(cat, model.score_fusion, fewshot.weight if fewshot is not None else 0.0)
    maps = cat.maps
    low, high = float(maps.min()), float(maps.max())
    header = ["img_path", "image_score", "class_prob", "map_score", "map_file"]
    header += ["fewshot_score"] * (fewshot is not None)
    header += ["decision"] * (thresholds.image is not None) + ["mask_file"] * (thresholds.pixel is not None)
    rows = []
    for i, path in enumerate(cat.paths):
        stem = f"{i:04d}_{Path(path).stem}"
        with atomic_open(save_path / "maps" / f"{stem}.npy", "wb") as handle:
            np.save(handle, maps[i].numpy().astype(np.float32))
        write_png(save_path / "vis" / f"{stem}.png", heat(load_rgb(path, dataset.image_size), maps[i].numpy(), low, high))
        row = [path, f"{float(scores[i]):.6f}", f"{cat.class_prob[i]:.6f}", f"{cat.map_score[i]:.6f}",
               f"maps/{stem}.npy"] + fewshot_cells(cat, i)
        verdict = ""
        if thresholds.image is not None:
            row.append(decision(float(scores[i]), thresholds.image))
            verdict = " -> anomalous" if row[-1] == "1" else " -> normal"
        if thresholds.pixel is not None:  # compared in float64, as the metrics' thresholds are
            mask = maps[i].numpy() >= np.float64(thresholds.pixel)
            write_png(save_path / "vis" / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
            row.append(f"vis/{stem}_mask.png")
        rows.append(row)
        log.info("%s: image score %.4f (p_cls %.4f)%s", path, float(scores[i]), cat.class_prob[i], verdict)
    with atomic_open(save_path / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    if model.score_fusion == "minmax" and len(cat.paths) > 1:
        log.info("image scores are min-max fused over these %d images (Bayes-PFL's rule)", len(cat.paths))


def run_test(model, dataset: MetaDataset, device: torch.device, batch_size: int, num_workers: int,
             sigma: float, kinds: Sequence[str], save_path: Path, info: Dict[str, Any],
             save_maps_flag: bool = False, visualiser: Optional[Callable] = None, report=None,
             fewshot: Optional[FewShotScorer] = None):
    """Evaluate ``model`` on ``dataset`` (with few-shot references when ``fewshot`` is given);
    write results (and maps, visualisations and the :class:`engine.report.Report` when
    given); return the tables (on rank 0; None, None on the other processes of a torchrun
    launch, which only score their parts)."""
    per_category: Dict[str, Dict[str, Optional[float]]] = {}
    thresholds: Dict[str, Thresholds] = {}
    if not distributed.current().is_main:  # score this process's parts; rank 0 evaluates and writes
        for _ in iterate_categories(model, dataset, device, batch_size, num_workers, sigma, fewshot=fewshot):
            pass
        return None, None
    scores_out = ScoreWriter(save_path / "scores.csv", fewshot is not None) if save_maps_flag else None
    shot_weight = fewshot.weight if fewshot is not None else 0.0
    for cat in iterate_categories(model, dataset, device, batch_size, num_workers, sigma, fewshot=fewshot):
        scores = category_scores(cat, model.score_fusion, shot_weight)
        result = evaluate_category(cat, scores, kinds, device)
        per_category[cat.name], thresholds[cat.name] = result.metrics, result.thresholds()
        files = save_maps(cat, save_path / "maps", dataset.root) if save_maps_flag else []
        if scores_out is not None:
            image_point = thresholds[cat.name]["image"]
            scores_out.add(cat, scores, files, image_point["threshold"] if image_point else None)
        if visualiser is not None:
            visualiser(cat, scores)
        if report is not None:
            report.add(cat, scores, result)
        log.info("%s: %s", cat.name, ", ".join(
            f"{COLUMN_NAMES[k]} {'n/a' if v is None else f'{100 * v:.1f}'}" for k, v in per_category[cat.name].items()))
    if scores_out is not None:
        scores_out.write()
    mean = write_results(save_path, per_category, kinds, info, thresholds)
    if report is not None:
        report.write(per_category, mean, kinds, info, thresholds)
    return per_category, mean
