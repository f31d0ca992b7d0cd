"""winclip: WinCLIP (CVPR 2023), training-free window-level zero-shot segmentation.

Its default backbone is anomalib's (the reference implementation): open_clip ViT-B-16-plus-240
with the laion400m_e31 weights at 240 px; ``--model ViT-L-14-336`` runs it on our usual CLIP.
docs/methods/winclip.md explains it; the model is ``models/winclip.py``.
"""
from __future__ import annotations

from models.methods.base import Method, Paper, frozen
from models.scoring import ScoreRule
from models.winclip import WinClip, WinClipConfig

# the image score is the CLS probability (WinCLIP's zero-shot classification score)
SCORE = ScoreRule(fusion="prob", map_score="grid_max")


def build(backbone, config, method: Method) -> WinClip:
    return WinClip(backbone, config, method.name, method.score_rule(config))


METHOD = Method(
    name="winclip",
    title="WinCLIP (training-free)",
    paper=Paper("WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation", "CVPR 2023",
                "2303.14814", "open-edge-platform/anomalib"),
    docs="docs/methods/winclip.md",
    order=95,
    backbone=frozen({"model": "ViT-B-16-plus-240", "pretrained": "laion400m_e31", "image_size": 240}),
    official=frozen({"prompts": "anomalib", "window_attention": "across"}),
    score=SCORE,
    test_seed=111,
    config_class=WinClipConfig,
    build=build,
)
