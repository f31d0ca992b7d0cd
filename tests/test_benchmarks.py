"""Smoke tests of the benchmarks on the tiny model (CPU, 1-2 iterations or epochs each).

Each benchmark runs as a user runs it, ``python benchmarks/NAME.py --model tiny ...`` in a
process of its own (from a folder outside the repository), and the tests read what it prints
and the figures it writes (``--json``, ``--out`` for device_check.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.backbone import default_vv_start

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--device", "cpu"]


def _reject_constant(name: str):
    raise ValueError(f"{name} in the JSON: the writer must turn NaN and infinities into null")


def run_benchmark(script: str, *args: str, cwd: Path, figures: str | None = "--json") -> tuple[str, dict]:
    """Run ``benchmarks/<script>`` with ``args``; (its stdout, the figures it wrote as strict JSON).

    ``figures`` is the flag that names the JSON file (None: no file)."""
    path = cwd / f"{Path(script).stem}.json"
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args, *([figures, str(path)] if figures else [])]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout, (json.loads(path.read_text(), parse_constant=_reject_constant) if figures else {})


def table(out: str, header: str, rows: int) -> list[list[str]]:
    """The header and ``rows`` rows of the printed table whose header starts with ``header``, cut
    at the columns of its dashed line; checks the layout: a dash run per column, two spaces
    between columns, numbers right-aligned and everything else left-aligned."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    dashes = lines[start + 1]
    assert dashes.startswith("-") and set(dashes) <= {"-", " "} and "   " not in dashes
    spans, column = [], 0
    for run in dashes.split("  "):
        spans.append((column, column + len(run)))
        column += len(run) + 2
    cells = []
    for line in lines[start:start + 2] + lines[start + 2:start + 2 + rows]:
        line = line.ljust(len(dashes))
        assert len(line) == len(dashes) and all(line[b:b + 2] == "  " for _, b in spans[:-1]), line
        cells.append([line[a:b].strip() for a, b in spans])
    del cells[1]  # the dashes
    assert all(cells[0]) and len(cells) == rows + 1
    for i, (a, b) in enumerate(spans):
        numeric = all(_is_number(row[i]) for row in cells[1:])
        for row, line in zip(cells[1:], lines[start + 2:]):
            text = line.ljust(len(dashes))[a:b]
            assert text == (row[i].rjust(b - a) if numeric else row[i].ljust(b - a)), (header, row[i])
    return cells


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_timing(timing, iters=2):
    assert len(timing["times_s"]) == iters and all(t > 0 for t in timing["times_s"])
    assert timing["best_s"] <= timing["median_s"] and timing["best_s"] <= timing["mean_s"]


def _check_side_by_side(result):
    a, b = result["batched"], result["per_image"]
    _check_timing(a["timing"])
    _check_timing(b["timing"])
    assert a["images_per_s"] > 0 and b["images_per_s"] > 0 and result["ratio"] > 0


def test_backbone_benchmark(tmp_path):
    out, result = run_benchmark("backbone.py", *TINY, "--iters", "2", "--warmup", "1", "--batch_size", "2",
                                "--text_batch", "6", cwd=tmp_path)
    assert result["image"]["images_per_s"] > 0 and result["text"]["prompts_per_s"] > 0
    _check_timing(result["image"]["timing"])
    settings = result["settings"]
    assert settings["model"] == "zsad-tiny-vit" and settings["image_size"] == 32
    assert settings["device"] == "cpu"  # a torch.device, written as its name
    assert settings["layers"] == [1, 2, 3, 4] and settings["vv_start"] == default_vv_start(4) == 2
    assert settings["deep_prompts"] == 3  # capped below the tiny text depth of 4
    assert result["image"]["memory"]["peak_bytes"] is None  # no CUDA here
    rows = table(out, "pass", 2)
    assert rows[0] == ["pass", "batch", "ms/iter", "best ms", "throughput", "unit", "peak mem"]
    assert [r[0] for r in rows[1:]] == ["encode_image (all features)", "encode_text_embeddings"]
    assert [r[5] for r in rows[1:]] == ["images/s", "prompts/s"] and rows[2][1] == "6"
    assert float(rows[1][4]) == pytest.approx(result["image"]["images_per_s"], rel=1e-2)


def test_faprompt_benchmark(tmp_path):
    out, result = run_benchmark("faprompt.py", *TINY, "--iters", "2", "--warmup", "1", "--batch_size", "3",
                                cwd=tmp_path)
    _check_side_by_side(result)
    assert result["max_difference"]["map"] < 1e-5 and result["max_difference"]["score"] < 1e-5
    k = result["settings"]["abnormal_prompts"]
    assert result["settings"]["prompts_per_batch"] == {"batched": 1 + k + 3 * k, "per_image": 3 * (1 + 2 * k)}
    assert "speed-up (a)/(b)" in out and f"{result['ratio']:.2f}x" in out


