"""The golden tests' comparison (ours within a tolerance of a reference array's scale) and what
the tests of the methods with their own harness share: fixtures, the golden backbone, an official
checkpoint loaded."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

TOL = 1e-5


def close(ours, reference, what: str, tol: float = TOL) -> None:
    """Max |ours − reference| ≤ tol · max(1, max |reference|)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape}, reference {reference.shape}"
    bound = tol * max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(ours - reference).max())
    assert error <= bound, f"{what}: max difference {error:.3g} exceeds {bound:.3g}"


FIXTURES = Path(__file__).resolve().parent / "golden"


def fixture(name: str) -> Dict[str, np.ndarray]:
    """The arrays of ``tests/golden/<name>.npz``."""
    with np.load(FIXTURES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def golden_backbone(work: Path, pos_interpolation: str):
    """The golden CLIP at the fixtures' size as the official repositories build a resized OpenAI
    model (a fresh model without QuickGELU: exact GELU), the position grid by ``pos_interpolation``."""
    import torch

    from engine import cli
    from models.backbone import BackboneConfig
    from tools.golden.golden_clip import IMAGE_SIZE, register_golden_model, write_golden_clip

    name = register_golden_model(work)
    write_golden_clip(work / "clip.pt")
    return cli.build_backbone(BackboneConfig(model=name, pretrained=str(work / "clip.pt"), image_size=IMAGE_SIZE,
                                             activation="gelu", pos_interpolation=pos_interpolation),
                              torch.device("cpu"))


def official_model(path: Path, method: str, backbone, **fields):
    """``method``'s model with the weights of the official checkpoint file ``path`` (its
    configuration from the file's shapes, ``fields`` on top); every learned tensor loaded."""
    from models.factory import build_model, make_config, read_checkpoint

    checkpoint = read_checkpoint(str(path))
    assert checkpoint.method == method and checkpoint.official
    model = build_model(method, make_config(method, {**checkpoint.config, **fields}), backbone)
    missing, unexpected = model.load_state_dict(checkpoint.state_dict, strict=False)
    assert not unexpected and all(key.startswith("backbone.") for key in missing)
    return model, checkpoint
