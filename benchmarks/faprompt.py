"""FAPrompt test-time throughput: our batched pass against the official per-image loop.

Run from anywhere: ``python benchmarks/faprompt.py [--model ViT-L-14-336] [--image_size 518]
[--batch_size 8] [--precision auto] [--iters 5]``; ``--model tiny`` for a quick CPU run.

Both sides score the same ``--batch_size`` random images per iteration with random prompt
weights, under ``torch.no_grad()``, and blur the maps (``utils.filters.gaussian_blur``,
sigma 10) as the test does:

(a) ours, batched: one ``model.predict(images, names)`` call. The static CAP prompts (1 normal
    + K abnormal) are encoded once for the batch and the DAP prompts of all images (B·K) in one
    text-encoder call.
(b) the official test's loop: ``model.predict`` on one image at a time. ``FAPrompt.forward``
    re-encodes the static CAP prompts on every call (``encode_static``) and the image's K DAP
    prompts (``encode_abnormal``), so at batch 1 this is the official per-image work: one
    image pass and two text-encoder calls (K + 1 and K prompts) per image.

Prints images/s of both, the ratio (a)/(b), and the largest difference of their maps/scores.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, iters=5, warmup=1)
    parser.add_argument("--batch_size", type=int, default=8, help="images per iteration (a: one call)")
    parser.add_argument("--class_name", default="bottle", help="class name (FAPrompt's word is 'object')")
    parser.add_argument("--sigma", type=float, default=10.0, help="Gaussian blur of the maps (0: none)")
    return parser


def predict_batched(model, images: torch.Tensor, names: Sequence[str], sigma: float):
    """(a): one call for the whole batch; returns (blurred maps, image scores)."""
    from utils.filters import gaussian_blur

    with torch.no_grad():
        prediction = model.predict(images, names)
        maps = gaussian_blur(prediction.anomaly_map, sigma)
    return maps, 0.5 * (prediction.class_prob + prediction.map_score)


@contextlib.contextmanager
def official_work(model):
    """Switch off what the official test does not do: the static-prompt cache, EOT truncation."""
    saved = (model.prompts.cache_static, model.backbone.truncate_text)
    model.prompts.cache_static, model.backbone.truncate_text = False, False
    try:
        yield
    finally:
        model.prompts.cache_static, model.backbone.truncate_text = saved


def predict_per_image(model, images: torch.Tensor, names: Sequence[str], sigma: float):
    """(b): the official loop, one image per ``predict`` call; returns the same as (a).

    As in the official test, the static prompts are re-encoded for every image and the text
    encoder runs all 77 positions (our cache and EOT truncation are switched off).
    """
    from utils.filters import gaussian_blur

    maps, scores = [], []
    with torch.no_grad(), official_work(model):
        for i in range(images.shape[0]):
            prediction = model.predict(images[i:i + 1], names[i:i + 1])
            maps.append(gaussian_blur(prediction.anomaly_map, sigma))
            scores.append(0.5 * (prediction.class_prob + prediction.map_score))
    return torch.cat(maps), torch.cat(scores)


def compare(model, images: torch.Tensor, names: Sequence[str], sigma: float) -> Dict[str, float]:
    """Largest differences between (a) and (b) on the same images."""
    maps_a, scores_a = predict_batched(model, images, names, sigma)
    maps_b, scores_b = predict_per_image(model, images, names, sigma)
    return {"map": common.max_abs_diff(maps_a, maps_b), "score": common.max_abs_diff(scores_a, scores_b)}


def run(args: argparse.Namespace, backbone=None) -> Dict[str, object]:
    settings = common.setup(args)
    device = settings["device"]
    if backbone is None:
        backbone = common.make_backbone(settings["model"], args.pretrained, settings["image_size"], device,
                                        args.precision, pos_interpolation="bilinear", seed=args.seed)
    backbone.precision = args.precision
    model = common.build_method("faprompt", backbone, device, args.seed)
    images = common.random_images(args.batch_size, backbone.image_size, device, args.seed)
    names = [args.class_name] * args.batch_size

    difference = compare(model, images, names, args.sigma)
    with common.peak_memory(device) as memory_a:
        timing_a = common.measure(lambda: predict_batched(model, images, names, args.sigma),
                                  args.iters, args.warmup, device)
    with common.peak_memory(device) as memory_b:
        timing_b = common.measure(lambda: predict_per_image(model, images, names, args.sigma),
                                  args.iters, args.warmup, device)
    from utils.filters import gaussian_blur

    maps = torch.rand(args.batch_size, backbone.image_size, backbone.image_size, device=device)
    blur_timing = common.measure(lambda: gaussian_blur(maps, args.sigma), args.iters, args.warmup, device)

    ips_a = common.throughput(args.batch_size, timing_a)
    ips_b = common.throughput(args.batch_size, timing_b)
    k = model.config.abnormal_prompts
    return {
        "benchmark": "faprompt",
        "settings": {**settings, "pretrained": args.pretrained, "batch_size": args.batch_size,
                     "sigma": args.sigma, "abnormal_prompts": k, "class_name": args.class_name,
                     "text_calls_per_batch": {"batched": 2, "per_image": 2 * args.batch_size},
                     "prompts_per_batch": {"batched": 1 + k + args.batch_size * k,
                                           "per_image": args.batch_size * (1 + 2 * k)}},
        "environment": common.environment(device),
        "batched": {"timing": timing_a, "images_per_s": ips_a, "memory": memory_a},
        "per_image": {"timing": timing_b, "images_per_s": ips_b, "memory": memory_b},
        "blur_only": {"timing": blur_timing, "maps_per_s": common.throughput(args.batch_size, blur_timing)},
        "ratio": ips_a / ips_b,
        "max_difference": difference,
    }


def report(result: Dict[str, object]) -> str:
    s = result["settings"]
    a, b = result["batched"], result["per_image"]
    head = (f"FAPrompt test-time throughput: {s['model']} ({s['pretrained']} weights), {s['image_size']} px, "
            f"{s['device']}, precision {s['precision']}, blur sigma {s['sigma']}, "
            f"{a['timing']['iters']} timed iters of {s['batch_size']} images after {a['timing']['warmup']} warm-up")
    rows = [
        ["(a) ours, batched", s["batch_size"], s["text_calls_per_batch"]["batched"],
         s["prompts_per_batch"]["batched"], 1000 * a["timing"]["mean_s"] / s["batch_size"], a["images_per_s"],
         common.gib(a["memory"]["peak_bytes"])],
        ["(b) official per-image loop", 1, s["text_calls_per_batch"]["per_image"],
         s["prompts_per_batch"]["per_image"], 1000 * b["timing"]["mean_s"] / s["batch_size"], b["images_per_s"],
         common.gib(b["memory"]["peak_bytes"])],
    ]
    table = common.format_table(rows, ["variant", "batch", "text calls", "prompts", "ms/image", "images/s",
                                       "peak mem"])
    diff = result["max_difference"]
    blur = result["blur_only"]
    return (f"{head}\n{table}\n"
            f"speed-up (a)/(b): {result['ratio']:.2f}x\n"
            f"blur alone: {1000 * blur['timing']['mean_s'] / s['batch_size']:.2f} ms/map\n"
            f"max |(a) - (b)|: map {diff['map']:.2e}, image score {diff['score']:.2e}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    return common.run_main(build_parser, run, report, argv)


if __name__ == "__main__":
    main()
