"""One-call check of the models on a lent GPU machine: correctness, timing and memory.

Run from the repository root: ``python benchmarks/device_check.py [--out PATH]``. Written for a
machine with a GPU, no internet and no package registry: it first lists the Python packages it
finds and those it misses, then runs seven parts, each guarded so that one failure keeps the
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
7. ``distributed`` (only when more than one GPU is visible, or with ``--processes N``): the
   test of a random-weight Bayes-PFL checkpoint on a synthetic set by ``python test.py`` on one
   GPU and by ``torchrun --nproc_per_node N test.py``: wall times, the speed-up, and whether
   the results agree (metrics exactly, maps to 1e-6).

``--quick --model tiny --device cpu`` runs every part in seconds (the smoke test does this).

Where open_clip is missing (the lent GPU image has torch, numpy, scipy, scikit-learn, opencv and
regex, but not open_clip_torch, ftfy or wcwidth), the packages ``open_clip``, ``ftfy`` and
``wcwidth`` (pure Python, about 9 MB together) can be copied from a site-packages folder into a
folder that travels with the repository and put on ``PYTHONPATH``.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import common  # noqa: E402

PARTS = ("env", "kernels", "correctness", "timing", "memory", "job", "distributed")

# module → (pip name, what needs it)
PACKAGES = {
    "torch": ("torch", "everything"),
    "torchvision": ("torchvision", "open_clip, datasets"),
    "numpy": ("numpy", "everything"),
    "scipy": ("scipy", "reference blur check here"),
    "sklearn": ("scikit-learn", "metrics baseline (benchmarks/metrics.py)"),
    "open_clip": ("open_clip_torch", "models/backbone.py: parts correctness, timing, memory"),
    "ftfy": ("ftfy", "open_clip's tokenizer (open_clip fails to import without it)"),
    "regex": ("regex", "open_clip's tokenizer"),
    "cv2": ("opencv-python", "utils/metrics.py (connected components): part kernels"),
    "skimage": ("scikit-image", "metrics baseline (benchmarks/metrics.py)"),
    "PIL": ("pillow", "datasets"),
    "huggingface_hub": ("huggingface_hub", "open_clip"),
    "safetensors": ("safetensors", "open_clip"),
    "timm": ("timm", "open_clip (optional)"),
    "tqdm": ("tqdm", "training scripts"),
    "tabulate": ("tabulate", "result tables"),
}


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


# ---------------------------------------------------------------------- bookkeeping
class Recorder:
    """Holds the results, records errors by step and rewrites the JSON after each part."""

    def __init__(self, path: str):
        self.path = path
        self.data: Dict[str, object] = {"errors": {}, "durations_s": {}}
        self.start = time.perf_counter()

    def guard(self, name: str, fn: Callable[[], object]) -> Optional[object]:
        """Run ``fn``; on an error record it under ``name`` and return None."""
        start = time.perf_counter()
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - every failure is reported, none is fatal
            self.data["errors"][name] = f"{type(err).__name__}: {err}"[:2000]
            self.data.setdefault("tracebacks", {})[name] = traceback.format_exc()[-4000:]
            print(f"!! {name} failed: {type(err).__name__}: {str(err)[:300]}", flush=True)
            return None
        finally:
            self.data["durations_s"][name] = round(time.perf_counter() - start, 2)
            _free_memory()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        try:
            common.write_json(self.path, self.data)
        except OSError as err:
            print(f"!! could not write {self.path}: {err}", flush=True)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


# ---------------------------------------------------------------------- part 1: environment
def check_imports() -> Dict[str, Dict[str, object]]:
    found: Dict[str, Dict[str, object]] = {}
    for module, (pip_name, needed_by) in PACKAGES.items():
        try:
            imported = importlib.import_module(module)
            found[module] = {"ok": True, "version": str(getattr(imported, "__version__", "?"))}
        except Exception as err:  # noqa: BLE001 - ImportError and whatever a broken package raises
            found[module] = {"ok": False, "pip": pip_name, "needed_by": needed_by,
                             "error": f"{type(err).__name__}: {err}"[:300]}
    return found


def part_env(rec: Recorder, device: torch.device) -> None:
    _section("environment and imports")
    env = common.environment(device)
    env["cuda_available"] = torch.cuda.is_available()
    env["argv"] = sys.argv
    rec.data["environment"] = env
    imports = check_imports()
    rec.data["imports"] = imports
    for key, value in env.items():
        if key != "argv":
            print(f"{key:16s} {value}")
    ok = [f"{m} {v['version']}" for m, v in imports.items() if v["ok"]]
    missing = {m: v for m, v in imports.items() if not v["ok"]}
    print("found:   " + ", ".join(ok))
    if missing:
        print("MISSING:")
        for module, info in missing.items():
            print(f"  {module:16s} (pip: {info['pip']}) needed by {info['needed_by']}: {info['error']}")
        if "open_clip" in missing or "ftfy" in missing:
            print("  -> parts correctness/timing/memory need open_clip. open_clip, ftfy and wcwidth are pure "
                  "Python: copy those three package folders from a working environment's site-packages into "
                  "a folder that travels with the repository and put it on PYTHONPATH (or carry their wheels "
                  "and pip install them) before running this script.")
    else:
        print("MISSING: nothing")


# ---------------------------------------------------------------------- part 2: kernels
def _metric_diff(a: Dict[str, Optional[float]], b: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
    out: Dict[str, Optional[float]] = {}
    for key in a:
        if a[key] is None or b.get(key) is None:
            out[key] = 0.0 if a[key] is None and b.get(key) is None else float("inf")
        else:
            out[key] = abs(a[key] - b[key])
    return out


def part_kernels(rec: Recorder, args: argparse.Namespace, device: torch.device) -> None:
    _section("kernels: metrics and blur on the device vs the CPU")
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


# ---------------------------------------------------------------------- part 3: correctness
def _set_precision(backbone, precision: str) -> None:
    backbone.precision = precision
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _faprompt_outputs(model, images: torch.Tensor, names: Sequence[str], sigma: float) -> Dict[str, torch.Tensor]:
    from utils.filters import gaussian_blur

    with torch.no_grad():
        out = model(images, names)
    return {"map": out.anomaly_map, "map_blurred": gaussian_blur(out.anomaly_map, sigma),
            "class_prob": out.class_prob, "map_score": out.map_score, "image_score": out.fused_score,
            "selected": out.selected}


def _bayes_outputs(model, images: torch.Tensor, names: Sequence[str], sigma: float, seed: int):
    from utils.filters import gaussian_blur

    model.start_evaluation(seed)
    with torch.no_grad():
        prediction = model.predict(images, names)
    return {"map": prediction.anomaly_map, "map_blurred": gaussian_blur(prediction.anomaly_map, sigma),
            "class_prob": prediction.class_prob, "map_score": prediction.map_score}


def _single_outputs(outputs_of: Callable[[torch.Tensor, Sequence[str]], Dict[str, torch.Tensor]],
                    images: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
    singles = [outputs_of(images[i:i + 1], names[i:i + 1]) for i in range(images.shape[0])]
    return {key: torch.cat([s[key] for s in singles]) for key in singles[0]}


def _diffs(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> Dict[str, float]:
    out = {}
    for key in a:
        if key == "selected":
            out["selected_sets_equal"] = float(all(set(x.tolist()) == set(y.tolist()) for x, y in zip(a[key], b[key])))
        else:
            out[key] = common.max_abs_diff(a[key], b[key])
    return out


def _print_diffs(label: str, diffs: Dict[str, float]) -> None:
    text = ", ".join(f"{k} {v:.1e}" if k != "selected_sets_equal" else f"DAP sets equal: {bool(v)}"
                     for k, v in diffs.items())
    print(f"{label:34s} {text}", flush=True)


def part_correctness(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                     image_size: int) -> None:
    _section(f"correctness: {model_name} at {image_size} px, random weights, batch of "
             f"{args.check_images} vs single images")
    result: Dict[str, object] = {"model": model_name, "image_size": image_size, "images": args.check_images}
    rec.data["correctness"] = result
    images = common.random_images(args.check_images, image_size, device, args.seed + 1)
    precisions = [p for p in ("fp32", "bf16") if p in args.precisions or p == "fp32"]

    def faprompt_check():
        backbone = common.make_backbone(model_name, args.pretrained, image_size, device, "fp32",
                                        pos_interpolation="bilinear", seed=args.seed)
        model = common.build_method("faprompt", backbone, device, args.seed)
        names = ["bottle"] * args.check_images
        sigma = model.config.sigma
        out, batched = {}, {}
        for precision in precisions:
            _set_precision(backbone, precision)
            batched[precision] = _faprompt_outputs(model, images, names, sigma)
            single = _single_outputs(lambda x, n: _faprompt_outputs(model, x, n, sigma), images, names)
            out[f"batch_vs_single_{precision}"] = _diffs(batched[precision], single)
            _print_diffs(f"FAPrompt batch vs single, {precision}:", out[f"batch_vs_single_{precision}"])
        if "bf16" in batched:
            out["bf16_vs_fp32"] = _diffs(batched["bf16"], batched["fp32"])
            _print_diffs("FAPrompt bf16 vs fp32 (batch):", out["bf16_vs_fp32"])
        result["faprompt"] = out

    def bayes_check():
        from benchmarks import bayes_pfl

        backbone = common.make_backbone(model_name, args.pretrained, image_size, device, "fp32",
                                        pos_interpolation="bicubic", seed=args.seed)
        model = common.build_method("bayes_pfl", backbone, device, args.seed)
        names = ["bottle"] * args.check_images
        sigma, seed = model.config.sigma, 111
        out, batched = {}, {}
        for precision in precisions:
            _set_precision(backbone, precision)
            batched[precision] = _bayes_outputs(model, images, names, sigma, seed)
            model.start_evaluation(seed)  # one noise stream over the single images, as over the batch
            singles = []
            with torch.no_grad():
                for i in range(args.check_images):
                    p = model.predict(images[i:i + 1], names[i:i + 1])
                    singles.append({"map": p.anomaly_map, "map_blurred": _blur(p.anomaly_map, sigma),
                                    "class_prob": p.class_prob, "map_score": p.map_score})
            single = {k: torch.cat([s[k] for s in singles]) for k in singles[0]}
            out[f"batch_vs_single_{precision}"] = _diffs(batched[precision], single)
            _print_diffs(f"Bayes-PFL batch vs single, {precision}:", out[f"batch_vs_single_{precision}"])
            out[f"batched_vs_official_loop_{precision}"] = bayes_pfl.agreement(model, images, names, seed)
            _print_diffs(f"Bayes-PFL ours vs official loop, {precision}:",
                         out[f"batched_vs_official_loop_{precision}"])
        if "bf16" in batched:
            out["bf16_vs_fp32"] = _diffs(batched["bf16"], batched["fp32"])
            _print_diffs("Bayes-PFL bf16 vs fp32 (batch):", out["bf16_vs_fp32"])
        result["bayes_pfl"] = out

    rec.guard("correctness.faprompt", faprompt_check)
    rec.guard("correctness.bayes_pfl", bayes_check)


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    from utils.filters import gaussian_blur

    return gaussian_blur(maps, sigma)


# ---------------------------------------------------------------------- part 4: timing
def _bench_argv(args: argparse.Namespace, model_name: str, image_size: int, device: torch.device,
                precision: str, iters: int, warmup: int) -> List[str]:
    return ["--model", model_name, "--pretrained", args.pretrained, "--image_size", str(image_size),
            "--device", str(device), "--precision", precision,
            "--iters", str(args.iters if args.iters is not None else iters),
            "--warmup", str(args.warmup if args.warmup is not None else warmup), "--seed", str(args.seed)]


def part_timing(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                image_size: int) -> None:
    from benchmarks import backbone as backbone_bench
    from benchmarks import bayes_pfl, faprompt

    _section(f"timing: {model_name} at {image_size} px")
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


# ---------------------------------------------------------------------- part 5: memory
def _measure_memory(device: torch.device, fn: Callable[[], Dict[str, object]]) -> Dict[str, object]:
    """Run ``fn`` under peak-memory tracking; an out-of-memory error becomes a record."""
    record: Dict[str, object] = {}
    oom = None
    with common.peak_memory(device) as memory:
        try:
            record.update(fn())
        except Exception as err:  # noqa: BLE001 - OOM is a result here, anything else is re-raised
            if not _is_oom(err):
                raise
            oom = str(err).splitlines()[0][:300]
    if oom is not None:
        record["oom"] = oom
    record["peak_gib"] = memory["peak_gib"]
    record["base_gib"] = None if memory["base_bytes"] is None else memory["base_bytes"] / 2 ** 30
    _free_memory()
    return record


def _test_faprompt(backbone, device, batch: int, image_size: int, seed: int) -> Dict[str, object]:
    from benchmarks import faprompt

    model = common.build_method("faprompt", backbone, device, seed)
    images = common.random_images(batch, image_size, device, seed)
    faprompt.predict_batched(model, images, ["bottle"] * batch, model.config.sigma)
    return {"batch": batch}


def _test_bayes(backbone, device, batch: int, image_size: int, seed: int) -> Dict[str, object]:
    from benchmarks import bayes_pfl

    model = common.build_method("bayes_pfl", backbone, device, seed)
    model.start_evaluation(111)
    images = common.random_images(batch, image_size, device, seed)
    bayes_pfl.predict_batched(model, images, ["bottle"] * batch, model.config.sigma)
    return {"batch": batch}


def part_memory(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                image_size: int) -> None:
    _section(f"memory: peak {device} memory (weights included), {model_name} at {image_size} px")
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
                _set_precision(backbone, precision)
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


# ---------------------------------------------------------------------- part 6: the whole job
def part_job(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
             image_size: int) -> None:
    from benchmarks import run as run_bench

    _section(f"job: the whole test job against the backbone floor, {model_name} at {image_size} px")
    argv = ["--model", model_name, "--pretrained", args.pretrained, "--image_size", str(image_size),
            "--device", str(device), "--images", str(args.job_images), "--seed", str(args.seed),
            "--iters", str(args.iters or 1), "--warmup", str(1 if args.warmup is None else args.warmup)]
    out = run_bench.run(run_bench.build_parser().parse_args(argv))
    print(run_bench.report(out), flush=True)
    rec.data["job"] = out


# ---------------------------------------------------------------------- part 7: distributed
def _script(model_name: str, configs: Path, script: str) -> List[str]:
    """The script's command line (through tests/tiny_cli.py, which registers the tiny model)."""
    root = Path(__file__).resolve().parents[1]
    if model_name == common.TINY_MODEL:
        return [str(root / "tests" / "tiny_cli.py"), str(configs), str(root / script)]
    return [str(root / script)]


