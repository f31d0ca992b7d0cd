"""Bayes-PFL: Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection (CVPR 2025).

A prompt bank of B (context, state) pairs whose context and state vectors are sampled from
planar prompt flows conditioned on the image, a residual cross-attention (RCA) head on four
layers' patch tokens, a class-mapping image head with a second training stage, and min-max
fused image scores. docs/methods/bayes_pfl.md explains it; the parts are ``models/bank.py``,
``models/flows.py`` and ``models/heads.py``.
"""
from __future__ import annotations

from typing import Tuple

import torch

from models import official
from models.official import State
from models.methods.base import Method, OfficialCheckpoint, Paper, Recipe, frozen
from models.scoring import ScoreRule

# The official validation categories of its target protocol, by auxiliary set: validating a
# VisA-trained model on five MVTec-AD categories, an MVTec-trained one on five of VisA's.
TARGET_VALIDATION = frozen({"visa": ("mvtec", ("bottle", "hazelnut", "wood", "zipper", "leather")),
                            "mvtec": ("visa", ("chewinggum", "cashew", "pipe_fryum", "capsules", "candle"))})
# Its augmentation tiles 2x2 mosaics with probability 0.4 when MVTec-AD is the auxiliary set.
MOSAIC_PROB = frozen({"mvtec": 0.4})
# The 20 (not 2000) highest map values make the map score of categories with small defects.
SMALL_DEFECT_CLASSES = frozenset({"capsules", "macaroni1", "macaroni2", "pipe_fryum", "screw", "cashew",
                                  "chewinggum"})
SCORE = ScoreRule(fusion="minmax", map_score="topk", fusion_without_masks="class", topk=2000, small_topk=20,
                  small_classes=SMALL_DEFECT_CLASSES)
GROUP_RATES = frozen({"prompt": 1e-3, "flow": 1e-3, "linear": 1e-4, "temperature": 1e-2})


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


def to_ours(state: State) -> Tuple[State, dict]:
    """Bayes-PFL's ``MyModel``. Shared modules are stored under several identical keys; one
    alias is read. Released checkpoints are stage 2, so the stage is set to 2. The layers of
    ``features_list`` are not stored; their number is that of ``RCA.linear_proj``. Its flows'
    decoders and ``p_mu`` layers, which no output reads, are ignored."""
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
    return official.as_float(ours), config


def detect(payload):
    """Bayes-PFL saves ``{"MyModel": state_dict}``."""
    model = payload.get("MyModel")
    if isinstance(model, dict) and "prompt_context" in model and "PFL_normal.amor_u" in model:
        return model
    return None


METHOD = Method(
    name="bayes_pfl",
    title="Bayes-PFL",
    paper=Paper("Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection", "CVPR 2025", "2503.10080",
                "xiaozhen228/Bayes-PFL"),
    docs="docs/methods/bayes_pfl.md",
    order=1,
    preset=frozen(dict(prompt_structure="bank", class_word="name", dap=False, flows="context+state",
                       pixel_head="rca", image_head="class_mapping", sigma=8.0)),
    official=frozen(dict(official_noise=True, official_state_kl=True)),
    backbone=frozen({"pos_interpolation": "bicubic"}),
    official_backbone=frozen({"activation": "gelu"}),  # exact GELU in both towers
    recipe=Recipe(epochs=30, batch_size=32, seed=333, lr=GROUP_RATES, validation="aux", official_validation="target",
                  target_validation=TARGET_VALIDATION, augment=True, mosaic_prob=MOSAIC_PROB),
    score=SCORE,
    test_seed=333,
    checkpoint=OfficialCheckpoint(detect, to_ours, stage=2),
)
