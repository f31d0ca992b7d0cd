"""april_gan: APRIL-GAN, the VAND 2023 challenge winner (zero-shot track).

Trained linear maps of the raw patch tokens of blocks 6 12 18 24 meet a fixed prompt ensemble;
the layers' maps are summed and the image score is the CLS feature's probability.
docs/methods/april_gan.md explains it; the model is ``models/april_gan.py``.
"""
from __future__ import annotations

from typing import Tuple

from models import official
from models.april_gan import AprilGan, AprilGanConfig
from models.methods.base import Method, OfficialCheckpoint, Paper, Recipe, frozen
from models.official import State
from models.scoring import ScoreRule

# the image score is the CLS probability; few-shot: its test.py's sum of layer maps and score
SCORE = ScoreRule(fusion="prob", map_score="grid_max", fewshot="final_max")
KEY = "trainable_linearlayer"


def detect(payload):
    """The official train.py saves ``{"trainable_linearlayer": {fc.i.weight, fc.i.bias}}``."""
    state = payload.get(KEY) if isinstance(payload, dict) else None
    if isinstance(state, dict) and "fc.0.weight" in state and "Zero_try" not in payload:  # VCP-CLIP's has one too
        return state
    return None


def to_ours(state: State) -> Tuple[State, dict]:
    """``fc.i`` is our ``linear.i``; the number of layers is that of ``fc.*`` weights."""
    ours = {f"linear.{key[3:]}": value for key, value in state.items() if key.startswith("fc.")}
    return official.as_float(ours), {}


def build(backbone, config, method: Method) -> AprilGan:
    return AprilGan(backbone, config, method.name, method.score_rule(config))


METHOD = Method(
    name="april_gan",
    title="APRIL-GAN",
    paper=Paper("APRIL-GAN: A Zero-/Few-Shot Anomaly Classification and Segmentation Method for CVPR 2023 VAND "
                "Workshop Challenge", "CVPRW 2023", "2305.17382", "ByChelsea/VAND-APRIL-GAN"),
    docs="docs/methods/april_gan.md",
    order=6,
    # its open_clip builds ViT-L-14-336 at 518 px with exact GELU (QuickGELU only at 336 px), and
    # resizes the position grid bicubically with antialias
    backbone=frozen({"pos_interpolation": "bicubic"}),
    official=frozen({}),
    official_backbone=frozen({"activation": "gelu"}),
    # Adam 1e-3, betas (0.5, 0.999), batch 8, seed 111; 15 epochs on VisA, 3 on MVTec-AD (its train.sh);
    # on MVTec-AD a 2x2 mosaic of tiles drawn by defect type replaces a sample 20 % of the time
    recipe=Recipe(epochs=15, batch_size=8, seed=111, lr=frozen({"all": 1e-3}), mosaic_prob=frozen({"mvtec": 0.2}),
                  mosaic_pool="defect_types", mosaic_alone=True, by_dataset=frozen({"mvtec": frozen({"epochs": 3})})),
    score=SCORE,
    test_seed=111,
    checkpoint=OfficialCheckpoint(detect, to_ours),
    config_class=AprilGanConfig,
    build=build,
)
