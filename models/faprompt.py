"""FAPrompt: compound abnormality prompts (CAP) and the data-dependent abnormality prior (DAP).

SPEC section 4. Everything but the prompt learner is frozen. One forward pass gives:

* the static pass: CAP text features (t_n, t_a) against the V-V patch features → map₁;
* DAP: the k most abnormal patches of map₁ → meta-net → prior β, added to every abnormal
  token of every abnormal prompt; the prompts of *all images of the batch* are re-encoded in
  one text-encoder call → image-specific (t_n, t_a') → map₂ and the image-level probability.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import ClipBackbone, ImageFeatures, default_vv_start
from models.losses import binary_focal_loss, cap_orthogonality, dice_loss, focal_loss
from models.scoring import Prediction

DAP_SELECT = ("topk", "first")


@dataclass
class FAPromptConfig:
    """FAPrompt settings; defaults are the official ones (SPEC sections 4 and 8)."""

    abnormal_prompts: int = 10  # K
    normal_ctx: int = 5
    abnormal_ctx: int = 2
    depth: int = 9  # deep text prompts at layers 2..depth
    t_n_ctx: int = 4  # deep prompt length
    dap_k: int = 10
    dap_select: str = "topk"  # "first" reproduces the official selection (grid patches 0..k-1)
    class_word: str = "object"  # "object" or "name" (readable class name)
    temperature: float = 0.07
    sigma: float = 10.0  # test-time Gaussian blur of the pixel map
    vv_start: Optional[int] = None  # first V-V block; None: the last 19 blocks (6 of 24)
    fused_focal_logits: bool = False  # official: logit-input focal on the fused probability
    deep_prompt_fp16: bool = False  # official: deep prompts rounded through fp16

    def official(self) -> "FAPromptConfig":
        """The same settings with every official-code behaviour of SPEC section 8 switched on."""
        return FAPromptConfig(**{**self.__dict__, "dap_select": "first", "fused_focal_logits": True,
                                 "deep_prompt_fp16": True})


class CompoundPrompts(nn.Module):
    """CAP: one normal prompt and K abnormal prompts that share the normal context.

    normal:     ``[SOS] N1..Nn  {word} . [EOT]``
    abnormal k: ``[SOS] N1..Nn A(k)1..A(k)m damaged {word} . [EOT]``
    The learnable vectors replace the placeholder tokens one for one (so every word puts them
    at the same positions); deep prompts overwrite positions 1..t_n_ctx at text layers 2..depth.
    """

    def __init__(self, text_width: int, config: FAPromptConfig):
        super().__init__()
        self.config = config
        self.normal_ctx = nn.Parameter(torch.empty(config.normal_ctx, text_width).normal_(std=0.02))
        self.abnormal_ctx = nn.Parameter(
            torch.empty(config.abnormal_prompts, config.abnormal_ctx, text_width).normal_(std=0.02))
        self.deep_prompts = nn.ParameterList(
            [nn.Parameter(torch.empty(config.t_n_ctx, text_width).normal_(std=0.02))
             for _ in range(config.depth - 1)])
        self._cache: Dict[tuple, Tuple[torch.Tensor, int]] = {}

    def template_text(self, word: str, abnormal: bool) -> str:
        """The template whose placeholder words N / A the learnable vectors replace."""
        normal = " ".join(["N"] * self.config.normal_ctx)
        if abnormal:
            return f"{normal} {' '.join(['A'] * self.config.abnormal_ctx)} damaged {word}."
        return f"{normal} {word}."

    def _template(self, backbone: ClipBackbone, word: str, abnormal: bool) -> Tuple[torch.Tensor, int]:
        key = (word, abnormal, str(backbone.device))
        if key not in self._cache:
            tokens = backbone.tokenize([self.template_text(word, abnormal)])
            with torch.no_grad():
                embeddings = backbone.token_embedding(tokens)[0]
            self._cache[key] = (embeddings, int(tokens[0].argmax()))
        return self._cache[key]

    def templates(self, backbone: ClipBackbone, words: Sequence[str], abnormal: bool):
        """Word embeddings [N, L, W] and EOT positions [N] of the templates for ``words``."""
        pairs = [self._template(backbone, w, abnormal) for w in words]
        return (torch.stack([p[0] for p in pairs]),
                torch.tensor([p[1] for p in pairs], device=backbone.device))

    def deep(self) -> List[torch.Tensor]:
        return list(self.deep_prompts)

    @property
    def deep_dtype(self) -> Optional[torch.dtype]:
        """The official code rounds every sequence's copy of the deep prompts through fp16
        (so their gradients are rounded per sequence too); None keeps fp32."""
        return torch.float16 if self.config.deep_prompt_fp16 else None

    def _normal_ctx(self, n: int, offset: Optional[torch.Tensor]) -> torch.Tensor:
        """[n, n_ctx, W] normal context vectors, each row shifted by ``offset`` [n, W] if given."""
        ctx = self.normal_ctx.expand(n, -1, -1)
        return ctx if offset is None else ctx + offset[:, None, :]

    def normal_embeddings(self, template: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, L, W] normal prompts from [N, L, W] normal templates (context shifted by ``offset``)."""
        return torch.cat([template[:, :1], self._normal_ctx(template.shape[0], offset),
                          template[:, 1 + self.config.normal_ctx:]], dim=1)

    def abnormal_embeddings(self, template: torch.Tensor, prior: Optional[torch.Tensor] = None,
                            offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[N, K, L, W] abnormal prompts from [N, L, W] templates; the abnormal tokens are
        shifted by ``prior`` [N, W], the shared normal context by ``offset`` [N, W]."""
        n, _, width = template.shape
        k, m, _ = self.abnormal_ctx.shape
        ctx = self.abnormal_ctx.expand(n, -1, -1, -1)
        if prior is not None:
            ctx = ctx + prior[:, None, None, :]
        start = 1 + self.config.normal_ctx + m
        return torch.cat([template[:, None, :1].expand(n, k, 1, width),
                          self._normal_ctx(n, offset)[:, None].expand(n, k, -1, -1),
                          ctx,
                          template[:, None, start:].expand(n, k, -1, -1)], dim=2)


class PriorNet(nn.Module):
    """DAP meta-net: k selected patch features (concatenated, in order) → prior β [W]."""

    def __init__(self, embed_dim: int, text_width: int, k: int):
        super().__init__()
        hidden = embed_dim * k // 16
        self.net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(embed_dim * k, hidden)),
            ("relu", nn.ReLU()),
            ("linear2", nn.Linear(hidden, text_width)),
        ]))

    def forward(self, selected: torch.Tensor) -> torch.Tensor:
        """[B, k, D] → [B, W]."""
        return self.net(selected.flatten(1))


@dataclass
class FAPromptOutput:
    """One forward pass. B images, P grid patches, S image size, D embed dim."""

    grid1: torch.Tensor  # [B, P, 2] static-pass (normal, abnormal) probabilities on the grid
    grid2: torch.Tensor  # [B, P, 2] DAP-pass probabilities
    map1: torch.Tensor  # [B, 2, S, S] grid1 upsampled
    map2: torch.Tensor  # [B, 2, S, S]
    image_logits: torch.Tensor  # [B, 2] CLS feature against (t_n, t_a') / temperature
    prior: torch.Tensor  # [B, W] DAP prior β
    selected: torch.Tensor  # [B, k] grid indices fed to the meta-net
    abnormal_features: torch.Tensor  # [U, K, D] static abnormal features (orthogonality loss)
    text_static: torch.Tensor  # [B, 2, D] normalised static (t_n, t_a)
    text_dap: torch.Tensor  # [B, 2, D] normalised (t_n, t_a')
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def class_prob(self) -> torch.Tensor:
        return self.image_logits.softmax(-1)[:, 1]

    @property
    def map_score(self) -> torch.Tensor:
        """(2·max a₁ + max a₂) / 3 with maxima over the grid, before upsampling."""
        return (2 * self.grid1[..., 1].amax(1) + self.grid2[..., 1].amax(1)) / 3

    @property
    def image_score(self) -> torch.Tensor:
        """The fused image score s = 0.5·(p_cls + map score)."""
        return 0.5 * (self.class_prob + self.map_score)

    @property
    def anomaly_map(self) -> torch.Tensor:
        """[B, S, S] mean of (a + 1 − n)/2 over the two passes (before smoothing)."""
        return (self.map1[:, 1] + 1 - self.map1[:, 0] + self.map2[:, 1] + 1 - self.map2[:, 0]) / 4


def grid_probs(patches: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over (normal, abnormal) of patch·text / temperature.

    Args:
        patches: [B, P, D] normalised patch features.
        text: [B, 2, D] (or [2, D]) normalised text features.
    Returns:
        [B, P, 2] probabilities.
    """
    if text.dim() == 2:
        text = text.expand(patches.shape[0], -1, -1)
    return (patches @ text.transpose(1, 2) / temperature).softmax(-1)


def upsample_grid(probs: torch.Tensor, size: int, align_corners: bool = False) -> torch.Tensor:
    """[B, P, C] grid values (row-major) → [B, C, size, size], bilinear."""
    b, p, c = probs.shape
    side = int(round(p ** 0.5))
    grid = probs.transpose(1, 2).reshape(b, c, side, side)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=align_corners)


