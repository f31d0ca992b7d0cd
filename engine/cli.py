"""Command-line plumbing shared by ``train.py`` and ``test.py``.

Method flags are generated from the configuration dataclasses of the registered methods
(``models.config.ModelConfig`` and the baseline's), so a flag exists once, keeps the official
repositories' name where there is one, and maps onto a field of the same name. Their default
is "unset": the method's preset applies unless the flag is given (``engine.configure`` checks that it applies at all).

Every value is checked where it is parsed (:class:`Parser` turns argparse's errors into one
:class:`UserError` line), and :func:`check_geometry` checks what depends on the backbone
(patch grid, layers) from its open_clip configuration, before anything is built or written.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import math
import os
import sys
import random
import tempfile
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import open_clip
import torch

from models import backbone as backbones
from models.backbone import BackboneConfig, ClipBackbone
from utils.errors import UserError

HELP = {
    "abnormal_prompts": "FAPrompt/CAP: number K of abnormal prompts",
    "normal_ctx": "CAP: learnable normal tokens",
    "abnormal_ctx": "CAP: learnable abnormal tokens per abnormal prompt",
    "depth": "deep text prompts at text layers 2..depth",
    "t_n_ctx": "deep text prompt length",
    "dap_k": "DAP: number of most abnormal patches fed to the meta-net",
    "dap_select": "DAP patch selection: topk (paper) or first (official code)",
    "class_word": "word in the prompts: 'object' or the readable class 'name'",
    "temperature": "fixed temperature of the similarity head",
    "sigma": "test-time Gaussian blur of the pixel map (pixels)",
    "vv_start": "first V-V block (default: the last 19 blocks)",
    "fused_focal_logits": "official FAPrompt: logit-input focal loss on the fused probability",
    "deep_prompt_fp16": "official FAPrompt: round deep prompts through fp16",
    "prompt_num": "Bayes-PFL: prompt pairs B in the bank",
    "prompt_context_len": "Bayes-PFL: context vectors P per prompt",
    "prompt_state_len": "Bayes-PFL: state vectors Q per prompt",
    "num_flows": "planar transforms per prompt flow",
    "sample_num": "flow samples R at test time",
    "features_list": "1-based layers whose patch tokens the RCA head / fuse (or AnomalyCLIP's maps) use",
    "rca_heads": "attention heads of the RCA module",
    "seed": "seed of the test-time flow noise",
    "official_noise": "official Bayes-PFL: test noise drawn per image as 3R×D",
    "official_state_kl": "official Bayes-PFL: the broadcast in the state flows' KL",
    "prompt_structure": "fapfl: cap (FAPrompt) or bank (Bayes-PFL) prompts",
    "share_normal_context": "fapfl: CAP abnormal prompts start with the normal tokens (off: AnomalyCLIP's prompts)",
    "similarity_layers": "fapfl: similarity head on the final V-V tokens or on those of --features_list",
    "layer_reduce": "fapfl: similarity maps of several layers averaged (mean) or summed (sum, AnomalyCLIP)",
    "map_loss_weight": "weight of the map losses (AnomalyCLIP: 4)",
    "vv_aliased": "official AnomalyCLIP before April 2025: every listed layer is the final V-V layer",
    "dap": "fapfl: data-dependent abnormality prior on/off",
    "flows": "fapfl: none | context | context+abnormal | context+state",
    "pixel_head": "fapfl: similarity | rca | both",
    "image_head": "fapfl: fixed (0.07 cosine) | class_mapping",
    "image_logit_scale": "clip baseline: logit scale of the image score",
    "scales": "WinCLIP: window sizes in patches",
    "prompts": "WinCLIP: the template list, paper or anomalib (its list has one template twice)",
    "window_attention": "WinCLIP: window (each window encoded alone, the paper) or across (anomalib 2.7 on "
                        "today's open_clip: windows attend across each other)",
    "prompt_len": "VCP-CLIP: Pre-VCP class tokens r",
    "deep_prompt_len": "VCP-CLIP: learned text prompt tokens n per text block",
    "total_d_layer_len": "VCP-CLIP: text blocks after the first with their own prompt tokens (unset: all; 0: none)",
    "use_global": "VCP-CLIP: Pre-VCP adds the global image feature (on); a bare --use_global turns it off, as "
                  "the official store_false flag does",
    "post_heads": "VCP-CLIP: attention heads of Post-VCP",
    "map_weight": "VCP-CLIP: weight of the linear branch in the map (Post-VCP: 1 - it)",
    "prompt_dropout": "VCP-CLIP: dropout on the text prompt tokens while training",
    "prompting_depth": "AdaCLIP: blocks J of each tower with prompt tokens",
    "prompting_length": "AdaCLIP: prompt tokens n per block",
    "prompting_type": "AdaCLIP: S static, D dynamic (from the image), SD their sum",
    "prompting_branch": "AdaCLIP: the prompted towers, V image, L text, VL both",
    "use_hsf": "AdaCLIP: hybrid semantic fusion of the most abnormal patches into the image score",
    "k_clusters": "AdaCLIP: k-means clusters of HSF (5k patches are clustered)",
    "prompt_fp16": "AdaCLIP: round the prompt tokens through float16, as the official code",
    "row_dice": "official AdaCLIP: a batch of one image gets dice losses over its rows",
}

# Fields that belong to the shared flags (defined once in add_common_flags) or are internal.
_SHARED = {"features_list", "seed"}
# Other spellings of method flags in the official scripts.
ALIASES = {"num_flows": ("-nf",)}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one :class:`UserError` line (exit code 2, no usage dump)."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def _number(kind, low: float, low_open: bool, high: Optional[float] = None, high_open: bool = False):
    """An argparse type: a finite ``kind`` in the interval from ``low`` to ``high``."""
    noun = "an integer" if kind is int else "a finite number"
    if high is None:
        bounds = f"{noun} {'>' if low_open else '>='} {low:g}"
    else:
        bounds = f"{noun} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or \
                (high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, False)
nonnegative_int = _number(int, 0, False)
positive_float = _number(float, 0, True)
nonnegative_float = _number(float, 0, False)
fraction = _number(float, 0, False, 1, True)  # [0, 1)
probability = _number(float, 0, False, 1, False)  # [0, 1]
# Method fields with another range than "integer >= 1" / "number > 0".
_FIELD_TYPES = {"sigma": nonnegative_float, "total_d_layer_len": nonnegative_int, "map_weight": probability,
                "prompt_dropout": fraction}
# argparse settings beyond the type: VCP-CLIP's official --use_global is a bare store_false switch
_FIELD_KWARGS = {"use_global": {"nargs": "?", "const": False}}


def _flag_type(hint: Any):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        return _flag_type(next(a for a in args if a is not type(None)))
    if origin in (tuple, typing.Tuple):
        return ("list", args[0] if args else int)
    return hint


def _bool(text: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {text!r}")


def add_method_flags(parser: argparse.ArgumentParser, config_classes: List[type], skip=frozenset()) -> None:
    """One flag per config field of any method (union over methods), default unset; fields in
    ``skip`` get no flag (the script defines that name itself)."""
    group = parser.add_argument_group("method settings (unset: the method's default)")
    seen = set()
    for cls in config_classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen or f.name in _SHARED or f.name in skip:
                continue
            seen.add(f.name)
            kind = _flag_type(hints[f.name])
            kwargs: Dict[str, Any] = {"default": None, "help": HELP.get(f.name, f.name.replace("_", " "))}
            if isinstance(kind, tuple):
                kwargs.update(nargs="+", type=positive_int if kind[1] is int else kind[1])
            elif kind is bool:
                kwargs.update(type=_bool, metavar="{on,off}")
            else:
                kwargs["type"] = _FIELD_TYPES.get(f.name, {int: positive_int, float: positive_float}.get(kind, kind))
            kwargs.update(_FIELD_KWARGS.get(f.name, {}))
            group.add_argument(f"--{f.name}", *ALIASES.get(f.name, ()), **kwargs)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone and run")
    group.add_argument("--model", default=None, help="open_clip model name (default ViT-L-14-336)")
    group.add_argument("--pretrained", default=None,
                       help="CLIP weights: 'openai' (open_clip download/cache), a local .pt file, or 'none'")
    group.add_argument("--image_size", type=positive_int, default=None,
                       help="input size, a multiple of the patch size (default 518)")
    group.add_argument("--features_list", type=positive_int, nargs="+", default=None,
                       help="layers whose patch tokens are used (default 6 12 18 24)")
    group.add_argument("--batch_size", type=positive_int, default=None, help="batch size")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                       help="autocast on CUDA (auto = bf16); on the CPU auto is fp32, and bf16 autocasts the "
                            "backbone (or runs an exported model's OpenVINO graph in bfloat16)")
    group.add_argument("--seed", type=int, default=None, help="random seed")
    group.add_argument("--num_workers", type=nonnegative_int, default=None, help="data loader workers")
    group.add_argument("--compat", default="auto", choices=("auto", "ours", "official"),
                       help="official: every official-code behaviour of the method (docs/faithfulness.md); "
                            "auto: official for official checkpoints, else ours")
    group.add_argument("--cache_dir", default=None, help="open_clip download cache")


def build_backbone(config: BackboneConfig, device: Optional[torch.device] = None) -> ClipBackbone:
    """The frozen backbone; a setting it cannot host is a user error naming the flags."""
    try:
        return backbones.build_backbone(config, device)
    except ValueError as err:
        raise UserError(f"--model {config.model} at --image_size {config.image_size}: {err}") from None


def backbone_config(args: argparse.Namespace, base: Optional[BackboneConfig] = None, **defaults) -> BackboneConfig:
    """``base`` (or a default config with ``defaults``) updated by the backbone flags given."""
    config = base or BackboneConfig(**defaults)
    updates = {k: getattr(args, k) for k in ("model", "pretrained", "image_size", "cache_dir")
               if getattr(args, k, None) is not None}
    if getattr(args, "precision", "auto") != "auto":
        updates["precision"] = args.precision
    return dataclasses.replace(config, **updates)


def check_geometry(backbone: BackboneConfig, config, given: Dict[str, Any]) -> None:
    """Settings the backbone cannot host, found from its open_clip configuration (nothing is
    built): the image size must be a multiple of the patch size, DAP cannot select more patches
    than the grid holds, and ``features_list`` must name existing layers. ``given`` holds the
    flags the user passed (the message names the flag to change)."""
    try:
        vision = (open_clip.get_model_config(backbone.model) or {}).get("vision_cfg", {})
    except Exception:  # build_clip reports unknown or unreachable models with their cause
        return
    patch, layers = vision.get("patch_size"), vision.get("layers")
    if not isinstance(patch, int) or not isinstance(layers, int):
        return
    size = backbone.image_size
    if size % patch:
        raise UserError(f"--image_size {size} is not a multiple of the patch size {patch} of {backbone.model}; "
                        f"use e.g. {max(patch, size // patch * patch)} or {(size // patch + 1) * patch}")
    patches = (size // patch) ** 2
    relevant = config.relevant_fields()  # what the method's switches read
    dap_k = config.dap_k if "dap_k" in relevant else None
    if dap_k is not None and dap_k > patches:
        if "dap_k" in given:
            raise UserError(f"--dap_k {dap_k} exceeds the {patches} patches of the {size // patch}x{size // patch} "
                            f"grid at --image_size {size}; use at most --dap_k {patches}")
        needed = math.ceil(math.sqrt(dap_k)) * patch
        raise UserError(f"--image_size {size} gives a {size // patch}x{size // patch} patch grid, fewer patches than "
                        f"the {dap_k} that DAP selects (this model's dap_k); use --image_size {needed} or larger")
    # features_list is accepted and unused where the switches do not read it (FAPrompt reads the
    # final V-V tokens only)
    layer_list = config.features_list if "features_list" in relevant else None
    if layer_list and max(layer_list) > layers:
        raise UserError(f"--features_list {' '.join(map(str, layer_list))}: {backbone.model} has {layers} layers; "
                        f"name layers 1..{layers}")


CPU_TEST_BATCH = 4  # not slower than 1 once freed memory is kept (keep_freed_memory): benchmarks/RESULTS.md


def resolve_device(name: str) -> torch.device:
    """``--device`` → a torch device; a CUDA request without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def ensure_writable(path: Path, flag: str = "--save_path") -> Path:
    """Create ``path`` and prove it is writable, or raise a user error naming ``flag``."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"{flag} {path} is not writable ({err.strerror}); choose another folder") from None
    return path


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters


def keep_freed_memory(device: torch.device) -> bool:
    """On the CPU, let glibc's malloc keep freed memory for reuse instead of returning it.

    By default every block over 32 MB is mapped fresh from the kernel and unmapped when
    freed, so each large activation pays its page faults again on every forward pass. At 518
    px on ViT-L that is 0.41 million page faults and 1.0 s of kernel time per image at batch 1
    and 0.61 million and 1.3 s at batch 4 (benchmarks/RESULTS.md, "CPU batch size"; an earlier
    run on a busier machine: 0.79 million and 1.5 s at batch 4). Serving them
    from the heap and not trimming it takes that to about zero; the price is that the process
    keeps its peak memory until it ends. Returns whether it was applied (glibc on Linux only).
    """
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):  # another C library
        return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def default_test_batch(device: torch.device) -> int:
    """``test.py``'s batch size when ``--batch_size`` is not given (results do not depend on
    it): 8 on a GPU, 4 on the CPU (where batches gain little: benchmarks/RESULTS.md)."""
    return 8 if device.type == "cuda" else CPU_TEST_BATCH


def default_workers(device: Optional[torch.device] = None) -> int:
    """Data-loader worker processes when ``--num_workers`` is not given. On a GPU: enough to
    decode and resize images as fast as it scores them (up to 8 per process, the node's cores
    shared by the processes torchrun starts there). On the CPU the model needs the cores
    itself: none on 2 cores, else up to 4."""
    cpus = os.cpu_count() or 1
    if device is not None and device.type == "cuda":
        per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return max(1, min(8, per_process - 1))
    return 0 if cpus <= 2 else min(4, cpus // 2)
