"""Test-time scoring shared by the methods: what a model predicts per image, and how a
category's image scores are fused from it (docs/methods/faprompt.md, docs/methods/bayes_pfl.md).

Which rule a method follows is its :class:`ScoreRule` (declared by its registry entry,
``models/methods/``); the formulas are the functions below.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Sequence

import torch

FUSIONS = ("mean", "minmax", "class", "prob", "map")
MAP_SCORES = ("dap_maxima", "topk", "grid_max", "branch_topk")
FEWSHOT_RULES = ("add", "final_max")


@dataclass(frozen=True)
class ScoreRule:
    """How a method turns its outputs into image scores.

    map_score: the map part of the image score per image:
        ``dap_maxima``: FAPrompt's (2·max of the first pass's grid + max of the final one) / 3;
        ``topk``: the mean of the ``topk`` highest values of the unblurred map (``small_topk`` for
        the categories in ``small_classes``: Bayes-PFL's rule for small defects);
        ``grid_max``: the largest grid probability (the training-free baseline);
        ``branch_topk``: the sum over the model's two branch maps of their ``topk`` means,
        computed by the model (VCP-CLIP).
    fusion: how a category's class probabilities and map scores become image scores
        (:func:`fuse_image_scores`); ``fusion_without_masks``: the fusion for a category whose
        anomalous images have no masks (classification-only data). A fusion over the category
        (``minmax``, ``class``) scores a lone image by its class probability (``prob``), as
        min-max cannot scale one value.
    fewshot: how a few-shot run (engine.fewshot) joins the reference distances in:
        ``add``: the few-shot map is the mean over the bank's entries; the final map is the
        zero-shot map + w·that map, the image score the fused score + w·its grid maximum;
        ``final_max``: APRIL-GAN's test.py: the entries' maps are summed, and the image score is
        0.5·(p_cls + min-max over the category of each image's final-map maximum).
    """

    fusion: str
    map_score: str
    fusion_without_masks: str = ""  # "": the same as ``fusion``
    topk: int = 2000
    small_topk: int = 20
    small_classes: FrozenSet[str] = frozenset()
    fewshot: str = "add"

    def __post_init__(self) -> None:
        for value, allowed in ((self.fusion, FUSIONS), (self.map_score, MAP_SCORES), (self.fewshot, FEWSHOT_RULES),
                               (self.fusion_without_masks or self.fusion, FUSIONS)):
            if value not in allowed:
                raise ValueError(f"score rule: {value!r} is none of {allowed}")

    def fusion_for(self, images: int, masked: bool) -> str:
        """The fusion of a category of ``images`` images (``masked``: its anomalous images have masks)."""
        fusion = self.fusion if masked else (self.fusion_without_masks or self.fusion)
        return "prob" if fusion in ("minmax", "class") and images < 2 else fusion

    def k(self, class_name: str) -> int:
        """k of the top-k map score of a category."""
        return self.small_topk if class_name in self.small_classes else self.topk

    def topk_scores(self, maps: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """[N] top-k map scores of unblurred maps [N, S, S], k by each image's category (one
        top-k per distinct k, not per image)."""
        ks = [self.k(name) for name in class_names]
        scores = torch.empty(len(ks), device=maps.device, dtype=maps.dtype)
        for k in set(ks):
            index = torch.tensor([i for i, value in enumerate(ks) if value == k], device=maps.device)
            scores[index] = topk_mean(maps[index], k)
        return scores


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


def minmax(x: torch.Tensor) -> torch.Tensor:
    """(x − min) / (max − min + 1e-8) over one category's images."""
    return (x - x.min()) / (x.max() - x.min() + 1e-8)


def fuse_image_scores(class_prob: torch.Tensor, map_score: torch.Tensor, fusion: str) -> torch.Tensor:
    """Image scores of one category's images ([N] each).

    mean:   0.5·(p_cls + map score) per image (FAPrompt's fused score);
    minmax: 0.5·minmax(p_cls) + 0.5·minmax(map score) over the category (Bayes-PFL);
    class:  minmax(p_cls) alone (Bayes-PFL on classification-only datasets);
    prob:   p_cls as it is (AnomalyCLIP; and a lone image, which min-max cannot scale);
    map:    minmax(map score) alone, for a model without an image head (VCP-CLIP); a lone
            image keeps its map score.
    """
    if fusion == "map":
        return minmax(map_score) if len(map_score) > 1 else map_score
    if fusion == "mean":
        return 0.5 * (class_prob + map_score)
    if fusion == "minmax":
        return 0.5 * minmax(class_prob) + 0.5 * minmax(map_score)
    if fusion == "class":
        return minmax(class_prob)
    if fusion == "prob":
        return class_prob
    raise ValueError(f"fusion must be one of {FUSIONS}")
