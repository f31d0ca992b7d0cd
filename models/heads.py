"""The heads that score text pairs against an image: the similarity head and RCA for pixel
maps, the fixed-temperature and ``class_mapping`` heads for the image score.

Text pairs are [N, 2, M, D]: M (normal, abnormal) pairs of normalised features per image.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import ImageFeatures


def _init_linear(module: nn.Module) -> None:
    """Bayes-PFL's initialisation of its linear layers: N(0, 0.02), zero bias."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


# ---------------------------------------------------------------------- similarity head
def similarity_probs(patches: torch.Tensor, pairs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-patch (normal, abnormal) probabilities, averaged over the pairs (FAPrompt, AnomalyCLIP).

    Args:
        patches: [N, P, D] normalised patch features.
        pairs: [N, 2, M, D] normalised text pairs.
    Returns:
        [N, P, 2]: the mean over M of softmax([p·t_n, p·t_a] / temperature).
    """
    logits = torch.einsum("npd,ncmd->nmpc", patches, pairs) / temperature
    return logits.softmax(-1).mean(1)


def upsample_grid(values: torch.Tensor, size: int, align_corners: bool = False) -> torch.Tensor:
    """[N, P, C] grid values (row-major) → [N, C, size, size], bilinear."""
    n, p, c = values.shape
    side = int(p ** 0.5 + 0.5)  # not round(): a traced export sees p as a tensor
    grid = values.transpose(1, 2).reshape(n, c, side, side)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=align_corners)


# ---------------------------------------------------------------------- RCA
class RCAHead(nn.Module):
    """Residual cross-modal attention (Bayes-PFL): text queries attend over each selected
    layer's dense features; logits = exp(τ_pix) · F T'ᵀ."""

    def __init__(self, vision_width: int, embed_dim: int, n_layers: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.scale = embed_dim ** -0.5  # over the full width, not the head width
        self.proj = nn.ModuleList([nn.Linear(vision_width, embed_dim, bias=False) for _ in range(n_layers)])
        self.query = nn.Conv1d(embed_dim, embed_dim, kernel_size=1)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        _init_linear(self)

    def dense(self, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """Raw tokens [N, P, C] of the layer-th selected layer → normalised features [N, P, E]."""
        return F.normalize(self.proj[layer](tokens), dim=-1)

    def attend(self, text: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """text [N, T, E] (normalised), dense [N, P, E] → normalise(text + attention) [N, T, E]."""
        n, t, e = text.shape
        q = self.query(text.transpose(1, 2)).transpose(1, 2)
        q = q.reshape(n, t, self.heads, e // self.heads).transpose(1, 2)
        kv = dense.reshape(n, dense.shape[1], self.heads, e // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, kv, kv, scale=self.scale)
        return F.normalize(text + out.transpose(1, 2).reshape(n, t, e), dim=-1)

    def forward(self, tokens: Sequence[torch.Tensor], pairs: torch.Tensor) -> List[torch.Tensor]:
        """Per selected layer, the abnormal − normal logit of every pair on the grid [N, M, P].

        Bayes-PFL upsamples both logits and takes each pair's softmax; bilinear upsampling is
        linear, so upsampling this difference and taking σ gives the same probabilities.
        """
        n, _, m, e = pairs.shape
        text = pairs.reshape(n, 2 * m, e)
        out = []
        for index, layer_tokens in enumerate(tokens):
            dense = self.dense(index, layer_tokens)
            logits = self.log_temperature.exp() * dense @ self.attend(text, dense).transpose(1, 2)  # [N, P, 2M]
            out.append((logits[..., m:] - logits[..., :m]).transpose(1, 2))
        return out


# ---------------------------------------------------------------------- image heads
class PatchFuse(nn.Module):
    """Bayes-PFL's stage-2 ``fuse``: selected layers' raw tokens → one vector [N, E] by
    attention pooling over the patches."""

    def __init__(self, vision_width: int, n_layers: int, embed_dim: int):
        super().__init__()
        hidden = vision_width // 2
        self.reduce = nn.Linear(vision_width * n_layers, hidden)
        self.score = nn.Linear(hidden, 1)
        self.out = nn.Linear(hidden, embed_dim)

    def forward(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.reduce(torch.cat(list(tokens), dim=-1))
        weights = self.score(x).softmax(dim=1)
        return self.out((weights * x).sum(1))


class ImageHead(nn.Module):
    """Image logits [N, 2, M] of text pairs [N, 2, M, D].

    fixed (FAPrompt, AnomalyCLIP): cos(CLS @ proj without ln_post, t) / temperature.
    class_mapping (Bayes-PFL): exp(τ_img) · normalise(class_mapping(t)) · normalise(f) with
    f = ln_post(CLS) @ proj, or in stage 2 f = image_mapping(f + fuse(raw tokens)).
    """

    def __init__(self, kind: str, embed_dim: int, vision_width: int, n_layers: int, temperature: float):
        super().__init__()
        self.kind, self.temperature = kind, temperature
        if kind == "class_mapping":
            self.class_mapping = nn.Linear(embed_dim, embed_dim)
            self.image_mapping = nn.Linear(embed_dim, embed_dim)
            self.fuse = PatchFuse(vision_width, n_layers, embed_dim)
            self.log_temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            _init_linear(self)

    def stage_two_modules(self) -> List[nn.Module]:
        """What Bayes-PFL's second stage trains."""
        return [self.class_mapping, self.image_mapping, self.fuse]

    def forward(self, feats: ImageFeatures, pairs: torch.Tensor, layers: Sequence[int], stage: int) -> torch.Tensor:
        if self.kind == "fixed":
            image = F.normalize(feats.cls_raw, dim=-1)
            return torch.einsum("nd,ncmd->ncm", image, pairs) / self.temperature
        if stage == 2:
            image = self.image_mapping(feats.cls + self.fuse([feats.patch_raw[layer] for layer in layers]))
        else:
            image = feats.cls
        n, _, m, e = pairs.shape
        mapped = F.normalize(self.class_mapping(pairs.reshape(n, 2 * m, e)), dim=-1)
        logits = self.log_temperature.exp() * (mapped @ F.normalize(image, dim=-1).unsqueeze(-1))
        return logits.view(n, 2, m)
