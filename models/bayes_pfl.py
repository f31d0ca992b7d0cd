"""Bayes-PFL: prompt bank, prompt flows, RCA head and two-stage training (SPEC section 5).

Text side: B bank pairs of P context + Q state vectors replace "X" in ``"X {class name}"``.
The image-specific flow's sample is added to the context vectors, the normal / abnormal
image-agnostic flows' samples to the state vectors. All B·R sampled prompts of all images in a
batch go through the text encoder in one call. Text features are ordered normal half first,
then abnormal, each indexed ``r·B + b``; pair i is (i, i + B·R).

Pixel side: residual cross-modal attention (RCA) of the text features over each selected
layer's raw patch tokens, logits upsampled (bilinear, align_corners=True), then the 2-way
softmax of each pair. Image side: ``class_mapping`` of the text against the image feature
(stage 2: ``image_mapping(f + fuse(raw tokens))``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import ClipBackbone, ImageFeatures
from models.flows import ContextFlow, GaussianEncoder, StateFlow
from models.losses import balanced_focal_loss, bank_orthogonality, dice_loss
from models.scoring import Prediction, bayes_map_scores, pair_class_prob


@dataclass
class BayesPFLConfig:
    """Bayes-PFL settings; defaults are the official ones."""

    prompt_num: int = 3  # B
    prompt_context_len: int = 5  # P
    prompt_state_len: int = 5  # Q
    num_flows: int = 10  # K planar transforms per flow
    sample_num: int = 10  # R samples at test
    features_list: Tuple[int, ...] = (6, 12, 18, 24)
    rca_heads: int = 4
    sigma: float = 8.0
    seed: int = 111  # test-time flow noise
    official_noise: bool = False  # draw test noise exactly as the official code (per image 3R×D)
    official_state_kl: bool = False  # the official broadcast in the state flows' KL (see flows)

    def official(self) -> "BayesPFLConfig":
        return BayesPFLConfig(**{**self.__dict__, "official_noise": True, "official_state_kl": True})


class FlowNoise:
    """Seeded test-time flow noise, the same whatever the batch size.

    ours:     the R normal and R abnormal state samples once, then R context draws per image.
    official: per image one draw of [3R, D] — context, normal, abnormal — of which the state
              parts of the first image are kept for the whole run (the rest is drawn but unused).
    The draws come from a CPU generator seeded with ``seed``, which gives the same numbers as
    the official code's global CPU generator seeded with ``seed`` right before the first batch.
    One [N, 3R, D] draw equals the official R·3·N successive [1, D] draws because torch's CPU
    normal sampler fills blocks of 16 values: that needs D % 16 == 0 (true of every CLIP).
    """

    def __init__(self, seed: int, samples: int, dim: int, official: bool):
        if official and dim % 16:
            raise ValueError(f"the official noise order needs a width divisible by 16, got {dim}")
        self.generator = torch.Generator().manual_seed(seed)
        self.samples, self.dim, self.official = samples, dim, official
        self.state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def draw(self, n_images: int, device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Context [N, R, D], normal [R, D], abnormal [R, D]."""
        r, d, g = self.samples, self.dim, self.generator
        if self.official:
            eps = torch.randn(n_images, 3 * r, d, generator=g)
            if self.state is None:
                self.state = (eps[0, r:2 * r], eps[0, 2 * r:])
            context = eps[:, :r]
        else:
            if self.state is None:
                states = torch.randn(2 * r, d, generator=g)
                self.state = (states[:r], states[r:])
            context = torch.randn(n_images, r, d, generator=g)
        return context.to(device), self.state[0].to(device), self.state[1].to(device)


