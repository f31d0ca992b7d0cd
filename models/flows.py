"""Planar prompt flows (Bayes-PFL, SPEC section 5).

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
terms are summed over the samples drawn (SPEC section 5).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn


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
