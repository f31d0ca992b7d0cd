"""APRIL-GAN (VAND 2023 challenge winner): trained linear maps of CLIP's patch tokens meet a
fixed prompt ensemble (docs/methods/april_gan.md).

Text side, fixed: 7 normal and 5 abnormal states inside 35 photo templates; every prompt's
feature is normalised, each state set's mean normalised again, giving a pair T [D, 2] (normal,
abnormal) per class name (used verbatim by the official code).

Image side: the raw outputs of the blocks in ``features_list`` (6 12 18 24 of ViT-L, CLS
removed, no ``ln_post``, no projection) each go through a linear map of their own (vision width
→ embedding width, with bias), the only trained weights. Per layer the map is
softmax over (normal, abnormal) of the upsampled logits 100 · norm(linear(tokens)) · T: the
logits are upsampled bilinearly (``align_corners=True``) before the softmax; the layers' abnormal
channels are summed. The image score is softmax(100 · norm(CLS feature) · T), abnormal entry.
Training: per layer, focal loss on the two-channel map plus dice loss on its abnormal channel,
summed over the layers; no image-level loss.

Reference: ByChelsea/VAND-APRIL-GAN (golden fixtures: tools/golden/harness_april_gan.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from datasets.names import prompt_words
from models.backbone import ClipBackbone, ImageFeatures
from models.ensemble import PromptEnsemble
from models.interface import WordTextModel
from models.losses import BatchSplit, dice_loss, focal_loss
from models.scoring import Prediction, ScoreRule
from models.text_inputs import TextInputs

# The prompt ensemble of the APRIL-GAN report (its states and templates).
NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = ("a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
             "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.",
             "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
             "a bright photo of the {}.", "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.",
             "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a photo of one {}.",
             "a close-up photo of the {}.", "a photo of a {}.", "a low resolution photo of a {}.",
             "a photo of a large {}.", "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.",
             "a good photo of a {}.", "a photo of the small {}.", "a photo of the large {}.",
             "a black and white photo of a {}.", "a dark photo of a {}.", "a photo of a cool {}.",
             "a photo of a small {}.", "there is a {} in the scene.", "there is the {} in the scene.",
             "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.")


@dataclass
class AprilGanConfig:
    """APRIL-GAN's settings.

    features_list: 1-based blocks whose raw tokens the linear maps read.
    class_word: "raw" (the class name as in meta.json, as the official code), "name" (readable)
        or "object".
    logit_scale: the fixed scale of the cosine logits (100, not CLIP's learned one).
    sigma: test-time blur (0: none, as the official code).
    """

    features_list: Tuple[int, ...] = (6, 12, 18, 24)
    class_word: str = "raw"
    logit_scale: float = 100.0
    sigma: float = 0.0

    def validate(self) -> None:
        if not self.features_list:
            raise ValueError("features_list needs at least one layer")
        if self.class_word not in ("raw", "name", "object"):
            raise ValueError(f"class_word must be 'raw', 'name' or 'object', got {self.class_word!r}")

    def relevant_fields(self) -> Set[str]:
        return {f.name for f in dataclasses.fields(self)}


@dataclass
class AprilGanOutput:
    """A training pass: per layer the two-channel probability map [N, 2, S, S], and the image
    probability [N]."""

    layer_probs: List[torch.Tensor]
    class_prob: torch.Tensor


class AprilGan(WordTextModel):
    """Frozen CLIP, a fixed prompt ensemble and one trained linear map per listed layer."""

    def __init__(self, backbone: ClipBackbone, config: AprilGanConfig, method: str, score_rule: ScoreRule):
        super().__init__()
        config.validate()
        backbone.check_layers(config.features_list)
        self.backbone, self.config, self.method, self.score_rule = backbone, config, method, score_rule
        self.linear = nn.ModuleList([nn.Linear(backbone.vision_width, backbone.embed_dim)
                                     for _ in config.features_list])
        # per state set the normalised mean of the normalised prompt features
        self.ensemble = PromptEnsemble(NORMAL_STATES, ABNORMAL_STATES, TEMPLATES, normalise=True)

    # ------------------------------------------------------------------ text
    def text_features(self, word: str) -> torch.Tensor:
        """[D, 2] (normal, abnormal) ensemble features of ``word``, as columns."""
        return self.ensemble.pair(self.backbone, word).T

    def _pairs(self, class_names: Sequence[str]) -> torch.Tensor:
        """[N, D, 2] the text pair of each image's class."""
        words = prompt_words(class_names, self.config.class_word)
        return self.ensemble.pairs(self.backbone, words).transpose(1, 2)

    # ------------------------------------------------------------------ image
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The CLS feature (``ln_post`` and ``proj``) and the raw tokens of ``features_list``."""
        feats = self.backbone.encode_image(images, layers=self.config.features_list)
        return ImageFeatures(cls=feats.cls, cls_raw=feats.cls[:, :0], patch_raw=feats.patch_raw)

    def layer_logits(self, feats: ImageFeatures, pairs: torch.Tensor) -> List[torch.Tensor]:
        """Per layer the logits [N, 2, S, S]: 100 · norm(linear(tokens)) · T, upsampled."""
        side, size = self.backbone.grid_size, self.backbone.image_size
        out = []
        for linear, layer in zip(self.linear, self.config.features_list):
            tokens = F.normalize(linear(feats.patch_raw[layer].float()), dim=-1)
            logits = self.config.logit_scale * torch.einsum("npd,ndc->ncp", tokens, pairs)
            out.append(F.interpolate(logits.reshape(-1, 2, side, side), size=(size, size), mode="bilinear",
                                     align_corners=True))
        return out

    def _class_prob(self, feats: ImageFeatures, pairs: torch.Tensor) -> torch.Tensor:
        logits = self.config.logit_scale * torch.einsum("nd,ndc->nc", F.normalize(feats.cls.float(), dim=-1), pairs)
        return logits.softmax(-1)[:, 1]

    # ------------------------------------------------------------------ test time
    def text_inputs(self, class_names: Sequence[str]) -> TextInputs:
        """The text pairs [N, D, 2] of the images' class names (an exported graph's input)."""
        return TextInputs({"pairs": self._pairs(class_names)})

    def predict_pairs(self, images: Optional[torch.Tensor], pairs: torch.Tensor,
                      features: Optional[ImageFeatures] = None) -> Prediction:
        feats = features if features is not None else self.encode_images(images)
        maps = sum(logits.softmax(1)[:, 1] for logits in self.layer_logits(feats, pairs))
        return Prediction(maps, self._class_prob(feats, pairs), maps.flatten(1).amax(1))

    def fewshot_tokens(self, images: Optional[torch.Tensor],
                       features: Optional[ImageFeatures] = None) -> List[Tuple[torch.Tensor, bool]]:
        """The raw tokens of ``features_list`` (the official memory bank's), upsampled with
        ``align_corners`` True as the zero-shot map is."""
        feats = features if features is not None else self.encode_images(images)
        return [(feats.patch_raw[layer], True) for layer in self.config.features_list]

    # ------------------------------------------------------------------ training
    def forward(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None, split: Optional[BatchSplit] = None) -> AprilGanOutput:
        feats = features if features is not None else self.encode_images(images)
        pairs = self._pairs(class_names)
        return AprilGanOutput([logits.softmax(1) for logits in self.layer_logits(feats, pairs)],
                              self._class_prob(feats, pairs))

    def loss(self, out: AprilGanOutput, masks: torch.Tensor, labels: torch.Tensor,
             split: Optional[BatchSplit] = None) -> Dict[str, torch.Tensor]:
        """Σ over layers of focal(map) + dice(abnormal channel); ``total`` as the trainer reads it."""
        masks = (masks > 0.5).float()
        focal = sum(focal_loss(p, masks) for p in out.layer_probs)
        dice = sum(dice_loss(p[:, 1], masks) for p in out.layer_probs)
        return {"focal": focal, "dice": dice, "total": focal + dice}

    def param_groups(self, lr: Dict[str, float]) -> List[dict]:
        return [{"name": "all", "params": list(self.linear.parameters()), "lr": lr["all"]}]
