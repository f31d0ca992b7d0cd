"""AdaCLIP against the official code (caoyunkang/AdaCLIP), stage by stage, on the golden tiny CLIP
(fixtures: tools/golden/harness_adaclip.py): the weights load from the official checkpoint
layout; the unprompted and the prompted image pass (visual prompts in the tower), the text pair
with its prompt tokens, the projections, maps and HSF-fused image probabilities, a training
step's loss and gradients; then training and testing end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compare import FIXTURES, close, fixture, golden_backbone, official_model
from models.adaclip import kmeans_seed
from tools.golden.harness_adaclip import FEATURES, learned_state
from tools.golden.harness_adaclip import kmeans_seed as harness_seed



def fresh_stream(seed: int) -> dict:
    """AdaClip.random_state of a k-means generator just seeded with ``seed``."""
    _, keys, position, has_gauss, gauss = np.random.RandomState(seed).get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss,
            "gauss": gauss}


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    work = tmp_path_factory.mktemp("adaclip_golden")
    ref = fixture("adaclip_official")
    provenance = json.loads((FIXTURES / "adaclip_official.json").read_text())
    shapes = {k: tuple(v) for k, v in provenance["learned_shapes"].items()}
    payload = {f"clip_model.{k}": torch.from_numpy(v) for k, v in learned_state(shapes).items()}
    torch.save(payload, work / "pretrained_mvtec_colondb.pth")
    # its CLIP: exact GELU, the grid resized bicubically without antialias
    model, checkpoint = official_model(work / "pretrained_mvtec_colondb.pth", "adaclip",
                                       golden_backbone(work, "bicubic_plain"), k_clusters=provenance["k_clusters"],
                                       seed=provenance["kmeans_seed"], row_dice=True)
    assert checkpoint.config == {"prompting_depth": 3, "prompting_length": 2, "prompting_type": "SD",
                                 "prompting_branch": "VL"}
    return model, ref, provenance


def test_adaclip_test_time_equals_the_official_code(golden):
    model, ref, provenance = golden
    assert all(kmeans_seed(s, p) == harness_seed(s, p) for s in (0, 111, 2 ** 31) for p in (0, 5))
    model.eval()
    images = torch.from_numpy(ref["images"])
    words = [provenance["class_name"]] * 3
    with torch.no_grad():
        feats = model.encode_images(images)
        close(feats.cls_plain, ref["plain_cls"], "unprompted global feature (makes the dynamic prompts)")
        close(feats.cls, ref["cls"], "prompted global feature")
        for layer in FEATURES:
            close(feats.patch_raw[layer], ref[f"tokens/{layer}"], f"prompted raw tokens of block {layer}")
        close(model.text_features(words, feats.cls_plain), ref["text"], "text pair with prompt tokens")
        cls, tokens = model.projected(feats)
        close(cls, ref["proj_cls"], "projected global feature")
        close(tokens[0], ref["proj_tokens/6"], "projected tokens of block 6")
        model.start_evaluation()  # HSF's k-means: image i from kmeans_seed(seed, i), as recorded
        pred = model.predict(images, words)
    close(pred.anomaly_map, ref["map"], "map")
    close(pred.class_prob, ref["image_prob"], "HSF-fused image probability")


def test_adaclip_training_step_equals_the_official_code(golden):
    """One step on the first image: the loss and every learned tensor's gradient."""
    model, ref, provenance = golden
    model.train()
    model.zero_grad()
    model.set_random_state(fresh_stream(provenance["kmeans_seed"]))  # the official step's seeding
    out = model(torch.from_numpy(ref["images"][:1]), [provenance["class_name"]])
    terms = model.loss(out, torch.from_numpy(ref["masks"][:1]), torch.from_numpy(ref["labels"][:1]))
    terms["total"].backward()
    close(terms["total"].item(), ref["loss"], "loss")
    ours = {}
    for i in range(len(FEATURES)):
        for kind in ("weight", "bias"):
            ours[f"patch_token_layer.head.{i}.{kind}"] = getattr(model.patch_proj[i], kind)
    for kind in ("weight", "bias"):
        ours[f"cls_token_layer.head.0.{kind}"] = getattr(model.cls_proj, kind)
    for official, tower in (("visual", model.visual_prompts), ("text", model.text_prompts)):
        for i in range(len(tower.dynamic)):
            for kind in ("weight", "bias"):
                ours[f"dynamic_{official}_prompt_generator.head.{i}.{kind}"] = getattr(tower.dynamic[i], kind)
    recorded = sorted(k[5:] for k in ref if k.startswith("grad/"))
    static = [k for k in recorded if "static_prompts" in k]
    assert len(recorded) == len(ours) + len(static) and len(static) == 5  # text static 0 is never used
    for key, param in ours.items():
        reference = ref[f"grad/{key}"]
        close(param.grad[:len(reference)], reference, f"gradient of {key}")
    for key in static:
        tower = model.visual_prompts if key.startswith("visual") else model.text_prompts
        close(tower.static.grad[int(key.rsplit(".", 1)[1])], ref[f"grad/{key}"], f"gradient of {key}")
    model.zero_grad()


TINY = ["--method", "adaclip", "--features_list", "2", "4", "--prompting_depth", "3", "--k_clusters", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, tiny_model):
    """final.pth of one AdaCLIP epoch on the synthetic data (tiny model: depth 3 of 4 text blocks)."""
    from scripts import one_epoch

    return one_epoch(tmp_path_factory.mktemp("adaclip"), data, tiny_model, *TINY)


