"""Run bookkeeping: one seed rule for test.py and test.sh, results folders per method and run,
and the training stage a checkpoint ends in (with --stage2_epochs to guarantee stage 2)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from models.factory import read_checkpoint
from scripts import BAYES, ROOT, test_script
from scripts import train as _train
from utils.errors import run_cli

TEST_SIZES = ["--num_workers", "0", "--metrics", "image"]


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The golden fixtures' CLIP and official-format checkpoints (tests/golden/README.md)."""
    from tools.golden import stages

    return stages.prepare(tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def official_bayes_checkpoint(golden, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "train_visa.pth"
    shutil.copy(golden.checkpoints["bayes_pfl"], path)
    return path


def _results(folder):
    return json.loads((folder / "results.json").read_text())


def test_one_seed_rule_in_test_py_and_test_sh(official_bayes_checkpoint, golden, data, tmp_path):
    """An official Bayes-PFL file tests with seed 333 (its test.sh) in both entry points, with the
    same scores; --seed overrides; the default folder names dataset, method and run."""
    flags = ["--model", golden.model, "--pretrained", str(golden.clip), "--image_size", "48", "--sample_num", "2",
             *TEST_SIZES]
    argv = ["--checkpoint_path", str(official_bayes_checkpoint), "--data_path", str(data), "--dataset", "synthetic"]
    assert run_cli(test_script.main, [*argv, "--save_root", str(tmp_path / "py"), *flags]) == 0
    by_python = _results(tmp_path / "py" / "synthetic_bayes_pfl_train_visa")

    (tmp_path / "roots").mkdir()
    (tmp_path / "roots" / "synthetic").symlink_to(data, target_is_directory=True)
    python = tmp_path / "python"  # test.sh runs "$PYTHON test.py ...": the tiny model must be registered there
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT}/tests/tiny_cli.py" "{tmp_path}/configs" "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "CHECKPOINT": str(official_bayes_checkpoint), "PRESET": "others",
           "DATASETS": "synthetic", "DATA_ROOT": str(tmp_path / "roots"), "SAVE_ROOT": str(tmp_path / "sh")}
    done = subprocess.run(["bash", str(ROOT / "test.sh"), *flags], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    by_script = _results(tmp_path / "sh" / "synthetic_bayes_pfl_train_visa")

    assert by_python["seed"] == by_script["seed"] == 333
    assert by_python["seed_from"] == by_script["seed_from"] == "the official bayes_pfl test script"
    assert by_python["mean"] == by_script["mean"] and by_python["per_category"] == by_script["per_category"]
    assert by_python["training"]["stage"] == 2  # released Bayes-PFL files are stage-2 models

    assert run_cli(test_script.main, [*argv, "--save_path", str(tmp_path / "seed7"), "--seed", "7", *flags]) == 0
    assert _results(tmp_path / "seed7")["seed"] == 7 and _results(tmp_path / "seed7")["config"]["seed"] == 7


def test_our_checkpoint_tests_with_its_training_seed_in_its_own_folder(faprompt_checkpoint, data, tmp_path):
    argv = ["--checkpoint_path", str(faprompt_checkpoint), "--data_path", str(data), "--save_root", str(tmp_path),
            "--pretrained", "none", "--image_size", "32", "--num_workers", "0", "--metrics", "image"]
    assert run_cli(test_script.main, argv) == 0
    run = faprompt_checkpoint.parent.name
    results = _results(tmp_path / f"data_faprompt_{run}")
    assert results["run_name"] == run and results["seed"] == 111 and results["seed_from"] == "the checkpoint"
    assert results["training"]["stage"] == 1 and results["training"]["stages"] == 1
    epoch_file = faprompt_checkpoint.parent / "epoch_1.pth"
    assert run_cli(test_script.main, [*argv[:1], str(epoch_file), *argv[2:]]) == 0
    assert (tmp_path / f"data_faprompt_{run}_epoch_1" / "results.json").is_file()  # never the same folder


def test_stage_one_that_never_plateaus_is_reported(data, tmp_path, common, caplog):
    save = tmp_path / "bayes"
    assert _train(data, save, common, *BAYES, "--epochs", "1") == 0
    assert "stage 1 never plateaued within --epochs 1" in caplog.text and "--stage2_epochs" in caplog.text
    final = read_checkpoint(str(save / "final.pth"))
    assert final.info["stage"] == 1 and final.info["epochs_per_stage"] == [1, 0]
    out = tmp_path / "results"
    assert run_cli(test_script.main, ["--checkpoint_path", str(save / "final.pth"), "--data_path", str(data),
                                      "--save_path", str(out), *TEST_SIZES]) == 0
    assert _results(out)["training"]["stage"] == 1


def test_stage2_epochs_guarantees_stage_two(data, tmp_path, common, caplog):
    save = tmp_path / "bayes"
    assert _train(data, save, common, *BAYES, "--epochs", "2", "--patience", "5", "--stage2_epochs", "1") == 0
    assert "never plateaued" not in caplog.text and "(--stage2_epochs 1 are reserved); starting stage 2" in caplog.text
    history = read_checkpoint(str(save / "epoch_2.pth")).training["state"]["history"]
    assert [h["stage"] for h in history] == [1, 2]  # stage 1 ends after 2 - 1 epochs
    final = read_checkpoint(str(save / "final.pth"))
    assert final.info["stage"] == 2 and final.info["epochs_per_stage"] == [1, 1]
