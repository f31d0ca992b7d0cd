"""Test-time scoring shared by the methods: what a model predicts per image, and how a
category's image scores are fused from it (SPEC sections 4 and 5)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

FUSIONS = ("mean", "minmax", "class", "prob")

# Bayes-PFL averages the 20 (not 2000) highest map values for these small-defect categories.
SMALL_DEFECT_CLASSES = frozenset({"capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw",
                                  "cashew", "chewinggum"})


@dataclass
class Prediction:
    """A batch of N predictions at S×S.

    anomaly_map: [N, S, S] pixel map before the test-time Gaussian blur.
    class_prob:  [N] probability of "abnormal" from the image head.
    map_score:   [N] image score taken from the map (method-specific, see the models).
    """

    anomaly_map: torch.Tensor
    class_prob: torch.Tensor
    map_score: torch.Tensor

    def to(self, device) -> "Prediction":
        return Prediction(self.anomaly_map.to(device), self.class_prob.to(device), self.map_score.to(device))


def pair_class_prob(logits: torch.Tensor) -> torch.Tensor:
    """[N, 2, M] (normal, abnormal) image logits of M pairs → [N] mean over the pairs of each
    pair's softmax probability of "abnormal"."""
    return logits.softmax(dim=1)[:, 1].mean(1)


def topk_mean(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k largest values of each [S, S] map: [N, S, S] → [N] (k clipped to S·S)."""
    flat = maps.flatten(1)
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(1)


def bayes_topk(class_name: str) -> int:
    """Bayes-PFL's k for the top-k map score of a category."""
    return 20 if class_name in SMALL_DEFECT_CLASSES else 2000


def bayes_map_scores(maps: torch.Tensor, class_names) -> torch.Tensor:
    """[N] Bayes-PFL map scores: the top-k mean of each unblurred map [N, S, S], with k chosen
    by each image's category (one top-k per distinct k, not per image)."""
    ks = [bayes_topk(name) for name in class_names]
    scores = torch.empty(len(ks), device=maps.device, dtype=maps.dtype)
    for k in set(ks):
        index = torch.tensor([i for i, value in enumerate(ks) if value == k], device=maps.device)
        scores[index] = topk_mean(maps[index], k)
    return scores


def minmax(x: torch.Tensor) -> torch.Tensor:
    """(x − min) / (max − min + 1e-8) over one category's images."""
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


def fuse_image_scores(class_prob: torch.Tensor, map_score: torch.Tensor, fusion: str) -> torch.Tensor:
    """Image scores of one category's images ([N] each).

    mean:   0.5·(p_cls + map score) per image (FAPrompt's fused score);
    minmax: 0.5·minmax(p_cls) + 0.5·minmax(map score) over the category (Bayes-PFL);
    class:  minmax(p_cls) alone (Bayes-PFL on classification-only datasets);
    prob:   p_cls as it is (AnomalyCLIP; and a lone image, which min-max cannot scale).
    """
    if fusion == "mean":
        return 0.5 * (class_prob + map_score)
    if fusion == "minmax":
        return 0.5 * minmax(class_prob) + 0.5 * minmax(map_score)
    if fusion == "class":
        return minmax(class_prob)
    if fusion == "prob":
        return class_prob
    raise ValueError(f"fusion must be one of {FUSIONS}")
