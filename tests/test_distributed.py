"""torchrun with two CPU processes (gloo) against one process, on the tiny model.

Each launch runs the real scripts through ``tests/tiny_cli.py`` under
``python -m torch.distributed.run --standalone --nproc_per_node 2``.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import distributed
from engine.evaluation import category_plan
from models.factory import read_checkpoint
from models.factory import learnable_state_dict
from scripts import BAYES, FAPROMPT, test_script, train_script
from scripts import test as _test
from scripts import train as _train
from utils.errors import EXIT_USER_ERROR, run_cli

ROOT = Path(__file__).resolve().parents[1]


def torchrun(tmp_path: Path, script: str, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(ROOT / "tests" / "tiny_cli.py"), str(tmp_path / "configs"), str(ROOT / script), *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _same_metrics(tmp_path: Path):
    """The results.json of the single-process and the torchrun run, whose metrics are equal."""
    single, multi = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("single", "multi"))
    assert multi["per_category"] == single["per_category"] and multi["mean"] == single["mean"]
    return single, multi


def _check(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_shards_are_contiguous_and_cover_each_category(data):
    from datasets.meta import MetaDataset

    dataset = MetaDataset(data, "test", image_size=32)
    assert [list(distributed.shard(5, r, 3)) for r in range(3)] == [[0], [1, 2], [3, 4]]
    # in whole batches: 7 items in batches of 2 are blocks [0 1] [2 3] [4 5] [6]
    assert [list(distributed.shard(7, r, 3, 2)) for r in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]
    assert [list(distributed.shard(1, r, 2, 4)) for r in range(2)] == [[], [0]]
    for batch in (1, 2, 3):
        parts = [category_plan(dataset, distributed.Context(rank, 2, rank), batch) for rank in range(2)]
        for per_rank in zip(*parts):
            assert per_rank[0].indices == per_rank[1].indices
            assert list(per_rank[0].local) + list(per_rank[1].local) == list(per_rank[0].indices)
            assert (per_rank[1].local.start - per_rank[1].indices.start) % batch == 0  # a batch boundary


def test_a_global_batch_that_does_not_split_is_refused(data, tmp_path, common, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # what torchrun --nproc_per_node 3 sets; nothing is initialised
    assert _train(data, tmp_path / "save", common, *FAPROMPT, "--batch_size", "4") == EXIT_USER_ERROR
    assert not (tmp_path / "save").exists()


def _bayes_checkpoint(data, tmp_path, common) -> Path:
    save = tmp_path / "bayes_ckpt"
    assert _train(data, save, common, *BAYES, "--epochs", "1", "--val_protocol", "none") == 0
    return save / "final.pth"


@pytest.mark.parametrize("extra", [[], ["--k_shot", "2"]], ids=["zero-shot", "2-shot"])
def test_distributed_test_equals_single_process(extra, data, tmp_path, common):
    """Maps to 1e-6, scores and every metric exactly; Bayes-PFL's flow noise follows the images;
    with references every process builds the same banks."""
    checkpoint = _bayes_checkpoint(data, tmp_path, common)
    flags = [*common[2:], "--save_maps", "--no_report", "--sample_num", "3", "--device", "cpu", *extra]
    assert _test(checkpoint, data, tmp_path / "single", flags, "--batch_size", "2") == 0
    done = torchrun(tmp_path, "test.py", "--checkpoint_path", str(checkpoint), "--data_path", str(data),
                    "--save_path", str(tmp_path / "multi"), *flags, "--batch_size", "3")
    _check(done)
    single, multi = _same_metrics(tmp_path)
    for category, levels in single["thresholds"].items():  # thresholds are scores: maps' precision
        for level, point in levels.items():
            other = multi["thresholds"][category][level]
            assert other == {**point, "threshold": pytest.approx(point["threshold"], abs=1e-6)}
    rows = {name: list(csv.DictReader((tmp_path / name / "scores.csv").open())) for name in ("single", "multi")}
    assert [r["img_path"] for r in rows["multi"]] == [r["img_path"] for r in rows["single"]]
    for a, b in zip(rows["single"], rows["multi"]):
        assert float(a["image_score"]) == pytest.approx(float(b["image_score"]), abs=2e-6)
        assert a["decision"] == b["decision"]
        assert ("fewshot_score" in a) == bool(extra) and a.get("fewshot_score") == b.get("fewshot_score")
    maps = sorted((tmp_path / "single" / "maps").rglob("*.npy"))
    assert len(maps) == len(rows["single"])
    for path in maps:
        other = tmp_path / "multi" / "maps" / path.relative_to(tmp_path / "single" / "maps")
        assert np.abs(np.load(path) - np.load(other)).max() <= 1e-6


def test_distributed_winclip_plus_equals_single_process(data, tmp_path, common):
    """WinCLIP+ (windows, their harmonic aggregation, the reference bank) under torchrun: the
    single-process maps and metrics."""
    flags = ["--method", "winclip", *common, "--save_maps", "--no_report", "--device", "cpu", "--k_shot", "2",
             "--shot_weight", "0.5"]
    assert run_cli(test_script.main, ["--data_path", str(data), "--save_path", str(tmp_path / "single"), *flags,
                                      "--batch_size", "2"]) == 0
    done = torchrun(tmp_path, "test.py", "--data_path", str(data), "--save_path", str(tmp_path / "multi"), *flags,
                    "--batch_size", "3")
    _check(done)
    _same_metrics(tmp_path)
    maps = sorted((tmp_path / "single" / "maps").rglob("*.npy"))
    assert maps
    for path in maps:
        other = tmp_path / "multi" / "maps" / path.relative_to(tmp_path / "single" / "maps")
        assert np.abs(np.load(path) - np.load(other)).max() <= 1e-6


def test_distributed_adaclip_equals_single_process(data, tmp_path, common):
    """AdaCLIP under torchrun: HSF's k-means seeds follow the images' dataset positions (each
    process skips the others' images), so scores, maps and metrics are the single process's."""
    save = tmp_path / "trained"
    assert _train(data, save, common, "--method", "adaclip", "--features_list", "2", "4", "--prompting_depth", "3",
                  "--k_clusters", "2", "--epochs", "1") == 0
    flags = [*common[2:], "--save_maps", "--no_report", "--device", "cpu"]
    checkpoint = save / "final.pth"
    assert _test(checkpoint, data, tmp_path / "single", flags, "--batch_size", "2") == 0
    done = torchrun(tmp_path, "test.py", "--checkpoint_path", str(checkpoint), "--data_path", str(data),
                    "--save_path", str(tmp_path / "multi"), *flags, "--batch_size", "3")
    _check(done)
    _same_metrics(tmp_path)
    rows = {name: list(csv.DictReader((tmp_path / name / "scores.csv").open())) for name in ("single", "multi")}
    assert len(rows["single"]) == 18
    for a, b in zip(rows["single"], rows["multi"]):
        assert a["img_path"] == b["img_path"]
        assert float(a["image_score"]) == pytest.approx(float(b["image_score"]), abs=2e-6)


def _learned(path: Path):
    return read_checkpoint(str(path)).state_dict


def _initial(data, save: Path, flags) -> dict:
    """The learned parameters a run of ``flags`` starts from (seeded; nothing is trained)."""
    trainer = train_script.build_trainer(["--train_data_path", str(data), "--save_path", str(save), *flags])
    return learnable_state_dict(trainer.model)


# The two runs differ only in the order of the sums pooled over the processes, which changes each
# gradient by float32 rounding of its summands (1e-7 of their size). Adam divides a gradient by its
# running size, so where the summands nearly cancel that rounding becomes a visible fraction of
# the step: on this run up to 1.1e-3 of how far a tensor moved in training (bank.abnormal_state:
# 3.0e-6 of 2.8e-3, three steps at 1e-3). The bound is a hundredth of the distance moved, ten times
# that; a wrong split (another image's noise, a loss pooled over half the batch, a skipped or
# repeated step) changes a step by its whole size, a hundred times the bound.
MOVED_FRACTION = 1e-2
# A parameter that cannot change any output has a gradient of rounding noise alone, which Adam
# scales into steps of full size in either run: the stage-2 fuse's score bias shifts every
# patch's score equally before the softmax over the patches.
NO_EFFECT = {"image_head.fuse.score.bias"}


def _assert_close(a, b, start):
    assert a.keys() == b.keys() == start.keys()
    worst = 0.0
    for key in sorted(set(a) - NO_EFFECT):
        moved = float((a[key].double() - start[key].double()).abs().max())
        difference = float((a[key].double() - b[key].double()).abs().max())
        bound = MOVED_FRACTION * moved + 1e-7 * max(1.0, float(a[key].abs().max()))
        assert difference <= bound, f"{key}: one vs two processes differ by {difference:.2e}, moved {moved:.2e}"
        worst = max(worst, difference / bound)
    print(f"largest |one process - two processes| over {len(a)} tensors: {worst:.2f} of its bound")


def test_distributed_training_step_equals_single_process(data, tmp_path, common):
    """FAPrompt, one epoch of global batches of 4 split 2 + 2: the same parameters as one process."""
    flags = [*common, *FAPROMPT, "--epochs", "1", "--batch_size", "4", "--device", "cpu"]
    assert _train(data, tmp_path / "single", flags) == 0
    done = torchrun(tmp_path, "train.py", "--train_data_path", str(data), "--save_path", str(tmp_path / "multi"),
                    *flags)
    _check(done)
    _assert_close(_learned(tmp_path / "single" / "final.pth"), _learned(tmp_path / "multi" / "final.pth"),
                  _initial(data, tmp_path / "start", flags))
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == ["epoch_1.pth", "final.pth", "train.log"]


def test_distributed_two_stage_training_with_resume_equals_single_process(data, tmp_path, common):
    """Bayes-PFL: flow noise, the bank pair, batch-pooled losses, validation on both processes,
    the stage switch, an interrupt and a resume under torchrun: the same run as one process."""
    # 6 training images (the 0.67 hold-out keeps 1 good and 1 defective image per category) in
    # global batches of 2: every batch splits 1 + 1, none is padded
    flags = [*common, *BAYES, "--epochs", "2", "--stage2_epochs", "1", "--batch_size", "2", "--augment", "off",
             "--val_fraction", "0.67", "--device", "cpu", "--seed", "7"]
    assert _train(data, tmp_path / "single", flags) == 0
    where = ["--train_data_path", str(data), "--save_path", str(tmp_path / "multi")]
    interrupted = torchrun(tmp_path, "train.py", *where, *flags, "--interrupt_after_epoch", "1")
    assert interrupted.returncode != 0 and (tmp_path / "multi" / "epoch_1.pth").is_file()
    assert not (tmp_path / "multi" / "final.pth").exists()
    _check(torchrun(tmp_path, "train.py", *where, "--resume", "auto"))
    _assert_close(_learned(tmp_path / "single" / "final.pth"), _learned(tmp_path / "multi" / "final.pth"),
                  _initial(data, tmp_path / "start", flags))
    history = {name: read_checkpoint(str(tmp_path / name / "epoch_2.pth")).training["state"]["history"]
               for name in ("single", "multi")}
    assert [h["stage"] for h in history["multi"]] == [h["stage"] for h in history["single"]] == [1, 2]
    for a, b in zip(history["single"], history["multi"]):
        assert a["pixel_ap"] == pytest.approx(b["pixel_ap"], abs=1e-6)
        assert a["total"] == pytest.approx(b["total"], rel=1e-5)
    per_rank = read_checkpoint(str(tmp_path / "multi" / "epoch_1.pth")).training["rng_per_rank"]
    assert len(per_rank) == 2 and isinstance(per_rank[1]["torch"], torch.Tensor)
