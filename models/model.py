"""The one model: a frozen CLIP and the parts its configuration selects (docs/methods/fapfl.md).

FAPrompt, Bayes-PFL, AnomalyCLIP and the combined model are presets of :class:`ZSADModel`
(their registry entries in ``models/methods/``); the parts live in their own modules: CAP and DAP in ``cap.py``, the
prompt bank in ``bank.py``, the prompt flows in ``flows.py``, the similarity, RCA and image heads
in ``heads.py``, the losses in ``losses.py`` and test-time scoring in ``scoring.py``. This file
only wires them:

1. one image pass (``encode_images``);
2. with DAP, a first pass: the prompts without flow noise and without the prior are scored, and
   the most abnormal grid patches give the prior β;
3. the flows are sampled (R = 1 in training, ``sample_num`` at test) and the final text pairs
   encoded with the samples and β; in training a bank draws one pair;
4. the heads score the pairs: pixel maps (averaged over pairs, layers and heads) and image logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from datasets.names import prompt_words
from models.backbone import ClipBackbone, ImageFeatures, default_vv_start
from models.bank import PromptBank
from models.cap import CompoundPrompts, PriorNet
from models.config import ModelConfig
from models.interface import AnomalyModel
from models.flows import FlowNoise, FlowSamples, PromptFlows
from models.heads import ImageHead, RCAHead, similarity_probs, upsample_grid
from models.losses import (BatchSplit, balanced_focal_loss, bank_orthogonality, batch_total, binary_focal_loss,
                           cap_orthogonality, dice_loss, focal_loss)
from models.scoring import Prediction, ScoreRule, pair_class_prob
from models.text_inputs import TextInputs


@dataclass
class PassOutput:
    """One pass of the pixel heads over text pairs [N, 2, M, D] (S: image size, P: patches).

    similarity_grids: per similarity layer [N, P, 2] probabilities, averaged over the pairs.
    similarity_maps:  the same upsampled, [N, 2, S, S].
    rca_diffs:        per RCA layer [N, M, S, S] upsampled abnormal − normal logits.
    grid:             [N, P] abnormal probability averaged over heads, layers and pairs.
    map:              [N, S, S] (a + 1 − n)/2, reduced over layers, averaged over pairs and heads.
    """

    pairs: torch.Tensor
    grid: torch.Tensor
    map: torch.Tensor
    similarity_grids: List[torch.Tensor] = field(default_factory=list)
    similarity_maps: List[torch.Tensor] = field(default_factory=list)
    rca_diffs: List[torch.Tensor] = field(default_factory=list)


@dataclass
class ModelOutput:
    """One forward pass. ``text``: the final pass's pairs before a training bank pair is drawn
    (``pair``); ``cap_features``: the K abnormal features for CAP's orthogonality loss."""

    first: Optional[PassOutput]
    final: PassOutput
    text: torch.Tensor
    class_logits: torch.Tensor  # [N, 2, M] of the scored pairs
    cap_features: Optional[torch.Tensor] = None
    prior: Optional[torch.Tensor] = None  # [N, W]
    selected: Optional[torch.Tensor] = None  # [N, k] grid indices read by DAP
    kl: Dict[str, torch.Tensor] = field(default_factory=dict)
    pair: Optional[int] = None

    @property
    def class_prob(self) -> torch.Tensor:
        return pair_class_prob(self.class_logits)

    @property
    def anomaly_map(self) -> torch.Tensor:
        """[N, S, S] the mean over the passes (before the test-time blur)."""
        return self.final.map if self.first is None else (self.first.map + self.final.map) / 2

    @property
    def map_score(self) -> Optional[torch.Tensor]:
        """FAPrompt's (2·max a_first + max a_final) / 3 over the grid (with DAP only)."""
        if self.first is None:
            return None
        return (2 * self.first.grid.amax(1) + self.final.grid.amax(1)) / 3

    @property
    def fused_score(self) -> Optional[torch.Tensor]:
        return None if self.first is None else 0.5 * (self.class_prob + self.map_score)


