"""The text side's inputs that are not learned weights, given as tensors (docs/deployment.md).

A model normally builds its prompts from words (class names) and draws its own test-time flow
noise. An exported graph (``engine.export``) cannot hold strings or a random generator, so it
takes these as inputs instead: :class:`TextInputs` carries, for N images,

    pairs:                     [N, 2, M, D] finished text pairs, where no text depends on the image;
    {part}_template, {part}_eot: [N, L, W] word embeddings of a prompt template and [N] its
                               EOT positions (part: ``normal``/``abnormal`` for CAP, ``bank``
                               for the prompt bank), where the text encoder runs per image;
    static_normal, static_abnormal: [N, D], [N, K, D] CAP's features that depend on the word
                               only (DAP's first pass), unnormalised;
    noise_context, noise_normal, noise_abnormal: [N, R, W], [R, W], [R, W] flow noise.

Templates may be cut after the last EOT position of the stored words: causal attention makes
the positions after it irrelevant, and the exported text encoder runs the length it is given.

Each model says which it needs (``AnomalyModel.text_inputs``); its forward takes them in place
of the words and the noise stream, and gives the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

NOISE_NAMES = ("noise_context", "noise_normal", "noise_abnormal")


@dataclass
class TextInputs:
    """Named tensors standing in for N images' prompt words (and flow noise)."""

    tensors: Dict[str, torch.Tensor]

    def __len__(self) -> int:
        """N: the images (rows of the per-image tensors)."""
        for name, value in self.tensors.items():
            if name not in ("noise_normal", "noise_abnormal"):
                return int(value.shape[0])
        return 0

    @property
    def pairs(self) -> Optional[torch.Tensor]:
        return self.tensors.get("pairs")

    def template(self, part: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(template [N, L, W], eot [N]) of ``part``."""
        return self.tensors[f"{part}_template"], self.tensors[f"{part}_eot"]

    @property
    def noise(self) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if "noise_context" not in self.tensors:
            return None
        return tuple(self.tensors[name] for name in NOISE_NAMES)

    def with_noise(self, noise: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> "TextInputs":
        return TextInputs({**self.tensors, **dict(zip(NOISE_NAMES, noise))})
