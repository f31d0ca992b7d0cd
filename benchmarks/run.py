"""The whole test job per method, against the backbone image pass alone: the floor.

Run from anywhere: ``python benchmarks/run.py --model tiny`` (seconds on a CPU) or, at full
size, ``python benchmarks/run.py --pretrained ViT-L-14-336px.pt --images 4``. Per method
(``--methods``, FAPrompt and Bayes-PFL with random prompt weights) on the same images:

(1) backbone: ``model.encode_images`` on the images already decoded in memory, at
    ``--batch_size``; no test job can be faster than this (WinCLIP, ``--methods winclip``: the
    plain image pass, with its pass over every window reported beside it);
(2) ours: the test job as ``test.py`` runs it (``engine.testing.run_test``): loading in
    DataLoader workers (pinned memory on a GPU), backbone, prompts, heads, maps upsampled and
    blurred on the device, metrics, results files and report.html, at ``--batch_size``;
(3) per-image style: the same job at batch 1 doing the official code's work per image
    (FAPrompt: static prompts re-encoded per image, all 77 text positions; Bayes-PFL: one
    text-encoder call per flow sample and state, the pair softmax pair by pair; see
    benchmarks/faprompt.py and bayes_pfl.py);
(4) a training step at ``--train_batch`` (forward, loss, backward, Adam).

Each job is also split into its parts: the model with the blur, the metrics, report.html and
the rest (waiting for data, buffers, result files), so the table shows where a job loses to
the floor.

Peak memory is CUDA memory allocated on a GPU and the resident host memory on the CPU (where
freed memory stays in the process, as in test.py, so a row's figure is at least the one above
it: run one method per process for separate figures). The
table gives job/backbone (target <= 1.10 at full size) and the speed-up of ours over the
per-image style. ``--category_images N`` adds the peak host memory of one category of N
images accumulated and evaluated as the test does (synthetic maps and masks at
``--image_size``, in a process of its own: the model plays no part in that figure). The images are synthetic
(``datasets.synthetic``, ``--source_size`` px PNGs, as MVTec's are about 1000 px), or a real
dataset's (``--data_path``, ``--classes``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402

METHODS = ("faprompt", "bayes_pfl", "april_gan", "vcp_clip", "adaclip", "winclip")
TRAINING_FREE = ("winclip",)  # no training step
# their own image pass is more than one plain pass (WinCLIP: windows; AdaCLIP: the plain pass that
# makes its dynamic prompts, then the prompted one): the floor is the plain pass, theirs beside it
PLAIN_FLOOR = ("winclip", "adaclip")
PER_IMAGE = ("faprompt", "bayes_pfl")  # an official per-image style to compare with


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, iters=1, warmup=1)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["faprompt", "bayes_pfl"],
                        help="also april_gan, vcp_clip, adaclip, winclip (for the last two the floor is the plain "
                             "image pass; WinCLIP's window passes and AdaCLIP's two passes are reported beside it)")
    parser.add_argument("--images", type=int, default=None, help="test images (default 12; 4 at full size)")
    parser.add_argument("--batch_size", type=int, default=None, help="ours (default: test.py's for the device)")
    parser.add_argument("--train_batch", type=int, default=None,
                        help="training step batch (default: the recipe's on a GPU, 2 on the CPU at full size, 4 tiny)")
    parser.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (default: test.py's)")
    parser.add_argument("--sample_num", type=int, default=10, help="Bayes-PFL flow samples R")
    parser.add_argument("--source_size", type=int, default=None, help="synthetic image size (default 1024; 64 tiny)")
    parser.add_argument("--data_path", default=None, help="a real dataset root (meta.json) instead of synthetic images")
    parser.add_argument("--classes", nargs="+", default=None, help="categories of --data_path")
    parser.add_argument("--no_report", action="store_true", help="time the job without report.html")
    parser.add_argument("--category_images", type=int, default=0,
                        help="also measure the host memory of one category of this many images (e.g. 2000)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("per_image", "train"),
                        help="leave out the per-image-style job or the training step")
    return parser


# ---------------------------------------------------------------------- data
def make_dataset(args: argparse.Namespace, image_size: int, folder: Path, tiny: bool):
    """The test images: the first ``--images`` records of the chosen categories, normal and
    anomalous interleaved so that every category keeps both."""
    from datasets.meta import MetaDataset
    from datasets.synthetic import generate

    count = args.images or (12 if tiny else 4)
    root = args.data_path
    if root is None:
        per_category = max(2, count // 2)
        root = generate(folder / "data", size=args.source_size or (64 if tiny else 1024),
                        categories=["weave", "wood"], n_train=0, n_test_good=per_category, n_test_defect=1)
    full = MetaDataset(root, "test", classes=args.classes, image_size=image_size)
    chosen: List[dict] = []
    for cls in full.classes:
        normal = [r for r in full.records if r["cls_name"] == cls and not int(r["anomaly"])]
        anomalous = [r for r in full.records if r["cls_name"] == cls and int(r["anomaly"])]
        share = max(2, count // len(full.classes))
        mixed = [r for pair in zip(normal, anomalous) for r in pair] + normal[len(anomalous):] + anomalous[len(normal):]
        chosen += mixed[:share]
    chosen = chosen[:count]
    return MetaDataset(full.root, "test", image_size=image_size, records=chosen, check_files=False)


# ---------------------------------------------------------------------- the job
class PerImageBayes:
    """A Bayes-PFL model whose ``predict`` does the official per-image, per-sample work."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def predict(self, images: torch.Tensor, names: Sequence[str], features=None):
        from benchmarks.bayes_pfl import official_predict_one
        from models.scoring import Prediction

        if features is not None:
            raise ValueError("the official per-image loop computes its own image features")

        parts = [official_predict_one(self.model, images[i:i + 1], names[i]) for i in range(len(names))]
        return Prediction(*(torch.cat([getattr(p, f) for p in parts]) for f in ("anomaly_map", "class_prob",
                                                                                  "map_score")))


