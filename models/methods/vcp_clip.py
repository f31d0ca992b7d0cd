"""vcp_clip: VCP-CLIP, visual context prompting (ECCV 2024; the Bayes-PFL authors).

Pre-VCP turns the global image feature into the prompt's class tokens, learned text prompt tokens
sit in every text block, Post-VCP lets the text attend to the patch tokens of four blocks, and an
APRIL-GAN-style linear branch joins the map. docs/methods/vcp_clip.md explains it; the model is
``models/vcp_clip.py``.
"""
from __future__ import annotations

from typing import Tuple

from models import official
from models.methods.base import Method, OfficialCheckpoint, Paper, Recipe, frozen
from models.official import State
from models.scoring import ScoreRule
from models.vcp_clip import VcpClip, VcpClipConfig

# no image head: the image score is the sum of both branches' top-2000 map means, min-max
# scaled over the category
SCORE = ScoreRule(fusion="map", map_score="branch_topk", topk=2000)
PARTS = ("trainable_linearlayer", "New_Lan_Embed", "Zero_try")
# its CLIP's trained parameters (every name with "prompt"), saved at the top level of the file
TEXT_PROMPTS = {"prompt_embeddings": "text_prompts.shallow", "deep_prompt_embeddings": "text_prompts.deep",
                "prompt_proj.weight": "text_prompts.proj.weight", "prompt_proj.bias": "text_prompts.proj.bias",
                "prompt_norm.weight": "text_prompts.norm.weight", "prompt_norm.bias": "text_prompts.norm.bias"}
POST_VCP = {"q_proj_pre": "q", "k_proj_pre_1": "k", "v_proj_pre_1": "v", "proj_post_t": "out"}


def detect(payload):
    """The official train.py saves ``{"trainable_linearlayer", "New_Lan_Embed", "Zero_try"}`` state
    dicts beside its CLIP's prompt parameters; flattened here as ``part.name``."""
    if not isinstance(payload, dict) or not all(isinstance(payload.get(part), dict) for part in PARTS):
        return None
    state = {f"{part}.{key}": value for part in PARTS for key, value in payload[part].items()}
    state.update({key: payload[key] for key in TEXT_PROMPTS if key in payload})
    return state if "New_Lan_Embed.prompt_query" in state and "prompt_embeddings" in state else None


def to_ours(state: State) -> Tuple[State, dict]:
    """``fc.i`` → ``linear.i``; ``New_Lan_Embed`` → ``pre_vcp``; ``Zero_try``'s 1×1 convolutions →
    ``post_vcp``'s linears; the text prompt parameters → ``text_prompts`` (its unused
    ``prompt_text_projection`` is ignored). Shapes give r, n and the number of prompted blocks."""
    ours: State = {}
    for key, value in state.items():
        part, _, name = key.partition(".")
        if part == "trainable_linearlayer" and name.startswith("fc."):
            ours[f"linear.{name[3:]}"] = value
        elif part == "New_Lan_Embed":
            ours[{"prompt_query": "pre_vcp.query", "prompt_temp": "pre_vcp.temperature",
                  "prompt_linear1.fc.weight": "pre_vcp.conv.weight",
                  "prompt_linear1.fc.bias": "pre_vcp.conv.bias"}[name]] = value
        elif part == "Zero_try":
            if name == "prompt_temp_l1":
                ours["post_vcp.temperature"] = value
            else:
                module, kind = name.rsplit(".", 1)
                ours[f"post_vcp.{POST_VCP[module]}.{kind}"] = value.squeeze(-1) if kind == "weight" else value
        elif key in TEXT_PROMPTS:
            ours[TEXT_PROMPTS[key]] = value
    deep = state.get("deep_prompt_embeddings")
    config = {"prompt_len": state["New_Lan_Embed.prompt_query"].shape[1],
              "deep_prompt_len": state["prompt_embeddings"].shape[1],
              "total_d_layer_len": 0 if deep is None else deep.shape[0]}
    if deep is None:  # a shallow model has no deep tokens; ours holds an empty tensor
        ours["text_prompts.deep"] = state["prompt_embeddings"].new_zeros(0, *state["prompt_embeddings"].shape[1:])
    return official.as_float(ours), config


def build(backbone, config, method: Method) -> VcpClip:
    return VcpClip(backbone, config, method.name, method.score_rule(config))


METHOD = Method(
    name="vcp_clip",
    title="VCP-CLIP",
    paper=Paper("VCP-CLIP: A visual context prompting model for zero-shot anomaly segmentation", "ECCV 2024",
                "2407.12276", "xiaozhen228/VCP-CLIP"),
    docs="docs/methods/vcp_clip.md",
    order=7,
    # its CLIP resizes the position grid bicubically with antialias, and its transformer runs
    # exact GELU in both towers (the OpenAI weights were trained with QuickGELU)
    backbone=frozen({"pos_interpolation": "bicubic"}),
    official=frozen({}),
    official_backbone=frozen({"activation": "gelu"}),
    # Adam, betas (0.5, 0.999): 4e-5 (its train.sh on VisA; 2e-5 on MVTec-AD), 0.01 for the two
    # temperatures; batch 32, 10 epochs, seed 333; Bayes-PFL's augmentation, with a 2x2 mosaic of
    # anomalous images 20 % of the time on MVTec-AD
    recipe=Recipe(epochs=10, batch_size=32, seed=333, lr=frozen({"all": 4e-5, "temperature": 1e-2}), augment=True,
                  mosaic_prob=frozen({"mvtec": 0.2}), by_dataset=frozen({"mvtec": frozen({"lr": {"all": 2e-5}})})),
    score=SCORE,
    test_seed=333,
    checkpoint=OfficialCheckpoint(detect, to_ours),
    config_class=VcpClipConfig,
    build=build,
)