class RCAHead(nn.Module):
    """Residual cross-modal attention: text queries attend over each layer's dense features."""

    def __init__(self, vision_width: int, embed_dim: int, n_layers: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.scale = embed_dim ** -0.5  # over the full width, not the head width
        self.proj = nn.ModuleList([nn.Linear(vision_width, embed_dim, bias=False) for _ in range(n_layers)])
        self.query = nn.Conv1d(embed_dim, embed_dim, kernel_size=1)

    def dense(self, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """Raw tokens [N, P, C] of the layer-th selected layer → normalised features [N, P, E]."""
        return F.normalize(self.proj[layer](tokens), dim=-1)

    def attend(self, text: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """text [N, M, E] (normalised), dense [N, P, E] → normalise(text + attention) [N, M, E]."""
        n, m, e = text.shape
        q = self.query(text.transpose(1, 2)).transpose(1, 2)
        q = q.reshape(n, m, self.heads, e // self.heads).transpose(1, 2)
        kv = dense.reshape(n, dense.shape[1], self.heads, e // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, kv, kv, scale=self.scale)
        return F.normalize(text + out.transpose(1, 2).reshape(n, m, e), dim=-1)


class PatchFuse(nn.Module):
    """Stage-2 ``fuse``: selected layers' raw tokens → one vector [N, E] by attention pooling."""

    def __init__(self, vision_width: int, n_layers: int, embed_dim: int):
        super().__init__()
        hidden = vision_width // 2
        self.reduce = nn.Linear(vision_width * n_layers, hidden)
        self.score = nn.Linear(hidden, 1)
        self.out = nn.Linear(hidden, embed_dim)

    def forward(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.reduce(torch.cat(list(tokens), dim=-1))
        weights = self.score(x).softmax(dim=1)
        return self.out((weights * x).sum(1))


class PromptBank(nn.Module):
    """B pairs of P context + Q state (normal / abnormal) vectors over ``"X {class name}"``."""

    def __init__(self, text_width: int, config: BayesPFLConfig):
        super().__init__()
        b, p, q = config.prompt_num, config.prompt_context_len, config.prompt_state_len
        self.context = nn.Parameter(nn.init.trunc_normal_(torch.empty(b, p, text_width), 0.0, 0.02))
        self.normal_state = nn.Parameter(nn.init.trunc_normal_(torch.empty(b, q, text_width), 0.5, 0.02))
        self.abnormal_state = nn.Parameter(nn.init.trunc_normal_(torch.empty(b, q, text_width), -0.5, 0.02))
        self._cache: Dict[tuple, Tuple[torch.Tensor, int]] = {}

    @staticmethod
    def template_text(name: str) -> str:
        """``"X {readable class name}"``: the vectors replace the one token "X"."""
        from datasets.names import readable_name

        return f"X {readable_name(name).lower()}"

    def templates(self, backbone: ClipBackbone, names: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Word embeddings [N, L, W] of ``"X {name}"`` and the EOT positions [N] after insertion."""
        b, p, w = self.context.shape
        q = self.normal_state.shape[1]
        out = []
        for name in names:
            key = (name, str(backbone.device))
            if key not in self._cache:
                tokens = backbone.tokenize([self.template_text(name)])
                eot = int(tokens[0].argmax()) + p + q - 1
                if eot >= backbone.context_length:
                    raise ValueError(f"class name {name!r} is too long for {p + q} prompt vectors")
                with torch.no_grad():
                    self._cache[key] = (backbone.token_embedding(tokens)[0], eot)
            out.append(self._cache[key])
        return (torch.stack([o[0] for o in out]),
                torch.tensor([o[1] for o in out], device=backbone.device))

    def embeddings(self, template: torch.Tensor, context_z: torch.Tensor, normal_z: torch.Tensor,
                   abnormal_z: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [N, 2, R, B, L, W].

        Args:
            template: [N, L, W] template embeddings.
            context_z: [N, R, W] image-specific samples (added to the context vectors).
            normal_z, abnormal_z: [R, W] state samples (added to the state vectors).
        """
        n, length, width = template.shape
        r = context_z.shape[1]
        b, p, _ = self.context.shape
        q = self.normal_state.shape[1]
        context = self.context[None, None] + context_z[:, :, None, None, :]  # [N, R, B, P, W]
        states = torch.stack([self.normal_state[None] + normal_z[:, None, None, :],
                              self.abnormal_state[None] + abnormal_z[:, None, None, :]])  # [2, R, B, Q, W]
        tail = template[:, 2:length - (p + q) + 1]
        shape = (n, 2, r, b)
        return torch.cat([template[:, None, None, None, :1].expand(*shape, 1, width),
                          context[:, None].expand(*shape, p, width),
                          states[None].expand(*shape, q, width),
                          tail[:, None, None, None].expand(*shape, tail.shape[1], width)], dim=-2)


@dataclass
class BayesPFLOutput:
    """One forward pass; K = number of (normal, abnormal) pairs scored (B·R, or 1 in training).

    text:         [N, 2, R, B, E] normalised text features of all sampled prompts.
    class_logits: [N, 2, K] image logits (normal, abnormal) of the scored pairs.
    pixel_logits: per selected layer [N, K, S, S] upsampled logit difference abnormal − normal,
                  so the pair softmax is (σ(−d), σ(d)).
    kl:           KL terms of the flows (training only).
    pair:         the bank index scored in training (None at test).
    """

    text: torch.Tensor
    class_logits: torch.Tensor
    pixel_logits: List[torch.Tensor]
    kl: Dict[str, torch.Tensor] = field(default_factory=dict)
    pair: Optional[int] = None

    @property
    def class_prob(self) -> torch.Tensor:
        return pair_class_prob(self.class_logits)

    @property
    def anomaly_map(self) -> torch.Tensor:
        """[N, S, S] mean over layers and pairs of the abnormal probability."""
        return torch.stack([torch.sigmoid(d).mean(1) for d in self.pixel_logits]).mean(0)


class BayesPFL(nn.Module):
    """Frozen backbone + prompt bank + prompt flows + RCA and image heads."""

    method = "bayes_pfl"
    score_fusion = "minmax"
    two_stage = True

    def __init__(self, backbone: ClipBackbone, config: BayesPFLConfig):
        super().__init__()
        bad = [layer for layer in config.features_list if not 1 <= layer <= backbone.num_layers]
        if bad:
            raise ValueError(f"features_list {list(config.features_list)} outside 1..{backbone.num_layers}")
        self.backbone = backbone
        self.config = config
        e, c, w = backbone.embed_dim, backbone.vision_width, backbone.text_width
        n_layers = len(config.features_list)
        self.bank = PromptBank(w, config)
        self.context_flow = ContextFlow(e, c // 2, w, config.num_flows)
        self.state_encoder = GaussianEncoder(e, c // 2, w)  # shared by both state flows
        self.normal_flow = StateFlow(self.state_encoder, e, w, config.num_flows)
        self.abnormal_flow = StateFlow(self.state_encoder, e, w, config.num_flows)
        self.rca = RCAHead(c, e, n_layers, config.rca_heads)
        self.class_mapping = nn.Linear(e, e)
        self.image_mapping = nn.Linear(e, e)
        self.fuse = PatchFuse(c, n_layers, e)
        self.log_temperature_pixel = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.log_temperature_image = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("stage", torch.tensor(1), persistent=True)
        for name, module in self.named_modules():  # the official init of the learnable Linears
            if isinstance(module, nn.Linear) and not name.startswith("backbone"):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.noise: Optional[FlowNoise] = None

    # ------------------------------------------------------------------ evaluation noise
    def start_evaluation(self, seed: Optional[int] = None) -> None:
        """Reset the seeded test noise; call once before the first test batch."""
        cfg = self.config
        self.noise = FlowNoise(cfg.seed if seed is None else seed, cfg.sample_num,
                               self.backbone.text_width, cfg.official_noise)

    # ------------------------------------------------------------------ forward
    def text_features(self, feats: ImageFeatures, class_names: Sequence[str], with_kl: bool):
        """Sample the flows and encode every prompt: [N, 2, R, B, E] (normalised), KL terms."""
        n, device, width = feats.cls.shape[0], self.backbone.device, self.backbone.text_width
        if self.training:
            context_eps = torch.randn(n, 1, width, device=device)
            normal_eps = torch.randn(1, width, device=device)
            abnormal_eps = torch.randn(1, width, device=device)
        else:
            if self.noise is None:
                self.start_evaluation()
            context_eps, normal_eps, abnormal_eps = self.noise.draw(n, device)
        context = self.context_flow(feats.cls, context_eps, with_kl)
        official_kl = self.config.official_state_kl
        normal = self.normal_flow(normal_eps, n, with_kl, official_kl)
        abnormal = self.abnormal_flow(abnormal_eps, n, with_kl, official_kl)
        template, eot = self.bank.templates(self.backbone, class_names)
        embeddings = self.bank.embeddings(template, context.z, normal.z, abnormal.z)
        shape = embeddings.shape[:4]
        eot = eot[:, None, None, None].expand(shape)
        text = self.backbone.encode_text_embeddings(embeddings.flatten(0, 3), eot.flatten())
        text = F.normalize(text, dim=-1).view(*shape, -1)
        kl = {"kl_context": context.kl, "kl_normal": normal.kl, "kl_abnormal": abnormal.kl} if with_kl else {}
        return text, kl

    def image_vector(self, feats: ImageFeatures) -> torch.Tensor:
        """Normalised image feature of the image head: f (stage 1) or image_mapping(f + fuse)."""
        if int(self.stage) == 2:
            tokens = [feats.patch_raw[layer] for layer in self.config.features_list]
            return F.normalize(self.image_mapping(feats.cls + self.fuse(tokens)), dim=-1)
        return F.normalize(feats.cls, dim=-1)

    def image_logits(self, feats: ImageFeatures, pairs: torch.Tensor) -> torch.Tensor:
        """[N, 2, K] logits of pairs [N, 2, K, E]: class_mapping(T) against the image vector."""
        n, _, k, e = pairs.shape
        mapped = F.normalize(self.class_mapping(pairs.reshape(n, 2 * k, e)), dim=-1)
        logits = self.log_temperature_image.exp() * (mapped @ self.image_vector(feats).unsqueeze(-1))
        return logits.view(n, 2, k)

    def pixel_logits(self, feats: ImageFeatures, pairs: torch.Tensor) -> List[torch.Tensor]:
        """Per selected layer [N, K, S, S]: upsampled abnormal − normal logits of pairs [N, 2, K, E].

        The official code upsamples both logits, then takes each pair's softmax; since bilinear
        upsampling is linear, upsampling the difference and taking σ is the same softmax.
        """
        n, _, k, e = pairs.shape
        text = pairs.reshape(n, 2 * k, e)
        size, grid = self.backbone.image_size, self.backbone.grid_size
        out = []
        for index, layer in enumerate(self.config.features_list):
            dense = self.rca.dense(index, feats.patch_raw[layer])
            updated = self.rca.attend(text, dense)
            logits = self.log_temperature_pixel.exp() * dense @ updated.transpose(1, 2)  # [N, P, 2K]
            diff = (logits[..., k:] - logits[..., :k]).transpose(1, 2).reshape(n, k, grid, grid)
            out.append(F.interpolate(diff, size=(size, size), mode="bilinear", align_corners=True))
        return out

    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """The image tensors this model reads: the CLS feature and the raw patch tokens of the
        selected layers (the other fields are empty)."""
        feats = self.backbone.encode_image(images, layers=self.config.features_list)
        return ImageFeatures(cls=feats.cls, cls_raw=feats.cls[:, :0], patch_raw=feats.patch_raw)

    def forward(self, images: Optional[torch.Tensor], class_names: Sequence[str],
                features: Optional[ImageFeatures] = None) -> BayesPFLOutput:
        """Training: R = 1 and one random bank pair is scored; eval: all B·R pairs. ``features``
        (from :meth:`encode_images`) replaces the image pass."""
        feats = self.encode_images(images) if features is None else features
        text, kl = self.text_features(feats, class_names, with_kl=self.training)
        n, _, r, b, e = text.shape
        if self.training:
            pair = int(torch.randint(0, b, (1,)))
            pairs = text[:, :, 0, pair].unsqueeze(2)
        else:
            pair, pairs = None, text.reshape(n, 2, r * b, e)
        logits = self.image_logits(feats, pairs)
        if int(self.stage) == 2:  # stage 2 trains the image path only: the maps need no graph
            with torch.no_grad():
                pixel = self.pixel_logits(feats, pairs)
        else:
            pixel = self.pixel_logits(feats, pairs)
        return BayesPFLOutput(text=text, class_logits=logits, pixel_logits=pixel, kl=kl, pair=pair)

    def predict(self, images: torch.Tensor, class_names: Sequence[str]) -> Prediction:
        """Test-time outputs: the map, the class probability and the top-k mean of the map."""
        out = self(images, class_names)
        maps = out.anomaly_map
        return Prediction(maps, out.class_prob, bayes_map_scores(maps, class_names))

    # ------------------------------------------------------------------ training
    def loss(self, out: BayesPFLOutput, masks: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss terms of the current stage; ``total`` is their sum (SPEC section 5)."""
        labels = labels.long()
        terms = {"image": F.cross_entropy(out.class_logits[:, :, 0], labels)}
        if int(self.stage) == 1:
            masks = masks.float()
            segmentation = 0
            for diff in out.pixel_logits:
                probs = torch.sigmoid(torch.cat([-diff, diff], dim=1))  # the pair softmax
                segmentation = segmentation + balanced_focal_loss(probs, masks) \
                    + dice_loss(probs[:, 1], masks, smooth=1e-5, per_sample=False)
            terms["segmentation"] = segmentation
            for name, value in out.kl.items():
                terms[name] = 0.01 * value
            terms["orthogonal"] = bank_orthogonality(out.text[:, 0, 0], out.text[:, 1, 0])
        terms["total"] = sum(terms.values())
        return terms

    def param_groups(self, lr_prompt: float = 1e-3, lr_flow: float = 1e-3, lr_linear: float = 1e-4,
                     lr_temperature: float = 1e-2) -> List[dict]:
        """Optimiser groups of the current stage with the official learning rates."""
        if int(self.stage) == 2:
            params = [p for m in (self.class_mapping, self.image_mapping, self.fuse) for p in m.parameters()]
            return [{"name": "stage2", "params": params, "lr": lr_linear}]
        flows = [self.context_flow.u, self.context_flow.w, self.context_flow.b]
        flow_params = [p for m in flows for p in m.parameters()]
        for flow in (self.normal_flow, self.abnormal_flow):
            flow_params += [flow.state, flow.u, flow.w, flow.b]
        special = {id(p) for p in flow_params} | {id(p) for p in self.bank.parameters()} \
            | {id(self.log_temperature_pixel), id(self.log_temperature_image)}
        linear = [p for p in self.parameters() if p.requires_grad and id(p) not in special]
        return [{"name": "prompt", "params": list(self.bank.parameters()), "lr": lr_prompt},
                {"name": "temperature", "params": [self.log_temperature_pixel, self.log_temperature_image],
                 "lr": lr_temperature},
                {"name": "flow", "params": flow_params, "lr": lr_flow},
                {"name": "linear", "params": linear, "lr": lr_linear}]

    def set_stage(self, stage: int) -> None:
        if stage not in (1, 2):
            raise ValueError("stage must be 1 or 2")
        self.stage.fill_(stage)


# ---------------------------------------------------------------------- official checkpoints
_OFFICIAL_LINEAR = {"fuse.fuse_modules": "fuse.reduce", "fuse.compress": "fuse.score",
                    "fuse.post_process": "fuse.out", "RCA.q_proj_pre": "rca.query",
                    "class_mapping": "class_mapping", "image_mapping": "image_mapping",
                    "PFL_context.amor_u": "context_flow.u", "PFL_context.amor_w": "context_flow.w",
                    "PFL_context.amor_b": "context_flow.b"}


def _encoder(state: dict, source: str, target: str) -> Dict[str, torch.Tensor]:
    out = {}
    for part, ours in (("weight_mean", "mean"), ("weight_log_variance", "log_var")):
        for index in ("0", "2", "4"):
            for kind in ("weight", "bias"):
                out[f"{target}.{ours}.{index}.{kind}"] = state[f"{source}.{part}.module.{index}.{kind}"]
    return out


def is_official_state(state: dict) -> bool:
    return "prompt_context" in state and "PFL_normal.amor_u" in state


def official_to_ours(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Map an official Bayes-PFL ``MyModel`` state dict onto our module names.

    Shared modules are stored in the official file under several identical keys; one alias is
    read. The unused decoders and ``p_mu`` layers are ignored. Released checkpoints are
    stage 2, so the stage is set to 2. Returns our state dict and the implied config fields
    (the layers of ``features_list`` are not stored; their number is ``len(rca.proj)``).
    """
    ours: Dict[str, torch.Tensor] = {
        "bank.context": state["prompt_context"],
        "bank.normal_state": state["prompt_state_normal"],
        "bank.abnormal_state": state["prompt_state_abnormal"],
        "log_temperature_pixel": state["temperature_pixel"],
        "log_temperature_image": state["temperature_image"],
        "stage": torch.tensor(2),
    }
    for source, target in _OFFICIAL_LINEAR.items():
        for kind in ("weight", "bias"):
            ours[f"{target}.{kind}"] = state[f"{source}.{kind}"]
    ours.update(_encoder(state, "context_encoder", "context_flow.encoder"))
    for alias in ("state_encoder", "normal_flow.encoder", "abnormal_flow.encoder"):
        ours.update(_encoder(state, "state_encoder", alias))
    num_flows = state["PFL_normal.amor_u"].shape[1]
    for flow, target in (("PFL_normal", "normal_flow"), ("PFL_abnormal", "abnormal_flow")):
        ours[f"{target}.state"] = state[f"{flow}.state"]
        ours[f"{target}.u"] = state[f"{flow}.amor_u"].reshape(num_flows, -1)
        ours[f"{target}.w"] = state[f"{flow}.amor_w"].reshape(num_flows, -1)
        ours[f"{target}.b"] = state[f"{flow}.amor_b"].reshape(num_flows)
    layers = sorted(int(k.split(".")[2]) for k in state if k.startswith("RCA.linear_proj."))
    for index in layers:
        ours[f"rca.proj.{index}.weight"] = state[f"RCA.linear_proj.{index}.weight"]
    config = {
        "prompt_num": state["prompt_context"].shape[0],
        "prompt_context_len": state["prompt_context"].shape[1],
        "prompt_state_len": state["prompt_state_normal"].shape[1],
        "num_flows": num_flows,
    }
    return {k: (v.float() if v.is_floating_point() else v) for k, v in ours.items()}, config
