"""FAPrompt's compound abnormality prompts (CAP) and data-dependent abnormality prior (DAP).

docs/methods/faprompt.md. CAP: one normal prompt and K abnormal prompts about one word,

    normal:     [SOS] N1..Nn {word} . [EOT]
    abnormal k: [SOS] N1..Nn A(k)1..A(k)m damaged {word} . [EOT]

whose learnable vectors replace the placeholder tokens one for one, plus deep text prompts at
text layers 2..depth. The abnormal feature of a pair is the normalised mean of the K abnormal
features. AnomalyCLIP's object-agnostic prompts (docs/methods/anomalyclip.md) are the unshared variant with K = 1:
the abnormal prompt carries its own context, not the normal one ("A1..Am damaged {word}.").

DAP: the k most abnormal grid patches of a first pass, concatenated in order, go through a
meta-net to a prior β that is added to every abnormal token A(k)j.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import ClipBackbone
from models.text_inputs import TextInputs


class CompoundPrompts(nn.Module):
    """CAP prompt vectors and their text encoding.

    Args:
        text_width: W of the text tower.
        abnormal_prompts: K; normal_ctx: n; abnormal_ctx: m.
        depth, t_n_ctx: deep prompts of length ``t_n_ctx`` at text layers 2..depth.
        share_normal: abnormal prompts start with the normal vectors (FAPrompt; False: AnomalyCLIP).
        deep_prompt_fp16: round every sequence's copy of the deep prompts through fp16 (official).
    """

    def __init__(self, text_width: int, abnormal_prompts: int, normal_ctx: int, abnormal_ctx: int, depth: int,
                 t_n_ctx: int, share_normal: bool = True, deep_prompt_fp16: bool = False):
        super().__init__()
        self.k, self.n, self.m = abnormal_prompts, normal_ctx, abnormal_ctx
        self.share_normal, self.deep_prompt_fp16 = share_normal, deep_prompt_fp16
        self.normal_ctx = nn.Parameter(torch.empty(normal_ctx, text_width).normal_(std=0.02))
        self.abnormal_ctx = nn.Parameter(torch.empty(abnormal_prompts, abnormal_ctx, text_width).normal_(std=0.02))
        self.deep_prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(t_n_ctx, text_width).normal_(std=0.02)) for _ in range(depth - 1)])
        self._templates: Dict[tuple, Tuple[torch.Tensor, int]] = {}
        self._static: Dict[tuple, tuple] = {}
        self.cache_static = True  # False re-encodes word-only prompts every call (as the official test)

    # ------------------------------------------------------------------ templates
    def template_text(self, word: str, abnormal: bool) -> str:
        """The template whose placeholder words the learnable vectors replace: N / A in FAPrompt's
        compound prompts, X in AnomalyCLIP's separate ones (only the token ids differ: the
        vectors overwrite the placeholders' embeddings)."""
        if not self.share_normal:
            return " ".join(["X"] * (self.m if abnormal else self.n)) + (" damaged" if abnormal else "") + f" {word}."
        normal = " ".join(["N"] * self.n)
        if not abnormal:
            return f"{normal} {word}."
        return f"{normal} {' '.join(['A'] * self.m)} damaged {word}."

    def templates(self, backbone: ClipBackbone, words: Sequence[str], abnormal: bool):
        """Word embeddings [N, L, W] and EOT positions [N] of the templates for ``words``
        (given as tensors by :class:`TextInputs`, or tokenised here and cached)."""
        if isinstance(words, TextInputs):
            return words.template("abnormal" if abnormal else "normal")
        out = []
        for word in words:
            key = (word, abnormal, str(backbone.device))
            if key not in self._templates:
                tokens = backbone.tokenize([self.template_text(word, abnormal)])
                with torch.no_grad():
                    self._templates[key] = (backbone.token_embedding(tokens)[0], int(tokens[0].argmax()))
            out.append(self._templates[key])
        return torch.stack([o[0] for o in out]), torch.tensor([o[1] for o in out], device=backbone.device)

    def _embeddings(self, template: torch.Tensor, abnormal: bool, context: Optional[torch.Tensor],
                    shift: Optional[torch.Tensor]) -> torch.Tensor:
        """Prompt embeddings from templates [N, L, W]: normal [N, L, W], abnormal [N, K, L, W].
        ``context`` [N, W] shifts the normal vectors, ``shift`` [N, W] the abnormal ones."""
        n, _, width = template.shape
        normal = self.normal_ctx.expand(n, -1, -1)
        if context is not None:
            normal = normal + context[:, None, :]
        if not abnormal:
            return torch.cat([template[:, :1], normal, template[:, 1 + self.n:]], dim=1)
        ctx = self.abnormal_ctx.expand(n, -1, -1, -1)
        if shift is not None:
            ctx = ctx + shift[:, None, None, :]
        parts = [template[:, None, :1].expand(n, self.k, 1, width)]
        if self.share_normal:
            parts.append(normal[:, None].expand(n, self.k, -1, -1))
        start = 1 + (self.n if self.share_normal else 0) + self.m
        parts += [ctx, template[:, None, start:].expand(n, self.k, -1, -1)]
        return torch.cat(parts, dim=2)

    # ------------------------------------------------------------------ text features
    def pairs(self, backbone: ClipBackbone, words: Sequence[str], context: Optional[torch.Tensor] = None,
              abnormal_state: Optional[torch.Tensor] = None, prior: Optional[torch.Tensor] = None):
        """Normalised (normal, abnormal) text features of every image and sample.

        Args:
            words: N prompt words, one per image, or their templates (:class:`TextInputs`).
            context: [N, R, W] image-specific flow samples (added to the normal vectors).
            abnormal_state: [R, W] abnormal-state flow samples; prior: [N, W] the DAP prior β
                (both added to the abnormal vectors).
        Returns:
            pairs [N, 2, R, D] and the K abnormal features [X, K, D] before their mean (X rows:
            the distinct words when nothing depends on the image, else N·R).

        Prompts that depend on the word only are encoded once per distinct word (and, at
        inference, cached until a prompt vector changes); all others go through one call.
        """
        r = 1
        for samples in (context, abnormal_state):
            if samples is not None:
                r = samples.shape[-2]
        given = isinstance(words, TextInputs)  # templates instead of words: one row per image
        n, unique = len(words), words if given else sorted(set(words))
        normal_static = context is None
        abnormal_static = normal_static and abnormal_state is None and prior is None
        cached = self.cache_static and not torch.is_grad_enabled() and not given
        static = self._cached(backbone, unique) if cached else None
        if given and "static_normal" in words.tensors:  # the word-only features, computed at export
            static = words.tensors["static_normal"], words.tensors["static_abnormal"]
        normal, abnormal = self._encode(backbone, words if not normal_static else None,
                                        words if not abnormal_static else None, unique, r, context,
                                        abnormal_state, prior, skip_static=static is not None)
        if static is not None:
            normal = static[0] if normal_static else normal
            abnormal = static[1] if abnormal_static else abnormal
        index = (torch.arange(n, device=backbone.device) if given else
                 torch.tensor([unique.index(w) for w in words], device=backbone.device))
        normal = normal[index][:, None].expand(-1, r, -1) if normal_static else normal.view(n, r, -1)
        mean = abnormal.mean(1)
        mean = mean[index][:, None].expand(-1, r, -1) if abnormal_static else mean.view(n, r, -1)
        return F.normalize(torch.stack([normal, mean], dim=1), dim=-1), abnormal

    def static_features(self, backbone: ClipBackbone, words: Sequence[str]):
        """The features that depend on the word only, unnormalised: normal [U, D] and abnormal
        [U, K, D] for the distinct ``words`` (sorted)."""
        unique = sorted(set(words))
        if self.cache_static and not torch.is_grad_enabled():
            return self._cached(backbone, unique)
        return self._encode(backbone, None, None, unique, 1, None, None, None, skip_static=False)

    def _cached(self, backbone: ClipBackbone, unique: List[str]):
        """At inference the word-only features are cached until a prompt vector changes (every
        in-place update moves its version counter)."""
        key = (tuple(unique), str(backbone.device), tuple(p._version for p in self.parameters()))
        if key not in self._static:
            self._static = {key: self._encode(backbone, None, None, unique, 1, None, None, None, skip_static=False)}
        return self._static[key]

    def _encode(self, backbone, normal_words, abnormal_words, unique, r, context, abnormal_state, prior,
                skip_static: bool):
        """Normal [rows, D] and abnormal [rows, K, D] features in one text-encoder call.

        ``normal_words`` / ``abnormal_words``: the images' words when that side depends on the
        image (rows = N·R), None when it depends on the word only (rows = the distinct words;
        not encoded at all with ``skip_static``, the cache has them).
        """
        rep = lambda t: t.repeat_interleave(r, dim=0)  # noqa: E731  rows of (image, sample)
        offset = None if context is None else context.reshape(-1, context.shape[-1])
        parts, eots, sizes = [], [], []
        if normal_words is not None or not skip_static:
            template, eot = self.templates(backbone, normal_words or unique, abnormal=False)
            if normal_words is not None:
                template, eot = rep(template), rep(eot)
            parts.append(self._embeddings(template, False, offset, None))
            eots.append(eot)
        sizes.append(parts[0].shape[0] if parts else 0)
        if abnormal_words is not None or not skip_static:
            template, eot = self.templates(backbone, abnormal_words or unique, abnormal=True)
            shift = None
            if abnormal_words is not None:
                template, eot = rep(template), rep(eot)
                shift = None if abnormal_state is None else abnormal_state.repeat(len(abnormal_words), 1)
                if prior is not None:
                    shift = rep(prior) if shift is None else shift + rep(prior)
            shared_offset = offset if abnormal_words is not None else None
            parts.append(self._embeddings(template, True, shared_offset, shift).flatten(0, 1))
            eots.append(eot.repeat_interleave(self.k))
        if not parts:
            return None, None
        features = backbone.encode_text_embeddings(torch.cat(parts), torch.cat(eots), list(self.deep_prompts),
                                                   torch.float16 if self.deep_prompt_fp16 else None)
        normal = features[:sizes[0]] if sizes[0] else None
        rest = features[sizes[0]:]
        abnormal = rest.view(-1, self.k, rest.shape[-1]) if rest.shape[0] else None
        return normal, abnormal


