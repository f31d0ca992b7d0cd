"""FAPrompt: Fine-grained Abnormality Prompt Learning for Zero-shot Anomaly Detection (ICCV 2025).

Compound abnormality prompts (CAP: one learned normal prompt and K abnormal ones that extend it)
with deep text prompts, a data-dependent abnormality prior (DAP) from the most abnormal patches
of a first pass, the similarity head on the V-V path's final tokens, and the mean of the class
probability and the maps' fused maxima as image score. docs/methods/faprompt.md explains it;
the parts are ``models/cap.py`` and ``models/heads.py``.
"""
from __future__ import annotations

from typing import Tuple

from models import official
from models.official import State
from models.methods import bayes_pfl
from models.methods.base import Method, OfficialCheckpoint, Paper, Recipe, frozen
from models.scoring import ScoreRule

SCORE = ScoreRule(fusion="mean", map_score="dap_maxima")


def to_ours(state: State) -> Tuple[State, dict]:
    """FAPrompt: CAP, deep prompts and the DAP meta-net ``patch_meta_net``."""
    ours, config = official.prompt_learner(state)
    for layer in ("linear1", "linear2"):
        for kind in ("weight", "bias"):
            ours[f"dap.net.{layer}.{kind}"] = state[f"patch_meta_net.{layer}.{kind}"]
    config["dap_k"] = state["patch_meta_net.linear1.weight"].shape[1] // state["ctx_pos"].shape[-1]
    return official.as_float(ours), config


def detect(payload):
    """FAPrompt saves ``{"prompt_learner": state_dict}`` with its DAP meta-net ``patch_meta_net``."""
    return official.saved_prompt_learner(payload, meta_net=True)


METHOD = Method(
    name="faprompt",
    title="FAPrompt",
    paper=Paper("Fine-grained Abnormality Prompt Learning for Zero-shot Anomaly Detection", "ICCV 2025",
                "2410.10289", "mala-lab/FAPrompt"),
    docs="docs/methods/faprompt.md",
    order=0,
    preset=frozen(dict(prompt_structure="cap", class_word="object", dap=True, flows="none", pixel_head="similarity",
                       image_head="fixed", sigma=10.0)),
    official=frozen(dict(dap_select="first", fused_focal_logits=True, deep_prompt_fp16=True)),
    backbone=frozen({"pos_interpolation": "bilinear"}),
    # FAPrompt trains without validation or augmentation; --val_protocol target and --augment on
    # borrow Bayes-PFL's categories and rules
    recipe=Recipe(epochs=15, batch_size=8, seed=111, lr=frozen({"all": 1e-3}),
                  target_validation=bayes_pfl.TARGET_VALIDATION, mosaic_prob=bayes_pfl.MOSAIC_PROB),
    score=SCORE,
    test_seed=111,
    checkpoint=OfficialCheckpoint(detect, to_ours),
)
