"""Part ``env`` of benchmarks/device_check.py: Python, torch, CUDA and the GPU, and which
packages import (with the pip name and what needs each missing one)."""
from __future__ import annotations

import importlib
import sys
from typing import Dict

import torch

from benchmarks import common
from benchmarks.checks.base import Recorder, section

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
    section("environment and imports")
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