@pytest.fixture(scope="module")
def bayes_run(tmp_path_factory):
    """bayes_pfl.py on a batch of three images of three classes, (a) checked against (b) on
    every image."""
    return run_benchmark("bayes_pfl.py", *TINY, "--iters", "2", "--warmup", "1", "--batch_size", "3",
                         "--sample_num", "3", "--prompt_num", "2", "--class_name", "screw", "bottle", "pcb1",
                         "--agreement_images", "3", "--noise_seed", "4", cwd=tmp_path_factory.mktemp("bayes"))


def test_bayes_pfl_benchmark(bayes_run):
    out, result = bayes_run
    _check_side_by_side(result)
    assert result["settings"]["text_calls_per_batch"] == {"batched": 1, "per_image": 2 * 3 * 3}
    rows = table(out, "variant", 2)
    assert [r[0] for r in rows[1:]] == ["(a) ours, batched", "(b) official per-image/sample loop"]
    assert [r[2] for r in rows[1:]] == ["1", "18"] and [r[3] for r in rows[1:]] == ["36", "2"]
    assert float(rows[1][5]) == pytest.approx(result["batched"]["images_per_s"], rel=1e-2)
    assert "speed-up (a)/(b)" in out and f"{result['ratio']:.2f}x" in out


def test_official_loop_matches_predict_on_every_image(bayes_run):
    out, result = bayes_run
    assert result["settings"]["class_name"] == ["screw", "bottle", "pcb1"]
    assert result["settings"]["agreement_images"] == 3
    assert set(result["agreement_fp32"]) == {"map", "class_prob", "map_score"}
    assert max(result["agreement_fp32"].values()) < 1e-5
    assert "(a) vs (b) on the first 3 image(s), fp32" in out


def test_metrics_benchmark(tmp_path):
    out, _ = run_benchmark("metrics.py", "--images", "6", "--size", "64", "--repeats", "1", cwd=tmp_path,
                           figures=None)
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.split()[:1] in (["auroc"], ["ap"], ["f1_max"], ["pro_legacy"])}
    assert set(rows) == {"auroc", "ap", "f1_max", "pro_legacy"}
    for ours, reference, difference in rows.values():  # the slow references agree
        assert abs(float(ours) - float(reference)) <= 1e-9 and float(difference) <= 1e-9
    assert 0.5 < float(rows["auroc"][0]) <= 1  # the synthetic maps score the defects higher
    assert "AUROC/AP/F1-max agree with scikit-learn to 1e-9: yes" in out


def test_device_check_quick_run(tmp_path):
    out, saved = run_benchmark("device_check.py", "--quick", *TINY, "--precisions", "fp32",
                               "--parts", "env", "kernels", "correctness", "memory", cwd=tmp_path, figures="--out")
    assert saved["errors"] == {}
    assert {"env", "kernels", "correctness", "memory"} <= set(saved["durations_s"])
    assert "timing" not in saved and "job" not in saved
    assert saved["kernels"]["metrics"]["equal_1e-9"] is True
    assert saved["correctness"]["bayes_pfl"]["batched_vs_official_loop_fp32"]["map"] < 1e-4
    assert saved["memory"]["faprompt_train_fp32"]["batch"] == 2
    assert saved["imports"]["torch"]["ok"] is True
    assert "=== summary ===" in out and "errors: none" in out


def test_feature_cache_benchmark(tmp_path):
    out, result = run_benchmark("feature_cache.py", "--model", "tiny", "--images", "5", "--batch_size", "2",
                                "--epochs", "2", "--variants", "off", "memory", "float16", cwd=tmp_path)
    off, memory, half = result["variants"]
    assert [len(r["epoch_s"]) for r in (off, memory, half)] == [2, 2, 2]
    assert all(r["epoch1_images_per_s"] > 0 and r["later_images_per_s"] > 0 for r in (off, memory, half))
    assert off["cache_bytes_per_image"] is None
    # FAPrompt on the tiny model keeps the V-V tokens [16, 32] and the CLS feature [32]
    assert memory["cache_fields"] == {"cls_raw": [32], "vv_proj": [16, 32]}
    assert memory["cache_bytes_per_image"] == 4 * (16 * 32 + 32) == 2 * half["cache_bytes_per_image"]
    assert memory["bit_identical_to_off"] and memory["max_loss_difference"] == 0
    assert not half["bit_identical_to_off"] and 0 < half["max_loss_difference"] < 1e-2
    assert "epochs 2+ img/s" in out and "float16" in out


