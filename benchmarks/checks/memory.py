"""Part ``memory`` of benchmarks/device_check.py: peak device memory of test-time batches and
of training steps (forward, loss, backward, Adam) at the official batch sizes; an
out-of-memory error is a result, not a failure."""
from __future__ import annotations

import argparse
from typing import Callable, Dict

import torch

from benchmarks import bayes_pfl, common, faprompt
from benchmarks.checks.base import Recorder, free_memory, is_oom, section, set_precision


def _measure_memory(device: torch.device, fn: Callable[[], Dict[str, object]]) -> Dict[str, object]:
    """Run ``fn`` under peak-memory tracking; an out-of-memory error becomes a record."""
    record: Dict[str, object] = {}
    oom = None
    with common.peak_memory(device) as memory:
        try:
            record.update(fn())
        except Exception as err:  # noqa: BLE001 - OOM is a result here, anything else is re-raised
            if not is_oom(err):
                raise
            oom = str(err).splitlines()[0][:300]
    if oom is not None:
        record["oom"] = oom
    record["peak_gib"] = memory["peak_gib"]
    record["base_gib"] = None if memory["base_bytes"] is None else memory["base_bytes"] / 2 ** 30
    free_memory()
    return record


def _test_faprompt(backbone, device, batch: int, image_size: int, seed: int) -> Dict[str, object]:
    model = common.build_method("faprompt", backbone, device, seed)
    images = common.random_images(batch, image_size, device, seed)
    faprompt.predict_batched(model, images, ["bottle"] * batch, model.config.sigma)
    return {"batch": batch}


def _test_bayes(backbone, device, batch: int, image_size: int, seed: int) -> Dict[str, object]:
    model = common.build_method("bayes_pfl", backbone, device, seed)
    model.start_evaluation(111)
    images = common.random_images(batch, image_size, device, seed)
    bayes_pfl.predict_batched(model, images, ["bottle"] * batch, model.config.sigma)
    return {"batch": batch}


def part_memory(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                image_size: int) -> None:
    section(f"memory: peak {device} memory (weights included), {model_name} at {image_size} px")
    result: Dict[str, object] = {}
    rec.data["memory"] = result
    jobs = (
        ("faprompt_test", "bilinear", lambda b: _test_faprompt(b, device, args.test_batch, image_size, args.seed)),
        ("bayes_pfl_test", "bicubic", lambda b: _test_bayes(b, device, args.test_batch, image_size, args.seed)),
        ("faprompt_train", "bilinear",
         lambda b: common.train_steps("faprompt", b, device, args.train_batch_faprompt, args.seed)),
        ("bayes_pfl_train_stage1", "bicubic",
         lambda b: common.train_steps("bayes_pfl", b, device, args.train_batch_bayes, args.seed, 1)),
        ("bayes_pfl_train_stage2", "bicubic",
         lambda b: common.train_steps("bayes_pfl", b, device, args.train_batch_bayes, args.seed, 2)),
    )
    for precision in args.precisions:
        for name, interpolation, job in jobs:
            def one(job=job, interpolation=interpolation, precision=precision):
                backbone = common.make_backbone(model_name, args.pretrained, image_size, device, precision,
                                                pos_interpolation=interpolation, seed=args.seed)
                set_precision(backbone, precision)
                return _measure_memory(device, lambda: job(backbone))

            out = rec.guard(f"memory.{name}.{precision}", one)
            if out is not None:
                result[f"{name}_{precision}"] = out
                peak = "-" if out["peak_gib"] is None else f"{out['peak_gib']:.2f} GiB"
                extra = f"OOM: {out['oom']}" if "oom" in out else \
                    (f"step {out['step_s'][-1]:.3f} s" if "step_s" in out else "")
                print(f"{name + ' ' + precision:32s} batch {out.get('batch', '?'):>3}  peak {peak:>10}  {extra}",
                      flush=True)
        rec.save()

