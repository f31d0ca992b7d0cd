"""Part ``kernels`` of benchmarks/device_check.py (no open_clip needed): ``utils.metrics`` on
device tensors against the CPU result, and ``gaussian_blur`` on the device against the CPU
and scipy, with their times."""
from __future__ import annotations

import argparse
import time
from typing import Dict, Optional

import torch

from benchmarks import common
from benchmarks.checks.base import Recorder, section


def _metric_diff(a: Dict[str, Optional[float]], b: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
    out: Dict[str, Optional[float]] = {}
    for key in a:
        if a[key] is None or b.get(key) is None:
            out[key] = 0.0 if a[key] is None and b.get(key) is None else float("inf")
        else:
            out[key] = abs(a[key] - b[key])
    return out


def part_kernels(rec: Recorder, args: argparse.Namespace, device: torch.device) -> None:
    section("kernels: metrics and blur on the device vs the CPU")
    result: Dict[str, object] = {}
    rec.data["kernels"] = result

    def metrics_check():
        from utils.metrics import image_metrics, pixel_metrics
        from utils.synthetic_maps import synthetic_category

        masks, maps = synthetic_category(args.metric_images, args.metric_size, args.seed)
        pixel_metrics(masks[:2, :32, :32], maps[:2, :32, :32])  # library warm-up
        start = time.perf_counter()
        cpu = pixel_metrics(masks.numpy(), maps.numpy())
        cpu_s = time.perf_counter() - start
        masks_d, maps_d = masks.to(device), maps.to(device)
        pixel_metrics(masks_d[:2, :32, :32], maps_d[:2, :32, :32])  # kernels warm-up
        times = []
        for _ in range(3):
            common.synchronize(device)
            start = time.perf_counter()
            dev = pixel_metrics(masks_d, maps_d)
            common.synchronize(device)
            times.append(time.perf_counter() - start)
        diff = _metric_diff(cpu, dev)
        labels = torch.arange(args.metric_images) % 2 == 0
        scores = maps.flatten(1).amax(1).double()
        image_diff = _metric_diff(image_metrics(labels.numpy(), scores.numpy()),
                                  image_metrics(labels.to(device), scores.to(device)))
        worst = max(max(diff.values()), max(image_diff.values()))
        result["metrics"] = {
            "images": args.metric_images, "size": args.metric_size, "device": str(device),
            "cpu": cpu, "device_result": dev, "abs_diff": diff, "image_metrics_abs_diff": image_diff,
            "max_abs_diff": worst, "equal_1e-9": worst <= 1e-9,
            "cpu_s": cpu_s, "device_s": times, "device_best_s": min(times), "speedup": cpu_s / min(times),
        }
        print(f"pixel_metrics {args.metric_images}x{args.metric_size}x{args.metric_size}: CPU {cpu_s:.2f} s, "
              f"{device} best {min(times):.3f} s ({cpu_s / min(times):.1f}x); max |device - CPU| = {worst:.1e} "
              f"({'OK' if worst <= 1e-9 else 'DIFFERENT'})")

    def blur_check():
        from utils.filters import gaussian_blur

        g = torch.Generator().manual_seed(args.seed)
        maps = torch.rand(8, args.metric_size, args.metric_size, generator=g)
        out = {}
        for sigma in (10.0, 8.0):
            cpu = gaussian_blur(maps, sigma)
            maps_d = maps.to(device)
            dev = gaussian_blur(maps_d, sigma)
            timing = common.measure(lambda: gaussian_blur(maps_d, sigma), 5, 1, device) \
                if device.type == "cuda" else None
            entry = {"max_abs_diff_device_cpu": common.max_abs_diff(cpu, dev),
                     "device_s_per_8_maps": None if timing is None else timing["best_s"]}
            try:
                from scipy.ndimage import gaussian_filter

                ref = torch.from_numpy(gaussian_filter(maps.double().numpy(), sigma, mode="reflect",
                                                       truncate=4.0, axes=(-2, -1)))
                entry["max_abs_diff_device_scipy"] = common.max_abs_diff(dev, ref)
            except Exception as err:  # noqa: BLE001 - scipy missing or too old for axes=
                entry["scipy"] = f"unavailable: {type(err).__name__}: {err}"[:200]
            out[f"sigma_{sigma:g}"] = entry
            print(f"gaussian_blur sigma {sigma:g}: |{device} - CPU| = {entry['max_abs_diff_device_cpu']:.1e}, "
                  f"|{device} - scipy| = {entry.get('max_abs_diff_device_scipy', float('nan')):.1e}"
                  + ("" if timing is None else f", {1000 * timing['best_s']:.2f} ms per 8 maps"))
        result["blur"] = out

    rec.guard("kernels.metrics", metrics_check)
    rec.guard("kernels.blur", blur_check)

