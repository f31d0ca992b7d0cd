"""adaclip: AdaCLIP, hybrid static and dynamic prompts in both CLIP towers (ECCV 2024).

Learned prompt tokens in the first blocks of the image and the text tower (static ones plus
dynamic ones made from each image), projections of four blocks' prompted patch tokens, and
hybrid semantic fusion (HSF) of the most abnormal patches into the image score.
docs/methods/adaclip.md explains it; the model is ``models/adaclip.py``.
"""
from __future__ import annotations

from typing import Tuple

import torch

from models import official
from models.adaclip import AdaClip, AdaClipConfig
from models.methods.base import Method, OfficialCheckpoint, Paper, Recipe, frozen
from models.official import State
from models.scoring import ScoreRule

SCORE = ScoreRule(fusion="prob", map_score="grid_max")  # the image score is the (HSF-fused) probability
PREFIX = "clip_model."
TOWERS = {"visual_prompter": "visual_prompts", "text_prompter": "text_prompts"}
GENERATORS = {"dynamic_visual_prompt_generator": "visual_prompts", "dynamic_text_prompt_generator": "text_prompts"}


def detect(payload):
    """Its trainer saves the learned entries of its state dict, flat, under ``clip_model.``."""
    if isinstance(payload, dict) and any(isinstance(k, str) and k.startswith(PREFIX + "patch_token_layer.head.")
                                         for k in payload):
        return {k[len(PREFIX):]: v for k, v in payload.items() if isinstance(k, str) and k.startswith(PREFIX)}
    return None


def to_ours(state: State) -> Tuple[State, dict]:
    """Static prompts per block → one [J, n, W] tensor per tower; each dynamic generator's heads
    → ``<tower>.dynamic.i``; ``patch_token_layer.head.i`` → ``patch_proj.i``; ``cls_token_layer``
    → ``cls_proj``. The shapes give J, n, the prompt type and the prompted towers."""
    ours: State = {}
    config = {}
    kinds, branches = set(), set()
    for official_name, tower in TOWERS.items():
        keys = sorted((k for k in state if k.startswith(f"{official_name}.static_prompts.")),
                      key=lambda k: int(k.rsplit(".", 1)[1]))
        if keys:
            ours[f"{tower}.static"] = torch.stack([state[k] for k in keys])
            config.update(prompting_depth=len(keys), prompting_length=state[keys[0]].shape[0])
            kinds.add("S")
            branches.add(tower)
    for official_name, tower in GENERATORS.items():
        heads = [k for k in state if k.startswith(f"{official_name}.head.")]
        for key in heads:
            ours[f"{tower}.dynamic.{key[len(official_name) + 6:]}"] = state[key]
        if heads:
            kinds.add("D")
            branches.add(tower)
            config.setdefault("prompting_length", len({k.split(".")[2] for k in heads}))
    for key, value in state.items():
        if key.startswith("patch_token_layer.head."):
            ours[f"patch_proj.{key[len('patch_token_layer.head.'):]}"] = value
        elif key.startswith("cls_token_layer.head.0."):
            ours[f"cls_proj.{key[len('cls_token_layer.head.0.'):]}"] = value
    config["prompting_type"] = "".join(k for k in "SD" if k in kinds)
    towers = (("V", "visual_prompts"), ("L", "text_prompts"))
    config["prompting_branch"] = "".join(b for b, t in towers if t in branches)
    return official.as_float(ours), config


def cache_blocker(config) -> str:
    return "AdaCLIP's visual prompts are trained, so the image tower's outputs change every step" \
        if "V" in config.prompting_branch else ""


def build(backbone, config, method: Method) -> AdaClip:
    return AdaClip(backbone, config, method.name, method.score_rule(config))


METHOD = Method(
    name="adaclip",
    title="AdaCLIP",
    paper=Paper("AdaCLIP: Adapting CLIP with Hybrid Learnable Prompts for Zero-Shot Anomaly Detection", "ECCV 2024",
                "2407.15795", "caoyunkang/AdaCLIP"),
    docs="docs/methods/adaclip.md",
    order=8,
    # its CLIP is a fresh open_clip model at 518 px (exact GELU; the OpenAI weights were trained with
    # QuickGELU) with the position grid resized bicubically, without antialias
    backbone=frozen({"pos_interpolation": "bicubic_plain"}),
    official=frozen({"row_dice": True}),
    official_backbone=frozen({"activation": "gelu"}),
    # AdamW 0.01 (weight decay 0.01), betas (0.5, 0.999), batch 1, 5 epochs, seed 111; on MVTec-AD
    # a 2x2 mosaic of 4 random images of the class replaces a sample 20 % of the time
    recipe=Recipe(epochs=5, batch_size=1, seed=111, lr=frozen({"all": 0.01}), weight_decay=0.01,
                  mosaic_prob=frozen({"mvtec": 0.2}), mosaic_pool="records", mosaic_alone=True,
                  companions=frozen({"mvtec": ("colondb",), "visa": ("clinicdb",)})),
    score=SCORE,
    test_seed=111,
    checkpoint=OfficialCheckpoint(detect, to_ours),
    cache_blocker=cache_blocker,
    config_class=AdaClipConfig,
    build=build,
)
