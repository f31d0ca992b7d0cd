"""AdaCLIP (ECCV 2024): hybrid learnable prompts in both towers (docs/methods/adaclip.md).

Prompts. n learned tokens per block of the first J blocks (``prompting_depth``) of each tower
(``prompting_branch``: V image, L text), each the sum of a static token (``S``) and a dynamic one
(``D``) made from the image: one linear map per token position of the unprompted tower's global
feature ``ln_post(CLS) @ proj`` (separate maps for the two towers). Both are rounded through
float16 before they enter a tower, as the official code does.

* Image tower: the tokens are appended after the patch tokens at the input of block 1, replaced
  at the input of blocks 2..J and carried unchanged after that; they are never read out.
* Text tower: blocks 2..J see the tokens at positions 1..n (overwriting the words there);
  block 1 sees the plain sentence.

Text: APRIL-GAN's states (7 normal, 5 abnormal) in 4 templates; each prompt normalised, the mean
normalised: per image a pair T [D, 2] (per image because the dynamic text tokens are).

Image side: the prompted tower's raw tokens of ``features_list`` (CLS and prompt tokens removed)
go through one linear map per block (vision width → D) and are normalised; the prompted global
feature through a linear map (D → D), normalised. Logits are 100 · tokens · T per block.

* Map: the blocks' logits, each upsampled bilinearly (``align_corners=True``), averaged; the
  softmax; (p_abnormal + 1 − p_normal) / 2; blurred with σ 4 at test time.
* Image score, with hybrid semantic fusion (HSF): the 5k patches most abnormal by the softmax of
  the blocks' mean logits are clustered (k-means, k clusters, scikit-learn as the official code,
  seeded here) on their concatenated block tokens; the mean over clusters of each cluster's
  mean token (all blocks) is normalised and mixed 0.2 : 0.8 with the global feature; the
  abnormal softmax entry of 100 · feature · T.
* Training: focal loss on the image probabilities plus, per block, focal loss on its two-channel
  map and dice losses on both channels (abnormal against the mask, normal against its inverse).

Reference: caoyunkang/AdaCLIP (golden fixtures: tools/golden/harness_adaclip.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datasets.names import prompt_words
from models.april_gan import ABNORMAL_STATES, NORMAL_STATES
from models.backbone import ClipBackbone, ImageFeatures
from models.interface import AnomalyModel
from models.losses import BatchSplit, dice_loss, focal_loss
from models.scoring import Prediction, ScoreRule

def kmeans_seed(seed: int, position: int) -> int:
    """The seed of HSF's k-means for the image at ``position`` of a test run."""
    return (seed * 1_000_003 + position) % 2 ** 32


TEMPLATES = ("a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
             "a cropped photo of the {}.")


