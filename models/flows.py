"""Planar prompt flows (Bayes-PFL, docs/methods/bayes_pfl.md).

A flow draws ``z₀`` from a diagonal Gaussian given by an encoder and pushes it through K planar
transforms ``z ← z + u·tanh(wᵀz + b)`` (taken literally: no invertibility correction of u).

Official-code details kept on purpose: the encoder's second output ``lv`` is turned into a
"variance" ``exp(lv/2)`` that is square-rooted again when sampling, so
``z₀ = μ + ε·exp(lv/4)``, while the KL uses ``q(z₀) = N(μ, diag exp(lv/2))``; Gaussian
log-densities omit the 2π term; the KL is divided by the number of *images* in the batch,
also for the image-agnostic flows (which draw one sample per batch).

One more official quirk, not in the paper: for the image-agnostic flows the official loss
broadcasts ``log p(z_K)`` of the single sample against a [batch, D] zero log-variance, so
``log q − log p`` is summed once per image while the log-det is counted once:
KL = (N·(log q − log p) − Σ log-det) / N. ``repeat_density=N`` reproduces it; by default the
terms are summed over the samples drawn (docs/methods/bayes_pfl.md).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from models.losses import BatchSplit, batch_images


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("0", nn.Linear(in_dim, hidden)), ("1", nn.Softplus()),
        ("2", nn.Linear(hidden, hidden)), ("3", nn.Softplus()),
        ("4", nn.Linear(hidden, out_dim)),
    ]))


class GaussianEncoder(nn.Module):
    """Two MLPs (Linear→Softplus→Linear→Softplus→Linear) giving μ and ``lv`` of z₀."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.mean = _mlp(in_dim, hidden, out_dim)
        self.log_var = _mlp(in_dim, hidden, out_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.mean(x), self.log_var(x)


def planar_transforms(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor,
                      b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Apply K planar transforms in order.

    Args:
        z: [..., D] samples.
        u, w: [..., K, D] and b: [..., K] transform parameters (broadcast against z's batch).
    Returns:
        z_K [..., D] and Σ_k log|det J_k| [...], with
        ``log|det J| = log(|1 + (1 − tanh²(wᵀz + b))·wᵀu| + 1e-5)``.
    """
    log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for k in range(u.shape[-2]):
        u_k, w_k, b_k = u[..., k, :], w[..., k, :], b[..., k]
        h = torch.tanh((w_k * z).sum(-1) + b_k)
        z = z + u_k * h.unsqueeze(-1)
        log_det = log_det + torch.log(((1 - h.pow(2)) * (w_k * u_k).sum(-1) + 1).abs() + 1e-5)
    return z, log_det


def _log_normal(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Σ_d −½(log σ²_d + (x_d − μ_d)²/σ²_d): a diagonal Gaussian log-density without 2π."""
    return (-0.5 * (log_var + (x - mean).pow(2) * torch.exp(-log_var))).sum(-1)


@dataclass
class FlowSample:
    """Samples of one flow: ``z`` = z_K [..., R, D]; ``z0`` the base samples, ``log_det`` [..., R]
    the summed log-determinants and ``kl`` the scalar KL term (these three in training only)."""

    z: torch.Tensor
    kl: Optional[torch.Tensor] = None
    z0: Optional[torch.Tensor] = None
    log_det: Optional[torch.Tensor] = None


def _sample_and_flow(mean, log_var, u, w, b, eps, batch_images: int, with_kl: bool,
                     repeat_density: int = 1) -> FlowSample:
    """z₀ = μ + ε·exp(lv/4) for ε [..., R, D]; flow; KL summed and divided by ``batch_images``
    (the log-density terms counted ``repeat_density`` times, see the module doc)."""
    mean, log_var = mean.unsqueeze(-2), log_var.unsqueeze(-2)
    z0 = mean + eps * torch.exp(0.25 * log_var)
    zk, log_det = planar_transforms(z0, u.unsqueeze(-3), w.unsqueeze(-3), b.unsqueeze(-2))
    if not with_kl:
        return FlowSample(zk)
    log_q = _log_normal(z0, mean, 0.5 * log_var) + 1e-8
    log_p = _log_normal(zk, torch.zeros_like(zk), torch.zeros_like(zk)) + 1e-8
    kl = (repeat_density * (log_q - log_p).sum() - log_det.sum()) / batch_images
    return FlowSample(zk, kl, z0, log_det)


class ContextFlow(nn.Module):
    """Image-specific flow: the encoder and all K transforms are amortised from the image
    feature f [N, E] (u, w from Linear(E → K·D), b from Linear(E → K))."""

    def __init__(self, in_dim: int, hidden: int, dim: int, num_flows: int):
        super().__init__()
        self.dim, self.num_flows = dim, num_flows
        self.encoder = GaussianEncoder(in_dim, hidden, dim)
        self.u = nn.Linear(in_dim, num_flows * dim)
        self.w = nn.Linear(in_dim, num_flows * dim)
        self.b = nn.Linear(in_dim, num_flows)

    def forward(self, feature: torch.Tensor, eps: torch.Tensor, with_kl: bool = False) -> FlowSample:
        """feature [N, E], eps [N, R, D] → z [N, R, D]."""
        n = feature.shape[0]
        mean, log_var = self.encoder(feature)
        u = self.u(feature).view(n, self.num_flows, self.dim)
        w = self.w(feature).view(n, self.num_flows, self.dim)
        b = self.b(feature)
        return _sample_and_flow(mean, log_var, u, w, b, eps, n, with_kl)


class StateFlow(nn.Module):
    """Image-agnostic flow: the encoder input is a learnable ``state`` vector and u, w, b are
    free parameters (all initialised N(0, 1)); the encoder may be shared between flows."""

    def __init__(self, encoder: GaussianEncoder, in_dim: int, dim: int, num_flows: int):
        super().__init__()
        self.encoder = encoder
        self.state = nn.Parameter(torch.randn(1, in_dim))
        self.u = nn.Parameter(torch.randn(num_flows, dim))
        self.w = nn.Parameter(torch.randn(num_flows, dim))
        self.b = nn.Parameter(torch.randn(num_flows))

    def forward(self, eps: torch.Tensor, batch_images: int = 1, with_kl: bool = False,
                official_kl: bool = False) -> FlowSample:
        """eps [R, D] → z [R, D]; the KL is divided by the number of images in the batch
        (``official_kl``: with the official code's broadcast of the log-densities)."""
        mean, log_var = self.encoder(self.state)
        return _sample_and_flow(mean[0], log_var[0], self.u, self.w, self.b, eps, batch_images, with_kl,
                                repeat_density=batch_images if official_kl else 1)


@dataclass
class FlowSamples:
    """One draw of every flow in use: offsets for the prompts and the KL terms (training).

    context: [N, R, W] (image-specific); normal, abnormal: [R, W] (image-agnostic), or None.
    """

    context: Optional[torch.Tensor] = None
    normal: Optional[torch.Tensor] = None
    abnormal: Optional[torch.Tensor] = None
    kl: Dict[str, torch.Tensor] = field(default_factory=dict)


class PromptFlows(nn.Module):
    """Bayes-PFL's prompt flows in use: the image-specific context flow, and the image-agnostic
    abnormal-state (and normal-state) flows, which share one encoder as in the official code.

    kind: "context", "context+abnormal" or "context+state". Linear layers are initialised
    N(0, 0.02) with zero biases (the official init); the state flows' free parameters N(0, 1).
    """

    def __init__(self, kind: str, embed_dim: int, hidden: int, text_width: int, num_flows: int):
        super().__init__()
        self.kind, self.width = kind, text_width
        self.context = ContextFlow(embed_dim, hidden, text_width, num_flows)
        self.states: Dict[str, StateFlow] = {}  # the state flows in use, by name (registered below)
        if kind in ("context+abnormal", "context+state"):
            self.state_encoder = GaussianEncoder(embed_dim, hidden, text_width)
            self.abnormal = StateFlow(self.state_encoder, embed_dim, text_width, num_flows)
            self.states["abnormal"] = self.abnormal
        if kind == "context+state":
            self.normal = StateFlow(self.state_encoder, embed_dim, text_width, num_flows)
            self.states = {"normal": self.normal, **self.states}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def free_parameters(self):
        """The transform parameters (u, w, b and the states): Bayes-PFL's flow learning rate."""
        params = list(self.context.u.parameters()) + list(self.context.w.parameters()) \
            + list(self.context.b.parameters())
        for flow in self.states.values():
            params += [flow.state, flow.u, flow.w, flow.b]
        return params

    def training_noise(self, n_images: int, device,
                       split: Optional[BatchSplit] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sample per image from the global generator, in the official order: context
        [N, 1, W], then normal and abnormal state [1, W] (both drawn whatever flows are in use).
        With ``split`` the whole batch's noise is drawn and this process keeps its images' rows
        (a distributed sampler deals a batch's images out round-robin), so the batch trains as
        in one process."""
        processes, rank = (1, 0) if split is None else (split.world_size, split.rank)
        context = torch.randn(n_images * processes, 1, self.width, device=device)[rank::processes]
        return context, torch.randn(1, self.width, device=device), torch.randn(1, self.width, device=device)

    def forward(self, feature: torch.Tensor, eps: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                with_kl: bool = False, official_kl: bool = False, split: Optional[BatchSplit] = None) -> FlowSamples:
        """Samples for the image features ``feature`` [N, E] and noise (context [N, R, W],
        normal [R, W], abnormal [R, W]); KL terms when ``with_kl``."""
        n = batch_images(feature.shape[0], split)  # the state flows' KL is per image of the whole batch
        context = self.context(feature, eps[0], with_kl)
        out = FlowSamples(context=context.z)
        kl = {"kl_context": context.kl}
        noise = {"normal": eps[1], "abnormal": eps[2]}
        for name, flow in self.states.items():
            sample = flow(noise[name], n, with_kl, official_kl)
            setattr(out, name, sample.z)
            kl[f"kl_{name}"] = sample.kl
        if with_kl:
            out.kl = kl
        return out


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

