"""Checkpoints written by an earlier version of the code keep loading and predicting the same
(tests/legacy/README.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbone import build_backbone
from models.factory import make_config, model_from_checkpoint, read_checkpoint

LEGACY = Path(__file__).resolve().parent / "legacy"


@pytest.mark.parametrize("method", ["faprompt", "bayes_pfl", "fapfl"])
def test_format_1_checkpoint_loads_and_predicts_the_same(method, tiny_model):
    expected = np.load(LEGACY / "expected.npz")
    checkpoint = read_checkpoint(str(LEGACY / f"{method}_v1.pth"))
    assert checkpoint.method == method and checkpoint.backbone.model == tiny_model
    torch.manual_seed(0)
    backbone = build_backbone(checkpoint.backbone)
    checksum = sum(float(v.double().abs().sum()) for v in backbone.state_dict().values())
    if abs(checksum - float(expected[f"{method}/backbone_checksum"])) > 1e-6:
        pytest.fail("the random tiny backbone rebuilt differently (torch's initialisation changed); "
                    "the expected outputs no longer apply")
    model = model_from_checkpoint(checkpoint, make_config(method, checkpoint.config), backbone).eval()
    if hasattr(model, "start_evaluation"):
        model.start_evaluation(5)
    with torch.no_grad():
        pred = model.predict(torch.from_numpy(expected["images"]), ["bottle", "metal_nut", "screw"])
    for key in ("anomaly_map", "class_prob", "map_score"):
        np.testing.assert_allclose(getattr(pred, key).numpy(), expected[f"{method}/{key}"], atol=1e-6, rtol=0,
                                   err_msg=f"{method} {key}")
