"""Training epoch times with and without the feature cache (``train.py --feature_cache``).

Run from anywhere: ``python benchmarks/feature_cache.py [--method faprompt] [--images 8]
[--batch_size 8] [--epochs 3] [--pretrained PATH]``; ``--model tiny`` for a quick CPU run.

Each variant trains the method through ``train.py`` (augmentation off, no validation) on the
same ``--images`` synthetic images for ``--epochs`` epochs:

* ``off``: no cache, the image tower runs on every batch of every epoch;
* ``memory``, ``disk``: float32 cache in RAM / in memory-mapped files (built by epoch 1);
* ``float16``: the disk cache stored in float16.

Prints per variant the time of epoch 1 and the mean of epochs 2+, both in images/s, their
ratio, the cache size per image, the set-up time (backbone, the one-image probe and the cache
key), whether the final weights equal the uncached run's bit for bit, and the largest
difference of an epoch's mean total loss from the uncached run.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402

VARIANTS = {"off": ("off", "float32"), "memory": ("memory", "float32"), "disk": ("disk", "float32"),
            "float16": ("disk", "float16")}
# settings that keep the tiny text tower (4 layers) and grid (16 patches) valid
TINY_METHOD_FLAGS = {"faprompt": ["--depth", "3", "--t_n_ctx", "2", "--dap_k", "4"],
                     "bayes_pfl": ["--features_list", "2", "4"],
                     "fapfl": ["--features_list", "2", "4", "--depth", "3", "--t_n_ctx", "2", "--dap_k", "4"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=common.DEFAULT_MODEL, help="open_clip name; 'tiny' for the test model")
    parser.add_argument("--pretrained", default="none", help="'none' (random weights) or a local CLIP weight file")
    parser.add_argument("--image_size", type=int, default=None, help="default 518 (32 for --model tiny)")
    parser.add_argument("--method", default="faprompt", choices=tuple(TINY_METHOD_FLAGS))
    parser.add_argument("--images", type=int, default=8, help="synthetic training images")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3, help="at least 2")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=tuple(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures to PATH")
    return parser


def make_dataset(root: Path, images: int) -> Path:
    """A synthetic set whose test split holds exactly ``images`` images (round-robin over its
    categories, normal and defective ones alike)."""
    from datasets.synthetic import generate
    from utils.io import write_json

    per_category = -(-images // 3)
    data = generate(root, seed=0, size=256, n_train=0, n_test_good=max(1, per_category // 2),
                    n_test_defect=max(1, -(-per_category // 6)))
    meta = json.loads((data / "meta.json").read_text())
    queues = {cls: list(records) for cls, records in meta["test"].items()}
    kept: Dict[str, list] = {cls: [] for cls in queues}
    while sum(len(v) for v in kept.values()) < images:
        if not any(queues.values()):
            raise SystemExit(f"--images {images}: the synthetic set is too small")
        for cls, queue in queues.items():
            if queue and sum(len(v) for v in kept.values()) < images:
                # alternate normal and defective images within the category
                wanted = len(kept[cls]) % 2
                pick = next((r for r in queue if int(r["anomaly"]) == wanted), queue[0])
                queue.remove(pick)
                kept[cls].append(pick)
    meta["test"] = {cls: records for cls, records in kept.items() if records}
    write_json(data / "meta.json", meta)
    return data


def run_variant(train, args, model: str, image_size: int, data: Path, save: Path, variant: str) -> Dict[str, object]:
    mode, dtype = VARIANTS[variant]
    argv = ["--method", args.method, "--train_data_path", str(data), "--save_path", str(save),
            "--model", model, "--pretrained", args.pretrained, "--image_size", str(image_size),
            "--batch_size", str(args.batch_size), "--epochs", str(args.epochs), "--augment", "off",
            "--val_protocol", "none", "--num_workers", "0", "--device", args.device, "--keep_checkpoints", "1",
            "--feature_cache", mode, "--cache_dtype", dtype]
    if args.model in common.TINY_ALIASES:
        argv += TINY_METHOD_FLAGS[args.method]
    from engine.feature_cache import bytes_per_image, weights_digest
    from models.factory import read_checkpoint

    start = time.perf_counter()
    trainer = train.build_trainer(argv)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    weights_digest(trainer.model.backbone)  # what the cache key costs at this size
    digest_s = time.perf_counter() - start
    trainer.run()
    seconds = trainer.epoch_seconds
    later = sum(seconds[1:]) / len(seconds[1:])
    n = len(trainer.dataset)
    store = trainer.cache.store if trainer.cache is not None else None
    final = read_checkpoint(str(save / "final.pth")).state_dict
    history = read_checkpoint(str(save / f"epoch_{args.epochs}.pth")).training["state"]["history"]
    return {
        "variant": variant, "mode": mode, "dtype": dtype, "setup_s": setup_s, "weights_digest_s": digest_s,
        "epoch_s": seconds,
        "epoch1_s": seconds[0], "later_s": later, "epoch1_images_per_s": n / seconds[0],
        "later_images_per_s": n / later, "speedup": seconds[0] / later,
        "cache_bytes_per_image": None if store is None else bytes_per_image(store.layout, store.dtype),
        "cache_fields": None if store is None else {k: list(v) for k, v in store.layout.items()},
        "loss": [h["total"] for h in history], "_weights": final,
    }


def run(args: argparse.Namespace) -> Dict[str, object]:
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2 (epoch 1 fills the cache)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = common.resolve_model(args.model)
    image_size = common.resolve_image_size(args.model, args.image_size)
    import train  # the repo root is on sys.path; train.py builds the very trainer the CLI runs
    results: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="zsad_cache_bench_") as tmp:
        data = make_dataset(Path(tmp) / "data", args.images)
        for variant in args.variants:
            with _quiet():
                results.append(run_variant(train, args, model, image_size, data, Path(tmp) / variant, variant))
    weights = {r["variant"]: r.pop("_weights") for r in results}
    off = next((r for r in results if r["variant"] == "off"), None)
    for r in results:
        if off is not None and r is not off:
            r["bit_identical_to_off"] = all(torch.equal(weights[r["variant"]][k], weights["off"][k])
                                            for k in weights["off"])
            r["max_loss_difference"] = max(abs(a - b) for a, b in zip(r["loss"], off["loss"]))
    return {"settings": {"model": model, "pretrained": args.pretrained, "image_size": image_size,
                         "method": args.method, "images": args.images, "batch_size": args.batch_size,
                         "epochs": args.epochs},
            "environment": common.environment(torch.device(args.device)),
            "weights_digest_s": results[0]["weights_digest_s"],
            "variants": results}


@contextlib.contextmanager
def _quiet():
    """train.py logs per step; the benchmark prints its own table."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def report(result: Dict[str, object]) -> str:
    from engine.feature_cache import human_size

    s = result["settings"]
    rows = []
    for r in result["variants"]:
        size = r["cache_bytes_per_image"]
        rows.append([r["variant"], r["epoch1_s"], r["later_s"], r["epoch1_images_per_s"], r["later_images_per_s"],
                     f"{r['speedup']:.2f}x", "-" if size is None else human_size(size), r["setup_s"],
                     str(r.get("bit_identical_to_off", "-")), r.get("max_loss_difference", "-")])
    head = (f"{s['method']} training, {s['model']} at {s['image_size']} px, {s['images']} images, batch "
            f"{s['batch_size']}, {s['epochs']} epochs ({result['environment']['device']}, "
            f"{result['environment']['cpu_threads']} threads)")
    table = common.format_table(rows, ["variant", "epoch 1 s", "epochs 2+ s", "epoch 1 img/s", "epochs 2+ img/s",
                                       "epoch 1 / 2+", "cache / image", "set-up s", "bit-identical",
                                       "max |Δ loss|"])
    return f"{head}\n{table}\nweights digest of the vision tower: {result['weights_digest_s']:.2f} s"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    return common.run_main(build_parser, run, report, argv)


if __name__ == "__main__":
    main()