class ZSADModel(AnomalyModel):
    """Frozen CLIP + the parts of ``config``; ``method`` is the preset's name (for checkpoints),
    ``score_rule`` its test-time score rule (``models.methods``)."""

    def __init__(self, backbone: ClipBackbone, config: ModelConfig, method: str, score_rule: ScoreRule):
        super().__init__()
        config.validate()
        if score_rule.map_score == "dap_maxima" and not config.dap:
            raise ValueError("the dap_maxima map score needs the DAP first pass (dap on)")
        if score_rule.map_score == "grid_max":
            raise ValueError("the grid_max map score is the baseline's; use dap_maxima or topk")
        cfg, self.method, self.score_rule = config, method, score_rule
        if cfg.prompt_structure == "cap" and cfg.depth - 1 >= backbone.text_layers:
            raise ValueError(f"--depth {cfg.depth} needs more than {backbone.text_layers} text layers")
        needs_layers = cfg.uses_rca or cfg.two_stage or (cfg.uses_similarity and cfg.similarity_layers == "features")
        if needs_layers:
            backbone.check_layers(cfg.features_list)
        self.backbone, self.config = backbone, cfg
        e, c, w = backbone.embed_dim, backbone.vision_width, backbone.text_width
        n_layers = len(cfg.features_list)
        if cfg.prompt_structure == "cap":
            self.prompts = CompoundPrompts(w, cfg.abnormal_prompts, cfg.normal_ctx, cfg.abnormal_ctx, cfg.depth,
                                           cfg.t_n_ctx, cfg.share_normal_context, cfg.deep_prompt_fp16)
        else:
            self.bank = PromptBank(w, cfg.prompt_num, cfg.prompt_context_len, cfg.prompt_state_len)
        if cfg.dap:
            self.dap = PriorNet(e, w, cfg.dap_k)
        if cfg.flows != "none":
            self.flows = PromptFlows(cfg.flows, e, c // 2, w, cfg.num_flows)
        if cfg.uses_rca:
            self.rca = RCAHead(c, e, n_layers, cfg.rca_heads)
        self.image_head = ImageHead(cfg.image_head, e, c, n_layers, cfg.temperature)
        if cfg.two_stage:
            self.register_buffer("stage", torch.tensor(1), persistent=True)
        self.vv_start = cfg.vv_start or default_vv_start(backbone.num_layers)
        self.noise: Optional[FlowNoise] = None

    # ------------------------------------------------------------------ settings
    @property
    def two_stage(self) -> bool:
        return self.config.two_stage

    def _stage(self) -> int:
        return int(self.stage) if self.two_stage else 1

    def set_stage(self, stage: int) -> None:
        if not self.two_stage or stage not in (1, 2):
            raise ValueError("only the class_mapping image head has stages 1 and 2")
        self.stage.fill_(stage)

    def start_evaluation(self, seed: Optional[int] = None, sample_num: Optional[int] = None) -> None:
        """Reset the seeded test-time flow noise (``seed`` and R = ``sample_num``, else the
        configuration's); call once before the first test batch."""
        cfg = self.config
        self.noise = None if cfg.flows == "none" else FlowNoise(
            cfg.seed if seed is None else seed, cfg.sample_num if sample_num is None else sample_num,
            self.backbone.text_width, cfg.official_noise)

    def skip_noise(self, images: int) -> None:
        if self.noise is not None and images > 0:
            self.noise.draw(images, "cpu")

    # ------------------------------------------------------------------ image side
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The one backbone pass with exactly the image tensors this model reads."""
        cfg = self.config
        similarity = cfg.uses_similarity
        layers = cfg.features_list if (cfg.uses_rca or cfg.two_stage) else ()
        vv_layers = cfg.features_list if (similarity and cfg.similarity_layers == "features"
                                          and not cfg.vv_aliased) else ()
        feats = self.backbone.encode_image(images, layers=layers, vv_start=self.vv_start if similarity else None,
                                           vv_layers=vv_layers)
        # unread fields are emptied ([B, 0] keeps the batch size): a feature cache stores the rest
        empty, last = feats.cls[:, :0], cfg.features_list[-1]
        reads_cls = cfg.flows != "none" or cfg.image_head == "class_mapping"
        return ImageFeatures(
            cls=feats.cls if reads_cls else empty, cls_raw=feats.cls_raw if cfg.image_head == "fixed" else empty,
            patch_raw=feats.patch_raw, patch_proj={last: feats.patch_proj[last]} if cfg.dap and not similarity else {},
            vv_proj=feats.vv_proj if similarity and (cfg.similarity_layers == "final" or cfg.vv_aliased or cfg.dap)
            else None,
            vv_layers=feats.vv_layers)

    def _similarity_patches(self, feats: ImageFeatures) -> List[torch.Tensor]:
        """Normalised patch features of each similarity layer: the final V-V tokens (FAPrompt),
        those of every listed layer (AnomalyCLIP), or — as AnomalyCLIP's code did before
        April 2025 — the final V-V tokens once per listed layer."""
        cfg = self.config
        if cfg.similarity_layers == "final":
            return [F.normalize(feats.vv_proj, dim=-1)]
        if cfg.vv_aliased:
            return [F.normalize(feats.vv_proj, dim=-1)] * len(cfg.features_list)
        return [F.normalize(feats.vv_layers[layer], dim=-1) for layer in cfg.features_list]

    def _dap_patches(self, feats: ImageFeatures) -> torch.Tensor:
        """The patch features the DAP meta-net reads: the V-V ones when that path runs, else the
        deepest selected layer's."""
        if self.config.uses_similarity:
            return F.normalize(feats.vv_proj, dim=-1)
        return F.normalize(feats.patch_proj[self.config.features_list[-1]], dim=-1)

    def fewshot_tokens(self, images: Optional[torch.Tensor],
                       features: Optional[ImageFeatures] = None) -> List[Tuple[torch.Tensor, bool]]:
        """Tokens of few-shot memory banks (``engine.fewshot``), one entry per layer the active
        pixel heads read, each (patch tokens [N, P, ·], ``align_corners`` of that head's
        upsampling); from ``features`` (of ``encode_images``) when given, so a test batch runs
        the image tower once.

        Similarity head: the V-V tokens it compares with text (FAPrompt's final ones, AnomalyCLIP's
        per listed layer; aliased layers are one entry, as they are one tensor). RCA head: the raw
        block outputs of ``features_list``, before the RCA projection, which was trained to meet
        text while the bank compares images with images (as APRIL-GAN keeps raw tokens)."""
        cfg = self.config
        feats = features if features is not None else self.encode_images(images)
        entries: List[Tuple[torch.Tensor, bool]] = []
        if cfg.uses_similarity:
            patches = self._similarity_patches(feats)
            entries += [(p, False) for p in (patches[:1] if cfg.vv_aliased else patches)]
        if cfg.uses_rca:
            entries += [(feats.patch_raw[layer], True) for layer in cfg.features_list]
        return entries

    # ------------------------------------------------------------------ text side
    def words(self, class_names: Sequence[str]) -> List[str]:
        return prompt_words(class_names, self.config.class_word)

    def _flow_samples(self, feats: ImageFeatures, zero_noise: bool, split: Optional[BatchSplit] = None,
                      given: Optional[tuple] = None) -> Optional[FlowSamples]:
        """The flows' samples; ``given``: the test-time noise (context, normal, abnormal) as
        inputs (an exported graph) instead of the seeded stream."""
        if self.config.flows == "none":
            return None
        n, device = feats.cls.shape[0], self.backbone.device
        if given is not None and not zero_noise:
            eps = given
        elif zero_noise:
            width = self.backbone.text_width
            eps = (torch.zeros(n, 1, width, device=device), torch.zeros(1, width, device=device),
                   torch.zeros(1, width, device=device))
        elif self.training:
            eps = self.flows.training_noise(n, device, split)
        else:
            if self.noise is None:
                self.start_evaluation()
            eps = self.noise.draw(n, device)
        with_kl = self.training and not zero_noise
        return self.flows(feats.cls, eps, with_kl, self.config.official_state_kl, split)

    @property
    def text_depends_on_image(self) -> bool:
        """DAP's prior or the flows' samples enter the prompts: the text encoder runs per image."""
        return self.config.dap or self.config.flows != "none"

    def text_inputs(self, class_names: Sequence[str]) -> TextInputs:
        """The word-dependent text inputs of N images (``models.text_inputs``): the finished pairs
        [N, 2, M, D] when no text depends on the image, else the prompt templates."""
        words = self.words(class_names)
        if not self.text_depends_on_image:
            with torch.no_grad():
                return TextInputs({"pairs": self._text(words, None, None)[0]})
        extra = {}
        if self.config.prompt_structure == "cap":
            parts = {part: self.prompts.templates(self.backbone, words, part == "abnormal")
                     for part in ("normal", "abnormal")}
            if self.config.flows == "none":  # DAP alone: the first pass's prompts depend on the word only
                with torch.no_grad():
                    normal, abnormal = self.prompts.static_features(self.backbone, words)
                index = torch.tensor([sorted(set(words)).index(w) for w in words], device=normal.device)
                extra = {"static_normal": normal[index], "static_abnormal": abnormal[index]}
        else:
            parts = {"bank": self.bank.templates(self.backbone, words)}
        return TextInputs({**{f"{part}_{kind}": value for part, pair in parts.items()
                              for kind, value in zip(("template", "eot"), pair)}, **extra})

    def _text(self, words, samples: Optional[FlowSamples], prior: Optional[torch.Tensor]):
        """Text pairs [N, 2, M, D] and, for CAP, the K abnormal features; ``words``: the N
        prompt words, or :class:`TextInputs` in their place."""
        if isinstance(words, TextInputs) and words.pairs is not None:
            return words.pairs, None
        samples = samples or FlowSamples()
        if self.config.prompt_structure == "cap":
            return self.prompts.pairs(self.backbone, words, samples.context, samples.abnormal, prior)
        return self.bank.pairs(self.backbone, words, samples.context, samples.normal, samples.abnormal), None

    # ------------------------------------------------------------------ heads
    def _score(self, feats: ImageFeatures, pairs: torch.Tensor) -> PassOutput:
        cfg, size = self.config, self.backbone.image_size
        grids, maps = [], []
        out = PassOutput(pairs=pairs, grid=None, map=None)
        if cfg.uses_similarity:
            for patches in self._similarity_patches(feats):
                probs = similarity_probs(patches, pairs, cfg.temperature)
                out.similarity_grids.append(probs)
                out.similarity_maps.append(upsample_grid(probs, size, align_corners=False))
            layer_maps = torch.stack([(m[:, 1] + 1 - m[:, 0]) / 2 for m in out.similarity_maps])
            maps.append(layer_maps.sum(0) if cfg.layer_reduce == "sum" else layer_maps.mean(0))
            grids.append(torch.stack([g[..., 1] for g in out.similarity_grids]).mean(0))
        if cfg.uses_rca:
            diffs = self.rca([feats.patch_raw[layer] for layer in cfg.features_list], pairs)
            n, m = pairs.shape[0], pairs.shape[2]
            side = self.backbone.grid_size
            out.rca_diffs = [F.interpolate(d.reshape(n, m, side, side), size=(size, size), mode="bilinear",
                                           align_corners=True) for d in diffs]
            grids.append(torch.stack([torch.sigmoid(d).mean(1) for d in diffs]).mean(0))
            maps.append(torch.stack([torch.sigmoid(d).mean(1) for d in out.rca_diffs]).mean(0))
        out.grid, out.map = torch.stack(grids).mean(0), torch.stack(maps).mean(0)
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None, split: Optional[BatchSplit] = None,
                inputs: Optional[TextInputs] = None) -> ModelOutput:
        """images [N, 3, S, S] (or precomputed ``features`` of them), N raw class names; ``split``
        when the training batch is shared by processes (the flows draw the whole batch's noise);
        ``inputs`` (of :meth:`text_inputs`, with the noise) replace the class names and the noise
        stream (an exported graph)."""
        cfg = self.config
        feats = features if features is not None else self.encode_images(images)
        words = self.words(class_names) if inputs is None else inputs
        noise = None if inputs is None else inputs.noise
        first = prior = selected = cap_features = None
        if cfg.dap:
            pairs, cap_features = self._text(words, self._flow_samples(feats, zero_noise=True), None)
            first = self._score(feats, pairs)
            prior, selected = self.dap(first.grid, self._dap_patches(feats), cfg.dap_select)
        samples = self._flow_samples(feats, zero_noise=False, split=split, given=noise)
        pairs, abnormal_features = self._text(words, samples, prior)
        cap_features = abnormal_features if cap_features is None else cap_features
        pair, scored = None, pairs
        if self.training and cfg.prompt_structure == "bank":
            pair = int(torch.randint(0, cfg.prompt_num, (1,)))
            scored = pairs[:, :, pair:pair + 1]  # R = 1 in training: index r·B + b = b
        logits = self.image_head(feats, scored, cfg.features_list, self._stage())
        if self._stage() == 2:  # stage 2 trains the image path only: the maps need no graph
            with torch.no_grad():
                final = self._score(feats, scored)
        else:
            final = self._score(feats, scored)
        return ModelOutput(first=first, final=final, text=pairs, class_logits=logits, cap_features=cap_features,
                           prior=prior, selected=selected, kl=samples.kl if samples is not None else {}, pair=pair)

    def predict(self, images: torch.Tensor, class_names: Sequence[str],
                features: Optional[ImageFeatures] = None) -> Prediction:
        """Test-time outputs: the map (before the blur), the class probability and the map part of
        the image score (FAPrompt's fused maxima with DAP, else Bayes-PFL's top-k mean)."""
        out = self(images, class_names, features)
        maps = out.anomaly_map
        rule = self.score_rule
        map_score = out.map_score if rule.map_score == "dap_maxima" else rule.topk_scores(maps, class_names)
        return Prediction(maps, out.class_prob, map_score)

    def export_outputs(self, images: torch.Tensor, inputs: TextInputs):
        """What an exported graph computes from images [N, 3, S, S] and :class:`TextInputs`:
        the map [N, S, S] before the blur, the class probability [N] and the map score [N] where
        the graph can compute it (DAP's maxima; zeros for the top-k score, which depends on the
        category and is taken from the map outside the graph)."""
        out = self(images, [], inputs=inputs)
        score = out.map_score if self.score_rule.map_score == "dap_maxima" else torch.zeros_like(out.class_prob)
        return out.anomaly_map, out.class_prob, score

    def noise_settings(self) -> Optional[dict]:
        """The test-time noise stream's settings (an exported graph takes the draws as inputs)."""
        if self.config.flows == "none":
            return None
        cfg = self.config
        return {"seed": cfg.seed, "samples": cfg.sample_num, "width": self.backbone.text_width,
                "official": cfg.official_noise}

    # ------------------------------------------------------------------ training
    def _map_terms(self, out: PassOutput, masks: torch.Tensor, split: Optional[BatchSplit]) -> torch.Tensor:
        total = 0
        for probs in out.similarity_maps:  # FAPrompt's and AnomalyCLIP's map loss
            total = total + focal_loss(probs, masks) + dice_loss(probs[:, 1], masks) + dice_loss(probs[:, 0], 1 - masks)
        for diff in out.rca_diffs:  # Bayes-PFL's, on the pair softmax
            probs = torch.sigmoid(torch.cat([-diff, diff], dim=1))
            total = total + balanced_focal_loss(probs, masks, split=split) + dice_loss(probs[:, 1], masks, 1e-5, False,
                                                                                      split)
        return total

    def loss(self, out: ModelOutput, masks: torch.Tensor, labels: torch.Tensor,
             split: Optional[BatchSplit] = None) -> Dict[str, torch.Tensor]:
        """The active parts' terms (docs/methods/); ``total`` is their sum. Stage 2 trains the
        image cross-entropy alone. ``split``: the batch is shared by processes (pooled totals)."""
        cfg = self.config
        masks, labels = masks.float(), labels.long()
        stage_one = self._stage() == 1
        terms: Dict[str, torch.Tensor] = {}
        if stage_one and out.first is not None:
            terms["map_first"] = cfg.map_loss_weight * self._map_terms(out.first, masks, split)
            terms["map_final"] = 0.5 * cfg.map_loss_weight * self._map_terms(out.final, masks, split)
        elif stage_one:
            terms["map"] = cfg.map_loss_weight * self._map_terms(out.final, masks, split)
        terms["image"] = F.cross_entropy(out.class_logits[:, :, 0], labels)
        if stage_one:
            if out.fused_score is not None:
                terms["fused"] = binary_focal_loss(out.fused_score, labels, from_logits=cfg.fused_focal_logits)
            for name, value in out.kl.items():
                terms[name] = 0.01 * value
            if cfg.prompt_structure == "bank":
                terms["orthogonal"] = bank_orthogonality(out.text[:, 0], out.text[:, 1])
            elif cfg.abnormal_prompts > 1:
                terms["orthogonal"] = 0.1 * cap_orthogonality(out.cap_features) / len(out.cap_features)
            if out.prior is not None:
                terms["prior"] = batch_total(out.prior.pow(2).mean(1) * (labels == 0).float(), split)
        terms["total"] = sum(terms.values())
        return terms

    def learnable_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("backbone.")]

    def param_groups(self, lr: Dict[str, float]) -> List[dict]:
        """Optimiser groups of the current stage. ``lr`` holds "all" (one group, as FAPrompt and
        AnomalyCLIP train) or Bayes-PFL's four rates: "prompt" (prompt vectors and the DAP
        meta-net), "flow" (the flows' transform parameters), "temperature", "linear" (the rest).
        Stage 2 trains ``class_mapping``, ``image_mapping`` and ``fuse`` at the linear rate."""
        if self._stage() == 2:
            params = [p for m in self.image_head.stage_two_modules() for p in m.parameters()]
            return [{"name": "stage2", "params": params, "lr": lr.get("linear", lr.get("all"))}]
        if "all" in lr:
            return [{"name": "all", "params": self.learnable_parameters(), "lr": lr["all"]}]
        prompt = list((self.prompts if self.config.prompt_structure == "cap" else self.bank).parameters())
        prompt += list(self.dap.parameters()) if self.config.dap else []
        flow = self.flows.free_parameters() if self.config.flows != "none" else []
        temperature = [self.rca.log_temperature] if self.config.uses_rca else []
        temperature += [self.image_head.log_temperature] if self.config.image_head == "class_mapping" else []
        special = {id(p) for p in prompt + flow + temperature}
        linear = [p for p in self.learnable_parameters() if id(p) not in special]
        groups = [("prompt", prompt, lr["prompt"]), ("temperature", temperature, lr["temperature"]),
                  ("flow", flow, lr["flow"]), ("linear", linear, lr["linear"])]
        return [{"name": n, "params": p, "lr": rate} for n, p, rate in groups if p]
