"""Smoke tests of the benchmarks on the tiny model (CPU, 1-2 iterations or epochs each)."""
from __future__ import annotations

import json

import pytest

from models.backbone import default_vv_start
from benchmarks import backbone as backbone_bench
from benchmarks import bayes_pfl as bayes_bench
from benchmarks import common, device_check
from benchmarks import faprompt as faprompt_bench


def _argv(tiny_model, *extra):
    return ["--model", tiny_model, "--image_size", "32", "--device", "cpu", "--iters", "2", "--warmup", "1",
            *extra]


def _check_timing(timing, iters=2):
    assert len(timing["times_s"]) == iters and all(t > 0 for t in timing["times_s"])
    assert timing["best_s"] <= timing["median_s"] and timing["best_s"] <= timing["mean_s"]


def _check_side_by_side(result):
    a, b = result["batched"], result["per_image"]
    _check_timing(a["timing"])
    _check_timing(b["timing"])
    assert a["images_per_s"] > 0 and b["images_per_s"] > 0 and result["ratio"] > 0


def test_backbone_benchmark(tiny_model, tmp_path, capsys):
    path = tmp_path / "backbone.json"
    result = backbone_bench.main(_argv(tiny_model, "--batch_size", "2", "--text_batch", "6", "--json", str(path)))
    assert result["image"]["images_per_s"] > 0 and result["text"]["prompts_per_s"] > 0
    _check_timing(result["image"]["timing"])
    settings = result["settings"]
    assert settings["layers"] == [1, 2, 3, 4] and settings["vv_start"] == default_vv_start(4) == 2
    assert settings["deep_prompts"] == 3  # capped below the tiny text depth of 4
    assert result["image"]["memory"]["peak_bytes"] is None  # no CUDA here
    out = capsys.readouterr().out
    assert "images/s" in out and "prompts/s" in out
    assert json.loads(path.read_text())["text"]["prompts_per_s"] > 0


def test_faprompt_benchmark(tiny_model, capsys):
    result = faprompt_bench.main(_argv(tiny_model, "--batch_size", "3"))
    _check_side_by_side(result)
    assert result["max_difference"]["map"] < 1e-5 and result["max_difference"]["score"] < 1e-5
    k = result["settings"]["abnormal_prompts"]
    assert result["settings"]["prompts_per_batch"] == {"batched": 1 + k + 3 * k, "per_image": 3 * (1 + 2 * k)}
    out = capsys.readouterr().out
    assert "speed-up (a)/(b)" in out and f"{result['ratio']:.2f}x" in out


def test_bayes_pfl_benchmark(tiny_model, capsys):
    result = bayes_bench.main(_argv(tiny_model, "--batch_size", "2", "--sample_num", "2"))
    _check_side_by_side(result)
    assert max(result["agreement_fp32"].values()) < bayes_bench.AGREEMENT_TOLERANCE
    assert result["settings"]["text_calls_per_batch"] == {"batched": 1, "per_image": 8}
    out = capsys.readouterr().out
    assert "speed-up (a)/(b)" in out and f"{result['ratio']:.2f}x" in out


def test_official_loop_matches_predict_on_every_image(tiny_model):
    backbone = common.make_backbone(tiny_model, "none", 32, "cpu", "fp32", pos_interpolation="bicubic")
    model = common.build_method("bayes_pfl", backbone, "cpu", sample_num=3, prompt_num=2)
    images = common.random_images(3, 32, "cpu", seed=5)
    names = ["screw", "bottle", "pcb1"]
    model.start_evaluation(4)
    _, batched = bayes_bench.predict_batched(model, images, names, 0)
    model.start_evaluation(4)
    _, singles = bayes_bench.predict_per_image(model, images, names, 0)
    for i, single in enumerate(singles):
        assert common.max_abs_diff(batched.anomaly_map[i:i + 1], single.anomaly_map) < 1e-5
        assert common.max_abs_diff(batched.class_prob[i:i + 1], single.class_prob) < 1e-5
        assert common.max_abs_diff(batched.map_score[i:i + 1], single.map_score) < 1e-5


def test_device_check_quick_run(tiny_model, tmp_path, capsys):
    path = tmp_path / "device_check.json"
    data = device_check.main(["--quick", "--model", tiny_model, "--device", "cpu", "--precisions", "fp32",
                              "--parts", "env", "kernels", "correctness", "memory", "--out", str(path)])
    assert data["errors"] == {}
    saved = json.loads(path.read_text())
    assert saved["kernels"]["metrics"]["equal_1e-9"] is True
    assert saved["correctness"]["bayes_pfl"]["batched_vs_official_loop_fp32"]["map"] < 1e-4
    assert saved["memory"]["faprompt_train_fp32"]["batch"] == 2
    assert saved["imports"]["torch"]["ok"] is True
    assert "=== summary ===" in capsys.readouterr().out