def select_patches(abnormal_prob: torch.Tensor, k: int, mode: str) -> torch.Tensor:
    """[B, P] abnormal grid probabilities → [B, k] indices: top-k (descending) or the first k."""
    if mode == "topk":
        return abnormal_prob.topk(k, dim=1, largest=True, sorted=True).indices
    if mode == "first":
        return torch.arange(k, device=abnormal_prob.device).expand(abnormal_prob.shape[0], k)
    raise ValueError(f"dap_select must be one of {DAP_SELECT}")


class FAPrompt(nn.Module):
    """The FAPrompt model: frozen backbone + CAP prompts + DAP prior (SPEC section 4)."""

    method = "faprompt"
    score_fusion = "mean"
    two_stage = False

    def __init__(self, backbone: ClipBackbone, config: FAPromptConfig):
        super().__init__()
        if config.dap_select not in DAP_SELECT:
            raise ValueError(f"dap_select must be one of {DAP_SELECT}")
        if config.depth - 1 >= backbone.text_layers:
            raise ValueError(f"--depth {config.depth} needs more than {backbone.text_layers} text layers")
        self.backbone = backbone
        self.config = config
        self.prompts = CompoundPrompts(backbone.text_width, config)
        self.prior_net = PriorNet(backbone.embed_dim, backbone.text_width, config.dap_k)
        self.vv_start = config.vv_start or default_vv_start(backbone.num_layers)
        self.cache_static = True  # False re-encodes them every call, as the official test does
        self._static_cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def words(self, class_names: Sequence[str]) -> List[str]:
        from datasets.names import readable_name

        if self.config.class_word == "object":
            return ["object"] * len(class_names)
        return [readable_name(name) for name in class_names]

    def encode_static(self, words: Sequence[str]):
        """CAP features for the distinct words: normal [U, D], abnormal [U, K, D], word index [B].

        They do not depend on the image, so at inference (no autograd) they are cached until a
        prompt parameter changes (its version counter moves with every in-place update).
        """
        backbone, prompts = self.backbone, self.prompts
        unique = sorted(set(words))
        index = torch.tensor([unique.index(w) for w in words], device=backbone.device)
        key = None
        if self.cache_static and not torch.is_grad_enabled():
            key = (tuple(unique), str(backbone.device), tuple(p._version for p in prompts.parameters()))
            if key in self._static_cache:
                normal, abnormal = self._static_cache[key]
                return normal, abnormal, index
        normal_t, normal_eot = prompts.templates(backbone, unique, abnormal=False)
        abnormal_t, abnormal_eot = prompts.templates(backbone, unique, abnormal=True)
        k = self.config.abnormal_prompts
        embeddings = torch.cat([prompts.normal_embeddings(normal_t),
                                prompts.abnormal_embeddings(abnormal_t).flatten(0, 1)])
        eot = torch.cat([normal_eot, abnormal_eot.repeat_interleave(k)])
        features = backbone.encode_text_embeddings(embeddings, eot, prompts.deep(), prompts.deep_dtype)
        u = len(unique)
        normal, abnormal = features[:u], features[u:].reshape(u, k, -1)
        if key is not None:
            self._static_cache = {key: (normal, abnormal)}
        return normal, abnormal, index

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The image tensors this model reads: the V-V tokens and the CLS feature without
        ``ln_post`` (the other fields are empty, [B, 0])."""
        feats = self.backbone.encode_image(images, vv_start=self.vv_start)
        return ImageFeatures(cls=feats.cls[:, :0], cls_raw=feats.cls_raw, vv_proj=feats.vv_proj)

    def forward(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None) -> FAPromptOutput:
        """Both passes for a batch. images: [B, 3, S, S] (unread when ``features``, the output
        of :meth:`encode_images`, is given); class_names: B raw class names."""
        cfg, backbone = self.config, self.backbone
        feats = self.encode_images(images) if features is None else features
        patches = F.normalize(feats.vv_proj, dim=-1)
        image = F.normalize(feats.cls_raw, dim=-1)
        words = self.words(class_names)

        normal, abnormal, index = self.encode_static(words)
        static = F.normalize(torch.stack([normal, abnormal.mean(1)], dim=1), dim=-1)[index]
        grid1 = grid_probs(patches, static, cfg.temperature)

        selected = select_patches(grid1[..., 1], cfg.dap_k, cfg.dap_select)
        chosen = torch.gather(patches, 1, selected[..., None].expand(-1, -1, patches.shape[-1]))
        prior = self.prior_net(chosen)
        abnormal_dap = self.encode_abnormal(words, prior)
        text_dap = F.normalize(torch.stack([normal[index], abnormal_dap], dim=1), dim=-1)
        grid2 = grid_probs(patches, text_dap, cfg.temperature)

        logits = (image.unsqueeze(1) @ text_dap.transpose(1, 2)).squeeze(1) / cfg.temperature
        size = backbone.image_size
        return FAPromptOutput(grid1=grid1, grid2=grid2, map1=upsample_grid(grid1, size),
                              map2=upsample_grid(grid2, size), image_logits=logits, prior=prior,
                              selected=selected, abnormal_features=abnormal, text_static=static,
                              text_dap=text_dap)

    def predict(self, images: torch.Tensor, class_names: Sequence[str]) -> Prediction:
        """Test-time outputs: the pixel map, p_cls and the map part of the fused score."""
        out = self(images, class_names)
        return Prediction(out.anomaly_map, out.class_prob, out.map_score)

    def encode_abnormal(self, words: Sequence[str], prior: torch.Tensor) -> torch.Tensor:
        """Mean abnormal feature [B, D] per image with its prior added: one text-encoder call."""
        backbone, prompts = self.backbone, self.prompts
        k = self.config.abnormal_prompts
        template, eot = prompts.templates(backbone, words, abnormal=True)
        embeddings = prompts.abnormal_embeddings(template, prior)
        features = backbone.encode_text_embeddings(embeddings.flatten(0, 1), eot.repeat_interleave(k),
                                                   prompts.deep(), prompts.deep_dtype)
        return features.view(len(words), k, -1).mean(1)

    def loss(self, out: FAPromptOutput, masks: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The terms of SPEC section 4's training loss (each returned; ``total`` is their sum)."""
        masks = masks.float()
        labels = labels.long()

        def map_terms(probs: torch.Tensor) -> torch.Tensor:
            return (focal_loss(probs, masks) + dice_loss(probs[:, 1], masks)
                    + dice_loss(probs[:, 0], 1 - masks))

        normal = (labels == 0).float()
        terms = {
            "map1": map_terms(out.map1),
            "map2": 0.5 * map_terms(out.map2),
            "image": F.cross_entropy(out.image_logits, labels),
            "fused": binary_focal_loss(out.image_score, labels, from_logits=self.config.fused_focal_logits),
            "orthogonal": 0.1 * cap_orthogonality(out.abnormal_features) / len(out.abnormal_features),
            "prior": (out.prior.pow(2).mean(1) * normal).sum(),
        }
        terms["total"] = sum(terms.values())
        return terms