def test_adaclip_trains_and_tests_end_to_end(trained, data, common, tmp_path):
    """test.py zero-shot and with --k_shot 1 on the one-epoch checkpoint: results and report."""
    from scripts import zero_and_one_shot

    stored = torch.load(trained, map_location="cpu", weights_only=True)
    assert stored["method"] == "adaclip" and "visual_prompts.static" in stored["state_dict"]
    zero_and_one_shot(trained, data, tmp_path, common, "adaclip")


def test_two_auxiliary_sets_train_together(tmp_path, tiny_model, common, caplog):
    """--train_data_path A B: AdaCLIP's default pairs (MVTec-AD + ColonDB); the mosaic only on the
    MVTec-AD part; the recipe's AdamW; the feature cache refused (trained visual prompts)."""
    from datasets.synthetic import generate
    from scripts import train_script
    from utils.errors import EXIT_USER_ERROR, run_cli

    def train(roots, save, *extra):
        return run_cli(train_script.main, ["--train_data_path", *map(str, roots), "--save_path", str(save),
                                           "--batch_size", "4", *common, *TINY, "--epochs", "1", *extra])

    first = generate(tmp_path / "mvtec", seed=1, size=64, categories=["weave"], n_train=1, n_test_good=2,
                     n_test_defect=1)
    second = generate(tmp_path / "colondb", seed=2, size=64, categories=["wood", "washer"], n_train=1,
                      n_test_good=2, n_test_defect=1)
    save = tmp_path / "both"
    caplog.set_level("INFO")
    assert train([first, second], save) == 0
    log = caplog.text
    assert "training on 15 images of" in log and str(second.resolve()) in log and "mosaic 0.20" in log
    assert "feature cache off: AdaCLIP's visual prompts are trained" in log
    stored = torch.load(save / "epoch_1.pth", map_location="cpu", weights_only=True)["training"]
    assert stored["run"]["dataset"] == "mvtec+colondb" and len(stored["run"]["train_data_path"]) == 2
    assert stored["optimizer"]["param_groups"][0]["weight_decay"] == 0.01  # AdamW's
    caplog.clear()
    assert train([first, first], tmp_path / "twice") == EXIT_USER_ERROR
    assert "class 'weave' is in" in caplog.text
    caplog.clear()
    assert train([first], tmp_path / "cached", "--feature_cache", "memory") == EXIT_USER_ERROR
    assert "--feature_cache memory: AdaCLIP's visual prompts are trained" in caplog.text


def test_official_command_lines(trained, data, tiny_model, tmp_path, caplog, capsys):
    """Its train.sh / test.sh commands name datasets under its DATA_ROOT: with the folders given
    they run; without, one line says what to pass."""
    from scripts import test_script, train_script
    from utils.errors import EXIT_USER_ERROR, run_cli

    tiny = ["--model", tiny_model, "--pretrained", "none", "--image_size", "32", "--num_workers", "0"]
    save = tmp_path / "workspaces"
    assert run_cli(train_script.main, ["--save_fig", "True", "--training_data", "mvtec", "--testing_data", "visa",
                                       "--train_data_path", str(data), "--save_path", str(save), *tiny, *TINY,
                                       "--epoch", "1", "--batch_size", "4", "--exp_indx", "0"]) == 0
    assert (save / "final.pth").is_file()
    out = tmp_path / "test"
    assert run_cli(test_script.main, ["--testing_model", "dataset", "--ckt_path", str(trained), "--save_fig", "True",
                                      "--testing_data", "visa", "--data_path", str(data), "--save_path", str(out),
                                      *tiny]) == 0
    assert json.loads((out / "results.json").read_text())["method"] == "adaclip"
    for script, argv, says in ((train_script, ["--training_data", "mvtec", "colondb"], "--train_data_path DATA/mvtec"),
                               (test_script, ["--ckt_path", str(trained), "--testing_data", "visa"], "--data_path")):
        capsys.readouterr()
        assert run_cli(script.main, ["--save_path", str(tmp_path / "bad"), *argv]) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_train_sh_adds_the_official_companion_set(tmp_path, tiny_model):
    """METHOD=adaclip bash train.sh (PRESET visa2mvtec) trains on VisA + ClinicDB from DATA_ROOT."""
    import os
    import subprocess
    import sys

    from datasets.synthetic import generate

    root = Path(__file__).resolve().parents[1]
    roots = tmp_path / "roots"
    generate(roots / "visa", seed=1, size=64, categories=["weave"], n_train=1, n_test_good=2, n_test_defect=1)
    generate(roots / "clinicdb", seed=2, size=64, categories=["wood"], n_train=1, n_test_good=2, n_test_defect=1)
    python = tmp_path / "python"  # train.sh runs "$PYTHON": the scripts with the tiny model registered
    python.write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exec "{sys.executable}" "$@"; fi\n'
                      f'exec "{sys.executable}" "{root}/tests/tiny_cli.py" "{tmp_path}/configs" "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "METHOD": "adaclip", "PRESET": "visa2mvtec",
           "DATA_ROOT": str(roots), "SAVE_ROOT": str(tmp_path / "checkpoints")}
    done = subprocess.run(["bash", str(root / "train.sh"), "--model", tiny_model, "--pretrained", "none",
                           "--image_size", "32", "--num_workers", "0", "--batch_size", "4", *TINY[2:],
                           "--epochs", "1"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    save = tmp_path / "checkpoints" / "visa+clinicdb_adaclip"
    run = torch.load(save / "epoch_1.pth", map_location="cpu", weights_only=True)["training"]["run"]
    assert run["dataset"] == "visa+clinicdb" and [Path(p).name for p in run["train_data_path"]] == ["visa", "clinicdb"]
