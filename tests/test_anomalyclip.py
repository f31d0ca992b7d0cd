"""The AnomalyCLIP preset on the tiny backbone: its parts, shapes, batching and a learning check
(its official outputs and checkpoints: test_golden.py, test_official_checkpoints.py)."""
from __future__ import annotations

import pytest
import torch

from conftest import defect_batch, learning_run
from models.backbone import BackboneConfig, build_backbone
from models import methods
from models.methods import preset

SIZE = 32
CONFIG = preset("anomalyclip", depth=3, features_list=(2, 4))


@pytest.fixture()
def backbone(tiny_model):
    return build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=SIZE))


def _images(n, seed=0):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_object_agnostic_prompts_and_parts(backbone):
    model = methods.get("anomalyclip").make_model(backbone, CONFIG)
    w = backbone.text_width
    assert model.prompts.normal_ctx.shape == (12, w) and model.prompts.abnormal_ctx.shape == (1, 12, w)
    assert [p.shape for p in model.prompts.deep_prompts] == [(4, w)] * 2
    assert model.prompts.template_text("object", False) == " ".join(["X"] * 12) + " object."
    assert model.prompts.template_text("object", True) == " ".join(["X"] * 12) + " damaged object."
    assert not any(hasattr(model, part) for part in ("dap", "flows", "rca", "bank"))
    assert model.score_rule.fusion == "prob" and not model.two_stage


def test_maps_are_the_sum_of_the_layer_maps(backbone):
    model = methods.get("anomalyclip").make_model(backbone, CONFIG).eval()
    with torch.no_grad():
        out = model(_images(3), ["bottle", "screw", "bottle"])
    assert len(out.final.similarity_maps) == 2 and out.first is None and out.class_logits.shape == (3, 2, 1)
    layers = [(m[:, 1] + 1 - m[:, 0]) / 2 for m in out.final.similarity_maps]
    torch.testing.assert_close(out.anomaly_map, layers[0] + layers[1])
    assert out.anomaly_map.max() > 1  # a sum, not a mean, of probabilities in [0, 1]
    # the layers differ: the current code reads each listed layer's tokens
    assert (out.final.similarity_grids[0] - out.final.similarity_grids[1]).abs().max() > 1e-4
    aliased = methods.get("anomalyclip").make_model(backbone, preset("anomalyclip", depth=3, features_list=(2, 4),
                                                                     vv_aliased=True)).eval()
    aliased.load_state_dict(model.state_dict())
    with torch.no_grad():
        old = aliased(_images(3), ["bottle", "screw", "bottle"])
    torch.testing.assert_close(old.final.similarity_grids[0], old.final.similarity_grids[1])  # 2024 behaviour


def test_batch_equals_single_images(backbone):
    model = methods.get("anomalyclip").make_model(backbone, CONFIG).eval()
    images, names = _images(4, seed=2), ["bottle", "metal_nut", "bottle", "pcb1"]
    with torch.no_grad():
        batch = model.predict(images, names)
        for i in range(4):
            one = model.predict(images[i:i + 1], names[i:i + 1])
            torch.testing.assert_close(one.anomaly_map, batch.anomaly_map[i:i + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.class_prob, batch.class_prob[i:i + 1], atol=1e-5, rtol=0)


def test_loss_terms_and_one_parameter_group(backbone):
    model = methods.get("anomalyclip").make_model(backbone, CONFIG).train()
    images, masks, labels = defect_batch(4, SIZE, seed=0)
    terms = model.loss(model(images, ["object"] * 4), masks, labels)
    assert set(terms) == {"map", "image", "total"}  # K = 1: no orthogonality term
    groups = model.param_groups({"all": 1e-3})
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == {
        id(p) for p in model.prompts.parameters()}


def test_learning_lowers_loss_and_raises_pixel_auroc(tiny_model):
    size = 64
    backbone = build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=size))
    torch.manual_seed(0)
    model = methods.get("anomalyclip").make_model(backbone, CONFIG)
    (loss0, auroc0), (loss1, auroc1) = learning_run(model, size, {"all": 1e-2})
    # measured over initialisation seeds 0, 1, 2: loss 11.9→8.3, 15.3→8.6, 15.8→8.0;
    # pixel AUROC 0.58→0.96, 0.52→0.91, 0.18→0.98
    assert loss1 < loss0 * 0.8
    assert auroc1 > auroc0 + 0.2 and auroc1 > 0.85
