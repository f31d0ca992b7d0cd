"""Parts ``timing`` and ``job`` of benchmarks/device_check.py: the benchmark scripts' own
``run`` functions in this process (backbone.py, faprompt.py and bayes_pfl.py under each
precision; run.py's whole test job against the backbone floor)."""
from __future__ import annotations

import argparse
from typing import Dict, List

import torch

from benchmarks import backbone as backbone_bench
from benchmarks import bayes_pfl, faprompt
from benchmarks import run as run_bench
from benchmarks.checks.base import Recorder, section


def _bench_argv(args: argparse.Namespace, model_name: str, image_size: int, device: torch.device,
                precision: str, iters: int, warmup: int) -> List[str]:
    return ["--model", model_name, "--pretrained", args.pretrained, "--image_size", str(image_size),
            "--device", str(device), "--precision", precision,
            "--iters", str(args.iters if args.iters is not None else iters),
            "--warmup", str(args.warmup if args.warmup is not None else warmup), "--seed", str(args.seed)]


def part_timing(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                image_size: int) -> None:
    section(f"timing: {model_name} at {image_size} px")
    result: Dict[str, object] = {}
    rec.data["timing"] = result
    benches = (("backbone", backbone_bench, 10, 3, ["--batch_size", str(args.test_batch)]),
               ("faprompt", faprompt, 5, 2, ["--batch_size", str(args.test_batch)]),
               ("bayes_pfl", bayes_pfl, 5, 1, ["--batch_size", str(args.test_batch)]))
    for precision in args.precisions:
        for name, module, iters, warmup, extra in benches:
            argv = _bench_argv(args, model_name, image_size, device, precision, iters, warmup) + extra

            def one(module=module, argv=argv):
                out = module.run(module.build_parser().parse_args(argv))
                print(module.report(out), flush=True)
                return out

            out = rec.guard(f"timing.{name}.{precision}", one)
            if out is not None:
                result[f"{name}_{precision}"] = out
            rec.save()


def part_job(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
             image_size: int) -> None:
    section(f"job: the whole test job against the backbone floor, {model_name} at {image_size} px")
    argv = ["--model", model_name, "--pretrained", args.pretrained, "--image_size", str(image_size),
            "--device", str(device), "--images", str(args.job_images), "--seed", str(args.seed),
            "--iters", str(args.iters or 1), "--warmup", str(1 if args.warmup is None else args.warmup)]
    out = run_bench.run(run_bench.build_parser().parse_args(argv))
    print(run_bench.report(out), flush=True)
    rec.data["job"] = out

