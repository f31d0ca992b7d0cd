"""The combined model: each published method is one setting of it (equivalence with the
dedicated code paths), and every switch combination runs, batches and trains."""
from __future__ import annotations

import pytest
import torch

from models.backbone import BackboneConfig, build_backbone
from models.bayes_pfl import BayesPFL, BayesPFLConfig
from models.clip_baseline import ClipBaseline, ClipBaselineConfig
from models.faprompt import FAPrompt, FAPromptConfig
from models.fapfl import FAPFL, FAPFLConfig

SIZE = 32
TINY = dict(depth=3, t_n_ctx=2, dap_k=4, features_list=(2, 4), sample_num=2)


@pytest.fixture()
def backbone(tiny_model):
    return build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=SIZE))


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=g)
    masks = torch.zeros(n, SIZE, SIZE)
    masks[n // 2:, 8:20, 4:16] = 1
    return images, masks, (masks.flatten(1).amax(1) > 0).long()


NAMES = ["bottle", "pcb1", "bottle", "screw"]


@pytest.mark.parametrize("official", [False, True])
def test_faprompt_preset_equals_faprompt(backbone, official):
    torch.manual_seed(1)
    dedicated_cfg = FAPromptConfig(depth=3, t_n_ctx=2, dap_k=4)
    combined_cfg = FAPFLConfig.faprompt_preset(**TINY)
    if official:
        dedicated_cfg = dedicated_cfg.official()
        combined_cfg = FAPFLConfig.faprompt_preset(**TINY, dap_select="first", fused_focal_logits=True,
                                                   deep_prompt_fp16=True)
    dedicated = FAPrompt(backbone, dedicated_cfg)
    combined = FAPFL(backbone, combined_cfg)
    combined.load_state_dict(dedicated.state_dict())  # the same parameter names
    images, masks, labels = _batch()
    a, b = dedicated(images, NAMES), combined(images, NAMES)
    torch.testing.assert_close(b.first.grid, a.grid1[..., 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(b.final.grid, a.grid2[..., 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(b.prior, a.prior, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.text[:, :, 0], a.text_dap, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.class_logits[:, :, 0], a.image_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.anomaly_map, a.anomaly_map, atol=1e-6, rtol=0)
    torch.testing.assert_close(b.fused_score, a.image_score, atol=1e-6, rtol=0)
    loss_a, loss_b = dedicated.loss(a, masks, labels), combined.loss(b, masks, labels)
    pairs = {"map1": "map_first", "map2": "map_final", "image": "image", "fused": "fused",
             "orthogonal": "orthogonal", "prior": "prior", "total": "total"}
    assert set(loss_b) == set(pairs.values())
    for key_a, key_b in pairs.items():
        torch.testing.assert_close(loss_b[key_b], loss_a[key_a], atol=1e-5, rtol=1e-6)
    assert combined.score_fusion == dedicated.score_fusion == "mean"


@pytest.mark.parametrize("official", [False, True])
def test_bayes_pfl_preset_equals_bayes_pfl(backbone, official):
    torch.manual_seed(2)
    extra = dict(official_noise=official, official_state_kl=official)
    dedicated = BayesPFL(backbone, BayesPFLConfig(features_list=(2, 4), sample_num=2, **extra))
    combined = FAPFL(backbone, FAPFLConfig.bayes_pfl_preset(**TINY, **extra))
    combined.load_state_dict(dedicated.state_dict())
    images, masks, labels = _batch()
    dedicated.eval(), combined.eval()
    with torch.no_grad():
        dedicated.start_evaluation(5)
        combined.start_evaluation(5)
        a, b = dedicated(images, NAMES), combined(images, NAMES)
        pa, pb = dedicated.predict(images, NAMES), combined.predict(images, NAMES)
    torch.testing.assert_close(b.text, a.text.flatten(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.class_logits, a.class_logits, atol=1e-5, rtol=0)
    for da, db in zip(a.pixel_logits, b.final.diffs):
        torch.testing.assert_close(db, da, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.anomaly_map, a.anomaly_map, atol=1e-6, rtol=0)
    for field in ("anomaly_map", "class_prob", "map_score"):
        torch.testing.assert_close(getattr(pb, field), getattr(pa, field), atol=1e-6, rtol=0)
    assert combined.score_fusion == dedicated.score_fusion == "minmax"
    # training: the same seed draws the same noise and bank pair
    dedicated.train(), combined.train()
    torch.manual_seed(11)
    ta = dedicated.loss(dedicated(images, NAMES), masks, labels)
    torch.manual_seed(11)
    out = combined(images, NAMES)
    tb = combined.loss(out, masks, labels)
    names = {"segmentation": "map", "image": "image", "kl_context": "kl_context", "kl_normal": "kl_normal",
             "kl_abnormal": "kl_abnormal", "orthogonal": "orthogonal", "total": "total"}
    assert set(tb) == set(names.values())
    for key_a, key_b in names.items():
        torch.testing.assert_close(tb[key_b], ta[key_a], atol=1e-5, rtol=1e-6)


SWITCHES = [
    dict(),  # the design card's default
    dict(pixel_head="similarity", image_head="fixed"),
    dict(pixel_head="rca", flows="context"),
    dict(dap=False, flows="none", pixel_head="both"),
    dict(prompt_structure="bank", dap=False, flows="context+abnormal", pixel_head="both"),
]


@pytest.mark.parametrize("switches", SWITCHES)
def test_switch_combinations_run_batch_and_train(backbone, switches):
    torch.manual_seed(3)
    model = FAPFL(backbone, FAPFLConfig(**{**TINY, **switches}))
    images, masks, labels = _batch()
    model.eval()
    with torch.no_grad():
        model.start_evaluation(9)
        batch = model.predict(images, NAMES)
        model.start_evaluation(9)
        singles = [model.predict(images[i:i + 1], NAMES[i:i + 1]) for i in range(4)]
    assert batch.anomaly_map.shape == (4, SIZE, SIZE)
    for i, one in enumerate(singles):
        torch.testing.assert_close(one.anomaly_map, batch.anomaly_map[i:i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(one.class_prob, batch.class_prob[i:i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(one.map_score, batch.map_score[i:i + 1], atol=1e-5, rtol=0)
    model.train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    terms = model.loss(model(images, NAMES), masks, labels)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    groups = model.param_groups()
    torch.optim.Adam(groups).step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    ids = [id(p) for g in groups for p in g["params"]]
    learnable = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert len(ids) == len(set(ids)) == len(learnable)


def test_default_uses_flows_dap_and_both_heads(backbone):
    model = FAPFL(backbone, FAPFLConfig(**TINY))
    assert hasattr(model, "context_flow") and hasattr(model, "abnormal_flow") and not hasattr(model, "normal_flow")
    assert hasattr(model, "prior_net") and hasattr(model, "rca") and hasattr(model, "class_mapping")
    model.train()
    out = model(_batch(2)[0], ["bottle", "pcb1"])
    assert out.first is not None and out.final.probs is not None and len(out.final.diffs) == 2
    assert set(out.kl) == {"kl_context", "kl_abnormal"}


@pytest.mark.parametrize("bad, message", [
    (dict(flows="context+state"), "no normal state tokens"),
    (dict(prompt_structure="bank"), "DAP prior"),
    (dict(pixel_head="nope"), "pixel_head"),
])
def test_invalid_switches_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        FAPFLConfig(**{**TINY, **bad}).validate()


def test_clip_baseline_predicts_without_training(backbone):
    model = ClipBaseline(backbone, ClipBaselineConfig())
    assert not list(model.parameters())[0].requires_grad
    with torch.no_grad():
        pred = model.predict(_batch(3)[0], ["bottle", "metal_nut", "bottle"])
        one = model.predict(_batch(3)[0][1:2], ["metal_nut"])
    assert pred.anomaly_map.shape == (3, SIZE, SIZE)
    assert ((pred.class_prob > 0) & (pred.class_prob < 1)).all()
    torch.testing.assert_close(one.anomaly_map, pred.anomaly_map[1:2], atol=1e-5, rtol=0)
