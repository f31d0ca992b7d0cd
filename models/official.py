"""Official checkpoints onto our modules, by explicit name maps.

FAPrompt and AnomalyCLIP save ``{"prompt_learner": state_dict}`` (told apart by FAPrompt's
meta-net), Bayes-PFL ``{"MyModel": state_dict}``; each method's registry entry
(``models/methods/``) recognises its format and names its map here. Each map returns our state dict and the
configuration fields its tensor shapes imply; derivable buffers (``token_prefix_*``,
``token_suffix_*``, ``tokenized_prompts_*``), FAPrompt's and AnomalyCLIP's unused
``compound_prompt_projections``, Bayes-PFL's decoders and ``p_mu`` layers are ignored.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

State = Dict[str, torch.Tensor]


def _deep_prompts(state: State) -> Tuple[State, int, int]:
    keys = sorted((k for k in state if k.startswith("compound_prompts_text.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    ours = {f"prompts.deep_prompts.{i}": state[key] for i, key in enumerate(keys)}
    return ours, len(keys) + 1, state[keys[0]].shape[0] if keys else 4


def _prompt_learner(state: State) -> Tuple[State, dict]:
    """CAP vectors and deep prompts, shared by FAPrompt and AnomalyCLIP.

    ``ctx_pos`` [1, 1, n, W] are the normal vectors; ``ctx_neg`` [1, K, m, W] the abnormal ones.
    """
    ctx_pos, ctx_neg = state["ctx_pos"], state["ctx_neg"]
    ours = {"prompts.normal_ctx": ctx_pos.reshape(ctx_pos.shape[-2], ctx_pos.shape[-1]),
            "prompts.abnormal_ctx": ctx_neg.reshape(ctx_neg.shape[-3], ctx_neg.shape[-2], ctx_neg.shape[-1])}
    deep, depth, t_n_ctx = _deep_prompts(state)
    ours.update(deep)
    config = {"abnormal_prompts": ctx_neg.shape[-3], "normal_ctx": ctx_pos.shape[-2],
              "abnormal_ctx": ctx_neg.shape[-2], "depth": depth, "t_n_ctx": t_n_ctx}
    return ours, config


def faprompt_to_ours(state: State) -> Tuple[State, dict]:
    """FAPrompt: CAP, deep prompts and the DAP meta-net ``patch_meta_net``."""
    ours, config = _prompt_learner(state)
    for layer in ("linear1", "linear2"):
        for kind in ("weight", "bias"):
            ours[f"dap.net.{layer}.{kind}"] = state[f"patch_meta_net.{layer}.{kind}"]
    config["dap_k"] = state["patch_meta_net.linear1.weight"].shape[1] // state["ctx_pos"].shape[-1]
    return _float(ours), config


def anomalyclip_to_ours(state: State) -> Tuple[State, dict]:
    """AnomalyCLIP: one normal and one abnormal context (``ctx_neg`` [1, 1, m, W]) and deep prompts."""
    ours, config = _prompt_learner(state)
    return _float(ours), config


_BAYES_LINEAR = {"fuse.fuse_modules": "image_head.fuse.reduce", "fuse.compress": "image_head.fuse.score",
                 "fuse.post_process": "image_head.fuse.out", "RCA.q_proj_pre": "rca.query",
                 "class_mapping": "image_head.class_mapping", "image_mapping": "image_head.image_mapping",
                 "PFL_context.amor_u": "flows.context.u", "PFL_context.amor_w": "flows.context.w",
                 "PFL_context.amor_b": "flows.context.b"}


def _encoder(state: State, source: str, target: str) -> State:
    out = {}
    for part, ours in (("weight_mean", "mean"), ("weight_log_variance", "log_var")):
        for index in ("0", "2", "4"):
            for kind in ("weight", "bias"):
                out[f"{target}.{ours}.{index}.{kind}"] = state[f"{source}.{part}.module.{index}.{kind}"]
    return out


def bayes_pfl_to_ours(state: State) -> Tuple[State, dict]:
    """Bayes-PFL's ``MyModel``. Shared modules are stored under several identical keys; one
    alias is read. Released checkpoints are stage 2, so the stage is set to 2. The layers of
    ``features_list`` are not stored; their number is that of ``RCA.linear_proj``."""
    ours: State = {
        "bank.context": state["prompt_context"],
        "bank.normal_state": state["prompt_state_normal"],
        "bank.abnormal_state": state["prompt_state_abnormal"],
        "rca.log_temperature": state["temperature_pixel"],
        "image_head.log_temperature": state["temperature_image"],
        "stage": torch.tensor(2),
    }
    for source, target in _BAYES_LINEAR.items():
        for kind in ("weight", "bias"):
            ours[f"{target}.{kind}"] = state[f"{source}.{kind}"]
    ours.update(_encoder(state, "context_encoder", "flows.context.encoder"))
    for alias in ("flows.state_encoder", "flows.normal.encoder", "flows.abnormal.encoder"):
        ours.update(_encoder(state, "state_encoder", alias))
    num_flows = state["PFL_normal.amor_u"].shape[1]
    for flow, target in (("PFL_normal", "flows.normal"), ("PFL_abnormal", "flows.abnormal")):
        ours[f"{target}.state"] = state[f"{flow}.state"]
        ours[f"{target}.u"] = state[f"{flow}.amor_u"].reshape(num_flows, -1)
        ours[f"{target}.w"] = state[f"{flow}.amor_w"].reshape(num_flows, -1)
        ours[f"{target}.b"] = state[f"{flow}.amor_b"].reshape(num_flows)
    layers = sorted(int(k.split(".")[2]) for k in state if k.startswith("RCA.linear_proj."))
    for index in layers:
        ours[f"rca.proj.{index}.weight"] = state[f"RCA.linear_proj.{index}.weight"]
    config = {"prompt_num": state["prompt_context"].shape[0], "prompt_context_len": state["prompt_context"].shape[1],
              "prompt_state_len": state["prompt_state_normal"].shape[1], "num_flows": num_flows}
    return _float(ours), config


def _float(state: State) -> State:
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
