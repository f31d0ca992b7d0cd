"""The combined model (SPEC section 6): CAP/DAP prompt learners with prompt flows and heads.

One mechanism with switches; each published method is one setting of it
(:meth:`FAPFLConfig.faprompt_preset`, :meth:`FAPFLConfig.bayes_pfl_preset`) and the
parameter names equal those of the dedicated models, so their weights load unchanged.

Passes. With DAP a first pass (flow noise ε = 0, no prior) scores the static prompts; its
most abnormal grid patches (probabilities averaged over the heads and RCA layers) give the
prior β, and the final pass adds the flow samples and β. Each head's map is the mean over
passes of (a + 1 − n)/2 (FAPrompt's rule; one pass without DAP), averaged over samples, RCA
layers and heads. The image score is FAPrompt's fused score with DAP, else Bayes-PFL's
per-category min-max fusion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import ClipBackbone, ImageFeatures, default_vv_start
from models.bayes_pfl import BayesPFLConfig, FlowNoise, PatchFuse, PromptBank, RCAHead
from models.faprompt import CompoundPrompts, FAPromptConfig, PriorNet, select_patches, upsample_grid
from models.flows import ContextFlow, GaussianEncoder, StateFlow
from models.losses import (balanced_focal_loss, bank_orthogonality, binary_focal_loss, cap_orthogonality,
                           dice_loss, focal_loss)
from models.scoring import Prediction, bayes_map_scores, pair_class_prob

STRUCTURES = ("cap", "bank")
FLOWS = ("none", "context", "context+abnormal", "context+state")
PIXEL_HEADS = ("similarity", "rca", "both")
IMAGE_HEADS = ("fixed", "class_mapping")


@dataclass
class FAPFLConfig:
    """Switches and sizes of the combined model; defaults are SPEC section 6's design card."""

    prompt_structure: str = "cap"
    class_word: str = "name"
    dap: bool = True
    flows: str = "context+abnormal"
    pixel_head: str = "both"
    image_head: str = "class_mapping"
    abnormal_prompts: int = 10
    normal_ctx: int = 5
    abnormal_ctx: int = 2
    depth: int = 9
    t_n_ctx: int = 4
    dap_k: int = 10
    dap_select: str = "topk"
    prompt_num: int = 3
    prompt_context_len: int = 5
    prompt_state_len: int = 5
    num_flows: int = 10
    sample_num: int = 10
    features_list: Tuple[int, ...] = (6, 12, 18, 24)
    rca_heads: int = 4
    temperature: float = 0.07
    sigma: float = 8.0
    seed: int = 111
    vv_start: Optional[int] = None
    fused_focal_logits: bool = False
    deep_prompt_fp16: bool = False
    official_noise: bool = False
    official_state_kl: bool = False

    @classmethod
    def faprompt_preset(cls, **overrides) -> "FAPFLConfig":
        """The FAPrompt column of the design card."""
        base = dict(prompt_structure="cap", class_word="object", dap=True, flows="none",
                    pixel_head="similarity", image_head="fixed", sigma=10.0)
        return cls(**{**base, **overrides})

    @classmethod
    def bayes_pfl_preset(cls, **overrides) -> "FAPFLConfig":
        """The Bayes-PFL column of the design card."""
        base = dict(prompt_structure="bank", class_word="name", dap=False, flows="context+state",
                    pixel_head="rca", image_head="class_mapping", sigma=8.0)
        return cls(**{**base, **overrides})

    def validate(self) -> None:
        for name, value, allowed in (("prompt_structure", self.prompt_structure, STRUCTURES),
                                     ("flows", self.flows, FLOWS), ("pixel_head", self.pixel_head, PIXEL_HEADS),
                                     ("image_head", self.image_head, IMAGE_HEADS),
                                     ("class_word", self.class_word, ("object", "name"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.prompt_structure == "cap" and self.flows == "context+state":
            raise ValueError("CAP prompts have no normal state tokens: use flows context+abnormal")
        if self.prompt_structure == "bank" and self.dap:
            raise ValueError("the DAP prior acts on CAP's abnormal tokens: use prompt_structure cap or dap off")

    @property
    def uses_similarity(self) -> bool:
        return self.pixel_head in ("similarity", "both")

    @property
    def uses_rca(self) -> bool:
        return self.pixel_head in ("rca", "both")


@dataclass
class PassOutput:
    """One pass over pairs [N, 2, M, D] of (normal, abnormal) text features.

    grid:   [N, P] abnormal grid probability averaged over heads, RCA layers and pairs.
    map:    [N, S, S] (a + 1 − n)/2 averaged over pairs, RCA layers and heads.
    probs:  similarity head [N, 2, S, S] (M = 1, training) or None.
    diffs:  RCA head per layer [N, M, S, S] upsampled abnormal − normal logits, or empty.
    """

    grid: torch.Tensor
    map: torch.Tensor
    probs: Optional[torch.Tensor] = None
    diffs: List[torch.Tensor] = field(default_factory=list)


@dataclass
class FAPFLOutput:
    first: Optional[PassOutput]
    final: PassOutput
    class_logits: torch.Tensor  # [N, 2, M]
    text: torch.Tensor  # [N, 2, M, D] final-pass pairs
    abnormal_features: Optional[torch.Tensor]  # CAP: [X, K, D] for the orthogonality loss
    prior: Optional[torch.Tensor]  # [N, W]
    kl: Dict[str, torch.Tensor]
    pair: Optional[int] = None

    @property
    def class_prob(self) -> torch.Tensor:
        return pair_class_prob(self.class_logits)

    @property
    def anomaly_map(self) -> torch.Tensor:
        if self.first is None:
            return self.final.map
        return (self.first.map + self.final.map) / 2

    @property
    def map_score(self) -> Optional[torch.Tensor]:
        """(2·max a_first + max a_final)/3 over the grid (with DAP only)."""
        if self.first is None:
            return None
        return (2 * self.first.grid.amax(1) + self.final.grid.amax(1)) / 3

    @property
    def fused_score(self) -> Optional[torch.Tensor]:
        return None if self.first is None else 0.5 * (self.class_prob + self.map_score)


class FAPFL(nn.Module):
    """The combined model; see the module docstring."""

    method = "fapfl"

    def __init__(self, backbone: ClipBackbone, config: FAPFLConfig):
        super().__init__()
        config.validate()
        bad = [layer for layer in config.features_list if not 1 <= layer <= backbone.num_layers]
        if config.uses_rca and bad:
            raise ValueError(f"features_list {list(config.features_list)} outside 1..{backbone.num_layers}")
        self.backbone, self.config = backbone, config
        e, c, w = backbone.embed_dim, backbone.vision_width, backbone.text_width
        n_layers = len(config.features_list)
        if config.prompt_structure == "cap":
            self.prompts = CompoundPrompts(w, FAPromptConfig(
                abnormal_prompts=config.abnormal_prompts, normal_ctx=config.normal_ctx,
                abnormal_ctx=config.abnormal_ctx, depth=config.depth, t_n_ctx=config.t_n_ctx,
                deep_prompt_fp16=config.deep_prompt_fp16))
        else:
            self.bank = PromptBank(w, BayesPFLConfig(prompt_num=config.prompt_num,
                                                     prompt_context_len=config.prompt_context_len,
                                                     prompt_state_len=config.prompt_state_len))
        if config.dap:
            self.prior_net = PriorNet(e, w, config.dap_k)
        bayes_parts = []
        if config.flows != "none":
            self.context_flow = ContextFlow(e, c // 2, w, config.num_flows)
            bayes_parts.append(self.context_flow)
        if config.flows in ("context+abnormal", "context+state"):
            self.state_encoder = GaussianEncoder(e, c // 2, w)
            self.abnormal_flow = StateFlow(self.state_encoder, e, w, config.num_flows)
            bayes_parts += [self.state_encoder]
        if config.flows == "context+state":
            self.normal_flow = StateFlow(self.state_encoder, e, w, config.num_flows)
        if config.uses_rca:
            self.rca = RCAHead(c, e, n_layers, config.rca_heads)
            self.log_temperature_pixel = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            bayes_parts.append(self.rca)
        if config.image_head == "class_mapping":
            self.class_mapping, self.image_mapping = nn.Linear(e, e), nn.Linear(e, e)
            self.fuse = PatchFuse(c, n_layers, e)
            self.log_temperature_image = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            self.register_buffer("stage", torch.tensor(1), persistent=True)
            bayes_parts += [self.class_mapping, self.image_mapping, self.fuse]
        for part in bayes_parts:  # Bayes-PFL's initialisation of its Linear layers
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        self.vv_start = config.vv_start or default_vv_start(backbone.num_layers)
        self.noise: Optional[FlowNoise] = None

    # ------------------------------------------------------------------ properties
    @property
    def score_fusion(self) -> str:
        return "mean" if self.config.dap else "minmax"

    @property
    def two_stage(self) -> bool:
        return self.config.image_head == "class_mapping"

    def set_stage(self, stage: int) -> None:
        if not self.two_stage or stage not in (1, 2):
            raise ValueError("only the class_mapping image head has stages 1 and 2")
        self.stage.fill_(stage)

    def _stage(self) -> int:
        return int(self.stage) if self.two_stage else 1

    def start_evaluation(self, seed: Optional[int] = None) -> None:
        cfg = self.config
        self.noise = FlowNoise(cfg.seed if seed is None else seed, cfg.sample_num, self.backbone.text_width,
                               cfg.official_noise)

    # ------------------------------------------------------------------ text side
    def _flow_samples(self, feats: ImageFeatures, zero_noise: bool):
        """Context [N, R, W], normal and abnormal [R, W] offsets (None where no flow), KL terms."""
        cfg, n, w = self.config, feats.cls.shape[0], self.backbone.text_width
        device = self.backbone.device
        if cfg.flows == "none":
            return None, None, None, {}
        if zero_noise:
            eps = (torch.zeros(n, 1, w, device=device), torch.zeros(1, w, device=device),
                   torch.zeros(1, w, device=device))
        elif self.training:
            eps = (torch.randn(n, 1, w, device=device), torch.randn(1, w, device=device),
                   torch.randn(1, w, device=device))
        else:
            if self.noise is None:
                self.start_evaluation()
            eps = self.noise.draw(n, device)
        with_kl = self.training and not zero_noise
        kl: Dict[str, torch.Tensor] = {}
        context = self.context_flow(feats.cls, eps[0], with_kl)
        normal = abnormal = None
        if cfg.flows == "context+state":
            sample = self.normal_flow(eps[1], n, with_kl, cfg.official_state_kl)
            normal, kl["kl_normal"] = sample.z, sample.kl
        if cfg.flows in ("context+abnormal", "context+state"):
            sample = self.abnormal_flow(eps[2], n, with_kl, cfg.official_state_kl)
            abnormal, kl["kl_abnormal"] = sample.z, sample.kl
        kl["kl_context"] = context.kl
        return context.z, normal, abnormal, ({k: v for k, v in kl.items() if v is not None} if with_kl else {})

    def _words(self, class_names: Sequence[str]) -> List[str]:
        from datasets.names import readable_name

        if self.config.class_word == "object":
            return ["object"] * len(class_names)
        return [readable_name(name) for name in class_names]

    def _cap_pairs(self, class_names, context, abnormal, prior):
        """CAP pairs [N, 2, R, D] and the K abnormal features [X, K, D] (before the mean).

        Without any image- or sample-dependent offset the prompts depend on the word only, so
        each distinct word is encoded once (X = number of words) and gathered per image.
        """
        prompts, backbone = self.prompts, self.backbone
        words = self._words(class_names)
        static = context is None and abnormal is None and prior is None
        rows = sorted(set(words)) if static else words
        n = len(rows)
        samples = context if context is not None else abnormal
        r = 1 if samples is None else samples.shape[-2]
        normal_t, normal_eot = prompts.templates(backbone, rows, abnormal=False)
        abnormal_t, abnormal_eot = prompts.templates(backbone, rows, abnormal=True)
        rep = lambda t: t.repeat_interleave(r, dim=0)  # noqa: E731  rows of (image, sample)
        offset = None if context is None else context.reshape(n * r, -1)
        shift = None if abnormal is None else abnormal.repeat(n, 1)
        if prior is not None:
            shift = rep(prior) if shift is None else shift + rep(prior)
        k = self.config.abnormal_prompts
        embeddings = torch.cat([prompts.normal_embeddings(rep(normal_t), offset),
                                prompts.abnormal_embeddings(rep(abnormal_t), shift, offset).flatten(0, 1)])
        eot = torch.cat([rep(normal_eot), rep(abnormal_eot).repeat_interleave(k)])
        features = backbone.encode_text_embeddings(embeddings, eot, prompts.deep(), prompts.deep_dtype)
        normal_f, abnormal_f = features[:n * r], features[n * r:].view(n * r, k, -1)
        pairs = torch.stack([normal_f, abnormal_f.mean(1)], dim=1).view(n, r, 2, -1).transpose(1, 2)
        if static:
            pairs = pairs[torch.tensor([rows.index(w) for w in words], device=pairs.device)]
        return F.normalize(pairs, dim=-1), abnormal_f

    def _bank_pairs(self, feats, class_names, context, normal, abnormal):
        """Bank pairs [N, 2, R·B, D] (index r·B + b)."""
        n, w = feats.cls.shape[0], self.backbone.text_width
        device = self.backbone.device
        r = context.shape[1] if context is not None else 1
        zero = torch.zeros(r, w, device=device)
        context = context if context is not None else torch.zeros(n, r, w, device=device)
        template, eot = self.bank.templates(self.backbone, class_names)
        embeddings = self.bank.embeddings(template, context, normal if normal is not None else zero,
                                          abnormal if abnormal is not None else zero)
        shape = embeddings.shape[:4]
        text = self.backbone.encode_text_embeddings(embeddings.flatten(0, 3),
                                                    eot[:, None, None, None].expand(shape).flatten())
        return F.normalize(text, dim=-1).view(n, 2, shape[2] * shape[3], -1)

    # ------------------------------------------------------------------ heads
    def _image_vector(self, feats: ImageFeatures) -> torch.Tensor:
        if self.config.image_head == "fixed":
            return F.normalize(feats.cls_raw, dim=-1)
        if self._stage() == 2:
            tokens = [feats.patch_raw[layer] for layer in self.config.features_list]
            return F.normalize(self.image_mapping(feats.cls + self.fuse(tokens)), dim=-1)
        return F.normalize(feats.cls, dim=-1)

    def _class_logits(self, feats: ImageFeatures, pairs: torch.Tensor) -> torch.Tensor:
        """[N, 2, M] image logits of pairs [N, 2, M, D]."""
        image = self._image_vector(feats)
        if self.config.image_head == "fixed":
            return torch.einsum("nd,ncmd->ncm", image, pairs) / self.config.temperature
        n, _, m, e = pairs.shape
        mapped = F.normalize(self.class_mapping(pairs.reshape(n, 2 * m, e)), dim=-1)
        return (self.log_temperature_image.exp() * (mapped @ image.unsqueeze(-1))).view(n, 2, m)

    def _score(self, feats: ImageFeatures, pairs: torch.Tensor) -> PassOutput:
        """Pixel heads on pairs [N, 2, M, D]."""
        cfg, size, grid_side = self.config, self.backbone.image_size, self.backbone.grid_size
        n, _, m, e = pairs.shape
        grids, maps, probs, diffs = [], [], None, []
        if cfg.uses_similarity:
            patches = F.normalize(feats.vv_proj, dim=-1)
            logits = torch.einsum("npd,ncmd->nmpc", patches, pairs) / cfg.temperature
            grid = logits.softmax(-1).mean(1)  # [N, P, 2], mean over pairs
            probs = upsample_grid(grid, size)
            grids.append(grid[..., 1])
            maps.append((probs[:, 1] + 1 - probs[:, 0]) / 2)
        if cfg.uses_rca:
            text = pairs.reshape(n, 2 * m, e)
            layer_grids, layer_maps = [], []
            for index, layer in enumerate(cfg.features_list):
                dense = self.rca.dense(index, feats.patch_raw[layer])
                logits = self.log_temperature_pixel.exp() * dense @ self.rca.attend(text, dense).transpose(1, 2)
                diff = (logits[..., m:] - logits[..., :m]).transpose(1, 2)  # [N, M, P]
                layer_grids.append(torch.sigmoid(diff).mean(1))
                up = F.interpolate(diff.reshape(n, m, grid_side, grid_side), size=(size, size),
                                   mode="bilinear", align_corners=True)
                diffs.append(up)
                layer_maps.append((torch.sigmoid(up) + 1 - torch.sigmoid(-up)).mean(1) / 2)
            grids.append(torch.stack(layer_grids).mean(0))
            maps.append(torch.stack(layer_maps).mean(0))
        return PassOutput(grid=torch.stack(grids).mean(0), map=torch.stack(maps).mean(0), probs=probs, diffs=diffs)

    # ------------------------------------------------------------------ forward
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The image tensors the active parts read (the others are empty): CLS for the flows
        and the class_mapping head, CLS without ln_post for the fixed head, raw patch tokens for
        RCA and the fuse layer, V-V tokens for the similarity head, and the deepest layer's
        projected tokens for DAP without V-V tokens."""
        cfg = self.config
        layers = cfg.features_list if (cfg.uses_rca or self.two_stage) else ()
        feats = self.backbone.encode_image(images, layers=layers,
                                           vv_start=self.vv_start if cfg.uses_similarity else None)
        empty, last = feats.cls[:, :0], cfg.features_list[-1]
        return ImageFeatures(
            cls=feats.cls if cfg.flows != "none" or cfg.image_head == "class_mapping" else empty,
            cls_raw=feats.cls_raw if cfg.image_head == "fixed" else empty, patch_raw=feats.patch_raw,
            patch_proj={last: feats.patch_proj[last]} if cfg.dap and not cfg.uses_similarity else {},
            vv_proj=feats.vv_proj)

    def forward(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None) -> FAPFLOutput:
        """``features`` (from :meth:`encode_images`) replaces the image pass."""
        cfg = self.config
        feats = self.encode_images(images) if features is None else features
        first = prior = abnormal_features = None
        if cfg.dap:
            context, _, abnormal, _ = self._flow_samples(feats, zero_noise=True)
            pairs0, abnormal_features = self._cap_pairs(class_names, context, abnormal, None)
            first = self._score(feats, pairs0)
            selected = select_patches(first.grid, cfg.dap_k, cfg.dap_select)
            # the meta-net reads projected patch features: the V-V ones when that path runs,
            # else the deepest selected layer's
            patches = F.normalize(feats.vv_proj, dim=-1) if cfg.uses_similarity else \
                F.normalize(feats.patch_proj[cfg.features_list[-1]], dim=-1)
            chosen = torch.gather(patches, 1, selected[..., None].expand(-1, -1, patches.shape[-1]))
            prior = self.prior_net(chosen)
        context, normal, abnormal, kl = self._flow_samples(feats, zero_noise=False)
        if cfg.prompt_structure == "cap":
            pairs, features = self._cap_pairs(class_names, context, abnormal, prior)
            abnormal_features = features if abnormal_features is None else abnormal_features
        else:
            pairs = self._bank_pairs(feats, class_names, context, normal, abnormal)
        pair = None
        if self.training and cfg.prompt_structure == "bank":
            pair = int(torch.randint(0, cfg.prompt_num, (1,)))
            scored = pairs[:, :, pair:pair + 1]  # R = 1 in training: index r·B + b = b
        else:
            scored = pairs
        logits = self._class_logits(feats, scored)
        if self._stage() == 2:
            with torch.no_grad():
                final = self._score(feats, scored)
        else:
            final = self._score(feats, scored)
        return FAPFLOutput(first=first, final=final, class_logits=logits, text=pairs,
                           abnormal_features=abnormal_features, prior=prior, kl=kl, pair=pair)

    def predict(self, images: torch.Tensor, class_names: Sequence[str]) -> Prediction:
        out = self(images, class_names)
        maps = out.anomaly_map
        if out.map_score is not None:
            return Prediction(maps, out.class_prob, out.map_score)
        return Prediction(maps, out.class_prob, bayes_map_scores(maps, class_names))

    # ------------------------------------------------------------------ training
    def _map_terms(self, out: PassOutput, masks: torch.Tensor) -> torch.Tensor:
        total = 0
        if out.probs is not None:
            total = total + focal_loss(out.probs, masks) + dice_loss(out.probs[:, 1], masks) \
                + dice_loss(out.probs[:, 0], 1 - masks)
        for diff in out.diffs:
            probs = torch.sigmoid(torch.cat([-diff, diff], dim=1))
            total = total + balanced_focal_loss(probs, masks) + dice_loss(probs[:, 1], masks, 1e-5, False)
        return total

    def loss(self, out: FAPFLOutput, masks: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The active parts' terms (SPEC section 6); ``total`` is their sum."""
        cfg = self.config
        masks, labels = masks.float(), labels.long()
        terms: Dict[str, torch.Tensor] = {}
        if self._stage() == 1:
            if out.first is not None:
                terms["map_first"] = self._map_terms(out.first, masks)
                terms["map_final"] = 0.5 * self._map_terms(out.final, masks)
            else:
                terms["map"] = self._map_terms(out.final, masks)
        terms["image"] = F.cross_entropy(out.class_logits[:, :, 0], labels)
        if self._stage() == 1:
            if out.fused_score is not None:
                terms["fused"] = binary_focal_loss(out.fused_score, labels, from_logits=cfg.fused_focal_logits)
            for name, value in out.kl.items():
                terms[name] = 0.01 * value
            if cfg.prompt_structure == "cap":
                features = out.abnormal_features
                terms["orthogonal"] = 0.1 * cap_orthogonality(features) / len(features)
            else:
                terms["orthogonal"] = bank_orthogonality(out.text[:, 0], out.text[:, 1])
            if out.prior is not None:
                terms["prior"] = (out.prior.pow(2).mean(1) * (labels == 0).float()).sum()
        terms["total"] = sum(terms.values())
        return terms

    def param_groups(self, lr_prompt: float = 1e-3, lr_flow: float = 1e-3, lr_linear: float = 1e-4,
                     lr_temperature: float = 1e-2) -> List[dict]:
        """Optimiser groups: prompts (and the DAP meta-net, as FAPrompt trains it), flows,
        temperatures, the other linear layers; stage 2 trains the image path only."""
        if self._stage() == 2:
            params = [p for m in (self.class_mapping, self.image_mapping, self.fuse) for p in m.parameters()]
            return [{"name": "stage2", "params": params, "lr": lr_linear}]
        prompt = list((self.prompts if self.config.prompt_structure == "cap" else self.bank).parameters())
        if self.config.dap:
            prompt += list(self.prior_net.parameters())
        flow: List[nn.Parameter] = []
        if self.config.flows != "none":
            flow += [p for m in (self.context_flow.u, self.context_flow.w, self.context_flow.b) for p in m.parameters()]
            for name in ("normal_flow", "abnormal_flow"):
                if hasattr(self, name):
                    f = getattr(self, name)
                    flow += [f.state, f.u, f.w, f.b]
        temperature = [getattr(self, n) for n in ("log_temperature_pixel", "log_temperature_image") if hasattr(self, n)]
        special = {id(p) for p in prompt + flow + temperature}
        linear = [p for n, p in self.named_parameters() if p.requires_grad and id(p) not in special
                  and not n.startswith("backbone.")]
        groups = [("prompt", prompt, lr_prompt), ("temperature", temperature, lr_temperature),
                  ("flow", flow, lr_flow), ("linear", linear, lr_linear)]
        return [{"name": n, "params": p, "lr": lr} for n, p, lr in groups if p]
