"""Training losses shared by the methods (docs/methods/faprompt.md, docs/methods/bayes_pfl.md).

Two families of segmentation losses exist because the two official methods define them
differently; each variant below is the exact definition its method trains with.

Some terms pool over the images of a batch (Bayes-PFL's balanced focal and batch dice, the DAP
prior's sum, the state flows' KL per image). They take their totals through
:func:`batch_total` and :func:`batch_images`, which a batch split over several processes
(a :class:`BatchSplit`, passed in by the distributed trainer) turns into the whole batch's, so
that it has the loss, and the gradient, of the whole batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchSplit:
    """A training batch shared by ``world_size`` processes; this one holds part ``rank``.

    total: sums a per-process tensor over the processes (its backward sums the gradients back).
    images: the number of images of the whole batch.
    """

    total: Callable[[torch.Tensor], torch.Tensor]
    images: int
    rank: int
    world_size: int


def batch_total(values: torch.Tensor, split: Optional[BatchSplit] = None) -> torch.Tensor:
    """Σ of ``values`` over the batch (over all of its processes when ``split`` is given)."""
    local = values.sum()
    return local if split is None else split.total(local)


def batch_images(local: int, split: Optional[BatchSplit] = None) -> int:
    """The number of images of the batch (all of its processes when ``split`` is given)."""
    return local if split is None else split.images


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on class probabilities with label smoothing (FAPrompt's map loss).

    ``q`` = one-hot target clamped to ``[smooth/(C−1), 1−smooth]``; ``p_t = Σ_c q_c p_c + smooth``;
    loss = mean over pixels of ``−(1 − p_t)^γ · log p_t``.

    Args:
        probs: [B, C, H, W] probabilities (softmax over C).
        target: [B, H, W] class indices (the binary mask for C = 2).
    """
    classes = probs.shape[1]
    one_hot = F.one_hot(target.long(), classes).permute(0, 3, 1, 2).to(probs.dtype)
    one_hot = one_hot.clamp(smooth / (classes - 1), 1.0 - smooth)
    p_t = (one_hot * probs).sum(dim=1) + smooth
    return (-(1.0 - p_t).pow(gamma) * p_t.log()).mean()


def balanced_focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0,
                        eps: float = 1e-8, split: Optional[BatchSplit] = None) -> torch.Tensor:
    """Class-balanced focal loss (Bayes-PFL's map loss).

    ``p_t`` = probability of the true class; per pixel ``−(1 − p_t)^γ · log(p_t + eps)``;
    loss = mean over foreground pixels + mean over background pixels.

    Args:
        probs: [B, 2, H, W] (normal, abnormal) probabilities.
        mask: [B, H, W] binary ground truth.
        split: the whole batch's pooling when it is shared by processes.
    """
    fg = mask > 0
    p_t = torch.where(fg, probs[:, 1], probs[:, 0])
    per_pixel = -(1.0 - p_t).pow(gamma) * torch.log(p_t + eps)
    fg_f = fg.to(probs.dtype)
    fg_loss = batch_total(per_pixel * fg_f, split) / (batch_total(fg_f, split) + eps)
    bg_loss = batch_total(per_pixel * (1.0 - fg_f), split) / (batch_total(1.0 - fg_f, split) + eps)
    return fg_loss + bg_loss


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
              per_sample: bool = True, split: Optional[BatchSplit] = None) -> torch.Tensor:
    """Soft dice loss ``1 − (2Σ p·t + s) / (Σ p + Σ t + s)``.

    ``per_sample=True`` (FAPrompt, s = 1): dice per image, loss = 1 − mean dice.
    ``per_sample=False`` (Bayes-PFL, s = 1e-5): one dice over the whole batch (``split``: of
    every process's part).

    Args:
        pred, target: [B, H, W].
    """
    if per_sample:
        pred, target = pred.flatten(1), target.flatten(1)
        dice = (2 * (pred * target).sum(1) + smooth) / (pred.sum(1) + target.sum(1) + smooth)
        return 1.0 - dice.mean()
    dice = (2 * batch_total(pred * target, split) + smooth) / (batch_total(pred, split) + batch_total(target, split)
                                                             + smooth)
    return 1.0 - dice


def binary_focal_loss(score: torch.Tensor, label: torch.Tensor, gamma: float = 2.0,
                      from_logits: bool = False) -> torch.Tensor:
    """Binary focal loss ``mean((1 − e^{−BCE})^γ · BCE)`` on an image score.

    FAPrompt's official code passes its fused *probability* to a logit-input loss
    (``from_logits=True`` reproduces that); by default the score is treated as the
    probability it is.
    """
    label = label.to(score.dtype)
    if from_logits:
        bce = F.binary_cross_entropy_with_logits(score, label, reduction="none")
    else:
        bce = F.binary_cross_entropy(score.clamp(1e-6, 1 - 1e-6), label, reduction="none")
    return ((1.0 - torch.exp(-bce)).pow(gamma) * bce).mean()


def cap_orthogonality(features: torch.Tensor) -> torch.Tensor:
    """Σ over pairs i < j of |cos(t_i, t_j)| for [K, D] (or [..., K, D]) abnormal features."""
    unit = F.normalize(features, dim=-1)
    cosine = unit @ unit.transpose(-1, -2)
    k = features.shape[-2]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=features.device), diagonal=1)
    return cosine.abs()[..., upper].sum()


def bank_orthogonality(normal: torch.Tensor, abnormal: torch.Tensor) -> torch.Tensor:
    """Bayes-PFL's prompt-bank orthogonality: for each of the normal and abnormal sets
    [N, B, D], the mean over all B×B entries (diagonal zeroed) of squared cosines, summed."""

    def term(features: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(features, dim=-1)
        cosine_sq = (unit @ unit.transpose(-1, -2)).pow(2)
        eye = torch.eye(features.shape[-2], device=features.device, dtype=features.dtype)
        return (cosine_sq * (1 - eye)).mean()

    return term(normal) + term(abnormal)
