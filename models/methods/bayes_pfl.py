"""Bayes-PFL: Bayesian Prompt Flow Learning for Zero-Shot Anomaly Detection (CVPR 2025).

A prompt bank of B (context, state) pairs whose context and state vectors are sampled from
planar prompt flows conditioned on the image, a residual cross-attention (RCA) head on four
layers' patch tokens, a class-mapping image head with a second training stage, and min-max
fused image scores. docs/methods/bayes_pfl.md explains it; the parts are ``models/bank.py``,
``models/flows.py`` and ``models/heads.py``.
"""
from __future__ import annotations

from models import official
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
    checkpoint=OfficialCheckpoint(detect, official.bayes_pfl_to_ours, stage=2),
)
