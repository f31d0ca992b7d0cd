"""AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection (ICLR 2024).

One learned normal and one learned abnormal context of 12 vectors about the word "object"
(CAP unshared with K = 1), deep text prompts, the similarity head on the V-V tokens of the
listed layers with their maps summed, map losses weighed by 4, and the class probability as
image score. docs/methods/anomalyclip.md explains it.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

from models import official
from models.official import State
from models.methods import bayes_pfl
from models.methods.base import Method, OfficialCheckpoint, Paper, Recipe, frozen
from models.scoring import ScoreRule

# The image score is the class probability alone; the top-k map score is reported beside it
# (scores.csv) with Bayes-PFL's k.
SCORE = ScoreRule(fusion="prob", map_score="topk", topk=2000, small_topk=20,
                  small_classes=bayes_pfl.SMALL_DEFECT_CLASSES)


PRESET = frozen(dict(prompt_structure="cap", share_normal_context=False, abnormal_prompts=1, normal_ctx=12,
                     abnormal_ctx=12, class_word="object", dap=False, flows="none", pixel_head="similarity",
                     image_head="fixed", similarity_layers="features", layer_reduce="sum", features_list=(24,),
                     map_loss_weight=4.0, sigma=4.0))


def n_ctx(value: int, fields: Dict[str, Any]) -> str:
    """Its ``--n_ctx`` is the length of both learned contexts."""
    fields.setdefault("normal_ctx", value)
    fields.setdefault("abnormal_ctx", value)
    return "AnomalyCLIP's normal and abnormal context lengths"


def feature_map_layer(value: Sequence[int], fields: Dict[str, Any]) -> str:
    """Its ``--feature_map_layer`` (first value) drops the listed layers before that position
    from the maps and their losses (the default 0 1 2 3 keeps them all)."""
    layers = tuple(fields.get("features_list", PRESET["features_list"]))
    first = value[0]
    if first <= 0:
        return "AnomalyCLIP: every layer of --features_list gives a map, as here"
    if first >= len(layers):
        raise ValueError(f"it would drop every layer of --features_list {' '.join(map(str, layers))}")
    fields["features_list"] = layers[first:]
    return f"AnomalyCLIP: maps from the listed layers from position {first} on: features_list " \
           f"{' '.join(map(str, layers[first:]))}"


def to_ours(state: State) -> Tuple[State, dict]:
    """AnomalyCLIP: one normal and one abnormal context (``ctx_neg`` [1, 1, m, W]) and deep prompts."""
    ours, config = official.prompt_learner(state)
    return official.as_float(ours), config


def detect(payload):
    """AnomalyCLIP saves ``{"prompt_learner": state_dict}`` like FAPrompt, without its meta-net."""
    return official.saved_prompt_learner(payload, meta_net=False)


METHOD = Method(
    name="anomalyclip",
    title="AnomalyCLIP",
    paper=Paper("AnomalyCLIP: Object-agnostic Prompt Learning for Zero-shot Anomaly Detection", "ICLR 2024",
                "2310.18961", "zqhang/AnomalyCLIP"),
    docs="docs/methods/anomalyclip.md",
    order=3,
    preset=PRESET,
    official=frozen(dict(deep_prompt_fp16=True)),
    backbone=frozen({"pos_interpolation": "bilinear"}),
    # Adam 1e-3, betas (0.5, 0.999), batch 8, 15 epochs, as its train.sh
    recipe=Recipe(epochs=15, batch_size=8, seed=111, lr=frozen({"all": 1e-3}),
                  target_validation=bayes_pfl.TARGET_VALIDATION, mosaic_prob=bayes_pfl.MOSAIC_PROB),
    score=SCORE,
    test_seed=111,
    checkpoint=OfficialCheckpoint(detect, to_ours),
    official_flags=frozen({"n_ctx": n_ctx, "feature_map_layer": feature_map_layer}),
)
