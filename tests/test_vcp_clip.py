"""VCP-CLIP against the official code (xiaozhen228/VCP-CLIP), stage by stage, on the golden tiny
CLIP (fixtures: tools/golden/harness_vcp_clip.py): the weights load from the official checkpoint
layout; Pre-VCP class tokens, the text pair, both branches' per-block maps, the map, its blur, the
image score, a training step's loss and gradients; then training and testing end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compare import close, fixture, golden_backbone, official_model
from engine.evaluation import CategoryOutputs, category_scores, gaussian_blur
from models.factory import read_checkpoint
from tools.golden.golden_clip import IMAGE_SIZE
from tools.golden.harness_vcp_clip import FEATURES

WORD = "bottle"  # any: VCP-CLIP's prompts carry no class name


def official_payload(ref) -> dict:
    """The official checkpoint layout rebuilt from the fixture's ``ckpt/`` arrays."""
    payload = {"trainable_linearlayer": {}, "New_Lan_Embed": {}, "Zero_try": {}}
    for key in ref:
        if not key.startswith("ckpt/"):
            continue
        parts = key.split("/")
        value = torch.from_numpy(np.array(ref[key]))
        if parts[1] == "prompt_text_projection":  # stored by shape
            value = torch.zeros(*ref[key].tolist())
        if len(parts) == 3:
            payload[parts[1]][parts[2]] = value
        else:
            payload[parts[1]] = torch.nn.Parameter(value, requires_grad=True)
    return payload


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    work = tmp_path_factory.mktemp("vcp_golden")
    ref = fixture("vcp_clip_official")
    torch.save(official_payload(ref), work / "train_visa.pth")
    # its CLIP: exact GELU in both towers, the grid resized bicubically with antialias
    model, checkpoint = official_model(work / "train_visa.pth", "vcp_clip", golden_backbone(work, "bicubic"))
    assert checkpoint.config["total_d_layer_len"] == 3 and checkpoint.config["prompt_len"] == 2
    return model, ref


def test_vcp_clip_test_time_equals_the_official_code(golden):
    model, ref = golden
    model.eval()
    images = torch.from_numpy(ref["images"])
    with torch.no_grad():
        feats = model.encode_images(images)
        close(feats.cls, ref["image_features"], "global image feature")
        for layer in FEATURES:
            close(feats.patch_raw[layer], ref[f"tokens/{layer}"], f"raw tokens of block {layer}")
        close(model.pre_vcp(feats.cls), ref["class_tokens"], "Pre-VCP class tokens")
        text = model.text_features(feats.cls)
        close(text, ref["text"], "text pair (prompt tokens, prompt_norm, ln_final)")
        linear, post = model.branch_logits(feats, text)
        for layer, a, b in zip(FEATURES, linear, post):
            close(a.softmax(1), ref[f"linear/{layer}"], f"linear branch, block {layer}")
            close(b.softmax(1), ref[f"post/{layer}"], f"Post-VCP branch, block {layer}")
        pred = model.predict(images, [WORD] * 3)
    close(pred.anomaly_map, ref["map"], "map 0.2 linear + 0.8 Post-VCP")
    close(pred.map_score, ref["map_score"], "top-2000 sums")
    close(gaussian_blur(pred.anomaly_map, model.config.sigma), ref["blurred_map"], "map blurred with sigma 8")
    cat = CategoryOutputs(WORD, 3, IMAGE_SIZE)
    cat.add(pred.anomaly_map, torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool), [True] * 3, [1, 1, 0],
            pred.class_prob.tolist(), pred.map_score.tolist(), ["a", "b", "c"])
    close(category_scores(cat, model.score_rule), ref["image_score"], "image score (min-max over the category)")


def test_vcp_clip_training_step_equals_the_official_code(golden):
    """One step's loss and every trained part's gradient (dropout off on both sides)."""
    model, ref = golden
    model.eval()  # the prompt dropout draws at random; the official step was recorded without it
    model.zero_grad()
    out = model(torch.from_numpy(ref["images"]), [WORD] * 3)
    terms = model.loss(out, torch.from_numpy(ref["masks"]), torch.tensor([1, 1, 0]))
    terms["total"].backward()
    close(terms["total"].item(), ref["loss"], "loss")
    ours = {"New_Lan_Embed/prompt_query": model.pre_vcp.query, "New_Lan_Embed/prompt_temp": model.pre_vcp.temperature,
            "New_Lan_Embed/prompt_linear1.fc.weight": model.pre_vcp.conv.weight,
            "New_Lan_Embed/prompt_linear1.fc.bias": model.pre_vcp.conv.bias,
            "Zero_try/prompt_temp_l1": model.post_vcp.temperature,
            "prompt_embeddings": model.text_prompts.shallow, "deep_prompt_embeddings": model.text_prompts.deep,
            "prompt_proj.weight": model.text_prompts.proj.weight, "prompt_proj.bias": model.text_prompts.proj.bias,
            "prompt_norm.weight": model.text_prompts.norm.weight, "prompt_norm.bias": model.text_prompts.norm.bias}
    for official, linear in (("q_proj_pre", model.post_vcp.q), ("k_proj_pre_1", model.post_vcp.k),
                             ("v_proj_pre_1", model.post_vcp.v), ("proj_post_t", model.post_vcp.out)):
        ours[f"Zero_try/{official}.weight"], ours[f"Zero_try/{official}.bias"] = linear.weight, linear.bias
    for i, linear in enumerate(model.linear):
        ours[f"linear/{i}/weight"], ours[f"linear/{i}/bias"] = linear.weight, linear.bias
    expected = [k[5:] for k in ref if k.startswith("grad/")]
    assert sorted(expected) == sorted(ours) and len(expected) == 27
    for key, param in ours.items():
        grad = param.grad
        reference = ref[f"grad/{key}"]
        grad = grad[:len(reference)].reshape(reference.shape) if grad.dim() > 1 else grad.reshape(reference.shape)
        close(grad, reference, f"gradient of {key}")
    model.zero_grad()


