"""clip: the training-free baseline, frozen CLIP with a hand-written prompt ensemble.

Needs nothing but CLIP weights; its pixel map compares the V-V path's patch tokens with the
ensemble's normal and abnormal text features. docs/methods/clip.md explains it; the model is
``models/clip_baseline.py``.
"""
from __future__ import annotations

from models.clip_baseline import ClipBaseline, ClipBaselineConfig
from models.methods.base import Method, frozen
from models.scoring import ScoreRule

SCORE = ScoreRule(fusion="mean", map_score="grid_max")


def build(backbone, config, method: Method) -> ClipBaseline:
    return ClipBaseline(backbone, config, method.name, method.score_rule(config))


METHOD = Method(
    name="clip",
    title="CLIP baseline (training-free)",
    paper=None,
    docs="docs/methods/clip.md",
    order=90,
    backbone=frozen({"pos_interpolation": "bicubic"}),
    score=SCORE,
    test_seed=111,  # FAPrompt's and AnomalyCLIP's test seed
    config_class=ClipBaselineConfig,
    build=build,
)
