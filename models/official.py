"""Pieces of the official checkpoint formats shared by several methods' name maps.

Each method's registry entry (``models/methods/``) recognises its official format and maps its
names onto our modules, returning our state dict and the configuration fields its tensor shapes
imply. FAPrompt and AnomalyCLIP both save a ``prompt_learner`` with the same CAP vectors and deep
prompts (:func:`prompt_learner`); derivable buffers (``token_prefix_*``, ``token_suffix_*``,
``tokenized_prompts_*``) and their unused ``compound_prompt_projections`` are ignored.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

State = Dict[str, torch.Tensor]


META_NET = "patch_meta_net.linear1.weight"  # FAPrompt's DAP meta-net, absent from AnomalyCLIP's files


def saved_prompt_learner(payload: Mapping[str, Any], meta_net: bool) -> Optional[State]:
    """The ``prompt_learner`` state of a loaded file (CAP vectors ``ctx_pos``, ``ctx_neg``), with
    the DAP meta-net (FAPrompt, ``meta_net``) or without it (AnomalyCLIP); None otherwise."""
    learner = payload.get("prompt_learner")
    if isinstance(learner, dict) and {"ctx_pos", "ctx_neg"} <= set(learner) and (META_NET in learner) == meta_net:
        return learner
    return None


def deep_prompts(state: State) -> Tuple[State, int, int]:
    keys = sorted((k for k in state if k.startswith("compound_prompts_text.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    ours = {f"prompts.deep_prompts.{i}": state[key] for i, key in enumerate(keys)}
    return ours, len(keys) + 1, state[keys[0]].shape[0] if keys else 4


def prompt_learner(state: State) -> Tuple[State, dict]:
    """CAP vectors and deep prompts, shared by FAPrompt and AnomalyCLIP.

    ``ctx_pos`` [1, 1, n, W] are the normal vectors; ``ctx_neg`` [1, K, m, W] the abnormal ones.
    """
    ctx_pos, ctx_neg = state["ctx_pos"], state["ctx_neg"]
    ours = {"prompts.normal_ctx": ctx_pos.reshape(ctx_pos.shape[-2], ctx_pos.shape[-1]),
            "prompts.abnormal_ctx": ctx_neg.reshape(ctx_neg.shape[-3], ctx_neg.shape[-2], ctx_neg.shape[-1])}
    deep, depth, t_n_ctx = deep_prompts(state)
    ours.update(deep)
    config = {"abnormal_prompts": ctx_neg.shape[-3], "normal_ctx": ctx_pos.shape[-2],
              "abnormal_ctx": ctx_neg.shape[-2], "depth": depth, "t_n_ctx": t_n_ctx}
    return ours, config


def as_float(state: State) -> State:
    """Floating tensors as float32 (official files may hold fp16)."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