class PriorNet(nn.Module):
    """DAP meta-net: k selected patch features (concatenated, in order) → prior β [W]."""

    def __init__(self, embed_dim: int, text_width: int, k: int):
        super().__init__()
        self.k = k
        hidden = embed_dim * k // 16
        self.net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(embed_dim * k, hidden)),
            ("relu", nn.ReLU()),
            ("linear2", nn.Linear(hidden, text_width)),
        ]))

    def forward(self, abnormal_grid: torch.Tensor, patches: torch.Tensor, select: str):
        """The prior of each image and the patches it read.

        Args:
            abnormal_grid: [N, P] abnormal probability of the first pass on the grid.
            patches: [N, P, D] normalised patch features.
            select: "topk" (descending, as torch.topk) or "first" (the official code: patches 0..k-1).
        Returns:
            β [N, W] and the selected grid indices [N, k].
        """
        selected = select_patches(abnormal_grid, self.k, select)
        chosen = torch.gather(patches, 1, selected[..., None].expand(-1, -1, patches.shape[-1]))
        return self.net(chosen.flatten(1)), selected


def select_patches(abnormal_prob: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """[N, P] abnormal grid probabilities → [N, k] indices: top-k (descending) or the first k."""
    if mode == "topk":
        return abnormal_prob.topk(k, dim=1, largest=True, sorted=True).indices
    if mode == "first":
        return torch.arange(k, device=abnormal_prob.device).expand(abnormal_prob.shape[0], k)
    raise ValueError(f"dap_select must be 'topk' or 'first', got {mode!r}")