@contextlib.contextmanager
def per_image_style(method: str, model):
    """The model as the official per-image loop computes it (at batch 1)."""
    from benchmarks import faprompt

    if method == "faprompt":
        with faprompt.official_work(model):
            yield model
        return
    truncate = model.backbone.truncate_text
    model.backbone.truncate_text = False  # the official text encoder runs all 77 positions
    try:
        yield PerImageBayes(model)
    finally:
        model.backbone.truncate_text = truncate


class StageClock:
    """Seconds spent in each stage of a test run ("model", "metrics", "report"), through the
    ``timer`` hook of ``engine.testing.run_test``; the device is synchronised at the end of each
    stage, so a stage holds its own GPU work."""

    def __init__(self, device):
        self.device = device
        self.spent: Dict[str, float] = {"model": 0.0, "metrics": 0.0, "report": 0.0}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            common.synchronize(self.device)
            self.spent[stage] += time.perf_counter() - start


def test_job(model, dataset, device, batch_size: int, num_workers: int, folder: Path, report: bool):
    """``run_test`` as test.py calls it; (seconds, mean metrics, seconds per stage)."""
    from engine.report import Report
    from engine.testing import run_test

    folder.mkdir(parents=True, exist_ok=True)
    common.synchronize(device)
    clock = StageClock(device)
    start = time.perf_counter()
    _, mean = run_test(model, dataset, device, batch_size, num_workers, model.config.sigma, ("image", "pixel"),
                       folder, {"benchmark": "run"}, report=Report(folder, dataset.root) if report else None,
                       timer=clock)
    common.synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, mean, {**clock.spent, "rest": seconds - sum(clock.spent.values())}


def backbone_pass(encode, images: torch.Tensor, device, batch_size: int) -> float:
    """Seconds of ``encode`` (a model's ``encode_images``) over ``images`` (on the host) in batches."""
    common.synchronize(device)
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        encode(images[i:i + batch_size].to(device, non_blocking=True))
    common.synchronize(device)
    return time.perf_counter() - start


