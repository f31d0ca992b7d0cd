"""One-call check of the models on a lent GPU machine: correctness, timing and memory.

Run from the repository root: ``python benchmarks/device_check.py [--out PATH]``. Written for a
machine with a GPU, no internet and no package registry: it first lists the Python packages it
finds and those it misses, then runs eight parts, each guarded so that one failure keeps the
others' results. The JSON (``--out``, default ``$OUT/device_check.json`` when ``OUT`` is set,
else ``./device_check.json``) is rewritten after every part, so a run cut short still leaves
what it finished.

1. ``env``: Python, torch, CUDA, GPU; the packages found and missing.
2. ``kernels`` (no open_clip needed): ``utils.metrics`` on CUDA tensors against the CPU result
   (every metric within 1e-9), ``gaussian_blur`` on CUDA against the CPU (and scipy), and the
   time of ``pixel_metrics`` for ``--metric_images`` maps of 518×518 on the GPU and the CPU.
3. ``correctness`` at full size with random weights (ViT-L-14-336, 518 px): FAPrompt and
   Bayes-PFL on a batch of 4 against the same 4 images one at a time, under fp32 and under bf16
   autocast; bf16 against fp32 (maps and scores); Bayes-PFL's batched pass against the
   official per-image/per-sample loop.
4. ``timing``: the ``run`` functions of benchmarks/backbone.py, faprompt.py and bayes_pfl.py at
   full size under each of ``--precisions`` (images/s, prompts/s, the (a)/(b) ratios).
5. ``memory``: peak CUDA memory of test-time batches (``--test_batch``) and of one training
   step (forward, loss, backward, Adam step) at the official batch sizes: FAPrompt 8,
   Bayes-PFL 32 (stage 1 and stage 2); an out-of-memory error is caught and reported.
6. ``job``: benchmarks/run.py on ``--job_images`` synthetic images: the whole test job per
   method against the backbone image pass alone (job/backbone, the target is <= 1.10), the
   per-image style, a training step.
7. ``deploy``: GPU inference with the image tower under ``torch.compile`` (``--compile_backend``)
   against eager, FAPrompt and Bayes-PFL under each precision: images/s, compile time, the
   largest map and score differences (benchmarks/checks/deploy.py).
8. ``distributed`` (only when more than one GPU is visible, or with ``--processes N``): the
   test of a random-weight Bayes-PFL checkpoint on a synthetic set by ``python test.py`` on one
   GPU and by ``torchrun --nproc_per_node N test.py``: wall times, the speed-up, and whether
   the results agree (metrics exactly, maps to 1e-6).

``--quick --model tiny --device cpu`` runs every part on the tiny model (about two minutes on
two CPU cores; the smoke tests run parts of it).

This file parses the flags, runs the chosen parts in order, each guarded by the Recorder, and
prints the summary. The parts live in ``benchmarks/checks/``: ``env.py`` (1), ``kernels.py``
(2), ``correctness.py`` (3), ``timing.py`` (4 and 6), ``memory.py`` (5), ``deploy.py`` (7),
``distributed.py`` (8), and ``base.py`` (the Recorder and the helpers the parts share).

Where open_clip is missing (the lent GPU image has torch, numpy, scipy, scikit-learn, opencv and
regex, but not open_clip_torch, ftfy or wcwidth), the packages ``open_clip``, ``ftfy`` and
``wcwidth`` (pure Python, about 9 MB together) can be copied from a site-packages folder into a
folder that travels with the repository and put on ``PYTHONPATH``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.checks import correctness, deploy, distributed, memory, timing  # noqa: E402
from benchmarks.checks.base import Recorder  # noqa: E402
from benchmarks.checks.env import part_env  # noqa: E402
from benchmarks.checks.kernels import part_kernels  # noqa: E402

PARTS = ("env", "kernels", "correctness", "timing", "memory", "job", "deploy", "distributed")
# the parts that build models (open_clip needed), in the order they run
MODEL_PARTS = {"correctness": correctness.part_correctness, "timing": timing.part_timing,
               "memory": memory.part_memory, "job": timing.part_job, "deploy": deploy.part_deploy,
               "distributed": distributed.part_distributed}

def default_out() -> str:
    folder = os.environ.get("OUT")
    return str(Path(folder) / "device_check.json") if folder else "device_check.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=default_out(), help="JSON file (default: $OUT/device_check.json)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--model", default=common.DEFAULT_MODEL)
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--image_size", type=int, default=None, help="default 518 (32 for --model tiny)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--precisions", nargs="+", choices=("bf16", "fp32", "fp16"), default=["bf16", "fp32"])
    parser.add_argument("--check_images", type=int, default=4, help="batch of the batch-vs-single checks")
    parser.add_argument("--test_batch", type=int, default=8)
    parser.add_argument("--train_batch_faprompt", type=int, default=8)
    parser.add_argument("--train_batch_bayes", type=int, default=32)
    parser.add_argument("--metric_images", type=int, default=100)
    parser.add_argument("--metric_size", type=int, default=518)
    parser.add_argument("--job_images", type=int, default=64, help="images of the end-to-end job (part job)")
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile backend of part deploy (aot_eager: no code generation, for a smoke run)")
    parser.add_argument("--processes", type=int, default=None,
                        help="processes of the distributed part (default: the visible GPUs; it runs only with >1)")
    parser.add_argument("--distributed_images", type=int, default=6,
                        help="normal images per category of the distributed part's synthetic set (3 categories)")
    parser.add_argument("--iters", type=int, default=None, help="timed iterations of every benchmark")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and 1 iteration everywhere (a smoke run, e.g. on a CPU)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def apply_quick(args: argparse.Namespace) -> None:
    if not args.quick:
        return
    args.check_images = min(args.check_images, 2)
    args.test_batch = min(args.test_batch, 2)
    args.train_batch_faprompt = min(args.train_batch_faprompt, 2)
    args.train_batch_bayes = min(args.train_batch_bayes, 2)
    args.metric_images = min(args.metric_images, 4)
    args.metric_size = min(args.metric_size, 64)
    args.job_images = min(args.job_images, 4)
    args.distributed_images = min(args.distributed_images, 2)
    args.iters = 1 if args.iters is None else args.iters
    args.warmup = 0 if args.warmup is None else args.warmup



# ---------------------------------------------------------------------- summary
def summary(data: Dict[str, object]) -> str:
    lines = ["", "=== summary ==="]
    env = data.get("environment", {})
    lines.append(f"device: {env.get('gpu', env.get('device', '?'))}, torch {env.get('torch', '?')}, "
                 f"CUDA {env.get('cuda', '-')}")
    missing = [m for m, v in data.get("imports", {}).items() if not v["ok"]]
    lines.append("missing packages: " + (", ".join(missing) if missing else "none"))
    metrics = data.get("kernels", {}).get("metrics")
    if metrics:
        lines.append(f"pixel_metrics {metrics['images']}x{metrics['size']}^2: device {metrics['device_best_s']:.3f} s, "
                     f"CPU {metrics['cpu_s']:.2f} s, max diff {metrics['max_abs_diff']:.1e} "
                     f"({'equal' if metrics['equal_1e-9'] else 'NOT equal'} to 1e-9)")
    blur = data.get("kernels", {}).get("blur")
    if blur:
        lines.append("gaussian_blur device vs CPU: " + ", ".join(
            f"{k} {v['max_abs_diff_device_cpu']:.1e}" for k, v in blur.items()))
    for method in ("faprompt", "bayes_pfl"):
        entry = data.get("correctness", {}).get(method)
        if entry:
            for key, diffs in entry.items():
                values = {k: v for k, v in diffs.items() if k != "selected_sets_equal"}
                worst = max(values.values()) if values else float("nan")
                lines.append(f"{method} {key}: max diff {worst:.1e}")
    timing = data.get("timing", {})
    if timing:
        rows = []
        for key, out in timing.items():
            if out["benchmark"] == "backbone":
                rows.append([key, f"{out['image']['images_per_s']:.1f} img/s",
                             f"{out['text']['prompts_per_s']:.0f} prompts/s", "-",
                             common.gib(out["image"]["memory"]["peak_bytes"])])
            else:
                rows.append([key, f"{out['batched']['images_per_s']:.2f} img/s (a)",
                             f"{out['per_image']['images_per_s']:.2f} img/s (b)", f"{out['ratio']:.2f}x",
                             common.gib(out["batched"]["memory"]["peak_bytes"])])
        lines.append(common.format_table(rows, ["benchmark", "throughput", "second figure", "(a)/(b)", "peak mem"]))
    memory = data.get("memory", {})
    if memory:
        rows = [[key, out.get("batch", "?"), "-" if out.get("peak_gib") is None else f"{out['peak_gib']:.2f} GiB",
                 "OOM" if "oom" in out else "ok"] for key, out in memory.items()]
        lines.append(common.format_table(rows, ["memory", "batch", "peak", "status"]))
    job = data.get("job", {}).get("methods", {})
    for method, out in job.items():
        line = f"job {method}: job/backbone {out['ours']['s'] / out['backbone']['s']:.3f}"
        if "per_image" in out:
            line += f", per-image style / ours {out['per_image']['s'] / out['ours']['s']:.2f}x"
        lines.append(line)
    for key, out in data.get("deploy", {}).items():
        lines.append(f"deploy {key}: torch.compile {out['compiled_images_per_s']:.2f} img/s vs eager "
                     f"{out['eager_images_per_s']:.2f} ({out['speedup']:.2f}x, compile {out['compile_s']:.0f} s), "
                     f"max map diff {out['map_diff']:.1e}")
    dist = data.get("distributed")
    if dist:
        lines.append("distributed: " + (dist["skipped"] if "skipped" in dist else
                                        f"{dist['processes']} processes, "
                                        f"speed-up {dist.get('speedup', float('nan')):.2f}x, "
                                        f"metrics equal {dist.get('metrics_equal')}, "
                                        f"max map difference {dist.get('max_map_difference', float('nan')):.1e}"))
    errors = data.get("errors", {})
    lines.append("errors: " + ("none" if not errors else ""))
    for name, message in errors.items():
        lines.append(f"  {name}: {message[:300]}")
    lines.append(f"total {data.get('elapsed_s', '?')} s")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    args = build_parser().parse_args(argv)
    apply_quick(args)
    device = common.resolve_device(args.device)
    rec = Recorder(args.out)
    rec.data["args"] = vars(args)
    print(f"device_check: writing {args.out}", flush=True)

    rec.guard("env", lambda: part_env(rec, device))
    rec.save()
    if "kernels" in args.parts:
        rec.guard("kernels", lambda: part_kernels(rec, args, device))
        rec.save()
    model_parts = [p for p in MODEL_PARTS if p in args.parts]
    if model_parts:
        model_name = rec.guard("model", lambda: (importlib.import_module("open_clip"),
                                                 common.resolve_model(args.model))[1])
        image_size = common.resolve_image_size(args.model, args.image_size)
        if model_name is None:
            print("!! open_clip is unavailable: parts " + ", ".join(model_parts) + " skipped", flush=True)
        else:
            for part in model_parts:
                rec.guard(part, lambda run_part=MODEL_PARTS[part]: run_part(rec, args, device, model_name, image_size))
                rec.save()
    rec.save()
    print(summary(rec.data), flush=True)
    return rec.data


if __name__ == "__main__":
    main()
