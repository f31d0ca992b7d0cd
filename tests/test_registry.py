"""The method registry: its entries against the official code, and its own rules.

``tests/golden/official_facts.json`` holds facts read from the official repositories at the
commits the golden fixtures come from (file and line each). Every fact that a registry entry
takes from an official repository — recipe values, preset sizes, score and fusion rules and
their fallbacks, class lists, validation categories, flag meanings, backbone defaults,
checkpoint formats — is compared here with the entry; a fact our code departs from on purpose
is compared with the entry's official switch (``--compat official``) or listed, with its reason,
in :data:`DEPARTURES`. The remaining facts describe formulas that the golden stage tests pin
(:data:`PINNED_ELSEWHERE`). Parameter initialisations are checked on built models.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from engine.official import OFFICIAL_FLAGS
from models import methods
from models.backbone import BackboneConfig, build_backbone
from models.scoring import ScoreRule
from scripts import test_script, train_script

FACTS = json.loads((Path(__file__).parent / "golden" / "official_facts.json").read_text())["facts"]
OFFICIAL_METHODS = ("faprompt", "bayes_pfl", "anomalyclip")


def _config(method):
    return methods.get(method).config()


def _train_default(dest):
    """train.py's default of a flag."""
    return vars(train_script.build_parser().parse_args(["--train_data_path", "x"]))[dest]


def _official_flag(name):
    return next(flag for flag in OFFICIAL_FLAGS if flag.name == name)


def _fusion(method):
    """The fusion formula an entry's score rule stands for, in the facts' words."""
    rule = methods.get(method).score
    return {("mean", "dap_maxima"): "0.5*(p_cls + (2*max(a1) + max(a2))/3), maxima over the patch grid",
            ("minmax", "topk"): "0.5*minmax(class) + 0.5*minmax(topk_mean(unblurred map))",
            ("prob", "topk"): "p_cls (class probability alone; no map term)"}[rule.fusion, rule.map_score]


def _learning_rate_meaning(method):
    single = methods.get(method).recipe.single_rate
    return "the Adam learning rate of all parameters" if single else \
        "parsed, unused (Adam's default lr; every group sets its own)"


def _anomalyclip_map_layers(value):
    fields = {"features_list": (6, 12, 18, 24)}
    methods.get("anomalyclip").official_flags["feature_map_layer"]([1, 2], fields)
    return fields["features_list"] == (12, 18, 24) and "feature_map_layer" not in methods.get("faprompt").official_flags


def _n_ctx(method):
    fields = {}
    handler = methods.get(method).official_flags.get("n_ctx")
    if handler is not None:
        handler(7, fields)
    return fields


# (method or "*", key) → (our value, the fact's value it must equal or a predicate of it)
def ours(method: str, key: str):
    entry = methods.get(method)
    recipe, config = entry.recipe, entry.config()
    simple = {
        "recipe.epochs": recipe.epochs, "recipe.batch_size": recipe.batch_size, "recipe.seed": recipe.seed,
        "recipe.betas": list(recipe.betas), "recipe.image_size": BackboneConfig().image_size,
        "test.image_size": BackboneConfig().image_size, "test.seed": entry.test_seed, "test.sigma": config.sigma,
        "recipe.warmup": _train_default("warmup"),
        "recipe.patience": _train_default("patience"),
        "recipe.stage2_lr": recipe.lr.get("linear"),
        "backbone.pos_interpolation": entry.backbone["pos_interpolation"],
        "backbone.activation": entry.official_backbone.get("activation", "quick_gelu"),
        "backbone.vv_aliased": config.vv_aliased,
        "score.small_defect_classes": sorted(entry.score.small_classes),
        "score.small_defect_topk": entry.score.small_topk, "score.topk": entry.score.topk,
        "score.layer_reduce": config.layer_reduce,
        "score.fusion": _fusion(method),
        "score.classification_only_fusion": "minmax(class)" if entry.score.fusion_without_masks == "class" else None,
        "train.mosaic_prob": recipe.mosaic_prob.get("mvtec", 0.0) if recipe.augment or recipe.mosaic_alone else 0,
        "train.mosaic_datasets": sorted(recipe.mosaic_prob) if recipe.augment or recipe.mosaic_alone else [],
        "validation.sample_num": _train_default("val_sample_num"),
        "dap.topk_computed": config.dap_k,
        "preset.n_ctx": config.normal_ctx if config.normal_ctx == config.abnormal_ctx else None,
        "preset.temperature": config.temperature,
        "flag.learning_rate": _learning_rate_meaning(method),
        "checkpoint.stage": entry.checkpoint.stage,
    }
    if key in simple:
        return simple[key]
    if key.startswith("recipe.lr."):
        return recipe.lr[key.rsplit(".", 1)[1]]
    if key.startswith("preset.") and key[7:] in {f.name for f in dataclasses.fields(config)}:
        value = getattr(config, key[7:])
        return list(value) if isinstance(value, tuple) else value
    if key.startswith("validation.target_categories."):
        aux = key.rsplit(".", 1)[1]
        target, categories = recipe.target_validation[aux]
        return {"dataset": target, "categories": list(categories)}
    raise KeyError(key)