def test_end_to_end_benchmark(tmp_path):
    out, result = run_benchmark("run.py", *TINY, "--threads", "1", "--images", "4", "--batch_size", "2",
                                "--train_batch", "2", "--warmup", "0", "--category_images", "5", "--no_report",
                                cwd=tmp_path)
    for method in ("faprompt", "bayes_pfl"):
        out_m = result["methods"][method]
        assert out_m["images"] == 4 and out_m["batch_size"] == 2
        assert all(out_m[k]["s"] > 0 for k in ("backbone", "ours", "per_image", "train"))
        # the per-image style computes the same test: the same metrics (maps agree to float rounding)
        for key, value in out_m["ours"]["mean"].items():
            assert value == pytest.approx(out_m["per_image"]["mean"][key], abs=1e-6)
        assert out_m["train"]["batch"] == 2 and out_m["train"]["images_per_s"] > 0
    category = result["category"]
    assert category["images"] == 5 and category["maps_bytes"] == 5 * 32 * 32 * 4
    assert category["peak_bytes"] is None or category["peak_bytes"] >= category["base_bytes"]
    assert category["metrics"]["pixel_auroc"] is not None
    assert "job/backbone" in out and "per-image style / ours" in out and "one category of 5 images" in out


def test_end_to_end_benchmark_winclip_april_gan_vcp_clip_and_adaclip(tmp_path):
    """WinCLIP's job against the plain image pass, with its window passes reported beside it;
    APRIL-GAN's and VCP-CLIP's jobs and training steps against their image pass; AdaCLIP's against
    the plain pass, with its two passes beside it."""
    out, result = run_benchmark("run.py", *TINY, "--threads", "1", "--images", "4", "--batch_size", "2",
                                "--train_batch", "2", "--warmup", "0", "--no_report", "--methods", "winclip",
                                "april_gan", "vcp_clip", "adaclip", cwd=tmp_path)
    for method in ("april_gan", "vcp_clip", "adaclip"):
        entry = result["methods"][method]
        assert {"backbone", "ours", "train"} <= set(entry) and "per_image" not in entry and entry["train"]["s"] > 0
    assert result["methods"]["adaclip"]["own_pass"]["s"] > 0 and "plain + prompted passes" in out
    entry = result["methods"]["winclip"]
    assert {"backbone", "windows", "ours"} <= set(entry) and "per_image" not in entry and "train" not in entry
    # tiny model, 4x4 grid: 9 windows of 5 tokens and 4 of 10 against 17 tokens of the image
    assert entry["windows"]["window_tokens_per_image_token"] == pytest.approx((9 * 5 + 4 * 10) / 17)
    assert "window passes" in out


def test_deploy_benchmark(tmp_path):
    """Every CPU row of the deployment table on the tiny model: the exact rows equal eager fp32,
    the bf16 rows differ a little, and the table prints speed-ups and differences."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    out, result = run_benchmark("deploy.py", "--model", "tiny", "--threads", "1", "--images", "4", cwd=tmp_path)
    rows = result["rows"]
    assert list(rows) == ["eager_fp32", "eager_bf16", "onnxruntime_fp32", "openvino_fp32", "openvino_bf16"]
    assert result["images"] == 4 and result["export_s"] > 0
    assert rows["eager_fp32"]["map_diff"] == 0 and rows["eager_fp32"]["speedup"] == 1
    for exact in ("onnxruntime_fp32", "openvino_fp32"):
        assert rows[exact]["map_diff"] < 1e-5 and max(rows[exact]["metric_diff_points"].values()) < 0.1
    for bf16 in ("eager_bf16", "openvino_bf16"):
        assert 0 < rows[bf16]["map_diff"] < 0.2
    assert all(r["s"] > 0 and r["model_s"] > 0 for r in rows.values())
    assert "job speed-up" in out and "openvino_bf16" in out


def test_device_check_deploy_part_on_cpu(tmp_path):
    """Part deploy runs on the CPU with a backend that generates no code (a GPU runs inductor)."""
    _, saved = run_benchmark("device_check.py", "--quick", *TINY, "--precisions", "fp32", "--parts", "deploy",
                             "--compile_backend", "aot_eager", cwd=tmp_path, figures="--out")
    assert saved["errors"] == {}
    for method in ("faprompt", "bayes_pfl"):
        entry = saved["deploy"][f"{method}_fp32"]
        assert entry["backend"] == "aot_eager" and entry["compiled_images_per_s"] > 0
        assert entry["map_diff"] < 1e-5 and entry["class_prob_diff"] < 1e-5


def test_device_check_distributed_part_on_cpu(tmp_path):
    """The part a machine with several GPUs runs, here on two gloo processes."""
    _, saved = run_benchmark("device_check.py", "--quick", *TINY, "--parts", "distributed", "--processes", "2",
                             cwd=tmp_path, figures="--out")
    assert saved["errors"] == {}
    out = saved["distributed"]
    assert out["single"]["returncode"] == 0 and out["torchrun"]["returncode"] == 0, out
    assert out["metrics_equal"] is True and out["max_map_difference"] <= 1e-6


def test_fewshot_benchmark(tmp_path):
    out, result = run_benchmark("fewshot.py", *TINY, "--iters", "1", "--warmup", "1", "--batch_size", "2",
                                "--shots", "1", "3", cwd=tmp_path)
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
    assert "K = 3" in out and "x zero-shot" in out
