"""The combined model: each published method is one column of its design card — the fapfl
method with that column's switches reproduces the method's official outputs — and every switch
combination runs, batches and trains."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.backbone import BackboneConfig, build_backbone
from models.clip_baseline import ClipBaseline, ClipBaselineConfig
from models import methods
from models.config import STRUCTURE_SWITCHES
from models.methods import official, preset
from tools.golden import stages

SIZE = 32
TINY = dict(depth=3, t_n_ctx=2, dap_k=4, features_list=(2, 4), sample_num=2)


def FAPFL(backbone, config):
    return methods.get("fapfl").make_model(backbone, config)


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


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    return stages.prepare(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("method", ["faprompt", "bayes_pfl"])
def test_design_card_column_reproduces_the_official_outputs(method, golden):
    """--method fapfl with a published method's column of switches (and its official ones) on
    that method's official checkpoint gives the official code's maps, scores and features."""
    switches = STRUCTURE_SWITCHES | {"class_word", "sigma"}
    column = {k: v for k, v in methods.get(method).preset.items() if k in switches}
    model = stages.build(golden, method, "official")
    combined = FAPFL(model.backbone, official(method, dataclasses.replace(preset("fapfl", **column), **{
        k: getattr(model.config, k) for k in ("abnormal_prompts", "normal_ctx", "abnormal_ctx", "depth", "t_n_ctx",
                                              "dap_k", "prompt_num", "prompt_context_len", "prompt_state_len",
                                              "num_flows", "sample_num", "features_list")})))
    combined.load_state_dict(model.state_dict())  # the same parameter names
    combined.eval()
    reference = stages.fixture(f"{method}_official")
    if method == "faprompt":
        values = stages.faprompt_stages(combined, golden)
        keys = ("grid1", "grid2", "map1", "map2", "dap/prior", "image_score", "map_blurred")
    else:
        values = stages.bayes_pfl_stages(combined, golden, stages.official_noise(reference, combined.config.sample_num))
        keys = ("text", "image_logits", "class_prob", "anomaly_map", "image_score", "map_blurred")
    for key in keys:
        bound = 1e-5 * max(1.0, float(np.abs(reference[key]).max()))
        assert float(np.abs(values[key] - reference[key]).max()) <= bound, key


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
    model = FAPFL(backbone, preset("fapfl", **{**TINY, **switches}))
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
    groups = model.param_groups({"prompt": 1e-3, "flow": 1e-3, "linear": 1e-4, "temperature": 1e-2})
    torch.optim.Adam(groups).step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    ids = [id(p) for g in groups for p in g["params"]]
    learnable = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert len(ids) == len(set(ids)) == len(learnable)


def test_default_uses_flows_dap_and_both_heads(backbone):
    model = FAPFL(backbone, preset("fapfl", **TINY))
    flows = model.flows
    assert hasattr(flows, "context") and hasattr(flows, "abnormal") and not hasattr(flows, "normal")
    assert hasattr(model, "dap") and hasattr(model, "rca") and hasattr(model.image_head, "class_mapping")
    model.train()
    out = model(_batch(2)[0], ["bottle", "pcb1"])
    assert out.first is not None and len(out.final.similarity_maps) == 1 and len(out.final.rca_diffs) == 2
    assert set(out.kl) == {"kl_context", "kl_abnormal"}


@pytest.mark.parametrize("bad, message", [
    (dict(flows="context+state"), "no normal state tokens"),
    (dict(prompt_structure="bank"), "DAP prior"),
    (dict(pixel_head="nope"), "pixel_head"),
])
def test_invalid_switches_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        preset("fapfl", **{**TINY, **bad}).validate()


def test_clip_baseline_predicts_without_training(backbone):
    model = methods.get("clip").make_model(backbone, ClipBaselineConfig())
    assert isinstance(model, ClipBaseline)
    assert not list(model.parameters())[0].requires_grad
    with torch.no_grad():
        pred = model.predict(_batch(3)[0], ["bottle", "metal_nut", "bottle"])
        one = model.predict(_batch(3)[0][1:2], ["metal_nut"])
    assert pred.anomaly_map.shape == (3, SIZE, SIZE)
    assert ((pred.class_prob > 0) & (pred.class_prob < 1)).all()
    torch.testing.assert_close(one.anomaly_map, pred.anomaly_map[1:2], atol=1e-5, rtol=0)


def test_similarity_head_averages_each_pairs_softmax():
    """With several text pairs (fapfl's bank through the similarity head), the probability is
    the mean over pairs of each pair's softmax (docs/methods/faprompt.md), not the softmax of the mean logit:
    hand-computed on one patch and two pairs."""
    from models.heads import similarity_probs

    patch = torch.tensor([[[1.0, 0.0]]])                    # [N=1, P=1, D=2]
    pairs = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]],        # normal texts of pairs 1, 2
                           [[0.0, 1.0], [0.0, 1.0]]]])      # abnormal texts: [N, 2, M=2, D]
    probs = similarity_probs(patch, pairs, temperature=0.25)
    # pair 1: logits (4, 0); pair 2: logits (0, 0)
    expected = (torch.tensor([4.0, 0.0]).softmax(0) + torch.tensor([0.5, 0.5])) / 2
    assert probs.shape == (1, 1, 2)
    assert torch.allclose(probs[0, 0], expected, atol=1e-7)
    assert abs(float(probs[0, 0, 0]) - float(torch.tensor([2.0, 0.0]).softmax(0)[0])) > 0.1  # not the mean logit's
