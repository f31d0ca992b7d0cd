"""APRIL-GAN against the official code (ByChelsea/VAND-APRIL-GAN), stage by stage, on the golden
tiny CLIP (fixtures: tools/golden/harness_april_gan.py): text ensemble, image feature, raw layer
tokens, per-layer maps, the summed map, the image probability, the few-shot maps and scores, a
training step's loss and gradients; its official checkpoint format loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compare import FIXTURES, close, fixture, golden_backbone
from engine.evaluation import CategoryOutputs, category_scores, predict_maps
from engine.fewshot import FewShotScorer, References, bank_from_images
from models.factory import build_model, make_config, read_checkpoint
from tools.golden.golden_clip import IMAGE_SIZE
from tools.golden.harness_april_gan import FEATURES, linear_weights



@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    # the official code at 518 px: exact GELU, the grid resized bicubically with antialias
    backbone = golden_backbone(tmp_path_factory.mktemp("april_gan_golden"), "bicubic")
    model = build_model("april_gan", make_config("april_gan", {}), backbone)
    with torch.no_grad():
        for linear, (weight, bias) in zip(model.linear, linear_weights(backbone.vision_width, backbone.embed_dim,
                                                                        len(FEATURES))):
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
    reference = fixture("april_gan_official")
    provenance = json.loads((FIXTURES / "april_gan_official.json").read_text())
    return model, reference, provenance["class_name"]


def test_april_gan_test_time_equals_the_official_code(golden):
    model, ref, word = golden
    model.eval()
    images = torch.from_numpy(ref["images"])
    with torch.no_grad():
        close(model.text_features(word), ref["text"], "text ensemble [D, 2]")
        feats = model.encode_images(images)
        close(feats.cls, ref["image_features"], "image feature")
        for layer in FEATURES:
            close(feats.patch_raw[layer], ref[f"tokens/{layer}"], f"raw tokens of block {layer}")
        logits = model.layer_logits(feats, model._pairs([word] * 3))
        for layer, layer_logits in zip(FEATURES, logits):
            close(layer_logits.softmax(1), ref[f"probs/{layer}"], f"map of block {layer}")
        pred = model.predict(images, [word] * 3)
    close(pred.anomaly_map, ref["anomaly_map"], "summed map")
    close(pred.class_prob, ref["class_prob"], "image probability")


def test_april_gan_few_shot_equals_the_official_code(golden):
    """Its few-shot mode at the engine's default --shot_weight 1 (score rule ``final_max``): the
    summed layers' nearest-reference maps, the final map and the image scores."""
    model, ref, word = golden
    model.eval()
    images = torch.from_numpy(ref["images"])
    scorer = FewShotScorer(model, References({}, "golden"), 1.0, IMAGE_SIZE, 2, torch.device("cpu"))
    scorer.use_bank(word, bank_from_images(model, [torch.from_numpy(ref["references"])]))
    maps, pred, shot = predict_maps(model, images, [word] * 3, 0.0, scorer)
    close(maps - pred.anomaly_map, ref["fewshot_map"], "few-shot map (layers summed)")
    close(maps, ref["fewshot_final_map"], "final map")
    cat = CategoryOutputs(word, 3, IMAGE_SIZE)
    cat.add(maps, torch.zeros_like(maps, dtype=torch.bool), [True] * 3, [1, 1, 0], pred.class_prob.tolist(),
            pred.map_score.tolist(), ["a", "b", "c"], shot.tolist())
    close(category_scores(cat, model.score_rule, scorer.weight), ref["fewshot_image_score"],
          "image score 0.5(p + minmax(max of final map))")
    assert len(ref["fewshot_image_score"]) == 3


def test_april_gan_training_step_equals_the_official_code(golden):
    model, ref, word = golden
    model.train()
    model.zero_grad()
    out = model(torch.from_numpy(ref["images"]), [word] * 3)
    terms = model.loss(out, torch.from_numpy(ref["masks"]), torch.tensor([1, 1, 0]))
    terms["total"].backward()
    close(terms["total"].item(), ref["loss"], "loss")
    for i, linear in enumerate(model.linear):
        close(linear.weight.grad[:32], ref[f"grad/{i}/weight"], f"gradient of linear map {i}")
        close(linear.bias.grad, ref[f"grad/{i}/bias"], f"gradient of bias {i}")
    model.zero_grad()


