"""The tiny open_clip model of the tests and the quick benchmark runs (random weights, CPU).

A ViT with 4 image and 4 text layers, widths 48 and 32, patch 8, 32 px: a forward pass takes
milliseconds, so tests and ``--model tiny`` benchmark runs exercise every code path in seconds.
:func:`register_tiny_model` writes the config as an open_clip model config and registers it,
after which ``open_clip.create_model(TINY_MODEL)`` builds it like any named model.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

TINY_MODEL = "zsad-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 48, "head_width": 12, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 4},
}

_registered: str | None = None


def register_tiny_model(directory: os.PathLike | None = None) -> str:
    """Write the tiny config into ``directory`` (default: a fresh temporary folder, once per
    process) as an open_clip model config, register it and return its name."""
    global _registered
    import open_clip

    if _registered is not None and directory is None:
        return _registered
    folder = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="zsad_tiny_"))
    path = folder / f"{TINY_MODEL}.json"
    path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(path)
    _registered = TINY_MODEL
    return TINY_MODEL
