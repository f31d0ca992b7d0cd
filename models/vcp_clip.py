"""VCP-CLIP (ECCV 2024): visual context prompting of CLIP's text side (docs/methods/vcp_clip.md).

Text side. The prompts carry no class name: "a photo of a good ⟨class⟩" and "a photo of a
damaged ⟨class⟩", where the placeholder ⟨class⟩ becomes r image-specific token embeddings
(**Pre-VCP**): a learned query [r, W] plus a 3-tap convolution (1 → r channels) over the image's
global feature ``ln_post(CLS) @ proj`` (so the joint width must equal the text width). The
position embedding is added, then n learned **text prompt tokens** are inserted after the start
token (the sequence keeps its length: the last n positions drop) and replaced at the input of
every later text block (``total_d_layer_len`` blocks, all after the first); each goes through a
shared linear ``prompt_proj`` and dropout 0.1. The pooled EOT token goes through the learned
``prompt_norm`` and then ``ln_final`` and ``text_projection``; features are normalised, giving
per image a text pair T [2, D] (normal, abnormal).

Image side, per block of ``features_list`` (raw tokens, CLS removed, L2-normalised):

* **Post-VCP**: the text pair attends to the patch tokens (8 heads, no 1/√d scale); the
  output-projected, normalised result T' [2, C] meets the tokens at the learned scale exp(τ₂);
* the **linear branch** (APRIL-GAN's): a linear map per block (vision width → D), normalised,
  meets T at exp(τ₁).

Each gives logits [P, 2], upsampled bilinearly (``align_corners=True``) before the softmax over
(normal, abnormal). The map is 0.2 · (mean over blocks of the linear branch) + 0.8 · (the same of
Post-VCP), blurred with σ = 8 at test time; the image score is the top-2000 mean of each
branch's unblurred map, summed and min-max scaled over the category. Training: focal + dice
per block and branch, summed; no image-level loss.

Reference: xiaozhen228/VCP-CLIP (golden fixtures: tools/golden/harness_vcp_clip.py).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import ClipBackbone, ImageFeatures
from models.interface import AnomalyModel
from models.losses import BatchSplit, dice_loss, focal_loss
from models.scoring import Prediction, ScoreRule, topk_mean
from models.text_inputs import TextInputs

# "{}" is the placeholder the Pre-VCP tokens replace (the official <|class|> token)
NORMAL_TEMPLATES = ("a photo of a good {}",)
ABNORMAL_TEMPLATES = ("a photo of a damaged {}",)
PARTS = ("normal", "abnormal")


@dataclass
class VcpClipConfig:
    """VCP-CLIP's settings (official flag names).

    features_list: 1-based blocks whose raw tokens both branches read.
    prompt_len: r, the Pre-VCP tokens that stand for the class.
    deep_prompt_len: n, the learned text prompt tokens per text block.
    total_d_layer_len: text blocks after the first that get their own prompt tokens: None for
        all of them (the official 11 of 12), 0 for none (no text prompt tokens at all).
    use_global: Pre-VCP adds the image's global feature to its query (off: the query alone).
    post_heads: attention heads of Post-VCP.
    map_weight: α, the linear branch's weight in the map (Post-VCP's is 1 − α).
    prompt_dropout: dropout on the text prompt tokens while training.
    sigma: test-time blur of the map.
    class_word: fixed "object": no class word reaches the prompts (Pre-VCP fills the placeholder
        from the image), so every category shares one prompt word, as with FAPrompt's "object"
        (what the export's per-word tables and the reports read).
    """

    features_list: Tuple[int, ...] = (6, 12, 18, 24)
    prompt_len: int = 2
    deep_prompt_len: int = 1
    total_d_layer_len: Optional[int] = None
    use_global: bool = True
    post_heads: int = 8
    map_weight: float = 0.2
    prompt_dropout: float = 0.1
    sigma: float = 8.0
    class_word: str = "object"

    def validate(self) -> None:
        if self.class_word != "object":
            raise ValueError("VCP-CLIP's prompts carry no class word (class_word is 'object')")
        if not self.features_list:
            raise ValueError("features_list needs at least one layer")
        for name in ("prompt_len", "deep_prompt_len", "post_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.map_weight <= 1.0:
            raise ValueError(f"map_weight must lie in [0, 1], got {self.map_weight}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must lie in [0, 1), got {self.prompt_dropout}")

    def relevant_fields(self) -> Set[str]:
        return {f.name for f in dataclasses.fields(self)} - {"class_word"}


class PreVcp(nn.Module):
    """r class tokens [N, r, W] from the global image feature [N, W]: query + conv1d(feature)."""

    def __init__(self, width: int, prompt_len: int, use_global: bool):
        super().__init__()
        self.use_global = use_global
        self.query = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, prompt_len, width)))
        self.conv = nn.Conv1d(1, prompt_len, 3, padding="same")  # over the feature's channels
        self.temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # τ₁ of the linear branch

    def forward(self, image_feature: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(image_feature.shape[0], -1, -1)
        return query + self.conv(image_feature[:, None]) if self.use_global else query


class PostVcp(nn.Module):
    """The text pair [N, 2, D] attends to normalised patch tokens [N, P, C] → [N, 2, C], normalised.

    Multi-head attention without the 1/√d scale; q from the text, k and v from the tokens; an
    output projection. (The official code uses 1×1 convolutions: the same as these linears.)
    """

    def __init__(self, text_dim: int, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"Post-VCP: {heads} heads do not divide the vision width {width}")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(text_dim, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # τ₂ of the Post-VCP branch

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        return x.view(n, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, text: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(text)), self._split(self.k(tokens)), self._split(self.v(tokens))
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).flatten(2)
        return F.normalize(self.out(out), dim=-1)


class TextPrompts(nn.Module):
    """The learned text prompt tokens: n at the input and n per later block, through a shared
    linear map and dropout."""

    def __init__(self, width: int, length: int, deep_layers: int, dropout: float):
        super().__init__()
        self.deep_layers = deep_layers
        self.shallow = nn.Parameter(torch.empty(1, length, width).uniform_(-1, 1))
        self.deep = nn.Parameter(torch.empty(deep_layers, length, width).uniform_(-1, 1))
        self.proj = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.proj.weight, a=0, mode="fan_out")
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.dropout = nn.Dropout(dropout)

    def tokens(self, sequences: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """([S, n, W] input tokens, per later block [S, n, W]) for S sequences (dropout per sequence)."""
        first = self.dropout(self.proj(self.shallow).expand(sequences, -1, -1))
        deep = [self.dropout(self.proj(p).expand(sequences, -1, -1)) for p in self.deep[:self.deep_layers]]
        return first, deep


@dataclass
class VcpOutput:
    """A training pass: per block the two-channel maps [N, 2, S, S] of each branch."""

    linear_probs: List[torch.Tensor]
    post_probs: List[torch.Tensor]


class VcpClip(AnomalyModel):
    """Frozen CLIP with Pre-VCP, text prompt tokens, Post-VCP and the linear branch."""

    def __init__(self, backbone: ClipBackbone, config: VcpClipConfig, method: str, score_rule: ScoreRule):
        super().__init__()
        config.validate()
        backbone.check_layers(config.features_list)
        if backbone.embed_dim != backbone.text_width:
            raise ValueError(f"VCP-CLIP puts the {backbone.embed_dim}-d image feature into the text tower, "
                             f"whose width is {backbone.text_width}: use a CLIP whose widths agree (ViT-L-14-336)")
        deep = backbone.text_layers - 1 if config.total_d_layer_len is None else config.total_d_layer_len
        if deep not in (0, backbone.text_layers - 1):
            raise ValueError(f"total_d_layer_len {deep}: 0 or {backbone.text_layers - 1} (every text block after "
                             "the first), as the official code allows")
        self.backbone, self.config, self.method, self.score_rule = backbone, config, method, score_rule
        width, embed = backbone.vision_width, backbone.embed_dim
        self.linear = nn.ModuleList([nn.Linear(width, embed) for _ in config.features_list])
        self.pre_vcp = PreVcp(backbone.text_width, config.prompt_len, config.use_global)
        self.post_vcp = PostVcp(embed, width, config.post_heads)
        self.text_prompts = TextPrompts(backbone.text_width, config.deep_prompt_len, deep, config.prompt_dropout)
        self._templates: Dict[Tuple[str, str], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ text
    def _template(self, part: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(word embeddings [M, L, W], placeholder positions [M], EOT positions [M]) of the
        part's templates, the placeholder one token (any id: it is replaced)."""
        key = (part, str(self.backbone.device))
        if key not in self._templates:
            rows, slots, eots = [], [], []
            for template in NORMAL_TEMPLATES if part == "normal" else ABNORMAL_TEMPLATES:
                before, after = (text.strip() for text in template.split("{}"))
                head, tail = self.backbone.tokenize([before, after])
                head = head[:int(head.argmax())]  # start token and words
                words = tail[1:int(tail.argmax())]
                ids = torch.cat([head, head.new_zeros(1), words, tail[int(tail.argmax())][None]])
                padded = ids.new_zeros(self.backbone.context_length)
                padded[:len(ids)] = ids
                rows.append(padded)
                slots.append(len(head))
                eots.append(len(ids) - 1)
            with torch.no_grad():
                embeddings = self.backbone.token_embedding(torch.stack(rows))
            device = embeddings.device
            self._templates[key] = (embeddings, torch.tensor(slots, device=device), torch.tensor(eots, device=device))
        return self._templates[key]

    def text_features(self, image_feature: torch.Tensor) -> torch.Tensor:
        """[N, 2, D] the normalised (normal, abnormal) text of N images from their global features [N, D]."""
        tokens = self.pre_vcp(image_feature.float())  # [N, r, W]
        return torch.stack([self._encode_part(part, tokens) for part in PARTS], dim=1)

    def _encode_part(self, part: str, tokens: torch.Tensor) -> torch.Tensor:
        """[N, D]: each image's class tokens [N, r, W] in the part's templates, encoded, mean of the
        normalised template features, normalised."""
        embeddings, slots, eots = self._template(part)
        n, r = tokens.shape[:2]
        length = self.backbone.context_length
        positions = self.backbone.clip.positional_embedding.float()
        sequences = []
        for template, slot in zip(embeddings, slots.tolist()):
            words = template.unsqueeze(0).expand(n, -1, -1)
            x = torch.cat([words[:, :slot], tokens, words[:, slot + 1:]], dim=1)[:, :length]
            sequences.append(x + positions)
        x = torch.cat(sequences)  # [M·N, L, W], template-major
        eot = eots.repeat_interleave(n) + r - 1
        final_norm = None
        deep: List[torch.Tensor] = []
        if self.text_prompts.deep_layers:
            first, deep = self.text_prompts.tokens(x.shape[0])
            prompt_len = first.shape[1]
            x = torch.cat([x[:, :1], first, x[:, 1:length - prompt_len]], dim=1)
            eot, final_norm = eot + prompt_len, self.text_prompts.norm
        features = self.backbone.encode_text_embeddings(x, eot, deep_prompts=deep, positioned=True,
                                                        final_norm=final_norm)
        features = F.normalize(features, dim=-1).view(len(slots), n, -1)
        return F.normalize(features.mean(0), dim=-1)

    # ------------------------------------------------------------------ image
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The global feature (``ln_post`` and ``proj``) and the raw tokens of ``features_list``."""
        feats = self.backbone.encode_image(images, layers=self.config.features_list)
        return ImageFeatures(cls=feats.cls, cls_raw=feats.cls[:, :0], patch_raw=feats.patch_raw)

    def branch_logits(self, feats: ImageFeatures, text: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per block the upsampled logits [N, 2, S, S] of the linear branch and of Post-VCP, for
        the images' text pairs [N, 2, D]."""
        side, size = self.backbone.grid_size, self.backbone.image_size

        def upsample(logits: torch.Tensor) -> torch.Tensor:  # [N, P, 2] → [N, 2, S, S]
            grid = logits.transpose(1, 2).reshape(-1, 2, side, side)
            return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)

        linear_scale, post_scale = self.pre_vcp.temperature.exp(), self.post_vcp.temperature.exp()
        linear_out, post_out = [], []
        for linear, layer in zip(self.linear, self.config.features_list):
            raw = feats.patch_raw[layer].float()
            mapped = F.normalize(linear(raw), dim=-1)
            linear_out.append(upsample(linear_scale * mapped @ text.transpose(1, 2)))
            tokens = F.normalize(raw, dim=-1)
            attended = self.post_vcp(text, tokens)  # [N, 2, C]
            post_out.append(upsample(post_scale * tokens @ attended.transpose(1, 2)))
        return linear_out, post_out

    # ------------------------------------------------------------------ test time
    def predict(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None) -> Prediction:
        """Map α·linear + (1 − α)·Post-VCP (block means of the abnormal probability); map score
        the sum of both branches' top-k means; no class probability (zeros)."""
        feats = features if features is not None else self.encode_images(images)
        linear_logits, post_logits = self.branch_logits(feats, self.text_features(feats.cls))
        linear_map = torch.stack([x.softmax(1)[:, 1] for x in linear_logits]).mean(0)
        post_map = torch.stack([x.softmax(1)[:, 1] for x in post_logits]).mean(0)
        alpha, k = self.config.map_weight, self.score_rule.topk
        score = topk_mean(linear_map, k) + topk_mean(post_map, k)
        return Prediction(alpha * linear_map + (1 - alpha) * post_map, torch.zeros_like(score), score)

    def fewshot_tokens(self, images: Optional[torch.Tensor],
                       features: Optional[ImageFeatures] = None) -> List[Tuple[torch.Tensor, bool]]:
        """The raw tokens of ``features_list``, upsampled with ``align_corners`` True as the maps."""
        feats = features if features is not None else self.encode_images(images)
        return [(feats.patch_raw[layer], True) for layer in self.config.features_list]

    def text_inputs(self, class_names: Sequence[str]) -> TextInputs:
        """Nothing: the text depends on the image alone (its templates are part of the graph)."""
        return TextInputs({})

    def export_outputs(self, images: torch.Tensor, inputs: TextInputs) -> Tuple[torch.Tensor, ...]:
        pred = self.predict(images, [""] * images.shape[0])
        return pred.anomaly_map, pred.class_prob, pred.map_score

    # ------------------------------------------------------------------ training
    def forward(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None, split: Optional[BatchSplit] = None) -> VcpOutput:
        feats = features if features is not None else self.encode_images(images)
        linear_logits, post_logits = self.branch_logits(feats, self.text_features(feats.cls))
        return VcpOutput([x.softmax(1) for x in linear_logits], [x.softmax(1) for x in post_logits])

    def loss(self, out: VcpOutput, masks: torch.Tensor, labels: torch.Tensor,
             split: Optional[BatchSplit] = None) -> Dict[str, torch.Tensor]:
        """Σ over blocks and both branches of focal(map) + dice(abnormal channel)."""
        masks = (masks > 0.5).float()
        terms = {}
        for name, probs in (("linear", out.linear_probs), ("post", out.post_probs)):
            terms[name] = sum(focal_loss(p, masks) + dice_loss(p[:, 1], masks) for p in probs)
        terms["total"] = terms["linear"] + terms["post"]
        return terms

    def param_groups(self, lr: Dict[str, float]) -> List[dict]:
        """``temperature``: τ₁ and τ₂ (official 0.01); ``all``: the rest (official 4e-5 on VisA)."""
        temperatures = [self.pre_vcp.temperature, self.post_vcp.temperature]
        rest = [p for name, p in self.named_parameters()
                if p.requires_grad and not name.startswith("backbone.") and not name.endswith("temperature")]
        return [{"name": "all", "params": rest, "lr": lr["all"]},
                {"name": "temperature", "params": temperatures, "lr": lr["temperature"]}]