def measure_method(method: str, args, settings, dataset, folder: Path) -> Dict[str, object]:
    from engine import cli

    device, size = settings["device"], settings["image_size"]
    backbone = common.make_backbone(settings["model"], args.pretrained, size, device, args.precision,
                                    pos_interpolation=common.pos_interpolation(method), seed=args.seed)
    from models.factory import config_class

    fields = {f.name for f in dataclasses.fields(config_class(method))}
    sizes = {"sample_num": args.sample_num} if "sample_num" in fields else {}
    model = common.build_method(method, backbone, device, args.seed, **sizes)
    batch = args.batch_size or cli.default_test_batch(device)
    workers = cli.default_workers(device) if args.num_workers is None else args.num_workers
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    n = len(dataset)
    out: Dict[str, object] = {"images": n, "batch_size": batch, "num_workers": workers}
    with torch.no_grad():
        for _ in range(args.warmup):  # one-time costs: kernels, caches, allocator
            model.predict(images[:batch].to(device), [dataset.records[0]["cls_name"]] * min(batch, n))
    # the floor: the model's one image pass; WinCLIP's re-encodes every window besides, so its
    # floor is the plain pass and its own image pass (windows included) is reported beside it
    floor = model.backbone.encode_image if method in PLAIN_FLOOR else model.encode_images
    with common.peak_memory_of(device) as memory:
        seconds = [backbone_pass(floor, images, device, batch) for _ in range(args.iters)]
    out["backbone"] = {"s": min(seconds), "peak_bytes": memory["peak_bytes"]}
    if method == "adaclip":
        with common.peak_memory_of(device) as memory, torch.no_grad():
            seconds = [backbone_pass(model.encode_images, images, device, batch) for _ in range(args.iters)]
        out["own_pass"] = {"s": min(seconds), "peak_bytes": memory["peak_bytes"]}
    if method in TRAINING_FREE:
        with common.peak_memory_of(device) as memory:
            seconds = [backbone_pass(model.encode_images, images, device, batch) for _ in range(args.iters)]
        tokens = sum(len(w) * (1 + w.shape[1]) for w in model.windows.values())
        out["windows"] = {"s": min(seconds), "peak_bytes": memory["peak_bytes"],
                          "window_tokens_per_image_token": tokens / (1 + backbone.grid_size ** 2)}
    with common.peak_memory_of(device) as memory:
        runs = [test_job(model, dataset, device, batch, workers, folder / method / "ours", not args.no_report)
                for _ in range(args.iters)]
    out["ours"] = _job_entry(runs, memory)
    if "per_image" not in args.skip and method in PER_IMAGE:
        with per_image_style(method, model) as official, common.peak_memory_of(device) as memory:
            runs = [test_job(official, dataset, device, 1, workers, folder / method / "per_image", not args.no_report)
                    for _ in range(args.iters)]
        out["per_image"] = _job_entry(runs, memory)
    if "train" not in args.skip and method not in TRAINING_FREE:
        train_batch = args.train_batch or _default_train_batch(method, device, settings["model"])
        with common.peak_memory_of(device) as memory:
            steps = common.train_steps(method, backbone, device, train_batch, args.seed)
        out["train"] = {**steps, "s": steps["step_s"][-1], "images_per_s": train_batch / steps["step_s"][-1],
                        "peak_bytes": memory["peak_bytes"]}
    return out


def _job_entry(runs, memory) -> Dict[str, object]:
    best = min(runs, key=lambda r: r[0])
    return {"s": best[0], "stages_s": best[2], "peak_bytes": memory["peak_bytes"], "mean": runs[0][1]}


def _default_train_batch(method: str, device: torch.device, model: str) -> int:
    from models import methods

    if device.type == "cuda":
        return methods.get(method).recipe.batch_size
    return 4 if model == common.TINY_MODEL else 2


# ---------------------------------------------------------------------- category memory
def category_memory(images: int, size: int, seed: int, batch: int = 8) -> Dict[str, object]:
    """Peak host memory of one category of ``images`` synthetic maps and masks at ``size`` px,
    added batch by batch and evaluated (image and pixel metrics) as the test does."""
    from engine.evaluation import CategoryOutputs
    from engine.results import evaluate_category
    from utils.synthetic_maps import synthetic_category

    start = time.perf_counter()
    with common.peak_rss() as memory:
        cat = CategoryOutputs("synthetic", images, size)
        for first in range(0, images, batch):
            count = min(batch, images - first)
            masks, maps = synthetic_category(count, size, seed + first)
            scores = maps.flatten(1).amax(1)
            cat.add(maps, masks.float(), [True] * count, masks.flatten(1).any(1).long().tolist(),
                    scores.tolist(), scores.tolist(), [f"{first + i}.png" for i in range(count)])
        result = evaluate_category(cat, torch.tensor(cat.map_score, dtype=torch.float64), ("image", "pixel"))
    return {"images": images, "size": size, "seconds": time.perf_counter() - start,
            "maps_bytes": cat.maps.numel() * 4, "masks_bytes": cat.masks.numel(),
            "base_bytes": memory["base_bytes"], "peak_bytes": memory["peak_bytes"], "reset": memory["reset"],
            "metrics": result.metrics}


