"""Shared fixtures: a tiny open_clip model registered for the tests (random weights, CPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.tiny_clip import register_tiny_model  # noqa: E402  (the one tiny config)


def defect_batch(n: int, size: int, seed: int):
    """Smooth random textures with bright 16-px square defects on the second half of the
    images: (images [n, 3, S, S], masks [n, S, S], labels [n]) for learning checks."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.randn(n, 3, size // 8, size // 8, generator=g), size=(size, size),
                         mode="bilinear", align_corners=False)
    masks = torch.zeros(n, size, size)
    for i in range(n // 2, n):
        y, x = torch.randint(0, size - 16, (2,), generator=g).tolist()
        masks[i, y:y + 16, x:x + 16] = 1
    return base * 0.5 + masks[:, None] * 2.5, masks, (masks.flatten(1).amax(1) > 0).long()


def learning_run(model, size: int, lr: dict, steps: int = 40):
    """Train ``model`` for ``steps`` full-batch Adam steps on ``defect_batch(8, size, seed=1)``;
    ((loss, pixel AUROC) before, (loss, pixel AUROC) after). The AUROC is of ``predict``'s map
    in evaluation mode; the loss is taken in training mode under a fixed seed, so that flow
    noise and the bank pair are the same in both measurements."""
    from utils.metrics import pixel_metrics

    images, masks, labels = defect_batch(8, size, seed=1)
    names = ["object"] * 8
    optimizer = torch.optim.Adam(model.param_groups(lr), betas=(0.5, 0.999))

    def evaluate():
        model.eval()
        with torch.no_grad():
            model.start_evaluation(0)
            pred = model.predict(images, names)
        model.train()
        torch.manual_seed(123)
        with torch.no_grad():
            loss = model.loss(model(images, names), masks, labels)["total"].item()
        return loss, pixel_metrics(masks, pred.anomaly_map)["auroc"]

    before = evaluate()
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss(model(images, names), masks, labels)["total"].backward()
        optimizer.step()
    return before, evaluate()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Name of the registered tiny open_clip ViT (4+4 layers, width 48/32, patch 8, 32 px)."""
    return register_tiny_model(tmp_path_factory.mktemp("open_clip_configs"))


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """A small synthetic dataset (three categories, 64 px)."""
    from datasets.synthetic import generate

    return generate(tmp_path_factory.mktemp("synthetic") / "data", seed=0, size=64, n_train=2,
                    n_test_good=3, n_test_defect=1)


@pytest.fixture()
def common(tiny_model):
    """The flags that run train.py / test.py on the tiny model at 32 px."""
    from scripts import tiny_flags

    return tiny_flags(tiny_model)


@pytest.fixture(scope="session")
def faprompt_checkpoint(tmp_path_factory, data, tiny_model):
    """final.pth of a one-epoch FAPrompt run on ``data`` (read it, never change it)."""
    from scripts import FAPROMPT, one_epoch

    return one_epoch(tmp_path_factory.mktemp("faprompt"), data, tiny_model, *FAPROMPT)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