# Facts whose official value is a description: (method, key) → a check of our entry.
DESCRIBED = {
    ("faprompt", "validation.protocol"): lambda: methods.get("faprompt").recipe.validation == "none",
    ("anomalyclip", "validation.protocol"): lambda: methods.get("anomalyclip").recipe.validation == "none",
    ("bayes_pfl", "validation.protocol"): lambda: methods.get("bayes_pfl").recipe.official_validation == "target",
    ("faprompt", "train.augment"): lambda: not methods.get("faprompt").recipe.augment,
    ("anomalyclip", "train.augment"): lambda: not methods.get("anomalyclip").recipe.augment,
    ("bayes_pfl", "train.augment"): lambda: methods.get("bayes_pfl").recipe.augment,
    ("bayes_pfl", "preset.class_word"): lambda: _config("bayes_pfl").class_word == "name",
    ("bayes_pfl", "preset.shared_state_encoder"): lambda: _config("bayes_pfl").flows == "context+state",
    ("faprompt", "dap.select"): lambda: methods.get("faprompt").official["dap_select"] == "first",
    ("faprompt", "backbone.deep_prompt_dtype"): lambda: methods.get("faprompt").official["deep_prompt_fp16"],
    ("anomalyclip", "backbone.deep_prompt_dtype"): lambda: methods.get("anomalyclip").official["deep_prompt_fp16"],
    ("faprompt", "recipe.loss.fused_focal"): lambda: methods.get("faprompt").official["fused_focal_logits"],
    ("bayes_pfl", "flow.test_state_cache"): lambda: methods.get("bayes_pfl").official["official_noise"],
    ("bayes_pfl", "flow.kl"): lambda: methods.get("bayes_pfl").official["official_state_kl"],
    ("faprompt", "flag.n_ctx"): lambda: _n_ctx("faprompt") == {},
    ("anomalyclip", "flag.n_ctx"): lambda: _n_ctx("anomalyclip") == {"normal_ctx": 7, "abnormal_ctx": 7},
    ("faprompt", "flag.feature_map_layer"): lambda: "no effect" in _official_flag("feature_map_layer").meaning,
    ("anomalyclip", "flag.feature_map_layer"): lambda: _anomalyclip_map_layers([1, 2]),
    ("faprompt", "flag.features_list"): lambda: "features_list" not in _config("faprompt").relevant_fields(),
    ("anomalyclip", "flag.features_list"): lambda: "features_list" in _config("anomalyclip").relevant_fields(),
    ("bayes_pfl", "flag.sample_num"): lambda: _train_default("val_sample_num") == 5,
    ("bayes_pfl", "flag.alpha"): lambda: "no effect" in _official_flag("alpha").meaning,
    ("bayes_pfl", "flag.sample_num.test"): lambda: _test_default("sample_num") is None and
    _config("bayes_pfl").sample_num == 10,  # unset: the configuration's R
    ("bayes_pfl", "flag.num_flows"): lambda: _config("bayes_pfl").num_flows == 10,
    ("bayes_pfl", "flag.pretrained_path"): lambda: "--pretrained" in _official_flag("pretrained_path").meaning,
    ("bayes_pfl", "flag.device_id"): lambda: "--device cuda:N" in _official_flag("device_id").meaning,
    ("bayes_pfl", "flag.val_data_path"): lambda: "val_data_path" in _flag_namespace(),
    ("faprompt", "flag.learning_rate"): lambda: methods.get("faprompt").recipe.single_rate,
    ("faprompt", "checkpoint.key"): lambda: _detects("faprompt", "prompt_learner"),
    ("anomalyclip", "checkpoint.key"): lambda: _detects("anomalyclip", "prompt_learner"),
    ("bayes_pfl", "checkpoint.key"): lambda: _detects("bayes_pfl", "MyModel"),
    ("bayes_pfl", "recipe.stage2_params"): lambda: _config("bayes_pfl").two_stage,
    ("bayes_pfl", "recipe.kl_weight"): lambda: True,  # 0.01 · KL: pinned by test_golden::test_bayes_pfl_loss_terms
}

