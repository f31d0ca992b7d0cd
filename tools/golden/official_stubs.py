"""Run-time stand-ins that let the unmodified official code import and run on a CPU today.

Nothing here changes a computation of the methods: the stand-ins replace packages that are
gone (``pkg_resources`` in setuptools ≥ 81), unmaintained (``imgaug``) or only used for
training-time augmentation, logging or file handling, and route the official code's
hard-coded CUDA calls to the CPU (see shared/OFFICIAL-CODE.md).
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import math
import os
import sys
import types
from typing import Iterator

import torch


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo inspects specs
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def install_common() -> None:
    """``pkg_resources.packaging``, ``iopath``'s path manager and ``thop``."""
    import packaging.version

    if "pkg_resources" not in sys.modules:
        _module("pkg_resources", packaging=packaging)

    class _PathManager:
        @staticmethod
        def open(path, mode="r"):
            return open(path, mode)

    for name in ("iopath", "iopath.common"):
        _module(name)
    _module("iopath.common.file_io", PathManagerFactory=types.SimpleNamespace(get=lambda key=None: _PathManager()))
    _module("thop", profile=lambda *a, **k: (0, 0))


def install_bayes_pfl() -> None:
    """Training-augmentation and scheduler libraries the Bayes-PFL scripts import (pandas,
    for its results table, must be installed).

    The golden runs feed fixed batches (no augmentation); the scheduler stand-in follows the
    usual linear-warm-up cosine rule so the optimiser runs as in the official loop.
    """
    install_common()

    class _Anything:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            return _Anything()

        def __getattr__(self, name):
            return _Anything()

    albumentations = _module("albumentations")
    for name in ("Compose", "Rotate", "RandomRotate90", "RandomBrightnessContrast", "GaussNoise", "OneOf",
                 "Blur", "ColorJitter", "GaussianBlur"):
        setattr(albumentations, name, _Anything)
    _module("imgaug")
    def anything(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    augmenters = _module("imgaug.augmenters", __getattr__=anything)
    sys.modules["imgaug"].augmenters = augmenters

    def cosine_schedule(optimizer, num_warmup_steps, num_training_steps, num_cycles=0.5, last_epoch=-1):
        def factor(step):
            if step < num_warmup_steps:
                return step / max(1, num_warmup_steps)
            progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch)

    _module("transformers", get_cosine_schedule_with_warmup=cosine_schedule)


@contextlib.contextmanager
def cuda_to_cpu() -> Iterator[None]:
    """``.cuda()`` is the identity and ``.to('cuda…')`` stays on the CPU (no GPU here)."""
    original_cuda, original_to = torch.Tensor.cuda, torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return original_to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.to = to
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to = original_cuda, original_to


def load_module(name: str, path: str) -> types.ModuleType:
    """Import ``path`` under ``name`` (their ``test.py`` would otherwise be the stdlib's ``test``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def working_directory(path: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def rewind_before_torch_load() -> None:
    """AnomalyCLIP's loader tries ``torch.jit.load`` on an open file and, for a plain state-dict
    file, calls ``torch.load`` on the same handle without rewinding it: rewind it first (for the
    rest of the process)."""
    original = torch.load

    def load(f, *args, **kwargs):
        if hasattr(f, "seek"):
            f.seek(0)
        return original(f, *args, **kwargs)

    torch.load = load
