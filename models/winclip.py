"""WinCLIP (CVPR 2023): zero-shot anomaly segmentation from CLIP windows (docs/methods/winclip.md).

Training-free. Text side: a compositional prompt ensemble, states ("flawless {}", "damaged {}",
...) inside templates ("a photo of the {}."); each state's text feature is the mean of its
prompts' (unnormalised) features, so the ensemble is a pair (normal, abnormal) per word.

Image side: the image is encoded once (the CLS feature scores the whole image), and for each
window scale s (2 and 3 patches by default) every s×s window of the patch grid is encoded again
on its own: the CLS token and the window's patch tokens, taken after the embedding step, run
through the same transformer, ``ln_post``, pooling and projection (open_clip's own modules).
A window's score is the softmax probability of "abnormal" at temperature 0.07; a patch's score
at scale s is the harmonic mean of the scores of the windows covering it; the zero-shot grid is
the harmonic mean over the scales and the image score; it is upsampled bilinearly to the image.

WinCLIP+ (``--k_shot K``) adds the references' memory through ``engine.fewshot``: the output
patch tokens and every scale's window features of the K normal images; a test patch's or
window's distance is 1 − its largest cosine similarity to the memory, windows are aggregated
onto patches harmonically, and the mean over the entries is the few-shot grid.

Reference: anomalib 2.7's ``WinClipModel`` (docs/methods/winclip.md records its quirks and our
switches: ``window_attention`` and ``prompts``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F

from datasets.names import prompt_words
from models.backbone import ClipBackbone, ImageFeatures
from models.ensemble import PromptEnsemble
from models.interface import WordTextModel
from models.scoring import Prediction, ScoreRule
from models.text_inputs import TextInputs

# The WinCLIP paper's compositional prompt ensemble (its supplementary material, Fig. 8).
NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = ("a cropped photo of the {}.", "a close-up photo of a {}.", "a close-up photo of the {}.",
             "a bright photo of a {}.", "a bright photo of the {}.", "a dark photo of the {}.",
             "a dark photo of a {}.", "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.",
             "a blurry photo of the {}.", "a blurry photo of a {}.", "a photo of a {}.", "a photo of the {}.",
             "a photo of a small {}.", "a photo of the small {}.", "a photo of a large {}.",
             "a photo of the large {}.", "a photo of the {} for visual inspection.",
             "a photo of a {} for visual inspection.", "a photo of the {} for anomaly detection.",
             "a photo of a {} for anomaly detection.")
# anomalib's list repeats "a jpeg corrupted photo of the {}." where the paper has "of a" once
ANOMALIB_TEMPLATES = tuple(t.replace("jpeg corrupted photo of a", "jpeg corrupted photo of the") for t in TEMPLATES)
PROMPT_SETS = {"paper": TEMPLATES, "anomalib": ANOMALIB_TEMPLATES}
WINDOW_ATTENTIONS = ("window", "across")


@dataclass
class WinClipConfig:
    """WinCLIP's settings.

    scales: window sizes in patches (the full image is always added as one more scale).
    temperature: of the window and image softmax over (normal, abnormal).
    sigma: test-time blur of the maps (0: none, as WinCLIP).
    class_word: "name" (the readable class name, as WinCLIP) or "object".
    prompts: "paper" (the paper's templates) or "anomalib" (its list, with one template twice).
    window_attention: "window" (each window attends within itself, as the paper) or "across"
        (anomalib 2.7 under today's batch-first open_clip transformer: its windows, passed
        sequence-first, attend across windows and images at each token position, so every
        window gets the same feature).
    """

    scales: Tuple[int, ...] = (2, 3)
    temperature: float = 0.07
    sigma: float = 0.0
    class_word: str = "name"
    prompts: str = "paper"
    window_attention: str = "window"

    def validate(self) -> None:
        if not self.scales or any(s < 1 for s in self.scales):
            raise ValueError(f"scales must be positive window sizes, got {self.scales}")
        for value, allowed, name in ((self.class_word, ("name", "object"), "class_word"),
                                     (self.prompts, tuple(PROMPT_SETS), "prompts"),
                                     (self.window_attention, WINDOW_ATTENTIONS, "window_attention")):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def relevant_fields(self) -> Set[str]:
        return {f.name for f in dataclasses.fields(self)}


def window_indices(grid: int, size: int) -> torch.Tensor:
    """[W, size²] patch indices of every size×size window of a grid×grid patch grid (stride 1),
    windows and the patches inside each in row-major order."""
    if size > grid:
        raise ValueError(f"a window of {size} patches does not fit the {grid}x{grid} patch grid")
    rows = torch.arange(grid - size + 1)
    starts = (rows[:, None] * grid + rows[None, :]).flatten()
    offsets = (torch.arange(size)[:, None] * grid + torch.arange(size)[None, :]).flatten()
    return starts[:, None] + offsets[None, :]


def harmonic_aggregation(scores: torch.Tensor, windows: torch.Tensor, patches: int) -> torch.Tensor:
    """[N, W] window scores → [N, P] patch scores: the harmonic mean of the windows covering
    each patch (``windows`` [W, s²] their patch indices). A zero score (a window equal to a
    reference, in WinCLIP+) makes its patches 0; a patch no window covers is 0."""
    cover = torch.zeros(patches, windows.shape[0], dtype=torch.bool, device=scores.device)
    cover[windows.T.to(scores.device), torch.arange(windows.shape[0], device=scores.device)] = True
    inverse = torch.where(cover, (1 / scores)[:, None, :], 0).sum(-1)  # [N, P]
    return (cover.sum(1) / inverse).nan_to_num(nan=0.0, posinf=0.0)


class WinClip(WordTextModel):
    """WinCLIP's zero-shot model on a frozen CLIP; nothing to train."""

    def __init__(self, backbone: ClipBackbone, config: WinClipConfig, method: str, score_rule: ScoreRule):
        super().__init__()
        config.validate()
        visual = backbone.clip.visual
        if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "attn_pool", None) is not None:
            raise ValueError("WinCLIP pools the CLS token: this open_clip model pools otherwise")
        self.backbone, self.config, self.method, self.score_rule = backbone, config, method, score_rule
        self.windows = {s: window_indices(backbone.grid_size, s) for s in config.scales}
        # per state set the mean of its prompts' unnormalised features
        self.ensemble = PromptEnsemble(NORMAL_STATES, ABNORMAL_STATES, PROMPT_SETS[config.prompts], normalise=False)

    # ------------------------------------------------------------------ text
    def text_features(self, word: str) -> torch.Tensor:
        """[2, D] the (normal, abnormal) ensemble features of ``word``."""
        return self.ensemble.pair(self.backbone, word)

    # ------------------------------------------------------------------ image
    def _encode_tokens(self, tokens: torch.Tensor, across: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """[B, L, C] embedded tokens (CLS first) → [B, D] pooled, projected features and the
        [B, L − 1, C] output tokens (after ``ln_post``). ``across``: the sequences go in
        token-major, as anomalib passes them, so each token position attends across the B
        sequences instead of within its own."""
        visual = self.backbone.clip.visual
        if across:
            encoded = visual.transformer(tokens.permute(1, 0, 2)).permute(1, 0, 2)
        else:
            encoded = visual.transformer(tokens)
        pooled, out = visual._pool(encoded)
        return (pooled @ visual.proj if visual.proj is not None else pooled), out

    def _window_features(self, tokens: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """[N, 1 + P, C] embedded image tokens → [N, W, D] features of its windows."""
        n = tokens.shape[0]
        index = torch.cat([torch.zeros(len(windows), 1, dtype=torch.long), windows + 1], dim=1).to(tokens.device)
        chosen = tokens[:, index]  # [N, W, 1 + s², C]
        if self.config.window_attention == "window":
            return self._encode_tokens(chosen.flatten(0, 1))[0].view(n, len(windows), -1)
        # anomalib's order (window-major), passed token-major to a batch-first transformer
        pooled, _ = self._encode_tokens(chosen.transpose(0, 1).flatten(0, 1), across=True)
        return pooled.view(len(windows), n, -1).transpose(0, 1)

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The image's CLS feature (``cls`` [N, D]), its output patch tokens (``tokens``
        [N, P, C]) and each scale's window features (``windows`` {scale: [N, W, D]})."""
        visual = self.backbone.clip.visual
        with self.backbone.autocast():
            tokens = visual._embeds(images.to(visual.conv1.weight.dtype))
            cls, out = self._encode_tokens(tokens)
            windows = {s: self._window_features(tokens, w).float() for s, w in self.windows.items()}
        return ImageFeatures(cls=cls.float(), cls_raw=cls[:, :0].float(), windows=windows, tokens=out.float())

    # ------------------------------------------------------------------ scores
    def _probability(self, features: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """[N, ..., D] features, [N, 2, D] text pairs → [N, ...] softmax probability of abnormal."""
        cos = torch.einsum("n...d,ncd->n...c", F.normalize(features, dim=-1), F.normalize(pairs, dim=-1))
        return (cos / self.config.temperature).softmax(-1)[..., 1]

    def scale_scores(self, feats: ImageFeatures, pairs: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The image score [N] and each scale's patch scores [N, P] (harmonic over windows)."""
        patches = self.backbone.grid_size ** 2
        image = self._probability(feats.cls, pairs)
        return image, [harmonic_aggregation(self._probability(feats.windows[s], pairs), w, patches)
                       for s, w in self.windows.items()]

    def text_inputs(self, class_names: Sequence[str]) -> TextInputs:
        """The ensemble pairs [N, 2, D] of the images' words (an exported graph's input)."""
        words = prompt_words(class_names, self.config.class_word)
        return TextInputs({"pairs": self.ensemble.pairs(self.backbone, words).float()})

    def predict_pairs(self, images: Optional[torch.Tensor], pairs: torch.Tensor,
                      features: Optional[ImageFeatures] = None) -> Prediction:
        """The zero-shot prediction against text pairs [N, 2, D]."""
        feats = features if features is not None else self.encode_images(images)
        image, scales = self.scale_scores(feats, pairs)
        stacked = torch.stack([image[:, None].expand_as(scales[0]), *scales])  # [1 + scales, N, P]
        grid = stacked.shape[0] / (1 / stacked).sum(0)  # harmonic mean over the scales
        side, size = self.backbone.grid_size, self.backbone.image_size
        maps = F.interpolate(grid.view(-1, 1, side, side), size=(size, size), mode="bilinear", align_corners=False)
        return Prediction(maps[:, 0], image, grid.amax(1))

    # ------------------------------------------------------------------ WinCLIP+
    def fewshot_tokens(self, images: Optional[torch.Tensor],
                       features: Optional[ImageFeatures] = None) -> List[Tuple[torch.Tensor, bool]]:
        """WinCLIP+'s memory entries: the output patch tokens, then each scale's window features
        (upsampled as the zero-shot map is, ``align_corners`` False)."""
        feats = features if features is not None else self.encode_images(images)
        return [(feats.tokens, False)] + [(feats.windows[s], False) for s in self.windows]

    def fewshot_grid(self, entry: int, distances: torch.Tensor) -> torch.Tensor:
        """Patch distances as they are; a scale's window distances onto the patches by the same
        harmonic aggregation as the zero-shot window scores."""
        if entry == 0:
            return distances
        return harmonic_aggregation(distances, list(self.windows.values())[entry - 1], self.backbone.grid_size ** 2)
