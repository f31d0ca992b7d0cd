"""Evaluation: batched inference over a dataset and the gathering of each category's outputs.

A dataset is processed in its meta.json order (category by category): each category's
smoothed maps are kept, in one preallocated buffer, only until its metrics are computed.
Batches never straddle two categories. Under torchrun every process scores its contiguous part
of each category and rank 0 receives the other parts straight into that buffer
(:mod:`engine.distributed`), so N processes give exactly the single-process results; the
flow noise of Bayes-PFL follows the images' dataset positions, not the batches or processes.
Image scores are fused per category by the model's score rule (``models.scoring``). The
metrics, tables and files of the results are :mod:`engine.results`; a whole test run is
:mod:`engine.testing`.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.meta import MetaDataset, collate
from engine import distributed
from engine.fewshot import FewShotScorer
from models.scoring import ScoreRule, fuse_image_scores, minmax
from utils.errors import UserError
from utils.filters import gaussian_blur
from utils.metrics import image_metrics, pixel_metrics

log = logging.getLogger("zsad.evaluation")

# A stage timer: timer(stage) is a context manager around that stage's work ("model", "metrics",
# "report"), which a benchmark passes in to time the stages of a test run; by default nothing.
Timer = Callable[[str], ContextManager]


def no_timer(stage: str) -> ContextManager:
    return contextlib.nullcontext()



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
    names = dataset.item_classes()
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


def iterate_categories(model, dataset, device: torch.device, batch_size: int, num_workers: int, sigma: float,
                       desc: str = "test", ctx: distributed.Context = distributed.SINGLE, cache=None,
                       fewshot: Optional[FewShotScorer] = None, sample_num: Optional[int] = None,
                       timer: Timer = no_timer):
    """Yield one :class:`CategoryOutputs` per category, in dataset order, on rank 0 (the other
    processes score their parts and yield nothing); ``cache`` and ``fewshot`` (references: the
    categories then carry few-shot scores) as in :func:`predict`; ``sample_num`` replaces the
    model's number of test-time flow samples for this pass; ``timer("model")`` wraps each batch's
    prediction (a benchmark times it)."""
    model.start_evaluation(sample_num=sample_num)
    plans = category_plan(dataset, ctx, batch_size)
    batches = [list(p.local[i:i + batch_size]) for p in plans for i in range(0, len(p.local), batch_size)]
    stream = iter(loader(dataset if cache is None else cache.loader_dataset(), batches, num_workers, device))
    drawn = 0  # dataset positions whose noise has been drawn
    total = sum(len(p.local) for p in plans)
    label = desc if not ctx.enabled else f"{desc} (rank 0 of {ctx.world_size})"
    with tqdm(total=total, desc=label, unit="img", dynamic_ncols=True, disable=not ctx.is_main) as bar:
        for plan in plans:
            size = dataset.image_size
            cat = CategoryOutputs(plan.name, len(plan.indices) if ctx.is_main else len(plan.local), size)
            for start in range(0, len(plan.local), batch_size):
                model.skip_noise(plan.local.start + start - drawn)
                batch = next(stream)
                with timer("model"):
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




def category_scores(cat: CategoryOutputs, rule: ScoreRule, shot_weight: float = 0.0) -> torch.Tensor:
    """Fused image scores of one category by the model's score ``rule``: its fusion, or its
    fusion without masks where the category's anomalous images have none (classification-only
    data; Bayes-PFL then uses the class probability alone), and a lone image, which min-max
    cannot scale, scored by its class probability. A few-shot run adds ``shot_weight`` times the
    few-shot score, or, by APRIL-GAN's rule (``rule.fewshot``), scores 0.5·(p_cls + min-max of
    the final maps' maxima)."""
    anomalous_masks = [h for h, label in zip(cat.has_mask, cat.labels) if label == 1]
    fusion = rule.fusion_for(len(cat.paths), masked=not anomalous_masks or any(anomalous_masks))
    scores = fuse_image_scores(torch.tensor(cat.class_prob, dtype=torch.float64),
                               torch.tensor(cat.map_score, dtype=torch.float64), fusion)
    if cat.fewshot_score and rule.fewshot == "final_max":
        class_prob = torch.tensor(cat.class_prob, dtype=torch.float64)
        if len(cat.paths) < 2:
            return class_prob
        return 0.5 * (class_prob + minmax(cat.maps.flatten(1).amax(1).double()))
    if cat.fewshot_score:
        scores = scores + shot_weight * torch.tensor(cat.fewshot_score, dtype=torch.float64)
    return scores




def metrics_device(device: Optional[torch.device], cat: CategoryOutputs) -> torch.device:
    """Where a category's pixel metrics run: on the model's GPU when its maps, masks and the
    sort (about 21 bytes per pixel) fit in the free memory there, else on the CPU."""
    if device is None or device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if 21 * cat.maps.numel() < 0.8 * free else torch.device("cpu")


def pixel_inputs(cat: CategoryOutputs, device: Optional[torch.device]):
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


# ---------------------------------------------------------------------- validation
def validation_scores(model, dataset: MetaDataset, device: torch.device, batch_size: int,
                      num_workers: int, sample_num: Optional[int] = None, cache=None,
                      ctx: distributed.Context = distributed.SINGLE) -> Dict[str, Optional[float]]:
    """Macro pixel AP (unsmoothed maps) and image AP (class probability), as Bayes-PFL's
    early stopping reads them; ``sample_num`` replaces the model's R for this pass; ``cache`` is
    the validation set's feature cache; ``ctx``: this process among those of a torchrun launch."""
    was_training = model.training
    model.eval()
    pixel, image = [], []
    try:
        for cat in iterate_categories(model, dataset, device, batch_size, num_workers, sigma=0.0, desc="validate",
                                      ctx=ctx, cache=cache, sample_num=sample_num):
            labels = np.array(cat.labels)
            image.append(image_metrics(labels, np.array(cat.class_prob))["ap"])
            inputs = pixel_inputs(cat, device)
            if inputs is not None:
                pixel.append(pixel_metrics(*inputs)["ap"])
    finally:
        model.train(was_training)

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    # rank 0 computed them; every process decides early stopping on the same numbers
    return distributed.broadcast_object({"pixel_ap": mean(pixel), "image_ap": mean(image)}, ctx)