def test_table_and_json_helpers(tmp_path):
    table = common.format_table([["a", 1, 2.5], ["bb", 10, 0.0001]], ["name", "n", "value"])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("name") and "1.00e-04" in lines[3]
    path = tmp_path / "x" / "out.json"
    common.write_json(str(path), {"nan": float("nan"), "device": common.resolve_device("cpu")})
    assert json.loads(path.read_text()) == {"nan": None, "device": "cpu"}


def test_feature_cache_benchmark(tiny_model, capsys):
    from benchmarks import feature_cache as cache_bench

    result = cache_bench.main(["--model", tiny_model, "--images", "5", "--batch_size", "2", "--epochs", "2",
                               "--variants", "off", "memory", "float16"])
    off, memory, half = result["variants"]
    assert [len(r["epoch_s"]) for r in (off, memory, half)] == [2, 2, 2]
    assert all(r["epoch1_images_per_s"] > 0 and r["later_images_per_s"] > 0 for r in (off, memory, half))
    assert off["cache_bytes_per_image"] is None
    # FAPrompt on the tiny model keeps the V-V tokens [16, 32] and the CLS feature [32]
    assert memory["cache_fields"] == {"cls_raw": [32], "vv_proj": [16, 32]}
    assert memory["cache_bytes_per_image"] == 4 * (16 * 32 + 32) == 2 * half["cache_bytes_per_image"]
    assert memory["bit_identical_to_off"] and memory["max_loss_difference"] == 0
    assert not half["bit_identical_to_off"] and 0 < half["max_loss_difference"] < 1e-2
    out = capsys.readouterr().out
    assert "epochs 2+ img/s" in out and "float16" in out


def test_end_to_end_benchmark(tiny_model, tmp_path, capsys):
    from benchmarks import run as run_bench

    path = tmp_path / "run.json"
    result = run_bench.main(["--model", tiny_model, "--device", "cpu", "--threads", "1", "--images", "4", "--batch_size", "2",
                             "--train_batch", "2", "--warmup", "0", "--category_images", "5", "--no_report",
                             "--json", str(path)])
    for method in ("faprompt", "bayes_pfl"):
        out = result["methods"][method]
        assert out["images"] == 4 and out["batch_size"] == 2
        assert all(out[k]["s"] > 0 for k in ("backbone", "ours", "per_image", "train"))
        # the per-image style computes the same test: the same metrics (maps agree to float rounding)
        for key, value in out["ours"]["mean"].items():
            assert value == pytest.approx(out["per_image"]["mean"][key], abs=1e-6)
        assert out["train"]["batch"] == 2 and out["train"]["images_per_s"] > 0
    category = result["category"]
    assert category["images"] == 5 and category["maps_bytes"] == 5 * 32 * 32 * 4
    assert category["peak_bytes"] is None or category["peak_bytes"] >= category["base_bytes"]
    assert category["metrics"]["pixel_auroc"] is not None
    out = capsys.readouterr().out
    assert "job/backbone" in out and "per-image style / ours" in out and "one category of 5 images" in out
    assert json.loads(path.read_text())["methods"]["faprompt"]["ours"]["s"] > 0


def test_device_check_distributed_part_on_cpu(tiny_model, tmp_path):
    """The part a machine with several GPUs runs, here on two gloo processes."""
    path = tmp_path / "device_check.json"
    data = device_check.main(["--quick", "--model", tiny_model, "--device", "cpu", "--parts", "distributed",
                              "--processes", "2", "--out", str(path)])
    assert data["errors"] == {}
    out = json.loads(path.read_text())["distributed"]
    assert out["single"]["returncode"] == 0 and out["torchrun"]["returncode"] == 0, out
    assert out["metrics_equal"] is True and out["max_map_difference"] <= 1e-6


def test_fewshot_benchmark(tiny_model, capsys):
    from benchmarks import fewshot as fewshot_bench

    result = fewshot_bench.main(_argv(tiny_model, "--batch_size", "2", "--shots", "1", "3", "--iters", "1"))
    _check_timing(result["zero_shot"]["timing"], iters=2)  # one round per K
    rows = result["few_shot"]
    assert [r["k"] for r in rows] == [1, 3]
    for r in rows:
        for name in ("zero_shot", "few_shot", "comparison_only", "two_passes"):
            _check_timing(r[name], iters=1)
        patches = (32 // 8) ** 2
        assert r["bank_rows"] == [r["k"] * patches]  # clip: the V-V tokens of its pixel map
        assert r["bank_bytes"] == 4 * sum(r["k"] * patches * d for d in r["bank_dims"])
        assert min(r["ratio"], r["ratio_two_passes"], r["ratio_comparison_only"], r["bank_build_s"]) > 0
    out = capsys.readouterr().out
    assert "K = 3" in out and "x zero-shot" in out