def _category_memory_child(images: int, size: int, seed: int) -> Dict[str, object]:
    from engine.cli import keep_freed_memory

    keep_freed_memory(torch.device("cpu"))  # as test.py runs on the CPU
    return category_memory(images, size, seed)


def category_memory_apart(images: int, size: int, seed: int) -> Dict[str, object]:
    """:func:`category_memory` in a fresh process: test.py keeps freed memory on the CPU, so
    the category's peak would otherwise stay resident under every figure measured after it
    (and a model's would hide under the category's)."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_category_memory_child, images, size, seed).result()


# ---------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> Dict[str, object]:
    settings = common.setup(args)
    result: Dict[str, object] = {"benchmark": "run", "settings": {**settings, "pretrained": args.pretrained},
                                 "environment": common.environment(settings["device"])}
    if args.category_images:
        result["category"] = category_memory_apart(args.category_images, settings["image_size"], args.seed)
    with tempfile.TemporaryDirectory(prefix="zsad_run_") as tmp:
        folder = Path(tmp)
        dataset = make_dataset(args, settings["image_size"], folder, settings["model"] == common.TINY_MODEL)
        result["methods"] = {m: measure_method(m, args, settings, dataset, folder) for m in args.methods}
    result["environment"]["load_average_end"] = common.load_average()
    return result



def report(result: Dict[str, object]) -> str:
    s = result["settings"]
    env = result["environment"]
    head = (f"test job vs backbone floor: {s['model']} ({s['pretrained']} weights), {s['image_size']} px, "
            f"{s['device']}, precision {s['precision']}, {env.get('cpu_threads')} CPU threads"
            + (f", load average (1, 5, 15 min) {' '.join(env['load_average'])} at the start, "
               f"{' '.join(env['load_average_end'])} at the end" if env.get("load_average") else ""))
    rows, ratios = [], []
    for method, out in result["methods"].items():
        n, floor = out["images"], out["backbone"]["s"]
        for key, label, batch in (("backbone", "backbone image pass", out["batch_size"]),
                                  ("windows", "image pass with every window", out["batch_size"]),
                                  ("own_pass", "plain + prompted image passes", out["batch_size"]),
                                  ("ours", "test job, ours", out["batch_size"]),
                                  ("per_image", "test job, per-image style", 1)):
            if key not in out:
                continue
            entry = out[key]
            stages = entry.get("stages_s", {})
            rows.append([method, label, batch, entry["s"] / n, n / entry["s"], entry["s"] / floor,
                         *(stages[k] / n if k in stages else "-" for k in ("model", "metrics", "report", "rest")),
                         common.gib(entry["peak_bytes"])])
        if "train" in out:
            t = out["train"]
            rows.append([method, "training step", t["batch"], t["s"] / t["batch"], t["images_per_s"], "-",
                         "-", "-", "-", "-", common.gib(t["peak_bytes"])])
        ours = out["ours"]
        line = (f"{method}: job/backbone {ours['s'] / floor:.3f} "
                f"({(ours['s'] - ours['stages_s']['report']) / floor:.3f} without report.html)")
        if "per_image" in out:
            line += f", per-image style / ours {out['per_image']['s'] / ours['s']:.2f}x"
        if "own_pass" in out:
            line += f", its plain + prompted passes {out['own_pass']['s'] / floor:.2f}x the plain pass"
        if "windows" in out:
            line += (f", window passes {out['windows']['s'] / floor:.2f}x the plain pass "
                     f"({out['windows']['window_tokens_per_image_token']:.1f}x its tokens)")
        ratios.append(line)
    table = common.format_table(rows, ["method", "what", "batch", "s/image", "images/s", "x backbone",
                                       "model+blur", "metrics", "report", "rest", "peak mem"])
    lines = [head, table, "(model+blur, metrics, report: seconds per image in each part of the job; rest: "
                          "loading, buffers, results files)", *ratios]
    cat = result.get("category")
    if cat:
        lines.append(f"one category of {cat['images']} images at {cat['size']} px (synthetic maps and masks): "
                     f"peak host memory {common.gib(cat['peak_bytes'])} "
                     f"(process before: {common.gib(cat['base_bytes'])}; "
                     f"maps {common.gib(cat['maps_bytes'])}, masks {common.gib(cat['masks_bytes'])}), "
                     f"{cat['seconds']:.1f} s" + ("" if cat["reset"] else " (lifetime peak: no VmHWM reset here)"))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    return common.run_main(build_parser, run, report, argv)


if __name__ == "__main__":
    main()
