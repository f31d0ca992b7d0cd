"""Throughput of the frozen CLIP backbone: the image pass with every feature, and the text pass.

Run from anywhere: ``python benchmarks/backbone.py [--model ViT-L-14-336] [--image_size 518]
[--batch_size 8] [--precision auto] [--iters 10]``; ``--model tiny`` for a quick CPU run.

(1) ``ClipBackbone.encode_image`` at ``--batch_size`` with all outputs the methods use: the
    patch tokens of four evenly spaced layers (6 12 18 24 for 24 blocks, scaled to the depth)
    and the V-V path from block ``default_vv_start(num_layers)`` (6 of 24);
(2) ``encode_text_embeddings`` on ``--text_batch`` prompts of the context length (77) with
    ``--deep_prompts`` deep prompts of length ``--deep_length`` (FAPrompt: 8 of length 4).

Prints images/s, prompts/s and, on CUDA, the peak memory of each pass (weights included).

``--batch_sizes 1 4`` adds the CPU batch-size study: per image, the wall, user and kernel
seconds and the minor page faults of the image pass at each batch size (after one warm-up
call each); ``--default_allocator`` shows them with glibc's default of returning blocks over
32 MB to the kernel (what makes batch 4 pay its page faults on every pass).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, iters=10, warmup=2)
    parser.add_argument("--batch_size", type=int, default=8, help="images per encode_image call")
    parser.add_argument("--text_batch", type=int, default=80, help="prompts per encode_text call")
    parser.add_argument("--deep_prompts", type=int, default=8, help="deep prompts (layers 2..n+1)")
    parser.add_argument("--deep_length", type=int, default=4, help="tokens per deep prompt")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None,
                        help="also the per-image cost of the image pass at each of these batch sizes")
    return parser


def run(args: argparse.Namespace, backbone=None) -> Dict[str, object]:
    """Measure both passes; returns the figures (see ``report``)."""
    from models.backbone import default_vv_start, layers_or_default

    settings = common.setup(args)
    device = settings["device"]
    if backbone is None:
        backbone = common.make_backbone(settings["model"], args.pretrained, settings["image_size"], device,
                                        args.precision, seed=args.seed)
    backbone.precision = args.precision
    layers = layers_or_default(None, backbone.num_layers)
    vv_start = default_vv_start(backbone.num_layers)
    images = common.random_images(args.batch_size, backbone.image_size, device, args.seed)

    with common.peak_memory(device) as image_memory:
        image_timing = common.measure(lambda: backbone.encode_image(images, layers=layers, vv_start=vv_start),
                                      args.iters, args.warmup, device)

    deep_count = min(args.deep_prompts, backbone.text_layers - 1)
    text = f"{' '.join(['N'] * 5)} {' '.join(['A'] * 2)} damaged object."
    tokens = backbone.tokenize([text] * args.text_batch)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        embeddings = backbone.token_embedding(tokens)
    eot = tokens.argmax(dim=-1)
    deep = [(0.02 * torch.randn(args.deep_length, backbone.text_width, generator=generator)).to(device)
            for _ in range(deep_count)]

    def encode_text():
        with torch.no_grad():
            return backbone.encode_text_embeddings(embeddings, eot, deep)

    with common.peak_memory(device) as text_memory:
        text_timing = common.measure(encode_text, args.iters, args.warmup, device)

    sweep = {}
    for size in args.batch_sizes or []:
        batch = common.random_images(size, backbone.image_size, device, args.seed)
        encode = lambda: backbone.encode_image(batch, layers=layers, vv_start=vv_start)  # noqa: E731
        encode()  # warm-up: the first pass of a size allocates its memory
        runs = [common.cpu_cost(encode, size, device) for _ in range(max(1, args.iters))]
        sweep[size] = {key: min(r[key] for r in runs) for key in runs[0]}

    return {
        "benchmark": "backbone",
        "batch_sweep": sweep,
        "settings": {**settings, "pretrained": args.pretrained, "num_layers": backbone.num_layers,
                     "grid": backbone.grid_size, "layers": layers, "vv_start": vv_start,
                     "batch_size": args.batch_size, "text_batch": args.text_batch,
                     "context_length": backbone.context_length, "deep_prompts": deep_count,
                     "deep_length": args.deep_length, "activation": backbone.activation},
        "environment": common.environment(device),
        "image": {"timing": image_timing, "images_per_s": common.throughput(args.batch_size, image_timing),
                  "memory": image_memory},
        "text": {"timing": text_timing, "prompts_per_s": common.throughput(args.text_batch, text_timing),
                 "memory": text_memory},
    }


def report(result: Dict[str, object]) -> str:
    s, image, text = result["settings"], result["image"], result["text"]
    head = (f"backbone {s['model']} ({s['pretrained']} weights), {s['image_size']} px ({s['grid']}x{s['grid']} "
            f"grid), {s['device']}, precision {s['precision']}, {s['activation']}\n"
            f"image pass: layers {s['layers']} + V-V path from block {s['vv_start']}; text pass: "
            f"{s['text_batch']} x {s['context_length']} tokens, {s['deep_prompts']} deep prompts of "
            f"length {s['deep_length']}; {image['timing']['iters']} timed iters after "
            f"{image['timing']['warmup']} warm-up"
            + (f"; load average {' '.join(result['environment']['load_average'])}"
               if result["environment"].get("load_average") else ""))
    rows = [
        ["encode_image (all features)", s["batch_size"], 1000 * image["timing"]["mean_s"],
         1000 * image["timing"]["best_s"], image["images_per_s"], "images/s",
         common.gib(image["memory"]["peak_bytes"])],
        ["encode_text_embeddings", s["text_batch"], 1000 * text["timing"]["mean_s"],
         1000 * text["timing"]["best_s"], text["prompts_per_s"], "prompts/s",
         common.gib(text["memory"]["peak_bytes"])],
    ]
    table = common.format_table(rows, ["pass", "batch", "ms/iter", "best ms", "throughput", "unit", "peak mem"])
    if result.get("batch_sweep"):
        sweep = [[size, v["wall_s"], v["user_s"], v["sys_s"], v["minor_faults"]]
                 for size, v in result["batch_sweep"].items()]
        table += "\nimage pass per image (best of the timed calls):\n" + common.format_table(
            sweep, ["batch", "wall s", "user s", "kernel s", "page faults"])
    return head + "\n" + table


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    return common.run_main(build_parser, run, report, argv)


if __name__ == "__main__":
    main()
