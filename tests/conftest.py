"""Shared fixtures: a tiny open_clip model registered for the tests (random weights, CPU)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import open_clip
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY_MODEL = "zsad-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 48, "head_width": 12, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 4},
}


def register_tiny_model(directory: Path) -> str:
    """Write the tiny config as an open_clip model config and register it."""
    path = Path(directory) / f"{TINY_MODEL}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Name of the registered tiny open_clip ViT (4+4 layers, width 48/32, patch 8, 32 px)."""
    return register_tiny_model(tmp_path_factory.mktemp("open_clip_configs"))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
