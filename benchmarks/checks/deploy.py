"""Part ``deploy`` of benchmarks/device_check.py: GPU inference with the image tower compiled by
``torch.compile``, against eager PyTorch (docs/deployment.md).

For FAPrompt and Bayes-PFL at full size (random weights) on ``--test_batch`` images, under each
of ``--precisions``: the model's prediction from features of the eager ``encode_images`` and from
those of ``torch.compile(model.encode_images)`` (the image tower is the cost; the text side and
heads stay eager, as the feature path of ``predict`` allows), the largest map and score
differences and images/s of each. Compilation time is reported apart. The CPU runtimes
(onnxruntime, OpenVINO) are benchmarks/deploy.py's, run on the CPU machine.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict

import torch

from benchmarks import common
from benchmarks.checks.base import Recorder, section


def _timed(fn, iters: int, device) -> float:
    common.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    common.synchronize(device)
    return (time.perf_counter() - start) / iters


def compiled_vs_eager(method: str, args: argparse.Namespace, device: torch.device, model_name: str,
                      image_size: int, precision: str) -> Dict[str, object]:
    backbone = common.make_backbone(model_name, args.pretrained, image_size, device, precision,
                                    pos_interpolation=common.pos_interpolation(method), seed=args.seed)
    model = common.build_method(method, backbone, device, args.seed, sample_num=2 if args.quick else 10)
    images = common.random_images(args.test_batch, image_size, device, seed=args.seed)
    names = ["object"] * len(images)
    compiled = torch.compile(model.encode_images, backend=args.compile_backend, dynamic=False)
    iters = args.iters or 3
    with torch.no_grad():
        start = time.perf_counter()
        compiled(images)  # compilation
        common.synchronize(device)
        compile_s = time.perf_counter() - start
        model.start_evaluation()
        eager_pred = model.predict(None, names, features=model.encode_images(images))
        model.start_evaluation()
        compiled_pred = model.predict(None, names, features=compiled(images))
        eager_s = _timed(lambda: model.encode_images(images), iters, device)
        compiled_s = _timed(lambda: compiled(images), iters, device)
    return {"batch": len(images), "precision": precision, "backend": args.compile_backend,
            "compile_s": compile_s, "eager_images_per_s": len(images) / eager_s,
            "compiled_images_per_s": len(images) / compiled_s, "speedup": eager_s / compiled_s,
            "map_diff": common.max_abs_diff(eager_pred.anomaly_map, compiled_pred.anomaly_map),
            "class_prob_diff": common.max_abs_diff(eager_pred.class_prob, compiled_pred.class_prob),
            "map_score_diff": common.max_abs_diff(eager_pred.map_score, compiled_pred.map_score)}


def part_deploy(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                image_size: int) -> None:
    section(f"deploy: torch.compile ({args.compile_backend}) image tower vs eager, {model_name} at {image_size} px")
    result: Dict[str, object] = {}
    rec.data["deploy"] = result
    for precision in args.precisions:
        for method in ("faprompt", "bayes_pfl"):
            out = rec.guard(f"deploy.{method}.{precision}",
                            lambda m=method, p=precision: compiled_vs_eager(m, args, device, model_name, image_size, p))
            if out is not None:
                result[f"{method}_{precision}"] = out
                print(f"{method} {precision}: eager {out['eager_images_per_s']:.2f} img/s, compiled "
                      f"{out['compiled_images_per_s']:.2f} img/s ({out['speedup']:.2f}x; "
                      f"compile {out['compile_s']:.0f} s), max map diff {out['map_diff']:.1e}", flush=True)
            rec.save()