def _timed_run(command: List[str], cwd: Path, cpu: bool = False) -> Dict[str, object]:
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if cpu:  # torchrun gives each process one thread; the run it is compared with gets the same
        env["OMP_NUM_THREADS"] = "1"  # (a CPU reduction's rounding depends on its thread count)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    out = {"command": " ".join(command), "seconds": time.perf_counter() - start, "returncode": done.returncode}
    if done.returncode:
        out["output_tail"] = (done.stdout + done.stderr)[-3000:]
    return out


def part_distributed(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                     image_size: int) -> None:
    """One process against torchrun on N: the same results, and how much faster."""
    import json
    import tempfile

    import numpy as np

    from datasets.synthetic import generate
    from models.backbone import BackboneConfig
    from models.factory import save_checkpoint

    processes = args.processes or (torch.cuda.device_count() if device.type == "cuda" else 1)
    _section(f"distributed: python test.py against torchrun --nproc_per_node {processes} test.py")
    if processes < 2:
        rec.data["distributed"] = {"skipped": f"{processes} GPU visible; pass --processes N to force"}
        print(rec.data["distributed"]["skipped"], flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="zsad_dist_") as tmp:
        folder = Path(tmp)
        data = generate(folder / "data", size=256, n_train=0, n_test_good=args.distributed_images, n_test_defect=2)
        backbone = common.make_backbone(model_name, args.pretrained, image_size, device, "auto",
                                        pos_interpolation="bicubic", seed=args.seed)
        model = common.build_method("bayes_pfl", backbone, device, args.seed)
        checkpoint = folder / "bayes_pfl" / "final.pth"
        save_checkpoint(checkpoint, model, BackboneConfig(model=model_name, pretrained=args.pretrained,
                                                          image_size=image_size, pos_interpolation="bicubic"))
        flags = ["--checkpoint_path", str(checkpoint), "--data_path", str(data), "--save_maps", "--no_report",
                 "--device", "cuda" if device.type == "cuda" else "cpu"]
        script = _script(model_name, folder / "configs", "test.py")
        cpu = device.type != "cuda"
        single = _timed_run([sys.executable, *script, *flags, "--save_path", str(folder / "single")], folder, cpu)
        multi = _timed_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                            str(processes), *script, *flags, "--save_path", str(folder / "multi")], folder, cpu)
        out: Dict[str, object] = {"processes": processes, "images": sum(1 for _ in (data).rglob("test/*/*.png")),
                                  "single": single, "torchrun": multi}
        if single["returncode"] == 0 and multi["returncode"] == 0:
            a = json.loads((folder / "single" / "results.json").read_text())
            b = json.loads((folder / "multi" / "results.json").read_text())
            worst = 0.0
            for path in (folder / "single" / "maps").rglob("*.npy"):
                other = folder / "multi" / "maps" / path.relative_to(folder / "single" / "maps")
                worst = max(worst, float(np.abs(np.load(path) - np.load(other)).max()))
            out.update({"metrics_equal": a["per_category"] == b["per_category"], "max_map_difference": worst,
                        "speedup": single["seconds"] / multi["seconds"]})
        rec.data["distributed"] = out
        print(f"{processes} processes: {multi['seconds']:.1f} s against {single['seconds']:.1f} s for one "
              f"(whole runs, start-up included); metrics equal: {out.get('metrics_equal')}, "
              f"max map difference {out.get('max_map_difference', float('nan')):.1e}", flush=True)
        for name in ("single", "torchrun"):
            if out[name]["returncode"]:
                print(f"!! {name} failed:\n{out[name]['output_tail']}", flush=True)


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
                             f"{out['text']['prompts_per_s']:.0f} prompts/s", "-", common.gib(out["image"]["memory"]["peak_bytes"])])
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
    dist = data.get("distributed")
    if dist:
        lines.append("distributed: " + (dist["skipped"] if "skipped" in dist else
                                        f"{dist['processes']} processes, speed-up {dist.get('speedup', float('nan')):.2f}x, "
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
    model_parts = [p for p in ("correctness", "timing", "memory", "job", "distributed") if p in args.parts]
    if model_parts:
        model_name = rec.guard("model", lambda: (importlib.import_module("open_clip"),
                                                 common.resolve_model(args.model))[1])
        image_size = common.resolve_image_size(args.model, args.image_size)
        if model_name is None:
            print("!! open_clip is unavailable: parts " + ", ".join(model_parts) + " skipped", flush=True)
        else:
            if "correctness" in args.parts:
                rec.guard("correctness", lambda: part_correctness(rec, args, device, model_name, image_size))
                rec.save()
            if "timing" in args.parts:
                rec.guard("timing", lambda: part_timing(rec, args, device, model_name, image_size))
                rec.save()
            if "memory" in args.parts:
                rec.guard("memory", lambda: part_memory(rec, args, device, model_name, image_size))
                rec.save()
            for part, run_part in (("job", part_job), ("distributed", part_distributed)):
                if part in args.parts:
                    rec.guard(part, lambda run_part=run_part: run_part(rec, args, device, model_name, image_size))
                    rec.save()
    rec.save()
    print(summary(rec.data), flush=True)
    return rec.data


if __name__ == "__main__":
    main()
