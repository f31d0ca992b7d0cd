"""The model interface the engine calls: every method's model implements it.

:class:`AnomalyModel` states what the training loop, the evaluation, the few-shot banks and the
feature cache use, so the engine never probes a model for attributes. A training-free model
keeps the defaults of the training half (no parameters, no loss: :class:`NotTrainable`).

Shapes: N images of S×S pixels, a P-patch grid, D-dimensional joint features.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from models.backbone import ClipBackbone, ImageFeatures
from models.losses import BatchSplit
from models.scoring import Prediction, ScoreRule
from models.text_inputs import TextInputs


class NotTrainable(ValueError):
    """The model has nothing to train (raised by the training half of a training-free model)."""


class AnomalyModel(nn.Module):
    """A frozen CLIP ``backbone`` and the method's parts.

    Attributes every model sets: ``method`` (its registry name, stored in checkpoints),
    ``config`` (its configuration dataclass), ``backbone``, ``score_rule`` (how the engine fuses
    image scores), ``vv_start`` (first V-V block, or None where the V-V path is not used).
    """

    method: str
    config: Any
    backbone: ClipBackbone
    score_rule: ScoreRule
    vv_start: Optional[int] = None

    # ------------------------------------------------------------------ test time
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The one image-tower pass [N, 3, S, S] → the features this model reads (a feature
        cache stores them, so they must not depend on the batch)."""
        raise NotImplementedError

    def predict(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None) -> Prediction:
        """Maps [N, S, S] before the test-time blur, class probabilities [N] and map scores [N];
        from ``features`` (of :meth:`encode_images`) when given."""
        raise NotImplementedError

    def start_evaluation(self, seed: Optional[int] = None, sample_num: Optional[int] = None) -> None:
        """Called before the first test batch of a run: a model with test-time noise restarts
        its seeded stream (``seed``, else its configuration's) with ``sample_num`` samples per
        image (else its configuration's)."""

    def random_state(self) -> Optional[Dict[str, Any]]:
        """A random stream the model keeps outside torch's (AdaCLIP's k-means), as tensors and
        numbers, for a checkpoint to carry; None without one."""
        return None

    def set_random_state(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`random_state` (a resumed run then draws what the interrupted one would)."""

    def skip_noise(self, images: int) -> None:
        """Advance the test-time noise past ``images`` images that another process scores, so
        every image gets the noise of its dataset position."""

    def fewshot_tokens(self, images: Optional[torch.Tensor],
                       features: Optional[ImageFeatures] = None) -> List[Tuple[torch.Tensor, bool]]:
        """Patch tokens for few-shot memory banks: one entry per layer the pixel head reads,
        each (tokens [N, P, ·], ``align_corners`` of that head's upsampling)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ export (engine.export)
    def text_inputs(self, class_names: Sequence[str]) -> TextInputs:
        """The word-dependent inputs of N images' text side (``models.text_inputs``), which an
        exported graph takes in place of the class names."""
        raise NotImplementedError

    def export_outputs(self, images: torch.Tensor, inputs: TextInputs) -> Tuple[torch.Tensor, ...]:
        """The exported graph's computation: map [N, S, S] before the blur, class probability
        [N], and the map score [N] where it needs no category (else zeros: the engine takes the
        top-k score from the map)."""
        raise NotImplementedError

    def noise_settings(self) -> Optional[dict]:
        """Settings of the test-time noise stream (``models.flows.FlowNoise``: seed, samples,
        width, official), which an exported graph takes as inputs; None without noise."""
        return None

    def fewshot_grid(self, entry: int, distances: torch.Tensor) -> torch.Tensor:
        """[N, T] nearest-reference distances of the tokens of ``fewshot_tokens`` entry ``entry``
        → [N, P] patch scores; by default the tokens are the patches (WinCLIP's windows are
        aggregated onto them)."""
        return distances

    # ------------------------------------------------------------------ training
    @property
    def two_stage(self) -> bool:
        """Trains a second stage on the image path alone (Bayes-PFL's class-mapping head)."""
        return False

    def set_stage(self, stage: int) -> None:
        raise NotTrainable(f"{self.method} trains in one stage")

    def forward(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None, split: Optional[BatchSplit] = None) -> Any:
        """A training pass; ``split`` describes a batch shared by several processes."""
        raise NotTrainable(f"{self.method} has nothing to train")

    def loss(self, out: Any, masks: torch.Tensor, labels: torch.Tensor,
             split: Optional[BatchSplit] = None) -> Dict[str, torch.Tensor]:
        """Loss terms of a training pass (``total`` is their sum)."""
        raise NotTrainable(f"{self.method} has nothing to train")

    def param_groups(self, lr: Dict[str, float]) -> List[dict]:
        """Optimiser groups of the current stage at the recipe's rates."""
        raise NotTrainable(f"{self.method} has nothing to train")


class WordTextModel(AnomalyModel):
    """A model whose text side depends on the prompt word alone (the clip baseline, WinCLIP,
    APRIL-GAN): ``text_inputs`` holds its text pairs, and the PyTorch prediction and the
    exported graph both score them through :meth:`predict_pairs`."""

    def predict_pairs(self, images: Optional[torch.Tensor], pairs: torch.Tensor,
                      features: Optional[ImageFeatures] = None) -> Prediction:
        """The prediction of images [N, 3, S, S] (or their ``features``) against the N images'
        text pairs (``text_inputs``' ``pairs``)."""
        raise NotImplementedError

    def predict(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None) -> Prediction:
        return self.predict_pairs(images, self.text_inputs(class_names).pairs, features)

    def export_outputs(self, images: torch.Tensor, inputs: TextInputs) -> Tuple[torch.Tensor, ...]:
        pred = self.predict_pairs(images, inputs.pairs)
        return pred.anomaly_map, pred.class_prob, pred.map_score
