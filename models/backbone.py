"""The frozen CLIP backbone, built through open_clip's public API (docs/backbone.md).

:class:`ClipBackbone` wraps an ``open_clip.CLIP`` ViT and exposes what the prompt-learning
methods need, computed with open_clip's own modules and weights:

* image side, batched, one forward pass: the CLS image feature with and without ``ln_post``,
  raw and projected patch tokens of the layers in ``features_list``, and the V-V attention
  path (AnomalyCLIP's "DPAM") from a chosen block on;
* text side, batched: encoding from token *embeddings* (learnable vectors may stand at any
  position), optional deep prompts, pooling at a given EOT index; plus open_clip's tokenizer.

Weights come through :mod:`models.clip_loading` (open_clip's download and cache, a local
OpenAI ``.pt`` file, an open_clip checkpoint, or random weights). The vision position
embedding keeps the pretrained grid; the grid for the requested ``image_size`` is interpolated
from it (bilinear as FAPrompt, or bicubic with antialias as Bayes-PFL).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from models.clip_loading import build_clip, check_supported

log = logging.getLogger("zsad.backbone")

POS_INTERPOLATIONS = ("bilinear", "bicubic", "bicubic_plain")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class BackboneConfig:
    """How to build the backbone; stored in every checkpoint we write."""

    model: str = "ViT-L-14-336"
    pretrained: str = "openai"
    image_size: int = 518
    activation: str = "auto"  # auto: QuickGELU for OpenAI weights, else the config's choice
    pos_interpolation: str = "bilinear"  # FAPrompt: bilinear; Bayes-PFL: bicubic + antialias
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (bf16 autocasts there too)
    cache_dir: Optional[str] = None


@dataclass
class ImageFeatures:
    """Outputs of one batched image pass. B images, P = grid² patches, C = vision width,
    D = embedding dim. Layers are numbered 1..num_layers.

    cls:        [B, D]    ``ln_post(CLS) @ proj`` (open_clip's ``encode_image``).
    cls_raw:    [B, D]    ``CLS @ proj`` without ``ln_post`` (FAPrompt's image feature).
    patch_raw:  {layer: [B, P, C]} raw outputs of the selected blocks, CLS removed.
    patch_proj: {layer: [B, P, D]} the same through ``ln_post`` and ``proj``.
    vv_proj:    [B, P, D] final V-V path tokens through ``ln_post`` and ``proj`` (or None).
    vv_layers:  {layer: [B, P, D]} V-V path tokens after the selected blocks through ``ln_post``
                and ``proj`` (AnomalyCLIP's multi-layer maps); the original path's tokens for
                blocks before the V-V start.
    windows:    {scale: [B, W, D]} features of every scale×scale window of patches encoded on
                its own (WinCLIP; ``models/winclip.py``).
    tokens:     [B, P, C] open_clip's output patch tokens (``ln_post``, not projected), which
                WinCLIP+ compares with its references (or None).
    cls_plain:  [B, D] ``ln_post(CLS) @ proj`` of the tower without prompts, where ``cls`` and
                ``patch_raw`` come from a pass with visual prompts (AdaCLIP makes its dynamic
                prompts from it), or None.
    """

    cls: torch.Tensor
    cls_raw: torch.Tensor
    patch_raw: Dict[int, torch.Tensor] = field(default_factory=dict)
    patch_proj: Dict[int, torch.Tensor] = field(default_factory=dict)
    vv_proj: Optional[torch.Tensor] = None
    vv_layers: Dict[int, torch.Tensor] = field(default_factory=dict)
    windows: Dict[int, torch.Tensor] = field(default_factory=dict)
    tokens: Optional[torch.Tensor] = None
    cls_plain: Optional[torch.Tensor] = None


def _quick_gelu_module() -> nn.Module:
    return open_clip.transformer.QuickGELU()


def _is_quick_gelu(module: nn.Module) -> bool:
    return type(module).__name__ == "QuickGELU"


class ClipBackbone(nn.Module):
    """A frozen open_clip ViT with multi-layer, V-V and prompt-aware encoders.

    Args:
        clip: an ``open_clip.CLIP`` with a ViT image tower and the standard text tower.
        tokenizer: open_clip tokenizer for ``clip``.
        image_size: input size; the position grid is interpolated to ``image_size // patch``.
        pos_interpolation: ``"bilinear"`` (align_corners=False), ``"bicubic"`` (antialias) or
            ``"bicubic_plain"`` (bicubic without antialias: AdaCLIP; upsampling, it differs from
            ``bicubic``, whose antialiased kernel is another cubic).
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast on CUDA; on the CPU bf16 only).
    """

    def __init__(self, clip: nn.Module, tokenizer, image_size: int = 518,
                 pos_interpolation: str = "bilinear", precision: str = "auto"):
        super().__init__()
        if pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError(f"pos_interpolation must be one of {POS_INTERPOLATIONS}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        check_supported(clip)
        visual = clip.visual
        self.clip = clip
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.pos_interpolation = pos_interpolation
        self.precision = precision
        patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
        self.patch_size = int(patch)
        if self.image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size "
                             f"{self.patch_size} of this model")
        self.grid_size = self.image_size // self.patch_size
        self.num_layers = len(visual.transformer.resblocks)
        self.vision_width = visual.conv1.out_channels
        self.embed_dim = visual.proj.shape[1]
        self.text_width = clip.token_embedding.weight.shape[1]
        self.context_length = clip.positional_embedding.shape[0]
        self.text_layers = len(clip.transformer.resblocks)
        # cut text sequences after the last EOT (exact under causal attention); False runs all
        # context positions, as the official code does (benchmarks compare against that)
        self.truncate_text = True
        clip.requires_grad_(False)
        clip.eval()
        # open_clip's own embedding step (_embeds) reads visual.positional_embedding: it gets the
        # grid for image_size, interpolated from the pretrained grid kept beside it
        if not hasattr(visual, "pretrained_positional_embedding"):
            visual.register_buffer("pretrained_positional_embedding",
                                   visual.positional_embedding.detach().clone(), persistent=False)
        visual.positional_embedding = nn.Parameter(self._interpolated_pos_embed(), requires_grad=False)

    # ------------------------------------------------------------------ set-up helpers
    def train(self, mode: bool = True) -> "ClipBackbone":
        """The backbone is frozen: it stays in eval mode whatever the parent does."""
        return super().train(False)

    def _interpolated_pos_embed(self) -> torch.Tensor:
        """[1 + grid², C] position embedding for ``image_size`` from the pretrained grid."""
        pos = self.clip.visual.pretrained_positional_embedding
        old = round((pos.shape[0] - 1) ** 0.5)
        if old == self.grid_size:
            return pos.clone()
        grid = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
        if self.pos_interpolation == "bilinear":
            grid = F.interpolate(grid, size=(self.grid_size, self.grid_size), mode="bilinear",
                                 align_corners=False)
        else:
            grid = F.interpolate(grid, size=(self.grid_size, self.grid_size), mode="bicubic",
                                 align_corners=False, antialias=self.pos_interpolation == "bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(self.grid_size * self.grid_size, -1)
        return torch.cat([pos[:1].float(), grid], dim=0).to(pos.dtype)

    @property
    def device(self) -> torch.device:
        return self.clip.visual.conv1.weight.device

    def autocast(self):
        """Autocast context for the backbone's own computations: on CUDA unless ``fp32``; on the
        CPU only for an explicit ``bf16`` (its bfloat16 instructions; fp32 stays the default)."""
        if self.device.type == "cuda" and self.precision != "fp32":
            return torch.autocast("cuda", dtype=torch.float16 if self.precision == "fp16" else torch.bfloat16)
        if self.device.type == "cpu" and self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def set_activation(self, activation: str) -> None:
        """Use QuickGELU or exact GELU in every MLP of both towers."""
        if activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {activation!r}")
        for block in list(self.clip.visual.transformer.resblocks) + list(self.clip.transformer.resblocks):
            if activation == "gelu":
                block.mlp.gelu = nn.GELU()
            else:
                block.mlp.gelu = _quick_gelu_module()

    @property
    def activation(self) -> str:
        return "quick_gelu" if _is_quick_gelu(self.clip.visual.transformer.resblocks[0].mlp.gelu) else "gelu"

    # ------------------------------------------------------------------ blocks
    @staticmethod
    def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, heads, c // heads).transpose(1, 2)

    def _block(self, block: nn.Module, x: torch.Tensor, causal: bool = False,
               vv: Optional[torch.Tensor] = None):
        """One open_clip ``ResidualAttentionBlock`` on [B, L, C] tokens, with its own weights.

        The in-projection is computed once; with ``vv`` given, the V-V attention
        ``softmax(v vᵀ·scale) v`` on the same ``ln_1(x)`` goes through the same output
        projection and is added to ``vv`` (the V-V path never runs the MLP).
        """
        attn = block.attn
        heads = attn.num_heads
        h = block.ln_1(x)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (self._heads(t, heads) for t in (q, k, v))
        b, n, c = x.shape
        if vv is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        else:
            # both attentions in one kernel call: rows [0, B) original, [B, 2B) value-value
            out = F.scaled_dot_product_attention(torch.cat([q, v]), torch.cat([k, v]), torch.cat([v, v]))
        out = out.transpose(1, 2).reshape(out.shape[0], n, c)
        out = block.ls_1(F.linear(out, attn.out_proj.weight, attn.out_proj.bias))
        if vv is not None:
            vv = vv + out[b:]
            out = out[:b]
        x = x + out
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, vv

    def check_layers(self, layers: Sequence[int]) -> None:
        """A method's ``features_list`` must name blocks of this tower (1-based): else ValueError."""
        if any(not 1 <= layer <= self.num_layers for layer in layers):
            raise ValueError(f"features_list {list(layers)} outside 1..{self.num_layers}")

    # ------------------------------------------------------------------ image side
    def encode_image(self, images: torch.Tensor, layers: Sequence[int] = (),
                     vv_start: Optional[int] = None, vv_layers: Sequence[int] = ()) -> ImageFeatures:
        """Run the image tower once.

        Args:
            images: [B, 3, S, S] normalised images, S = ``image_size``.
            layers: 1-based block indices whose patch tokens are returned.
            vv_start: 1-based first V-V block (FAPrompt: 6 of 24), or None for no V-V path.
            vv_layers: 1-based blocks whose V-V path tokens are returned (needs ``vv_start``).
        """
        visual = self.clip.visual
        bad = [layer for layer in list(layers) + list(vv_layers) if not 1 <= layer <= self.num_layers]
        if bad:
            raise ValueError(f"layers {list(layers) + list(vv_layers)} must lie in 1..{self.num_layers}")
        if vv_start is not None and not 1 <= vv_start <= self.num_layers:
            raise ValueError(f"V-V start block {vv_start} must lie in 1..{self.num_layers}")
        if vv_layers and vv_start is None:
            raise ValueError("V-V layer tokens need a V-V start block")
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"expected images of {self.image_size}px, got {tuple(images.shape)}")
        layers = sorted(set(layers))
        with torch.no_grad(), self.autocast():
            x = visual._embeds(images.to(visual.conv1.weight.dtype))
            vv, vv_tokens = None, {}
            if vv_start is None and not layers:  # the plain tower: open_clip's own blocks
                x, raw = visual.transformer(x), {}
            elif vv_start is None:
                x, taken = visual.transformer.forward_intermediates(x, indices=[layer - 1 for layer in layers])
                raw = {layer: t[:, 1:] for layer, t in zip(layers, taken)}
            else:
                raw = {}
                for index, block in enumerate(visual.transformer.resblocks, start=1):
                    if index == vv_start:
                        vv = x
                    x, vv = self._block(block, x, vv=vv)
                    if index in layers:
                        raw[index] = x[:, 1:]
                    if index in vv_layers:
                        vv_tokens[index] = (x if vv is None else vv)[:, 1:]
            # contiguous, as a feature cache returns them: a method's trained layers on them then take
            # the same kernels with and without the cache (bit-identical training; APRIL-GAN's maps)
            raw = {layer: t.contiguous() for layer, t in raw.items()}
            # The CLS rows are projected together with all tokens of their images: the rows of
            # a [B, C] @ [C, D] product depend on B (GEMM kernels for small M differ), those of
            # a [B·L, C] one do not, so the features do not depend on the batch they were
            # computed in (engine/feature_cache.py relies on it). About 0.4 % more work.
            features = ImageFeatures(
                cls=(visual.ln_post(x) @ visual.proj)[:, 0],
                cls_raw=(x @ visual.proj)[:, 0],
                patch_raw=raw,
                patch_proj={layer: visual.ln_post(t) @ visual.proj for layer, t in raw.items()},
                vv_proj=None if vv is None else visual.ln_post(vv[:, 1:]) @ visual.proj,
                vv_layers={layer: visual.ln_post(t) @ visual.proj for layer, t in vv_tokens.items()},
            )
        return _to_float(features)

    def encode_image_prompted(self, images: torch.Tensor, layers: Sequence[int], prompts: Sequence[torch.Tensor],
                              prompt_dtype: Optional[torch.dtype] = None) -> ImageFeatures:
        """One image pass with learned tokens in the sequence (AdaCLIP's visual prompts).

        ``prompts[0]`` [B, n, C] is appended after the patch tokens at the input of block 1;
        ``prompts[j]`` replaces those n tokens at the input of block j + 1; after block
        ``len(prompts)`` they stay in the sequence (attended to, never read out). The tower's
        embedding step runs without gradients; the blocks are differentiable with respect to
        the prompts. ``prompt_dtype``: round the prompts through it first (official AdaCLIP:
        float16).

        Returns ``cls`` (``ln_post(CLS) @ proj``) and ``patch_raw`` of ``layers`` (CLS and the
        prompt tokens removed); the other fields stay empty.
        """
        visual = self.clip.visual
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(f"expected images of {self.image_size}px, got {tuple(images.shape)}")
        if not prompts or len(prompts) > self.num_layers:
            raise ValueError(f"visual prompts for 1..{self.num_layers} blocks, got {len(prompts)}")
        length = prompts[0].shape[1]
        raw = {}
        with self.autocast():
            with torch.no_grad():
                x = visual._embeds(images.to(visual.conv1.weight.dtype))
            for index, block in enumerate(visual.transformer.resblocks, start=1):
                if index <= len(prompts):
                    prompt = prompts[index - 1] if prompt_dtype is None else prompts[index - 1].to(prompt_dtype)
                    x = torch.cat([x if index == 1 else x[:, :-length], prompt.to(x.dtype)], dim=1)
                x, _ = self._block(block, x)
                if index in layers:
                    raw[index] = x[:, 1:x.shape[1] - length]
            # all tokens projected, the CLS row taken: batch-independent rows (see encode_image)
            cls = (visual.ln_post(x) @ visual.proj)[:, 0]
        return ImageFeatures(cls=cls.float(), cls_raw=cls[:, :0].float(),
                             patch_raw={layer: t.float() for layer, t in raw.items()})

    # ------------------------------------------------------------------ text side
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, context_length] with open_clip's tokenizer."""
        return self.tokenizer(list(texts)).to(self.device)

    def token_embedding(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings [N, L, text_width] of token ids (no position embedding)."""
        return self.clip.token_embedding(token_ids.to(self.device)).float()

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor,
                               deep_prompts: Optional[Sequence[torch.Tensor]] = None,
                               deep_prompt_dtype: Optional[torch.dtype] = None, positioned: bool = False,
                               final_norm: Optional[nn.Module] = None) -> torch.Tensor:
        """Encode prompts given as token embeddings; differentiable w.r.t. the inputs.

        Args:
            embeddings: [N, L, W] token embeddings (L = context length).
            eot_index: [N] (or scalar) position whose final token is pooled.
            deep_prompts: optional list; entry i ([n, W] or [N, n, W]) overwrites positions
                1..n at the input of text layer i + 2 (layers are 1-based), raw, without the
                position embedding.
            deep_prompt_dtype: round each sequence's copy of the deep prompts through this
                dtype first (official FAPrompt: float16).
            positioned: the embeddings already hold the position embedding (VCP-CLIP adds it
                before it inserts its prompt tokens, which then shift the words).
            final_norm: a layer norm applied to the pooled token before ``ln_final`` (VCP-CLIP's
                learned ``prompt_norm``).
        Returns:
            [N, D] text features (not normalised).
        """
        clip = self.clip
        n_seq = embeddings.shape[0]
        eot_index = torch.as_tensor(eot_index, device=embeddings.device).long().expand(n_seq)
        deep_prompts = list(deep_prompts or [])
        if len(deep_prompts) >= self.text_layers:
            raise ValueError(f"deep prompts for {len(deep_prompts) + 1} layers exceed the text "
                             f"encoder's {self.text_layers} layers")
        # Causal attention: no position after the last EOT can influence any pooled token, so
        # the sequences are cut there (for CLIP prompts that is 4-8x less text-tower work).
        length = embeddings.shape[1]
        if self.truncate_text:  # off in an exported graph, whose EOT positions are inputs
            needed = max(int(eot_index.max()) + 1, 1 + max((p.shape[-2] for p in deep_prompts), default=0))
            length = min(needed, length)
        with self.autocast():
            x = embeddings[:, :length]
            if not positioned:
                x = x + clip.positional_embedding[:length].to(embeddings.dtype)
            for index, block in enumerate(clip.transformer.resblocks):
                if 1 <= index <= len(deep_prompts):
                    prompt = deep_prompts[index - 1]
                    if prompt.dim() == 2:
                        prompt = prompt.unsqueeze(0).expand(n_seq, -1, -1)
                    if deep_prompt_dtype is not None:
                        prompt = prompt.to(deep_prompt_dtype)
                    length = prompt.shape[1]
                    x = torch.cat([x[:, :1], prompt.to(x.dtype), x[:, 1 + length:]], dim=1)
                x, _ = self._block(block, x, causal=True)
            pooled = x[torch.arange(n_seq, device=x.device), eot_index]
            if final_norm is not None:
                pooled = final_norm(pooled)
            features = clip.ln_final(pooled) @ clip.text_projection
        return features.float()

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Plain text features [N, D] of token ids, pooled at the EOT (highest) token."""
        token_ids = token_ids.to(self.device)
        return self.encode_text_embeddings(self.token_embedding(token_ids), token_ids.argmax(dim=-1))


def _to_float(features: ImageFeatures) -> ImageFeatures:
    return ImageFeatures(
        cls=features.cls.float(),
        cls_raw=features.cls_raw.float(),
        patch_raw={k: v.float() for k, v in features.patch_raw.items()},
        patch_proj={k: v.float() for k, v in features.patch_proj.items()},
        vv_proj=None if features.vv_proj is None else features.vv_proj.float(),
        vv_layers={k: v.float() for k, v in features.vv_layers.items()},
        windows={k: v.float() for k, v in features.windows.items()},
        tokens=None if features.tokens is None else features.tokens.float(),
    )


def build_backbone(config: BackboneConfig, device: Optional[torch.device | str] = None) -> ClipBackbone:
    """Build the frozen backbone described by ``config`` on ``device``."""
    clip, activation = build_clip(config)
    backbone = ClipBackbone(clip, open_clip.get_tokenizer(config.model), image_size=config.image_size,
                            pos_interpolation=config.pos_interpolation, precision=config.precision)
    backbone.set_activation(activation)
    if device is not None:
        backbone.to(device)
    log.info("backbone %s (%s weights, %s, %dpx, %dx%d grid)", config.model, config.pretrained,
             activation, config.image_size, backbone.grid_size, backbone.grid_size)
    return backbone


def default_vv_start(num_layers: int) -> int:
    """First V-V block: FAPrompt's 6 of 24 (its last 19 blocks), scaled to other depths."""
    return max(1, round(num_layers * 5 / 24) + 1)


def layers_or_default(layers: Optional[List[int]], num_layers: int) -> List[int]:
    """``features_list`` default: four evenly spaced layers ending at the last (6 12 18 24)."""
    if layers:
        return list(layers)
    step = max(1, num_layers // 4)
    return [step * i for i in range(1, 5) if step * i <= num_layers]