# Where our code departs from the official code on purpose (docs/faithfulness.md), or knowingly.
DEPARTURES = {
    ("bayes_pfl", "validation.target_categories.other"):
        "another auxiliary set gets a one-line error asking for --val_dataset/--val_classes, where the official "
        "code silently validates on MVTec-AD's five categories",
    ("bayes_pfl", "checkpoint.stage"):
        "released files are stage 2 (equal); an official epoch_post_N_1.pth stage-1 file is not told apart",
    ("bayes_pfl", "flag.config_path"):
        "the architecture comes from --model's open_clip configuration; equal for the shipped ViT-L-14-336.json",
    ("bayes_pfl", "recipe.stage2_early_stop"):
        "ours restores the best validated weights at the end of stage 2, the official code keeps the last ones",
    ("bayes_pfl", "train.mosaic_sampling"): "ours draws the four tiles without replacement when four exist",
    ("bayes_pfl", "score.classification_only_datasets"):
        "ours decides by the data (anomalous images without masks), equal on HeadCT, BrainMRI and Br35H",
    ("bayes_pfl", "backbone.fp16_roundtrip"): "OpenAI's ViT-L-14-336 file is fp16 already: no effect on it",
}

# Formulas and settings that no registry entry holds: the golden stage tests compare them with
# the official code's outputs (tests/test_golden.py), or they describe the official scripts.
PINNED_ELSEWHERE = {
    "recipe.aux_dataset", "recipe.optimizer", "recipe.loss_total", "recipe.loss.map2_weight",
    "recipe.loss.orthogonality_weight", "recipe.loss.prior_mse", "recipe.loss.map_weight", "train.split",
    "train.shuffle", "test.metrics", "test.checkpoint", "test.batch_size", "test.preprocess",
    "preset.dap_meta_net", "preset.normal_template", "preset.abnormal_template", "preset.deep_prompts",
    "preset.rca_scale", "preset.encoder_hidden", "preset.class_name_map", "dap.target", "score.map_max",
    "score.pixel_map", "score.blur", "score.fusion_alpha", "score.topk_map", "score.minmax_eps", "score.class_prob",
    "score.map_upsample", "backbone.pos_embedding_overwritten", "backbone.pos_antialias",
    "backbone.pos_resize_when", "backbone.pos_align_corners", "backbone.dpam_layer", "backbone.vv_blocks",
    "backbone.patch_features", "backbone.image_feature", "backbone.map_upsample", "backbone.patch_tokens",
    "backbone.vocab_extra_row", "backbone.cuda_hardcoded", "flag.epoch", "flag.depth", "flag.t_n_ctx",
    "flag.sigma", "flag.model", "flag.pretrained", "checkpoint.filename", "checkpoint.load", "recipe.param_groups",
    "recipe.scheduler", "recipe.patience_rule", "recipe.stage_switch", "recipe.stage1_metric",
    "recipe.stage2_metric", "recipe.stage2_loss", "recipe.prompt_index", "recipe.train_samples",
    "recipe.ema_alpha", "train.augment_applies", "validation.frequency", "validation.pixel_map",
    "validation.image_score", "flow.sample_std", "flow.log_det", "flow.state_input",
}