@dataclass
class AdaClipConfig:
    """AdaCLIP's settings (official flag names).

    features_list: 1-based blocks whose prompted tokens make the maps.
    prompting_depth: J, the blocks of each tower that get prompt tokens.
    prompting_length: n, prompt tokens per block.
    prompting_type: "S" static, "D" dynamic (from the image), "SD" their sum.
    prompting_branch: "V" image tower, "L" text tower, "VL" both.
    use_hsf: hybrid semantic fusion of the most abnormal patches into the image score.
    k_clusters: k of HSF's k-means (5k patches are clustered).
    prompt_fp16: round the prompts through float16 (the official code's ``.half()``).
    class_word: "raw" (the class name as meta.json has it, "-" as a space, as the official code).
    sigma: test-time blur of the map.
    seed: seed of HSF's k-means initialisations (restarted at each evaluation).
    row_dice: official: a batch of one image loses its batch axis in the official trainer, so its
        dice losses average over the image's rows (on for ``--compat official``; our dice is
        per image, as it is there for larger batches).
    """

    features_list: Tuple[int, ...] = (6, 12, 18, 24)
    prompting_depth: int = 4
    prompting_length: int = 5
    prompting_type: str = "SD"
    prompting_branch: str = "VL"
    use_hsf: bool = True
    k_clusters: int = 20
    prompt_fp16: bool = True
    class_word: str = "raw"
    sigma: float = 4.0
    seed: int = 111
    row_dice: bool = False

    def validate(self) -> None:
        if not self.features_list:
            raise ValueError("features_list needs at least one layer")
        if self.prompting_type not in ("S", "D", "SD"):
            raise ValueError(f"prompting_type must be S, D or SD, got {self.prompting_type!r}")
        if self.prompting_branch not in ("V", "L", "VL"):
            raise ValueError(f"prompting_branch must be V, L or VL, got {self.prompting_branch!r}")
        for name in ("prompting_depth", "prompting_length", "k_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.class_word not in ("raw", "name", "object"):
            raise ValueError(f"class_word must be 'raw', 'name' or 'object', got {self.class_word!r}")

    def relevant_fields(self) -> Set[str]:
        fields = {f.name for f in dataclasses.fields(self)}
        return fields if self.use_hsf else fields - {"k_clusters", "seed"}


class TowerPrompts(nn.Module):
    """One tower's prompt tokens: static [J, n, W] and a linear map per token position that makes
    the dynamic ones from the global image feature."""

    def __init__(self, width: int, embed: int, depth: int, length: int, kind: str):
        super().__init__()
        self.depth = depth
        self.static = nn.Parameter(torch.empty(depth, length, width).normal_(std=0.02)) if "S" in kind else None
        self.dynamic = nn.ModuleList([nn.Linear(embed, width) for _ in range(length)]) if "D" in kind else None

    def forward(self, image_feature: torch.Tensor) -> List[torch.Tensor]:
        """Per prompted block the tokens [N, n, W] of N images (global features [N, D])."""
        n = image_feature.shape[0]
        dynamic = None if self.dynamic is None else torch.stack([m(image_feature) for m in self.dynamic], dim=1)
        if self.static is None:
            return [dynamic] * self.depth
        static = self.static.unsqueeze(1).expand(-1, n, -1, -1)
        return [s if dynamic is None else dynamic + s for s in static]


@dataclass
class AdaClipOutput:
    """A training pass: per block the two-channel maps [N, 2, S, S] and the image probabilities [N, 2]."""

    layer_probs: List[torch.Tensor]
    image_probs: torch.Tensor


class AdaClip(AnomalyModel):
    """Frozen CLIP with AdaCLIP's prompts in both towers, its projections and HSF."""

    def __init__(self, backbone: ClipBackbone, config: AdaClipConfig, method: str, score_rule: ScoreRule):
        super().__init__()
        config.validate()
        backbone.check_layers(config.features_list)
        depth = config.prompting_depth
        if depth > min(backbone.num_layers, backbone.text_layers):
            raise ValueError(f"prompting_depth {depth} exceeds the towers' blocks")
        self.backbone, self.config, self.method, self.score_rule = backbone, config, method, score_rule
        width, embed, length, kind = backbone.vision_width, backbone.embed_dim, config.prompting_length, \
            config.prompting_type
        self.visual_prompts = TowerPrompts(width, embed, depth, length, kind) \
            if "V" in config.prompting_branch else None
        self.text_prompts = TowerPrompts(backbone.text_width, embed, depth, length, kind) \
            if "L" in config.prompting_branch else None
        self.patch_proj = nn.ModuleList([nn.Linear(width, embed) for _ in config.features_list])
        self.cls_proj = nn.Linear(embed, embed)
        self._tokens: Dict[Tuple[str, str], Tuple[torch.Tensor, torch.Tensor]] = {}
        self._fixed_text: Dict[Tuple[str, str], torch.Tensor] = {}
        self._kmeans_rng = np.random.RandomState(config.seed)  # training: one stream, in checkpoints
        self._eval_seed, self._position = config.seed, 0  # testing: a seed per dataset position

    # ------------------------------------------------------------------ text
    def _prompt_tokens(self, word: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(word embeddings [S, L, W], EOT positions [S]) of the word's sentences, normal then abnormal."""
        key = (word, str(self.backbone.device))
        if key not in self._tokens:
            word = word.replace("-", " ")
            sentences = [t.format(s.format(word)) for states in (NORMAL_STATES, ABNORMAL_STATES)
                         for s in states for t in TEMPLATES]
            ids = self.backbone.tokenize(sentences)
            with torch.no_grad():
                self._tokens[key] = (self.backbone.token_embedding(ids), ids.argmax(dim=-1))
        return self._tokens[key]

    def _pair(self, features: torch.Tensor) -> torch.Tensor:
        """[S, D] sentence features → [D, 2]: per state set the normalised mean of the normalised features."""
        features = F.normalize(features, dim=-1)
        normal = len(NORMAL_STATES) * len(TEMPLATES)
        pair = [F.normalize(features[:normal].mean(0), dim=-1), F.normalize(features[normal:].mean(0), dim=-1)]
        return torch.stack(pair, dim=1)

    def text_features(self, class_names: Sequence[str], plain_cls: torch.Tensor) -> torch.Tensor:
        """[N, D, 2] each image's text pair; with text prompts, made with the image's own tokens."""
        words = prompt_words(class_names, self.config.class_word)
        if self.text_prompts is None:
            pairs = []
            for word in words:
                key = (word, str(self.backbone.device))
                if key not in self._fixed_text:
                    embeddings, eot = self._prompt_tokens(word)
                    with torch.no_grad():
                        self._fixed_text[key] = self._pair(self.backbone.encode_text_embeddings(embeddings, eot))
                pairs.append(self._fixed_text[key])
            return torch.stack(pairs)
        per_block = self.text_prompts(plain_cls.float())[1:]  # block 1 sees the plain sentence
        dtype = torch.float16 if self.config.prompt_fp16 else None
        pairs = []
        for i, word in enumerate(words):
            embeddings, eot = self._prompt_tokens(word)
            deep = [tokens[i:i + 1].expand(embeddings.shape[0], -1, -1) for tokens in per_block]
            pairs.append(self._pair(self.backbone.encode_text_embeddings(embeddings, eot, deep_prompts=deep,
                                                                         deep_prompt_dtype=dtype)))
        return torch.stack(pairs)

    # ------------------------------------------------------------------ image
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The unprompted pass (its global feature makes the dynamic prompts), then the prompted
        one: its global feature and raw tokens of ``features_list``."""
        layers = self.config.features_list
        if self.visual_prompts is None:  # a prompt-free tower: the one pass is both
            feats = self.backbone.encode_image(images, layers=layers)
            return ImageFeatures(cls=feats.cls, cls_raw=feats.cls[:, :0], patch_raw=feats.patch_raw,
                                 cls_plain=feats.cls)
        plain = self.backbone.encode_image(images).cls
        dtype = torch.float16 if self.config.prompt_fp16 else None
        feats = self.backbone.encode_image_prompted(images, layers, self.visual_prompts(plain.float()), dtype)
        feats.cls_plain = plain
        return feats

    def projected(self, feats: ImageFeatures) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(normalised projected global feature [N, D], per block normalised projected tokens [N, P, D])."""
        tokens = [F.normalize(proj(feats.patch_raw[layer].float()), dim=-1)
                  for proj, layer in zip(self.patch_proj, self.config.features_list)]
        return F.normalize(self.cls_proj(feats.cls.float()), dim=-1), tokens

    def hybrid_fusion(self, tokens: List[torch.Tensor], logits: List[torch.Tensor]) -> torch.Tensor:
        """HSF: [N, D] the normalised mean over k-means clusters of the 5k most abnormal patches'
        cluster means (all blocks' tokens of a cluster averaged)."""
        from sklearn.cluster import KMeans

        abnormal = torch.stack(logits).mean(0).softmax(-1)[..., 1]  # [N, P]
        k = min(abnormal.shape[1], 5 * self.config.k_clusters)
        index = abnormal.topk(k, dim=1).indices
        chosen = [t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) for t in tokens]  # [N, k, D] each
        stacked = torch.cat(chosen, dim=2)
        centres = []
        for b in range(stacked.shape[0]):
            clusters = min(self.config.k_clusters, k)  # a small test model has fewer patches than 5k
            if self.training:
                rng = self._kmeans_rng
            else:  # an image's clusters depend on its dataset position alone: any batch, any process
                rng, self._position = np.random.RandomState(kmeans_seed(self._eval_seed, self._position)), \
                    self._position + 1
            labels = KMeans(n_clusters=clusters, n_init="auto", random_state=rng) \
                .fit_predict(stacked[b].detach().cpu().numpy())
            onehot = F.one_hot(torch.as_tensor(labels, device=stacked.device).long(), clusters)
            onehot = onehot.to(stacked.dtype)
            sums = onehot.T @ sum(c[b] for c in chosen)  # [k_clusters, D]
            counts = onehot.sum(0)[:, None] * len(chosen)
            filled = counts[:, 0] > 0  # k-means leaves a cluster empty only on repeated points
            centres.append((sums[filled] / counts[filled]).mean(0))
        return F.normalize(torch.stack(centres), dim=1)

    def scores(self, feats: ImageFeatures, class_names: Sequence[str]):
        """(per block the logits [N, P, 2], the image probabilities [N, 2])."""
        # a prompt-free tower's one pass is the plain one (a feature cache does not keep cls_plain)
        text = self.text_features(class_names, feats.cls if feats.cls_plain is None else feats.cls_plain)
        cls, tokens = self.projected(feats)
        logits = [100.0 * t @ text for t in tokens]
        image = cls
        if self.config.use_hsf:
            image = F.normalize(0.2 * self.hybrid_fusion(tokens, logits) + 0.8 * cls, dim=1)
        probs = (100.0 * image.unsqueeze(1) @ text).squeeze(1).softmax(1)
        return logits, probs

    def _upsample(self, logits: torch.Tensor) -> torch.Tensor:
        side, size = self.backbone.grid_size, self.backbone.image_size
        grid = logits.transpose(1, 2).reshape(-1, 2, side, side)
        return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=True)

    def random_state(self) -> Dict[str, Any]:
        """HSF's k-means generator, for a checkpoint (a resumed run clusters as the interrupted one)."""
        _, keys, position, has_gauss, gauss = self._kmeans_rng.get_state()
        return {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                "has_gauss": int(has_gauss), "gauss": float(gauss)}

    def set_random_state(self, state: Dict[str, Any]) -> None:
        self._kmeans_rng.set_state(("MT19937", state["keys"].numpy().astype(np.uint32), state["position"],
                                    state["has_gauss"], state["gauss"]))

    # ------------------------------------------------------------------ test time
    def start_evaluation(self, seed: Optional[int] = None, sample_num: Optional[int] = None) -> None:
        """HSF's k-means at test time: image i of the run (in dataset order) clusters from
        ``kmeans_seed(seed, i)``, so its score depends on nothing that ran before or beside it."""
        self._eval_seed, self._position = self.config.seed if seed is None else seed, 0

    def skip_noise(self, images: int) -> None:
        """Another process scores the next ``images`` images (torchrun): their positions are skipped."""
        self._position += images

    def predict(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None) -> Prediction:
        """Map (p_abnormal + 1 − p_normal) / 2 of the blocks' mean upsampled logits; image
        probability from the (fused) global feature."""
        feats = features if features is not None else self.encode_images(images)
        logits, probs = self.scores(feats, class_names)
        mean = torch.stack([self._upsample(x) for x in logits]).mean(0).softmax(1)
        maps = (mean[:, 1] + 1 - mean[:, 0]) / 2
        return Prediction(maps, probs[:, 1], maps.flatten(1).amax(1))

    def fewshot_tokens(self, images: Optional[torch.Tensor],
                       features: Optional[ImageFeatures] = None) -> List[Tuple[torch.Tensor, bool]]:
        """The prompted tower's raw tokens of ``features_list``, upsampled with ``align_corners`` True."""
        feats = features if features is not None else self.encode_images(images)
        return [(feats.patch_raw[layer], True) for layer in self.config.features_list]

    # ------------------------------------------------------------------ training
    def forward(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None, split: Optional[BatchSplit] = None) -> AdaClipOutput:
        feats = features if features is not None else self.encode_images(images)
        logits, probs = self.scores(feats, class_names)
        return AdaClipOutput([self._upsample(x).softmax(1) for x in logits], probs)

    def loss(self, out: AdaClipOutput, masks: torch.Tensor, labels: torch.Tensor,
             split: Optional[BatchSplit] = None) -> Dict[str, torch.Tensor]:
        """focal(image probabilities) + Σ over blocks of focal(map) + dice(abnormal, mask) +
        dice(normal, 1 − mask)."""
        masks = (masks > 0.5).float()
        labels = (labels > 0.5).float()
        image = focal_loss(out.image_probs[:, :, None, None], labels[:, None, None])
        focal = sum(focal_loss(p, masks) for p in out.layer_probs)
        rows = self.config.row_dice and masks.shape[0] == 1  # [H, W]: each row a sample

        def dice_of(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return dice_loss(pred[0], target[0]) if rows else dice_loss(pred, target)

        dice = sum(dice_of(p[:, 1], masks) + dice_of(p[:, 0], 1 - masks) for p in out.layer_probs)
        return {"image": image, "focal": focal, "dice": dice, "total": image + focal + dice}

    def param_groups(self, lr: Dict[str, float]) -> List[dict]:
        params = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("backbone.")]
        return [{"name": "all", "params": params, "lr": lr["all"]}]
