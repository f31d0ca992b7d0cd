"""Cost of few-shot scoring (``test.py --k_shot K``) relative to the zero-shot run.

Run from anywhere: ``python benchmarks/fewshot.py [--method clip] [--model ViT-L-14-336]
[--image_size 518] [--batch_size 8] [--shots 1 4 16] [--iters 3]``; ``--model tiny`` for a
quick CPU run. Random weights and random images: the cost does not depend on them.

For each K it times, on the same ``--batch_size`` images (maps blurred as the test does), in
interleaved rounds so that a shared machine's load changes hit all of them alike (each ratio
is the median over the rounds of the per-round ratio to the zero-shot time):

* zero-shot: ``engine.evaluation.predict_maps`` without references (what ``test.py`` runs);
* few-shot: the same with a ``FewShotScorer`` holding a K-image bank (built once, timed
  separately, from K random PNG files as ``test.py`` reads them), one image-tower pass per
  batch shared by ``predict`` and ``fewshot_tokens``;
* the comparison alone: nearest-neighbour distances, upsampling and maximum on the tokens of
  the batch's pass (what few-shot adds to a batch), as a fraction of the zero-shot time;
* few-shot without the shared pass: ``predict`` and the few-shot scoring one after the other
  (the image tower runs twice), to show what the shared pass saves.

Memory: the peak of each call, weights included (CUDA: allocated bytes; CPU on Linux: the
resident-memory high-water mark, which on the CPU also holds the memory the process keeps for
reuse, as test.py does), next to the bank's size and the largest similarity block.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import common  # noqa: E402
from models import methods  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, iters=3, warmup=1)
    parser.add_argument("--method", choices=methods.names(), default="clip", help="model whose hook fills the bank")
    parser.add_argument("--batch_size", type=int, default=8, help="test images per call")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16], help="K values")
    parser.add_argument("--class_name", default="bottle")
    parser.add_argument("--sigma", type=float, default=4.0, help="Gaussian blur of the maps")
    return parser


def write_references(folder: Path, k: int, size: int, seed: int) -> List[Path]:
    """K random RGB PNG files of ``size`` px (what a reference folder holds)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(k):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths




def rounds(steps: Dict[str, Callable[[], float]], iters: int, warmup: int) -> Dict[str, Dict[str, object]]:
    """Run the steps in turn, ``warmup`` untimed rounds then ``iters`` timed ones; each step
    returns its own seconds. Interleaving keeps a shared machine's load changes out of the
    ratios between the steps."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for index in range(max(0, warmup) + max(1, iters)):
        for name, step in steps.items():
            seconds = step()
            if index >= warmup:
                times[name].append(seconds)
    return {name: common.timing_stats(values, warmup) for name, values in times.items()}


def median_ratio(a: Dict[str, object], b: Dict[str, object]) -> float:
    """Median over the rounds of a's time over b's (same round)."""
    ratios = sorted(x / y for x, y in zip(a["times_s"], b["times_s"]))
    return ratios[len(ratios) // 2]


def run(args: argparse.Namespace) -> Dict[str, object]:
    from engine.evaluation import predict_maps
    from engine.fewshot import SIMILARITY_ELEMENTS, FewShotScorer, References

    settings = common.setup(args)
    device = settings["device"]
    backbone = common.make_backbone(settings["model"], args.pretrained, settings["image_size"], device,
                                    args.precision, seed=args.seed, **methods.get(args.method).backbone)
    model = common.build_method(args.method, backbone, device, args.seed)
    images = common.random_images(args.batch_size, backbone.image_size, device, args.seed)
    names = [args.class_name] * args.batch_size

    def timed(fn: Callable[[], object]) -> Callable[[], float]:
        def step() -> float:
            model.start_evaluation()  # Bayes-PFL's test noise starts afresh, as per run
            common.synchronize(device)
            start = time.perf_counter()
            fn()
            common.synchronize(device)
            return time.perf_counter() - start
        return step

    zero_shot = timed(lambda: predict_maps(model, images, names, args.sigma))
    zero_shot()  # one-time caches (text features) are not counted below
    with common.peak_memory_of(device) as zero_memory:
        zero_shot()
    rows, zero_times = [], []
    with tempfile.TemporaryDirectory() as folder:
        paths = write_references(Path(folder), max(args.shots), backbone.image_size, args.seed)
        for k in args.shots:
            scorer = FewShotScorer(model, References({args.class_name: paths[:k]}, "benchmark"), 1.0,
                                   backbone.image_size, args.batch_size, device)
            start = time.perf_counter()
            bank = scorer.bank(args.class_name)
            common.synchronize(device)
            build_s = time.perf_counter() - start

            def comparison() -> float:  # the nearest-neighbour part alone, on the batch's own pass
                with torch.no_grad():
                    features = model.encode_images(images)
                    model.predict(images, names, features=features)
                    return timed(lambda: scorer.score(images, names, features))()

            def two_passes():  # the few-shot tokens from a second image-tower pass
                model.predict(images, names)
                scorer.score(images, names)

            measured = rounds({"zero_shot": zero_shot,
                               "few_shot": timed(lambda: predict_maps(model, images, names, args.sigma, scorer)),
                               "comparison_only": comparison, "two_passes": timed(torch.no_grad()(two_passes))},
                              args.iters, args.warmup)
            with common.peak_memory_of(device) as shot_memory:
                predict_maps(model, images, names, args.sigma, scorer)
            zero_times += measured["zero_shot"]["times_s"]
            patches = backbone.grid_size ** 2
            block = min(SIMILARITY_ELEMENTS // patches * patches, max(e.shape[0] for e in bank.entries) * patches)
            rows.append({"k": k, "bank_rows": [e.shape[0] for e in bank.entries],
                         "bank_dims": [e.shape[1] for e in bank.entries], "bank_bytes": bank.nbytes,
                         "similarity_block_bytes": 4 * block, "bank_build_s": build_s, **measured,
                         "memory": shot_memory,
                         **{f"ratio{suffix}": median_ratio(measured[name], measured["zero_shot"])
                            for suffix, name in (("", "few_shot"), ("_comparison_only", "comparison_only"),
                                                 ("_two_passes", "two_passes"))}})
            scorer = bank = None  # free this bank before the next is built
    zero = common.timing_stats(zero_times, args.warmup)
    return {
        "benchmark": "fewshot",
        "settings": {**settings, "method": args.method, "pretrained": args.pretrained,
                     "batch_size": args.batch_size, "sigma": args.sigma, "shots": args.shots,
                     "iters": args.iters},
        "environment": common.environment(device),
        "zero_shot": {"timing": zero, "memory": zero_memory},
        "few_shot": rows,
    }


def report(result: Dict[str, object]) -> str:
    s = result["settings"]
    zero = result["zero_shot"]
    n = s["batch_size"]
    head = (f"few-shot cost: --method {s['method']}, {s['model']} ({s['pretrained']} weights), {s['image_size']} px, "
            f"{s['device']}, precision {s['precision']}, batches of {n}; per K {s['iters']} timed round(s) after "
            f"{zero['timing']['warmup']} warm-up, ratios: median over rounds; peak memory of the call, weights "
            "included "
            f"({'CUDA allocated' if s['device'].type == 'cuda' else 'resident, host'})")
    rows = [["zero-shot", "-", "-", "-", 1000 * zero["timing"]["median_s"] / n, 1.0, "-", "-",
             common.gib(zero["memory"]["peak_bytes"])]]
    for r in result["few_shot"]:
        rows.append([f"K = {r['k']}", "/".join(map(str, r["bank_rows"])), common.gib(r["bank_bytes"]),
                     r["bank_build_s"], 1000 * r["few_shot"]["median_s"] / n, r["ratio"],
                     r["ratio_comparison_only"], r["ratio_two_passes"], common.gib(r["memory"]["peak_bytes"])])
    table = common.format_table(rows, ["run", "bank rows", "bank", "bank build s", "median ms/image", "x zero-shot",
                                       "comparison alone", "x (2 passes)", "peak mem"])
    block = max((r["similarity_block_bytes"] for r in result["few_shot"]), default=0)
    return f"{head}\n{table}\nlargest similarity block: {common.gib(block)}"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    return common.run_main(build_parser, run, report, argv)


if __name__ == "__main__":
    main()