def _flag_namespace():
    return vars(train_script.build_parser().parse_args(["--train_data_path", "x"]))


def _test_default(dest):
    return vars(test_script.build_parser().parse_args([]))[dest]


def _detects(method, key):
    """The entry recognises its official format under ``key`` and no other entry claims it."""
    state = {"prompt_learner": {"ctx_pos": 0, "ctx_neg": 0}, "MyModel": {"prompt_context": 0,
                                                                         "PFL_normal.amor_u": 0}}[key]
    if method == "faprompt":
        state = {**state, "patch_meta_net.linear1.weight": 0}
    found = methods.detect_official({key: state})
    return found is not None and found[0].name == method and methods.detect_official({"other": state}) is None


def _value_facts():
    return [f for f in FACTS if (f["method"], f["key"]) not in DESCRIBED and (f["method"], f["key"]) not in DEPARTURES
            and f["key"] not in PINNED_ELSEWHERE and not f["key"].startswith("init.")]


def test_every_fact_is_checked_or_placed():
    assert len(FACTS) >= 200 and {f["method"] for f in FACTS} == set(OFFICIAL_METHODS)
    for fact in _value_facts():
        try:
            ours(fact["method"], fact["key"])
        except KeyError:
            pytest.fail(f"{fact['method']} {fact['key']} ({fact['path']}:{fact['line']}) is neither compared "
                        "with the registry nor placed in DESCRIBED, DEPARTURES or PINNED_ELSEWHERE")
    assert len(_value_facts()) >= 80 and len(DESCRIBED) >= 30


@pytest.mark.parametrize("fact", _value_facts(), ids=lambda f: f"{f['method']}-{f['key']}")
def test_registry_value_equals_the_official_code(fact):
    value = ours(fact["method"], fact["key"])
    expected = sorted(fact["value"]) if fact["key"].endswith("_classes") else fact["value"]  # a set
    if isinstance(expected, float) or isinstance(value, float):
        assert value == pytest.approx(expected, rel=1e-12), f"{fact['path']}:{fact['line']}"
    else:
        assert value == expected, f"{fact['path']}:{fact['line']}"


@pytest.mark.parametrize("key", sorted(DESCRIBED), ids=lambda k: "-".join(k))
def test_registry_meaning_matches_the_official_code(key):
    facts = [f for f in FACTS if (f["method"], f["key"]) == key]
    assert facts, f"no official fact {key}"
    assert DESCRIBED[key](), f"{key}: {facts[0]['value']} ({facts[0]['path']}:{facts[0]['line']})"


def test_departures_are_facts():
    listed = {(f["method"], f["key"]) for f in FACTS}
    assert set(DEPARTURES) <= listed


# ---------------------------------------------------------------------- initialisations
@pytest.fixture(scope="module")
def backbone(tiny_model):
    return build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=32))


def _init_facts(method):
    return {f["key"][5:]: f["value"] for f in FACTS if f["method"] == method and f["key"].startswith("init.")}


