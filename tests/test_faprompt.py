"""FAPrompt on the tiny backbone: shapes, gradients, batching, DAP selection and a learning check
(the official code's outputs and checkpoints: test_golden.py, test_official_checkpoints.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.backbone import BackboneConfig, build_backbone
from models import methods
from models.methods import official, preset
from conftest import learning_run

SIZE = 32
CONFIG = preset("faprompt", depth=3, t_n_ctx=2, dap_k=4)


def FAPrompt(backbone, config=CONFIG):
    return methods.get("faprompt").make_model(backbone, config)


@pytest.fixture()
def backbone(tiny_model):
    return build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=SIZE))


@pytest.fixture()
def model(backbone):
    torch.manual_seed(3)
    return FAPrompt(backbone)


def _batch(n: int = 4, size: int = SIZE, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size)
    masks[1:, size // 4: size // 2, size // 4: size // 2] = 1
    labels = (masks.flatten(1).amax(1) > 0).long()
    return images, masks, labels


def test_output_shapes(model, backbone):
    images, _, _ = _batch(3)
    out = model(images, ["bottle", "screw", "bottle"])
    p, d, w = backbone.grid_size ** 2, backbone.embed_dim, backbone.text_width
    assert out.first.similarity_grids[0].shape == out.final.similarity_grids[0].shape == (3, p, 2)
    assert out.first.similarity_maps[0].shape == out.final.similarity_maps[0].shape == (3, 2, SIZE, SIZE)
    assert out.class_logits.shape == (3, 2, 1)
    assert out.prior.shape == (3, w)
    assert out.selected.shape == (3, CONFIG.dap_k)
    assert out.cap_features.shape == (1, CONFIG.abnormal_prompts, d)  # one word: "object"
    assert out.anomaly_map.shape == (3, SIZE, SIZE)
    assert out.fused_score.shape == out.class_prob.shape == (3,)
    torch.testing.assert_close(out.first.similarity_grids[0].sum(-1), torch.ones(3, p))
    # the normal text feature is shared by both passes; DAP changes only the abnormal one
    torch.testing.assert_close(out.final.pairs[:, 0], out.first.pairs[:, 0])
    assert (out.final.pairs[:, 1] - out.first.pairs[:, 1]).abs().max() > 0


def test_parameter_shapes_follow_config(backbone):
    cfg = preset("faprompt", abnormal_prompts=6, normal_ctx=4, abnormal_ctx=3, depth=4, t_n_ctx=3, dap_k=5)
    model = FAPrompt(backbone, cfg)
    w = backbone.text_width
    assert model.prompts.normal_ctx.shape == (4, w)
    assert model.prompts.abnormal_ctx.shape == (6, 3, w)
    assert [p.shape for p in model.prompts.deep_prompts] == [(3, w)] * 3
    out = model(_batch(2)[0], ["a", "b"])
    assert out.selected.shape == (2, 5) and out.cap_features.shape[1] == 6


def test_only_prompt_learner_trains_and_backbone_is_untouched(model):
    images, masks, labels = _batch(4)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    loss = model.loss(model(images, ["x"] * 4), masks, labels)["total"]
    loss.backward()
    names = {n for n, p in model.named_parameters() if p.grad is not None}
    assert names and all(n.startswith(("prompts.", "dap.")) for n in names)
    assert all(p.grad is None for p in model.backbone.parameters())
    optimizer.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loss_terms_are_reported_separately(model):
    images, masks, labels = _batch(4)
    terms = model.loss(model(images, ["x"] * 4), masks, labels)
    assert set(terms) == {"map_first", "map_final", "image", "fused", "orthogonal", "prior", "total"}
    parts = sum(v for k, v in terms.items() if k != "total")
    torch.testing.assert_close(terms["total"], parts)
    assert all(torch.isfinite(v) and v >= 0 for v in terms.values())


@pytest.mark.parametrize("class_word", ["object", "name"])
def test_batch_equals_single_images(backbone, class_word):
    torch.manual_seed(4)
    model = FAPrompt(backbone, preset("faprompt", depth=3, t_n_ctx=2, dap_k=4, class_word=class_word))
    images, _, _ = _batch(4)
    names = ["bottle", "metal_nut", "bottle", "pcb1"]
    with torch.no_grad():
        batch = model(images, names)
        for i in range(4):
            one = model(images[i:i + 1], names[i:i + 1])
            torch.testing.assert_close(one.anomaly_map, batch.anomaly_map[i:i + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.fused_score, batch.fused_score[i:i + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.first.map, batch.first.map[i:i + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.final.map, batch.final.map[i:i + 1], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.class_prob, batch.class_prob[i:i + 1], atol=1e-5, rtol=0)


def test_topk_and_first_differ_only_in_selected_patches(backbone):
    torch.manual_seed(5)
    topk = FAPrompt(backbone)
    first = FAPrompt(backbone, preset("faprompt", depth=3, t_n_ctx=2, dap_k=4, dap_select="first"))
    first.load_state_dict(topk.state_dict())
    images, _, _ = _batch(3)
    with torch.no_grad():
        a, b = topk(images, ["x"] * 3), first(images, ["x"] * 3)
        torch.testing.assert_close(a.first.grid, b.first.grid)  # the static pass does not depend on it
        expected = a.first.grid.topk(CONFIG.dap_k, dim=1).indices
        assert torch.equal(a.selected, expected)
        assert torch.equal(b.selected, torch.arange(CONFIG.dap_k).expand(3, -1))
        assert not torch.equal(a.selected, b.selected)
        # the prior is the meta-net of exactly those patches, in that order
        feats = F.normalize(backbone.encode_image(images, vv_start=topk.vv_start).vv_proj, dim=-1)
        for out in (a, b):
            chosen = torch.stack([feats[i, out.selected[i]] for i in range(3)])
            torch.testing.assert_close(out.prior, topk.dap.net(chosen.flatten(1)), atol=1e-6, rtol=0)


def test_official_compat_switches():
    switched = official("faprompt", CONFIG)
    assert switched.dap_select == "first" and switched.fused_focal_logits and switched.deep_prompt_fp16
    assert CONFIG.dap_select == "topk" and not CONFIG.fused_focal_logits


def test_learning_lowers_loss_and_raises_pixel_auroc(tiny_model):
    size = 64
    backbone = build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=size))
    torch.manual_seed(0)
    model = FAPrompt(backbone)
    (loss0, auroc0), (loss1, auroc1) = learning_run(model, size, {"all": 1e-2})
    # margins hold across initialisation seeds (0.21→0.94, 0.60→0.80, 0.10→0.76 measured)
    assert loss1 < loss0 * 0.6
    assert auroc1 > auroc0 + 0.15 and auroc1 > 0.7


def test_static_prompts_are_cached_at_inference_until_a_parameter_changes(model):
    images = _batch(2)[0]
    with torch.no_grad():
        first = model(images, ["a", "b"])
        assert len(model.prompts._static) == 1
        cached = model(images, ["a", "b"])
        torch.testing.assert_close(cached.anomaly_map, first.anomaly_map, atol=0, rtol=0)
        # an in-place update invalidates the cache (a random shift: LayerNorm hides a constant one)
        shift = torch.randn_like(model.prompts.normal_ctx)
        model.prompts.normal_ctx.add_(shift)
        changed = model(images, ["a", "b"])
    assert (changed.first.pairs - first.first.pairs).abs().max() > 1e-3
    model.prompts.normal_ctx.data.sub_(shift)
    with torch.no_grad():
        model.load_state_dict(model.state_dict())  # so does loading weights
        again = model(images, ["a", "b"])
    torch.testing.assert_close(again.anomaly_map, first.anomaly_map, atol=1e-6, rtol=0)
