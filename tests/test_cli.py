"""train.py and test.py end to end on the tiny backbone and synthetic data."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from datasets.meta import MetaDataset
from models.factory import read_checkpoint
from scripts import BAYES, FAPROMPT, test_script, train_script
from scripts import test as _test
from scripts import train as _train
from utils.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_cli
from utils.metrics import pixel_metrics

METRICS = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max",
           "pixel_aupro", "pixel_pro_legacy"]


def test_train_one_epoch_then_test_writes_all_results(faprompt_checkpoint, data, tmp_path, common):
    assert faprompt_checkpoint.is_file() and (faprompt_checkpoint.parent / "epoch_1.pth").is_file()
    ckpt = read_checkpoint(str(faprompt_checkpoint))
    assert ckpt.method == "faprompt" and ckpt.config["depth"] == 3 and ckpt.backbone.image_size == 32
    assert not any(k.startswith("backbone.") for k in ckpt.state_dict)
    out = tmp_path / "results"
    assert _test(faprompt_checkpoint, data, out, common, "--save_vis") == 0  # no model flags needed
    results = json.loads((out / "results.json").read_text())
    assert set(results["per_category"]) == {"washer", "weave", "wood"}
    for metrics in list(results["per_category"].values()) + [results["mean"]]:
        assert all(metrics[m] is not None and 0 <= metrics[m] <= 1 for m in METRICS)
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0] == ["category"] + METRICS and rows[-1][0] == "mean" and len(rows) == 5
    table = (out / "results.md").read_text()
    assert "P-AUPRO" in table and "P-PRO(legacy)" in table and "| mean" in table
    assert (out / "vis" / "washer_top.png").is_file() and list((out / "vis" / "weave").rglob("*.png"))


def test_bayes_pfl_two_stage_training_runs_with_validation(data, tmp_path, common):
    save = tmp_path / "bayes"
    assert _train(data, save, common, *BAYES, "--epochs", "2", "--patience", "0") == 0
    for path in save.glob("*.pth"):  # everything we write needs nothing beyond safe loading
        assert isinstance(torch.load(path, weights_only=True), dict)
    ckpt = read_checkpoint(str(save / "epoch_2.pth"))
    history = ckpt.training["state"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(h["pixel_ap"] is not None and h["image_ap"] is not None for h in history)
    out = tmp_path / "results"
    assert _test(save / "final.pth", data, out, common, "--metrics", "image") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"] == METRICS[:3]


def test_anomalyclip_trains_and_tests_from_its_official_flags(data, tmp_path, common):
    """AnomalyCLIP's train.sh / test.sh flags (sizes shrunk for the tiny model): --n_ctx sets
    both context lengths, --features_list the layers whose maps are summed."""
    save = tmp_path / "anomalyclip"
    official = ["--method", "anomalyclip", "--depth", "3", "--n_ctx", "4", "--t_n_ctx", "2", "--features_list",
                "2", "4", "--epoch", "1", "--save_freq", "1", "--print_freq", "1"]
    assert _train(data, save, common, *official) == 0
    ckpt = read_checkpoint(str(save / "final.pth"))
    assert ckpt.method == "anomalyclip"
    assert (ckpt.config["normal_ctx"], ckpt.config["abnormal_ctx"], ckpt.config["depth"]) == (4, 4, 3)
    assert tuple(ckpt.config["features_list"]) == (2, 4) and ckpt.config["map_loss_weight"] == 4.0
    out = tmp_path / "results"
    assert _test(save / "final.pth", data, out, common, "--metrics", "image-pixel-level") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "anomalyclip"
    assert all(results["mean"][m] is not None for m in ("image_auroc", "pixel_auroc", "pixel_pro_legacy"))


def test_resume_after_interrupt_equals_uninterrupted(data, tmp_path, common):
    extra = [*BAYES, "--epochs", "3", "--patience", "0", "--seed", "5"]
    assert _train(data, tmp_path / "straight", common, *extra) == 0
    assert _train(data, tmp_path / "broken", common, *extra, "--interrupt_after_epoch", "1") == EXIT_INTERRUPTED
    assert (tmp_path / "broken" / "epoch_1.pth").is_file() and not (tmp_path / "broken" / "final.pth").exists()
    # resuming needs only the data and the folder: the other flags come from the checkpoint
    resume = ["--train_data_path", str(data), "--save_path", str(tmp_path / "broken"), "--resume", "auto"]
    assert run_cli(train_script.main, resume) == 0
    a = read_checkpoint(str(tmp_path / "straight" / "final.pth")).state_dict
    b = read_checkpoint(str(tmp_path / "broken" / "final.pth")).state_dict
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    history_a = read_checkpoint(str(tmp_path / "straight" / "epoch_3.pth")).training["state"]["history"]
    history_b = read_checkpoint(str(tmp_path / "broken" / "epoch_3.pth")).training["state"]["history"]
    assert history_a == history_b


def test_single_image_mode_writes_maps_and_scores(faprompt_checkpoint, data, tmp_path, common):
    folder = data / "weave" / "test" / "good"
    out = tmp_path / "single"
    assert run_cli(test_script.main, ["--checkpoint_path", str(faprompt_checkpoint), "--image", str(folder),
                                      "--save_path", str(out), *common[2:]]) == 0
    images = sorted(folder.glob("*.png"))
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == len(images) == len(list((out / "maps").glob("*.npy")))
    for row in rows:
        assert 0 <= float(row["image_score"]) <= 1
        assert np.load(out / row["map_file"]).shape == (32, 32)
    assert len(list((out / "vis").glob("*.png"))) == len(images)


def test_saved_maps_are_the_maps_the_metrics_used(faprompt_checkpoint, data, tmp_path, common):
    out = tmp_path / "maps"
    assert _test(faprompt_checkpoint, data, out, common, "--save_maps") == 0
    results = json.loads((out / "results.json").read_text())
    scores = list(csv.DictReader((out / "scores.csv").open()))
    dataset = MetaDataset(data, "test", image_size=32)
    for category in dataset.classes:
        index = [i for i, r in enumerate(dataset.records) if r["cls_name"] == category]
        masks = np.stack([dataset[i]["mask"].numpy() for i in index])
        rows = [row for row in scores if row["category"] == category]
        assert [row["img_path"] for row in rows] == [dataset[i]["img_path"] for i in index]
        maps = np.stack([np.load(out / row["map_file"]) for row in rows])
        assert maps.dtype == np.float32
        recomputed = pixel_metrics(masks, maps)
        for key, value in recomputed.items():
            assert value == pytest.approx(results["per_category"][category][f"pixel_{key}"], abs=1e-12)


def test_training_free_baseline(data, tmp_path, common):
    out = tmp_path / "clip"
    assert run_cli(test_script.main, ["--method", "clip", "--data_path", str(data), "--save_path", str(out),
                                      *common]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "clip" and results["mean"]["pixel_auroc"] is not None


BAD_TEST_CASES = [
    (["--checkpoint_path", "{missing}", "--data_path", "{data}"], "file not found"),
    (["--checkpoint_path", "{ckpt}", "--data_path", "{data}", "--method", "bayes_pfl"], "is a faprompt checkpoint"),
    (["--checkpoint_path", "{ckpt}", "--data_path", "{data}", "--model", "ViT-B-16"], "trained on the backbone"),
    (["--checkpoint_path", "{ckpt}", "--data_path", "{data}", "--dataset", "visa"], "none of its categories"),
    (["--checkpoint_path", "{ckpt}", "--data_path", "{data}", "--depth", "5"], "cannot change at test time"),
    (["--checkpoint_path", "{ckpt}", "--data_path", "{tmp}/nowhere"], "does not exist"),
    (["--checkpoint_path", "{ckpt}", "--data_path", "{data}", "--save_path", "{file}/sub"], "is not writable"),
    (["--checkpoint_path", "{ckpt}"], "pass --data_path"),
    (["--checkpoint_path", "{data}/meta.json", "--data_path", "{data}"], "not a readable checkpoint"),
    (["--method", "faprompt", "--data_path", "{data}"], "needs --checkpoint_path"),
]


@pytest.mark.parametrize("argv, message", BAD_TEST_CASES)
def test_bad_input_to_test_py(argv, message, faprompt_checkpoint, data, tmp_path, common, caplog):
    file = tmp_path / "file.txt"
    file.write_text("x")
    values = {"missing": tmp_path / "missing.pth", "data": data, "ckpt": faprompt_checkpoint, "tmp": tmp_path,
              "file": file}
    argv = [a.format(**values) for a in argv]
    if "--save_path" not in argv:
        argv += ["--save_path", str(tmp_path / "out")]
    assert run_cli(test_script.main, [*argv, *common[2:]]) == EXIT_USER_ERROR
    assert message in caplog.text


BAD_TRAIN_CASES = [
    (["--train_data_path", "{tmp}/nowhere"], "does not exist"),
    (["--train_data_path", "{data}", "--prompt_num", "4"], "does not apply to --method faprompt"),
    (["--train_data_path", "{data}", "--save_path", "{file}/sub"], "is not writable"),
    (["--train_data_path", "{data}", "--val_protocol", "target", "--val_data_path", "{data}",
      "--val_dataset", "nonsense"], "has no known categories"),
    (["--train_data_path", "{data}", "--resume", "auto"], "no epoch_*.pth"),
    (["--train_data_path", "{data}", "--train_classes", "teapot"], "unknown class 'teapot'"),
]


@pytest.mark.parametrize("argv, message", BAD_TRAIN_CASES)
def test_bad_input_to_train_py(argv, message, data, tmp_path, common, caplog):
    file = tmp_path / "file.txt"
    file.write_text("x")
    argv = [a.format(data=data, tmp=tmp_path, file=file) for a in argv]
    if "--save_path" not in argv:
        argv += ["--save_path", str(tmp_path / "save")]
    assert run_cli(train_script.main, [*argv, *FAPROMPT, *common]) == EXIT_USER_ERROR
    assert message in caplog.text


def test_official_bayes_pfl_training_validates_on_target_categories(data, tmp_path, common, caplog):
    argv = ["--train_data_path", str(data), "--save_path", str(tmp_path), "--compat", "official", *BAYES, *common]
    assert run_cli(train_script.main, argv) == EXIT_USER_ERROR
    assert "needs --val_data_path" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_request_without_gpu(data, tmp_path, common, caplog):
    argv = ["--train_data_path", str(data), "--save_path", str(tmp_path), *FAPROMPT, *common, "--device", "cuda"]
    assert run_cli(train_script.main, argv) == EXIT_USER_ERROR
    assert "no CUDA GPU is available" in caplog.text