# ---------------------------------------------------------------------- official checkpoints
def official_to_ours(state: Dict[str, torch.Tensor]) -> tuple[Dict[str, torch.Tensor], dict]:
    """Map an official FAPrompt ``prompt_learner`` state dict onto our module names.

    Returns our state dict and the config fields implied by the tensor shapes. The derivable
    buffers (``token_prefix_*``, ``token_suffix_*``, ``tokenized_prompts_*``) and the unused
    ``compound_prompt_projections`` are dropped.
    """
    ctx_pos, ctx_neg = state["ctx_pos"], state["ctx_neg"]
    deep_keys = sorted((k for k in state if k.startswith("compound_prompts_text.")),
                       key=lambda k: int(k.rsplit(".", 1)[1]))
    ours = {
        "prompts.normal_ctx": ctx_pos.reshape(ctx_pos.shape[-2], ctx_pos.shape[-1]),
        "prompts.abnormal_ctx": ctx_neg.reshape(ctx_neg.shape[-3], ctx_neg.shape[-2], ctx_neg.shape[-1]),
    }
    for i, key in enumerate(deep_keys):
        ours[f"prompts.deep_prompts.{i}"] = state[key]
    for layer in ("linear1", "linear2"):
        for kind in ("weight", "bias"):
            ours[f"prior_net.net.{layer}.{kind}"] = state[f"patch_meta_net.{layer}.{kind}"]
    k_patches = state["patch_meta_net.linear1.weight"].shape[1] // ctx_pos.shape[-1]
    config = {
        "abnormal_prompts": ctx_neg.shape[-3],
        "normal_ctx": ctx_pos.shape[-2],
        "abnormal_ctx": ctx_neg.shape[-2],
        "depth": len(deep_keys) + 1,
        "t_n_ctx": state[deep_keys[0]].shape[0] if deep_keys else 4,
        "dap_k": k_patches,
    }
    return {k: v.float() for k, v in ours.items()}, config


def is_official_state(state: dict) -> bool:
    return "ctx_pos" in state and "ctx_neg" in state and "patch_meta_net.linear1.weight" in state
