"""Record what the official code computes by wrapping the functions it calls.

The official test and training loops are long functions with their intermediate values in
local variables; wrapping the functions they call (encoders, similarity helpers, losses, the
optimiser) records those values without touching a line of their code.
"""
from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
import torch


def to_numpy(value: Any) -> Any:
    """Tensors (also inside lists/tuples) → float32/int64 NumPy arrays, detached, on the CPU."""
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu()
        return array.numpy().astype(np.float32 if array.is_floating_point() else np.int64)
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if value.dtype.kind == "f" else value
    return value


class Recorder:
    """``calls[name]`` lists what each wrapped call saw: ``{"args", "kwargs", "out"}``."""

    def __init__(self) -> None:
        self.calls: Dict[str, List[dict]] = defaultdict(list)
        self.enabled = True

    def wrap(self, name: str, fn: Callable, keep_args: bool = False) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            out = fn(*args, **kwargs)
            if self.enabled:
                entry = {"out": to_numpy(out)}
                if keep_args:
                    entry["args"] = to_numpy(list(args))
                    entry["kwargs"] = {k: to_numpy(v) for k, v in kwargs.items()}
                self.calls[name].append(entry)
            return out

        return wrapper

    def outputs(self, name: str) -> List[Any]:
        return [c["out"] for c in self.calls[name]]


@contextlib.contextmanager
def patched(target: Any, attribute: str, replacement: Any) -> Iterator[None]:
    """Set ``target.attribute`` for the duration of the block."""
    original = getattr(target, attribute)
    setattr(target, attribute, replacement)
    try:
        yield
    finally:
        setattr(target, attribute, original)


def gradient_summary(name: str, grad: torch.Tensor, seed: int = 0, full_limit: int = 10_000) -> Dict[str, np.ndarray]:
    """A gradient small enough to commit: the full tensor up to ``full_limit`` entries, else
    its sum, L2 norm and a fixed seeded sample of 4096 entries (indices stored too)."""
    flat = grad.detach().double().flatten()
    if flat.numel() <= full_limit:
        return {f"grad/{name}": grad.detach().float().numpy()}
    index = np.random.RandomState(seed).choice(flat.numel(), 4096, replace=False)
    return {f"grad/{name}/index": index.astype(np.int64),
            f"grad/{name}/sample": flat[torch.from_numpy(index)].float().numpy(),
            f"grad/{name}/sum": np.array(float(flat.sum())),
            f"grad/{name}/norm": np.array(float(flat.norm()))}