def test_official_checkpoint_format_of_a_shallow_model_loads(tmp_path):
    """A file saved with --total_d_layer_len 0 has no deep tokens: the converter says so."""
    width = 8
    payload = {"trainable_linearlayer": {"fc.0.weight": torch.randn(4, 6), "fc.0.bias": torch.randn(4)},
               "New_Lan_Embed": {"prompt_query": torch.randn(1, 3, width), "prompt_temp": torch.tensor(2.0),
                                 "prompt_linear1.fc.weight": torch.randn(3, 1, 3),
                                 "prompt_linear1.fc.bias": torch.randn(3)},
               "Zero_try": {"prompt_temp_l1": torch.tensor(2.0),
                            **{f"{m}.weight": torch.randn(6, 6, 1) for m in ("k_proj_pre_1", "v_proj_pre_1")},
                            **{f"{m}.bias": torch.randn(6) for m in ("q_proj_pre", "k_proj_pre_1", "v_proj_pre_1",
                                                                      "proj_post_t")},
                            "q_proj_pre.weight": torch.randn(6, width, 1), "proj_post_t.weight": torch.randn(6, 6, 1)},
               "prompt_embeddings": torch.randn(1, 2, width), "prompt_proj.weight": torch.randn(width, width),
               "prompt_proj.bias": torch.randn(width), "prompt_norm.weight": torch.randn(width),
               "prompt_norm.bias": torch.randn(width), "prompt_text_projection": torch.randn(width, width)}
    torch.save(payload, tmp_path / "train_mvtec.pth")
    checkpoint = read_checkpoint(str(tmp_path / "train_mvtec.pth"))
    assert checkpoint.method == "vcp_clip"
    assert checkpoint.config == {"prompt_len": 3, "deep_prompt_len": 2, "total_d_layer_len": 0}
    assert checkpoint.state_dict["text_prompts.deep"].shape == (0, 2, width)
    assert checkpoint.state_dict["post_vcp.q.weight"].shape == (6, width)
    assert "prompt_text_projection" not in str(sorted(checkpoint.state_dict))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, tiny_model):
    """final.pth of one VCP-CLIP epoch on the synthetic data (tiny model, blocks 2 and 4)."""
    from scripts import one_epoch

    return one_epoch(tmp_path_factory.mktemp("vcp_clip"), data, tiny_model, "--method", "vcp_clip",
                     "--features_list", "2", "4")


def test_vcp_clip_trains_and_tests_end_to_end(trained, data, common, tmp_path):
    """test.py zero-shot and with --k_shot 1 on the one-epoch checkpoint: results and report."""
    from scripts import zero_and_one_shot

    stored = torch.load(trained, map_location="cpu", weights_only=True)
    assert stored["method"] == "vcp_clip" and "text_prompts.deep" in stored["state_dict"]
    zero_and_one_shot(trained, data, tmp_path, common, "vcp_clip")


def test_official_command_lines(data, trained, tiny_model, tmp_path, caplog):
    """Its train.sh and test.sh flags after --method vcp_clip (sizes swapped for the tiny model)."""
    from engine.configure import configure_train
    from scripts import test_script, train_script
    from utils.errors import EXIT_USER_ERROR, run_cli

    save = tmp_path / "my_exps" / "train_visa"
    backbone = ["--model", tiny_model, "--pretrained", "none", "--image_size", "32", "--features_list", "2", "4",
                "--num_workers", "0", "--config_path", "./models/model_configs/ViT-L-14-336.json",
                "--prompt_len", "2", "--deep_prompt_len", "1", "--device_id", "0", "--seed", "333"]
    assert run_cli(train_script.main, ["--method", "vcp_clip", "--dataset", "visa", "--train_data_path", str(data),
                                       "--val_data_path", str(data), "--save_path", str(save),
                                       "--learning_rate", "0.00004", "--batch_size", "4", "--epoch", "1",
                                       "--group_id_list", "2", *backbone]) == 0
    assert (save / "final.pth").is_file()
    out = tmp_path / "results" / "test_mvtec"
    assert run_cli(test_script.main, ["--dataset", "mvtec", "--data_path", str(data), "--checkpoint_path", str(trained),
                                      "--save_path", str(out), *backbone]) == 0
    assert json.loads((out / "results.json").read_text())["method"] == "vcp_clip"
    # --use_global alone turns the global context off (its store_false); 2e-5 on MVTec-AD; temperatures 0.01
    args, run = configure_train(train_script.build_parser(), ["--method", "vcp_clip", "--dataset", "mvtec",
                                                              "--train_data_path", "x", "--save_path", str(tmp_path),
                                                              "--use_global"])
    assert run.config.use_global is False and run.lr == {"all": 2e-5, "temperature": 1e-2}
    _, run = configure_train(train_script.build_parser(), ["--method", "vcp_clip", "--train_data_path", "data/visa",
                                                           "--save_path", str(tmp_path), "--learning_rate", "1e-4"])
    assert run.config.use_global is True and run.lr == {"all": 1e-4, "temperature": 1e-2} and run.epochs == 10
    for flag, value, says in (("--group_id_list", "0", "--train_classes"), ("--resume_checkpoint_path", "a.pth",
                                                                            "--resume continues")):
        caplog.clear()
        assert run_cli(train_script.main, ["--method", "vcp_clip", "--train_data_path", str(data), "--save_path",
                                           str(tmp_path / "x"), flag, value, *backbone]) == EXIT_USER_ERROR
        assert says in caplog.text
