"""The loss definitions of docs/methods/faprompt.md and docs/methods/bayes_pfl.md on inputs
small enough to compute by hand.

The golden tests pin the losses on features where some details never show (random CLIP text
features are all positively correlated, so |cos| = cos; every image has pixels of both
classes); these cases are built so that each detail moves the value.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.backbone import BackboneConfig, build_backbone
from models import methods
from models.methods import preset
from models.losses import (balanced_focal_loss, bank_orthogonality, binary_focal_loss, cap_orthogonality,
                           dice_loss, focal_loss)


def test_cap_orthogonality_sums_absolute_cosines_of_distinct_pairs():
    # three abnormal prompts: cos(a, b) = -1, cos(a, c) = 0, cos(b, c) = 0.6 (norms differ on purpose)
    a = torch.tensor([2.0, 0.0])
    b = torch.tensor([-1.0, 0.0])
    c = torch.tensor([0.0, 3.0])
    d = torch.tensor([-0.6, 0.8]) * 5  # cos(b, d) = 0.6, cos(a, d) = -0.6, cos(c, d) = 0.8
    features = torch.stack([a, b, c, d])
    expected = 1.0 + 0.0 + 0.6 + 0.0 + 0.6 + 0.8  # pairs ab ac ad bc bd cd
    assert cap_orthogonality(features).item() == pytest.approx(expected, abs=1e-6)
    # batched features: the sum runs over the batch too
    assert cap_orthogonality(torch.stack([features, features])).item() == pytest.approx(2 * expected, abs=1e-6)


def test_bank_orthogonality_is_the_mean_squared_off_diagonal_cosine_per_set():
    normal = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # cos = -1: squared 1 on both off-diagonal cells
    abnormal = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # cos = 0
    # mean over all B×B = 4 cells with the diagonal zeroed: (1 + 1) / 4
    assert bank_orthogonality(normal, abnormal).item() == pytest.approx(0.5, abs=1e-6)
    assert bank_orthogonality(abnormal, normal).item() == pytest.approx(0.5, abs=1e-6)


def test_focal_loss_uses_label_smoothing_on_the_one_hot_target():
    probs = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)  # certain of class 1 where the truth is 0
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    smooth = 1e-5
    p_t = (1 - smooth) * 0.0 + smooth * 1.0 + smooth  # the smoothed target leaks onto class 1
    expected = -(1 - p_t) ** 2 * math.log(p_t)
    assert focal_loss(probs, target).item() == pytest.approx(expected, rel=1e-5)


def test_balanced_focal_loss_is_foreground_mean_plus_background_mean():
    probs_abnormal = torch.tensor([[0.9, 0.2, 0.4, 0.3]]).view(1, 1, 2, 2)
    probs = torch.cat([1 - probs_abnormal, probs_abnormal], dim=1)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).view(1, 2, 2)

    def term(p):
        return -(1 - p) ** 2 * math.log(p + 1e-8)

    expected = term(0.9) + (term(0.8) + term(0.6) + term(0.7)) / 3
    assert balanced_focal_loss(probs, mask).item() == pytest.approx(expected, rel=1e-5)


def test_dice_per_image_with_smooth_1_and_over_the_batch_with_smooth_1e5():
    pred = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])  # [B=2, 1, 2]
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    per_image = [(2 * 1 + 1) / (1 + 1 + 1), (0 + 1) / (1 + 0 + 1)]
    assert dice_loss(pred, target).item() == pytest.approx(1 - sum(per_image) / 2, abs=1e-6)
    batch = (2 * 1 + 1e-5) / (2 + 1 + 1e-5)
    assert dice_loss(pred, target, smooth=1e-5, per_sample=False).item() == pytest.approx(1 - batch, abs=1e-6)


def test_binary_focal_loss_on_probabilities_and_on_logits():
    score, label = torch.tensor([0.8, 0.3]), torch.tensor([1, 0])
    bce = torch.tensor([-math.log(0.8), -math.log(0.7)])
    expected = ((1 - torch.exp(-bce)) ** 2 * bce).mean()
    assert binary_focal_loss(score, label).item() == pytest.approx(expected.item(), rel=1e-5)
    bce_logits = F.binary_cross_entropy_with_logits(score, label.float(), reduction="none")
    expected_logits = ((1 - torch.exp(-bce_logits)) ** 2 * bce_logits).mean()
    assert binary_focal_loss(score, label, from_logits=True).item() == pytest.approx(expected_logits.item(), rel=1e-5)


def test_cap_abnormal_prompt_is_the_normalised_mean_of_the_raw_features(tiny_model):
    """docs/methods/faprompt.md: the K abnormal text features are averaged *before* normalising, so a longer
    feature weighs more; averaging unit vectors would be a different prompt."""
    backbone = build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=32))
    torch.manual_seed(5)
    model = methods.get("faprompt").make_model(backbone, preset("faprompt", depth=3, t_n_ctx=2, dap_k=4)).eval()
    with torch.no_grad():
        for p in model.prompts.parameters():  # spread the K features' norms apart
            p.mul_(3.0)
        normal, abnormal = model.prompts.static_features(backbone, ["screw"])
        pairs, _ = model.prompts.pairs(backbone, ["screw"], None, None, None)
    norms = abnormal[0].norm(dim=-1)
    mean_of_units = F.normalize(F.normalize(abnormal[0], dim=-1).mean(0), dim=-1)
    unit_of_mean = F.normalize(abnormal[0].mean(0), dim=-1)
    assert (unit_of_mean - mean_of_units).abs().max() > 1e-3, (norms, "the case cannot tell the two apart")
    torch.testing.assert_close(pairs[0, 1, 0], unit_of_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(pairs[0, 0, 0], F.normalize(normal[0], dim=-1), atol=1e-6, rtol=0)
