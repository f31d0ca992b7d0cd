"""What every part of benchmarks/device_check.py shares: the Recorder that keeps the results
and the errors, and small helpers (section headers, freeing memory between steps, telling an
out-of-memory error, setting a backbone's precision without TF32)."""
from __future__ import annotations

import gc
import time
import traceback
from typing import Callable, Dict, Optional

import torch

from benchmarks import common


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
            free_memory()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        try:
            common.write_json(self.path, self.data)
        except OSError as err:
            print(f"!! could not write {self.path}: {err}", flush=True)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def set_precision(backbone, precision: str) -> None:
    """Run ``backbone`` at ``precision``, with TF32 off (the fp32 figures are true fp32)."""
    backbone.precision = precision
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

