"""A training-free baseline: frozen CLIP with a hand-written prompt ensemble.

Normal and abnormal *states* ("flawless {}", "damaged {}", ...) are combined with photo
*templates* ("a photo of a {}.", ...); each state's text feature is the normalised mean of its
normalised prompt features (a WinCLIP-style ensemble, with our own wording). The image score
is CLIP's softmax of the CLS feature against (normal, abnormal); the pixel map compares the
V-V path's patch features with the same two text features (the similarity head at the fixed
temperature 0.07), as the V-V path localises far better than CLIP's raw patch tokens.

It needs nothing but CLIP weights, so a new user gets real zero-shot numbers at once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F

from datasets.names import prompt_words
from models.backbone import ClipBackbone, ImageFeatures, default_vv_start
from models.heads import similarity_probs, upsample_grid
from models.ensemble import PromptEnsemble
from models.interface import WordTextModel
from models.scoring import Prediction, ScoreRule
from models.text_inputs import TextInputs

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "intact {}", "{} without defect",
                 "{} without damage", "{} with no flaws")
ABNORMAL_STATES = ("damaged {}", "broken {}", "defective {}", "{} with a defect", "{} with damage",
                   "{} with a flaw", "{} with a scratch or a crack")
TEMPLATES = ("a photo of a {}.", "a close-up photo of a {}.", "a cropped photo of the {}.",
             "a bright photo of the {}.", "a dark photo of a {}.", "a blurry photo of the {}.",
             "a low resolution photo of a {}.", "an industrial photo of a {}.",
             "a photo of the {} for visual inspection.", "there is a {} in the scene.")


@dataclass
class ClipBaselineConfig:
    temperature: float = 0.07  # pixel map
    image_logit_scale: float = 100.0  # CLIP's trained logit scale for the image score
    sigma: float = 4.0
    vv_start: Optional[int] = None
    class_word: str = "name"  # "name" (readable class name) or "object"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        if self.class_word not in ("name", "object"):
            raise ValueError(f"class_word must be 'name' or 'object', got {self.class_word!r}")

    def relevant_fields(self) -> Set[str]:
        """Every field has an effect (the baseline has no switches)."""
        return {f.name for f in dataclasses.fields(self)}


class ClipBaseline(WordTextModel):
    """Zero-shot CLIP anomaly detection with a prompt ensemble; nothing to train. Its image
    score is the mean of CLIP's probability and the largest grid probability (``score_rule``)."""

    def __init__(self, backbone: ClipBackbone, config: ClipBaselineConfig, method: str, score_rule: ScoreRule):
        super().__init__()
        if score_rule.map_score != "grid_max":
            raise ValueError("the baseline's map score is the largest grid probability (grid_max)")
        self.backbone, self.config, self.method, self.score_rule = backbone, config, method, score_rule
        self.vv_start = config.vv_start or default_vv_start(backbone.num_layers)
        self.ensemble = PromptEnsemble(NORMAL_STATES, ABNORMAL_STATES, TEMPLATES, normalise=True)

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        return self.backbone.encode_image(images, vv_start=self.vv_start)

    def fewshot_tokens(self, images: Optional[torch.Tensor],
                       features: Optional[ImageFeatures] = None) -> List[Tuple[torch.Tensor, bool]]:
        """Tokens of a few-shot memory bank (``engine.fewshot``): the V-V patch tokens [N, P, D]
        the pixel map reads, upsampled with ``align_corners`` False as that map is; from
        ``features`` when given. With references this is a WinCLIP-style few-shot baseline."""
        feats = features if features is not None else self.encode_images(images)
        return [(feats.vv_proj, False)]

    def text_inputs(self, class_names: Sequence[str]) -> TextInputs:
        """The ensemble pairs [N, 2, 1, D] of the images' words (no text depends on the image)."""
        words = prompt_words(class_names, self.config.class_word)
        return TextInputs({"pairs": self.ensemble.pairs(self.backbone, words)[:, :, None]})

    def predict_pairs(self, images: Optional[torch.Tensor], pairs: torch.Tensor,
                      features: Optional[ImageFeatures] = None) -> Prediction:
        cfg = self.config
        feats = features if features is not None else self.encode_images(images)
        image = F.normalize(feats.cls, dim=-1)
        logits = cfg.image_logit_scale * torch.einsum("nd,ncmd->nc", image, pairs)
        grid = similarity_probs(F.normalize(feats.vv_proj, dim=-1), pairs, cfg.temperature)
        probs = upsample_grid(grid, self.backbone.image_size)
        return Prediction((probs[:, 1] + 1 - probs[:, 0]) / 2, logits.softmax(-1)[:, 1], grid[..., 1].amax(1))
