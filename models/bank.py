"""Bayes-PFL's prompt bank (docs/methods/bayes_pfl.md).

B pairs of P context + Q state (normal / abnormal) vectors replace the single token "X" of
``"X {word}"``; the context is shared within a pair. The image-specific flow's sample is added
to the context vectors, the state flows' samples to the state vectors of their state. Features
are ordered normal half first, then abnormal, each indexed ``r·B + b``; pair i is (i, i + B·R).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import ClipBackbone
from models.text_inputs import TextInputs


class PromptBank(nn.Module):
    """B pairs of P context + Q state vectors (init: context N(0, .02), states N(±0.5, .02))."""

    def __init__(self, text_width: int, prompt_num: int, context_len: int, state_len: int):
        super().__init__()
        b, p, q = prompt_num, context_len, state_len
        self.context = nn.Parameter(nn.init.trunc_normal_(torch.empty(b, p, text_width), 0.0, 0.02))
        self.normal_state = nn.Parameter(nn.init.trunc_normal_(torch.empty(b, q, text_width), 0.5, 0.02))
        self.abnormal_state = nn.Parameter(nn.init.trunc_normal_(torch.empty(b, q, text_width), -0.5, 0.02))
        self._templates: Dict[tuple, Tuple[torch.Tensor, int]] = {}

    @staticmethod
    def template_text(word: str) -> str:
        """``"X {word}"``: the vectors replace the one token "X"."""
        return f"X {word.lower()}"

    def templates(self, backbone: ClipBackbone, words: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Word embeddings [N, L, W] of the templates and the EOT positions [N] after insertion
        (given as tensors by :class:`TextInputs`, or tokenised here and cached)."""
        if isinstance(words, TextInputs):
            return words.template("bank")
        p, q = self.context.shape[1], self.normal_state.shape[1]
        out = []
        for word in words:
            key = (word, str(backbone.device))
            if key not in self._templates:
                tokens = backbone.tokenize([self.template_text(word)])
                eot = int(tokens[0].argmax()) + p + q - 1
                if eot >= backbone.context_length:
                    raise ValueError(f"the prompt word {word!r} is too long for {p + q} prompt vectors")
                with torch.no_grad():
                    self._templates[key] = (backbone.token_embedding(tokens)[0], eot)
            out.append(self._templates[key])
        return torch.stack([o[0] for o in out]), torch.tensor([o[1] for o in out], device=backbone.device)

    def embeddings(self, template: torch.Tensor, context_z: torch.Tensor, normal_z: torch.Tensor,
                   abnormal_z: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [N, 2, R, B, L, W].

        Args:
            template: [N, L, W] template embeddings.
            context_z: [N, R, W] image-specific samples (added to the context vectors).
            normal_z, abnormal_z: [R, W] state samples (added to the state vectors).
        """
        n, length, width = template.shape
        r = context_z.shape[1]
        b, p, _ = self.context.shape
        q = self.normal_state.shape[1]
        context = self.context[None, None] + context_z[:, :, None, None, :]  # [N, R, B, P, W]
        states = torch.stack([self.normal_state[None] + normal_z[:, None, None, :],
                              self.abnormal_state[None] + abnormal_z[:, None, None, :]])  # [2, R, B, Q, W]
        tail = template[:, 2:length - (p + q) + 1]
        shape = (n, 2, r, b)
        return torch.cat([template[:, None, None, None, :1].expand(*shape, 1, width),
                          context[:, None].expand(*shape, p, width),
                          states[None].expand(*shape, q, width),
                          tail[:, None, None, None].expand(*shape, tail.shape[1], width)], dim=-2)

    def pairs(self, backbone: ClipBackbone, words: Sequence[str], context: Optional[torch.Tensor],
              normal: Optional[torch.Tensor], abnormal: Optional[torch.Tensor]) -> torch.Tensor:
        """Normalised text features [N, 2, R·B, D] (index r·B + b) in one text-encoder call.

        ``context`` [N, R, W], ``normal`` / ``abnormal`` [R, W] flow samples; None: no offset.
        """
        width = self.context.shape[-1]
        r = next((t.shape[-2] for t in (context, normal, abnormal) if t is not None), 1)
        device = self.context.device
        zero = torch.zeros(r, width, device=device)
        if context is None:
            context = torch.zeros(len(words), r, width, device=device)
        template, eot = self.templates(backbone, words)
        embeddings = self.embeddings(template, context, zero if normal is None else normal,
                                     zero if abnormal is None else abnormal)
        shape = embeddings.shape[:4]
        text = backbone.encode_text_embeddings(embeddings.flatten(0, 3),
                                               eot[:, None, None, None].expand(shape).flatten())
        return F.normalize(text, dim=-1).view(shape[0], 2, shape[2] * shape[3], -1)
