"""A hand-written prompt ensemble: normal and abnormal states inside photo templates, giving one
(normal, abnormal) text pair per prompt word. The clip baseline, WinCLIP and APRIL-GAN each
hold one, with their own states and templates (docs/methods/)."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from models.backbone import ClipBackbone


class PromptEnsemble:
    """States × templates, encoded by the frozen text tower; nothing of it is trained.

    Args:
        normal_states, abnormal_states: state phrases with ``{}`` for the word ("flawless {}").
        templates: photo templates with ``{}`` for the state phrase ("a photo of the {}.").
        normalise: each prompt's feature is normalised before the mean, and the mean after
            (the baseline, APRIL-GAN); False: the plain mean of the raw features (WinCLIP).
    """

    def __init__(self, normal_states: Sequence[str], abnormal_states: Sequence[str], templates: Sequence[str],
                 normalise: bool):
        self.states = (tuple(normal_states), tuple(abnormal_states))
        self.templates, self.normalise = tuple(templates), normalise
        self._pairs: Dict[Tuple[str, str], torch.Tensor] = {}

    def prompts(self, word: str) -> Tuple[List[str], List[str]]:
        """The normal and abnormal sentences of ``word``, state-major, template-minor."""
        normal, abnormal = ([t.format(s.format(word)) for s in states for t in self.templates]
                            for states in self.states)
        return normal, abnormal

    def pair(self, backbone: ClipBackbone, word: str) -> torch.Tensor:
        """[2, D] the (normal, abnormal) features of ``word``, cached per word and device."""
        key = (word, str(backbone.device))
        if key not in self._pairs:
            pair = []
            for texts in self.prompts(word):
                with torch.no_grad():
                    feats = backbone.encode_text(backbone.tokenize(texts))
                if self.normalise:
                    pair.append(F.normalize(F.normalize(feats, dim=-1).mean(0), dim=-1))
                else:
                    pair.append(feats.mean(0))
            self._pairs[key] = torch.stack(pair)
        return self._pairs[key]

    def pairs(self, backbone: ClipBackbone, words: Sequence[str]) -> torch.Tensor:
        """[N, 2, D] the pair of each image's word."""
        return torch.stack([self.pair(backbone, w) for w in words])
