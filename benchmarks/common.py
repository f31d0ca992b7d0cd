"""Shared helpers of the model benchmarks (backbone, FAPrompt, Bayes-PFL, device check).

* command-line flags every benchmark takes (``add_common_args``) and their resolution
  (device, effective precision, image size);
* a backbone with random (or local) weights for an open_clip model name, the CLIP module
  cached so that several benchmarks in one process build it once (``make_backbone``);
* ``--model tiny``: the tests' tiny open_clip model (``utils.tiny_clip``) for quick CPU runs;
* timing with warm-up and CUDA synchronisation (``measure``), peak CUDA memory
  (``peak_memory``), a plain-text table and a JSON writer.

Nothing here imports open_clip or the models at module level, so ``device_check`` can report
a missing package instead of failing on import.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from utils.tiny_clip import TINY_MODEL, register_tiny_model  # noqa: E402

TINY_ALIASES = ("tiny", TINY_MODEL)
DEFAULT_MODEL = "ViT-L-14-336"
DEFAULT_IMAGE_SIZE = 518
TINY_IMAGE_SIZE = 32
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_CLIP_CACHE: Dict[tuple, tuple] = {}


# ---------------------------------------------------------------------- arguments
def add_common_args(parser: argparse.ArgumentParser, iters: int = 10, warmup: int = 2) -> None:
    """The flags every model benchmark takes."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"open_clip model name (default {DEFAULT_MODEL}); 'tiny' = the 4-layer "
                             "test model (32 px) for quick CPU runs")
    parser.add_argument("--pretrained", default="none",
                        help="'none' (random weights; timing does not depend on them), an open_clip "
                             "tag, or a local CLIP weight file")
    parser.add_argument("--image_size", type=int, default=None,
                        help=f"input size (default {DEFAULT_IMAGE_SIZE}; {TINY_IMAGE_SIZE} for --model tiny)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="backbone autocast: auto = bf16 on CUDA, fp32 on CPU (bf16 autocasts on the CPU too)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 matmuls/convolutions on CUDA (affects fp32 timings)")
    parser.add_argument("--iters", type=int, default=iters, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed warm-up iterations")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--default_allocator", action="store_true",
                        help="CPU: keep glibc malloc's defaults, which return blocks over 32 MB to the kernel "
                             "(test.py and train.py keep them: engine.cli.keep_freed_memory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures to PATH")


def resolve_device(name: Optional[str]) -> torch.device:
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    return device


def effective_precision(precision: str, device: torch.device) -> str:
    """What the backbone really computes in: on the CPU only bf16 autocasts."""
    if device.type != "cuda":
        return "bf16" if precision == "bf16" else "fp32"
    return "bf16" if precision == "auto" else precision


def resolve_model(model: str) -> str:
    """The open_clip name to build; 'tiny' registers the tests' tiny config."""
    if model in TINY_ALIASES:
        return register_tiny_model()
    return model


def resolve_image_size(model: str, image_size: Optional[int]) -> int:
    if image_size:
        return int(image_size)
    return TINY_IMAGE_SIZE if model in TINY_ALIASES else DEFAULT_IMAGE_SIZE


def setup(args: argparse.Namespace) -> Dict[str, object]:
    """Apply the process-wide settings of ``args``; returns the resolved run settings."""
    if args.threads:
        torch.set_num_threads(int(args.threads))
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    elif not getattr(args, "default_allocator", False):  # as test.py and train.py run on the CPU
        from engine.cli import keep_freed_memory

        keep_freed_memory(device)
    return {
        "model": resolve_model(args.model),
        "image_size": resolve_image_size(args.model, args.image_size),
        "device": device,
        "precision": effective_precision(args.precision, device),
    }


# ---------------------------------------------------------------------- models
def make_backbone(model: str, pretrained: str = "none", image_size: int = DEFAULT_IMAGE_SIZE,
                  device: torch.device | str = "cpu", precision: str = "auto",
                  pos_interpolation: str = "bilinear", activation: str = "auto", seed: int = 0):
    """A ``ClipBackbone`` for an open_clip model name, random weights by default.

    The CLIP module is built once per (model, weights, activation, device, image size,
    position-grid interpolation) and shared by the backbones made from it (they differ only in
    precision), so a process that runs several benchmarks pays the model build once.
    """
    import open_clip
    from models.backbone import BackboneConfig, ClipBackbone, build_clip

    model = resolve_model(model)
    device = torch.device(device)
    # the backbone sets the CLIP's position grid for its size: one CLIP per size and interpolation
    key = (model, pretrained, activation, str(device), image_size, pos_interpolation)
    if key not in _CLIP_CACHE:
        logging.disable(logging.WARNING)  # open_clip's "initialized randomly" note
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                clip, resolved = build_clip(BackboneConfig(model=model, pretrained=pretrained,
                                                           activation=activation))
        finally:
            logging.disable(logging.NOTSET)
        _CLIP_CACHE[key] = (clip.to(device), resolved, open_clip.get_tokenizer(model))
    clip, resolved, tokenizer = _CLIP_CACHE[key]
    backbone = ClipBackbone(clip, tokenizer, image_size=image_size, pos_interpolation=pos_interpolation,
                            precision=precision)
    backbone.set_activation(resolved)
    return backbone.to(device)


def random_images(n: int, size: int, device: torch.device | str, seed: int = 0) -> torch.Tensor:
    """[n, 3, size, size] standard-normal images (the scale of CLIP-normalised pixels)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator).to(device)


def random_masks(n: int, size: int, device: torch.device | str, seed: int = 0) -> torch.Tensor:
    """[n, size, size] float masks: a random rectangle in every other image, the rest empty."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size)
    for i in range(0, n, 2):
        h, w = (int(v) for v in torch.randint(size // 16 + 1, size // 4 + 2, (2,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, size - max(h, w), (2,), generator=generator))
        masks[i, top:top + h, left:left + w] = 1
    return masks.to(device)


def pos_interpolation(method: str) -> str:
    """The method's position-grid interpolation (its registry entry's backbone setting)."""
    from models import methods

    return methods.get(method).backbone.get("pos_interpolation", "bilinear")


def build_method(method: str, backbone, device: torch.device | str, seed: int = 0, **sizes):
    """``method``'s model at its preset sizes with ``sizes`` (configuration fields) on top,
    random weights seeded with ``seed``, eval mode on ``device``. Where the method reads them:
    the deep-prompt depth and DAP's k are capped by small test models, and ``features_list``,
    unless given, is four evenly spaced layers of the backbone (the official 6 12 18 24 of
    ViT-L; scaled to a test model's depth)."""
    from models.backbone import layers_or_default
    from models.factory import build_model, make_config

    config = make_config(method, sizes)
    relevant = config.relevant_fields()
    if "depth" in relevant:
        config.depth = min(config.depth, backbone.text_layers)
    if "dap_k" in relevant:
        config.dap_k = min(config.dap_k, backbone.grid_size ** 2)
    if "features_list" in relevant and "features_list" not in sizes:
        config.features_list = tuple(layers_or_default(None, backbone.num_layers))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(method, config, backbone)
    return model.to(device).eval()


def train_steps(method: str, backbone, device: torch.device | str, batch: int, seed: int = 0,
                stage: int = 1, steps: int = 2) -> Dict[str, object]:
    """``steps`` training steps (forward, loss, backward, Adam at the recipe's rates) of a fresh
    ``method`` model on random images and masks; the first also allocates Adam's state."""
    from models import methods

    model = build_method(method, backbone, device, seed).train()
    if stage != 1:
        model.set_stage(stage)
    groups = model.param_groups(dict(methods.get(method).recipe.lr))
    optimizer = torch.optim.Adam(groups, betas=(0.5, 0.999))
    size = backbone.image_size
    images, masks = random_images(batch, size, device, seed), random_masks(batch, size, device, seed)
    labels = (masks.flatten(1).amax(1) > 0).long()
    names = ["bottle"] * batch
    times, losses = [], []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        loss = model.loss(model(images, names), masks, labels)["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return {"batch": batch, "stage": stage, "step_s": times, "loss": losses,
            "trainable_params": sum(p.numel() for group in groups for p in group["params"])}


# ---------------------------------------------------------------------- timing and memory
def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], iters: int, warmup: int, device: torch.device | str) -> Dict[str, object]:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` times, each timed between two
    device synchronisations. Returns per-iteration seconds and their mean, median and best."""
    iters = max(1, int(iters))
    for _ in range(max(0, int(warmup))):
        fn()
    synchronize(device)
    times: List[float] = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return timing_stats(times, warmup)


def timing_stats(times: Sequence[float], warmup: int) -> Dict[str, object]:
    """Per-iteration seconds and their mean, median and best (``measure``'s figures)."""
    ordered = sorted(times)
    return {"times_s": list(times), "mean_s": sum(times) / len(times), "median_s": ordered[len(ordered) // 2],
            "best_s": ordered[0], "iters": len(times), "warmup": max(0, int(warmup))}


def cpu_cost(fn: Callable[[], object], items: int, device: torch.device | str) -> Dict[str, float]:
    """One call of ``fn`` per item: wall, user and kernel seconds and minor page faults of this
    process (the kernel time and the faults show memory mapped fresh from the kernel)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    synchronize(device)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall / items, "user_s": (after.ru_utime - before.ru_utime) / items,
            "sys_s": (after.ru_stime - before.ru_stime) / items,
            "minor_faults": (after.ru_minflt - before.ru_minflt) / items}


def throughput(items: int, timing: Dict[str, object]) -> float:
    """Items per second from the mean time per iteration."""
    return items / float(timing["mean_s"])


@contextlib.contextmanager
def peak_memory(device: torch.device | str) -> Iterator[Dict[str, Optional[float]]]:
    """Peak CUDA memory allocated inside the block, in bytes and GiB (None off CUDA).

    The peak counts everything live on the device, weights included; ``base_bytes`` is what
    was allocated on entry."""
    device = torch.device(device)
    record: Dict[str, Optional[float]] = {"peak_bytes": None, "peak_gib": None, "base_bytes": None}
    if device.type != "cuda":
        yield record
        return
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    record["base_bytes"] = torch.cuda.memory_allocated(device)
    try:
        yield record
    finally:
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        record["peak_bytes"] = peak
        record["peak_gib"] = peak / 2 ** 30


@contextlib.contextmanager
def peak_rss() -> Iterator[Dict[str, Optional[float]]]:
    """Peak resident host memory of this process inside the block, in bytes (``peak_bytes``)
    and at entry (``base_bytes``); Linux only (None elsewhere).

    The kernel's high-water mark (VmHWM) is reset on entry through ``/proc/self/clear_refs``;
    where that is not allowed the peak is the process's lifetime peak (``reset`` False)."""
    record: Dict[str, Optional[float]] = {"peak_bytes": None, "base_bytes": None, "reset": False}
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        record["reset"] = True
    except OSError:
        pass
    record["base_bytes"] = _status_bytes("VmRSS")
    try:
        yield record
    finally:
        record["peak_bytes"] = _status_bytes("VmHWM")


def _status_bytes(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_memory_of(device: torch.device | str) -> Iterator[Dict[str, Optional[float]]]:
    """The peak memory a step needs where it runs: CUDA memory allocated on a GPU
    (:func:`peak_memory`), the resident host memory on the CPU (:func:`peak_rss`)."""
    tracker = peak_memory if torch.device(device).type == "cuda" else lambda _: peak_rss()
    with tracker(device) as record:
        yield record


def gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2 ** 30:.2f} GiB"


# ---------------------------------------------------------------------- output
def format_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A left/right aligned plain-text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] and index else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def load_average() -> Optional[List[str]]:
    """The machine's load average over 1, 5 and 15 minutes (Linux), as the kernel prints it."""
    try:
        with open("/proc/loadavg") as handle:
            return handle.read().split()[:3]
    except OSError:
        return None


def environment(device: torch.device | str) -> Dict[str, object]:
    """What the figures were measured on (the load average: when this is called)."""
    device = torch.device(device)
    info: Dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average": load_average(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
            "cuda": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def to_jsonable(value: object) -> object:
    """Plain JSON types: tensors → numbers/lists, devices → strings, NaN → None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_json(path: Optional[str], data: object) -> None:
    if not path:
        return
    target = Path(path)
    if target.parent and not target.parent.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2))
    tmp.replace(target)


def run_main(build_parser: Callable, run: Callable, report: Callable,
             argv: Optional[Sequence[str]]) -> Dict[str, object]:
    """Parse flags, measure, print the report and write the JSON: every benchmark's ``main``."""
    args = build_parser().parse_args(argv)
    result = run(args)
    print(report(result))
    write_json(args.json, result)
    return result


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())