def test_parameter_initialisations_follow_the_official_code(backbone):
    """Built models' learned tensors have the official distributions: mean and std within four
    standard errors of n draws (and 10 % of the std), constants exactly."""
    def normal(tensor, fact):
        assert fact["dist"] in ("normal", "trunc_normal"), fact
        values = tensor.detach().double().flatten()
        n = values.numel()
        assert n >= 30
        assert abs(float(values.mean()) - fact["mean"]) < 4 * fact["std"] / n ** 0.5
        assert float(values.std()) == pytest.approx(fact["std"], rel=max(0.1, 4 / (2 * n) ** 0.5))

    fap = methods.get("faprompt").make_model(backbone, methods.preset(
        "faprompt", depth=3, t_n_ctx=20, dap_k=4, normal_ctx=40, abnormal_ctx=8))
    facts = _init_facts("faprompt")
    assert len(facts) >= 4
    normal(fap.prompts.normal_ctx, facts["ctx_pos"])
    normal(fap.prompts.abnormal_ctx, facts["ctx_neg"])
    normal(torch.cat([p.flatten() for p in fap.prompts.deep_prompts]), facts["compound_prompts_text"])
    aclip = methods.get("anomalyclip").make_model(backbone, methods.preset("anomalyclip", depth=3, features_list=(4,)))
    normal(aclip.prompts.abnormal_ctx, _init_facts("anomalyclip")["ctx_neg"])

    bayes = methods.get("bayes_pfl").make_model(backbone, methods.preset(
        "bayes_pfl", features_list=(2, 4), prompt_context_len=20, prompt_state_len=20, num_flows=40))
    facts = _init_facts("bayes_pfl")
    assert len(facts) >= 10
    normal(bayes.bank.context, facts["prompt_context"])
    normal(bayes.bank.normal_state, facts["prompt_state_normal"])
    normal(bayes.bank.abnormal_state, facts["prompt_state_abnormal"])
    for name in ("temperature_pixel", "temperature_image"):
        assert facts[name]["constant"] == pytest.approx(math.log(1 / 0.07), rel=1e-12)
    for parameter, name in ((bayes.rca.log_temperature, "temperature_pixel"),
                            (bayes.image_head.log_temperature, "temperature_image")):
        assert float(parameter.detach()) == pytest.approx(facts[name]["constant"], rel=1e-6)
    linear = torch.cat([bayes.image_head.class_mapping.weight.flatten(), bayes.flows.context.u.weight.flatten()])
    normal(linear, {**facts["linear"], "dist": "normal"})
    assert float(bayes.image_head.class_mapping.bias.abs().max()) == facts["linear"]["bias"]
    state = bayes.flows.normal
    for name, tensor in (("amor_u", state.u), ("amor_w", state.w), ("state", state.state)):
        normal(tensor, facts[f"state_flow.{name}"])


# ---------------------------------------------------------------------- registry rules
def test_registry_lists_each_module_once_in_order():
    names = methods.names()
    assert names[:4] == ("faprompt", "bayes_pfl", "fapfl", "anomalyclip") and "clip" in names
    assert methods.names(trainable=True) == ("faprompt", "bayes_pfl", "fapfl", "anomalyclip", "april_gan", "vcp_clip",
                                             "adaclip")
    assert methods.names(trainable=False) == ("clip", "winclip")
    for name, entry in methods.registry().items():
        assert entry.name == name and entry.docs == f"docs/methods/{name}.md"
    with pytest.raises(methods.UnknownMethod, match="registered: faprompt"):
        methods.get("no_such_method")


def test_the_combined_method_scores_as_its_switches_say():
    """fapfl's rule follows its switches: each published method's switches score as that method."""
    for method in OFFICIAL_METHODS:
        assert methods.get("fapfl").score_rule(_config(method)) == methods.get(method).score


def test_score_rule_fallbacks():
    bayes = methods.get("bayes_pfl").score
    assert bayes.fusion_for(10, masked=True) == "minmax" and bayes.fusion_for(10, masked=False) == "class"
    assert bayes.fusion_for(1, masked=True) == "prob" and bayes.fusion_for(1, masked=False) == "prob"
    assert methods.get("faprompt").score.fusion_for(1, masked=False) == "mean"
    with pytest.raises(ValueError, match="none of"):
        ScoreRule("median", "topk")