def test_official_checkpoint_format_loads(golden, tmp_path):
    """``{"trainable_linearlayer": {fc.i.weight, fc.i.bias}}`` (official train.py) is read as an
    official APRIL-GAN checkpoint; its weights land in ``linear.i``."""
    model, _, _ = golden
    state = {f"fc.{i}.{kind}": torch.randn(*getattr(model.linear[i], kind).shape)
             for i in range(len(FEATURES)) for kind in ("weight", "bias")}
    torch.save({"trainable_linearlayer": state}, tmp_path / "visa_pretrained.pth")
    checkpoint = read_checkpoint(str(tmp_path / "visa_pretrained.pth"))
    assert checkpoint.method == "april_gan" and checkpoint.official
    assert set(checkpoint.state_dict) == {f"linear.{k[3:]}" for k in state}
    assert torch.equal(checkpoint.state_dict["linear.2.weight"], state["fc.2.weight"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, tiny_model):
    """final.pth of one APRIL-GAN epoch on the synthetic data (tiny model, blocks 2 and 4)."""
    from scripts import one_epoch

    return one_epoch(tmp_path_factory.mktemp("april_gan"), data, tiny_model, "--method", "april_gan",
                     "--features_list", "2", "4")


def test_april_gan_trains_and_tests_end_to_end(trained, data, common, tmp_path):
    """test.py zero-shot and with --k_shot 1 on the one-epoch checkpoint."""
    from scripts import zero_and_one_shot

    zero_and_one_shot(trained, data, tmp_path, common, "april_gan")


def test_official_test_command_lines(trained, data, tiny_model, tmp_path, caplog):
    """Its test_few_shot.sh / test_zero_shot.sh flags (sizes swapped for the tiny model): --mode
    few_shot is --k_shot, --few_shot_features must be --features_list, --config_path is noted."""
    from engine.official import apply_official_flags
    from scripts import test_script
    from utils.errors import UserError, run_cli

    official = ["--dataset", "mvtec", "--data_path", str(data), "--checkpoint_path", str(trained),
                "--config_path", "./open_clip/model_configs/ViT-L-14-336.json", "--model", tiny_model,
                "--pretrained", "none", "--image_size", "32", "--features_list", "2", "4", "--num_workers", "0"]
    few = tmp_path / "few_shot"
    assert run_cli(test_script.main, [*official, "--save_path", str(few), "--few_shot_features", "2", "4",
                                      "--mode", "few_shot", "--k_shot", "1", "--seed", "42"]) == 0
    assert json.loads((few / "results.json").read_text())["k_shot"] == 1
    zero = tmp_path / "zero_shot"
    assert run_cli(test_script.main, [*official, "--save_path", str(zero), "--mode", "zero_shot"]) == 0
    assert json.loads((zero / "results.json").read_text())["k_shot"] == 0
    parser = test_script.build_parser()
    args = parser.parse_args(["--mode", "few_shot", "--data_path", "x"])
    notes = apply_official_flags(args, "test")
    assert args.k_shot == 10 and any("--mode few_shot" in n for n in notes)  # the official default K
    args = parser.parse_args(["--few_shot_features", "3", "6", "--features_list", "6", "12", "--data_path", "x"])
    with pytest.raises(UserError, match="pass the same layers"):
        apply_official_flags(args, "test")


def test_official_train_command_line(data, tiny_model, tmp_path):
    """Its train.sh flags after --method april_gan (sizes swapped for the tiny model)."""
    from scripts import train_script
    from utils.errors import run_cli

    save = tmp_path / "exps" / "visa" / "vit_large_14_518"
    assert run_cli(train_script.main, ["--method", "april_gan", "--dataset", "mvtec", "--train_data_path", str(data),
                                       "--save_path", str(save), "--config_path",
                                       "./open_clip/model_configs/ViT-L-14-336.json", "--model", tiny_model,
                                       "--features_list", "2", "4", "--pretrained", "none", "--image_size", "32",
                                       "--batch_size", "8", "--aug_rate", "0.2", "--print_freq", "1", "--epoch", "1",
                                       "--save_freq", "1", "--num_workers", "0"]) == 0
    assert (save / "final.pth").is_file()


def test_mosaic_follows_the_official_recipe(tmp_path):
    """APRIL-GAN's 2x2 mosaic (tiles by defect type): 0.2 when training on MVTec-AD, with no other
    augmentation; none on VisA; --augment off drops it; --aug_rate is --mosaic_prob on MVTec-AD
    and, as in its code, nothing elsewhere. Its epochs by auxiliary set: 3 on MVTec-AD, 15 on VisA."""
    from engine.configure import configure_train
    from scripts import train_script
    from utils.errors import UserError

    def plan(*argv):
        args, run = configure_train(train_script.build_parser(),
                                    ["--method", "april_gan", "--save_path", str(tmp_path), *argv])
        dataset = args.dataset or Path(args.train_data_path[0]).name
        return run.mosaic_prob(args.mosaic_prob, dataset), run

    mosaic, run = plan("--train_data_path", "data/mvtec")
    assert mosaic == 0.2 and not run.augment and run.recipe.mosaic_pool == "defect_types"
    assert run.epochs == 3  # its train.sh on MVTec-AD
    mosaic, run = plan("--train_data_path", "data/visa")
    assert mosaic == 0.0 and run.epochs == 15
    assert plan("--train_data_path", "data/mvtec", "--augment", "off")[0] == 0.0
    assert plan("--dataset", "mvtec", "--train_data_path", "x", "--aug_rate", "0.5")[0] == 0.5
    mosaic, run = plan("--dataset", "visa", "--train_data_path", "x", "--aug_rate", "0.5")
    assert mosaic == 0.0 and any("--aug_rate 0.5: no effect" in note for note in run.notes)
    with pytest.raises(UserError, match="--aug_rate 0.5 and --mosaic_prob 0.3 disagree"):
        plan("--dataset", "mvtec", "--train_data_path", "x", "--aug_rate", "0.5", "--mosaic_prob", "0.3")
