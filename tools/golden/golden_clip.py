"""The tiny CLIP of the golden fixtures, rebuilt bit for bit from a seed.

Both official methods hard-code some CLIP sizes (FAPrompt: a 768-wide text tower and 768-d
patch features for its meta-net, 19 V-V blocks; Bayes-PFL: attention read at vision block 12),
so the tiny model keeps those widths and depths and is small elsewhere: a 128-wide, 24-block
vision tower with 8-px patches (a 4×4 pretrained grid, tested at 48 px, so the position grid is
interpolated) and a 4-block, 768-wide text tower.

Weights come from NumPy's legacy ``RandomState`` (its stream is frozen across NumPy versions),
are rounded through float16 (the official Bayes-PFL loader rounds every weight through fp16, so
fp16-exact weights make that harmless) and are stored in OpenAI's key layout. This module
imports only NumPy at module level so the official-code harnesses can use it too.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Dict

import numpy as np

GOLDEN_MODEL = "zsad-golden-vit"
SEED = 20261201
PRETRAINED_SIZE = 32
IMAGE_SIZE = 48
PATCH = 8
VISION_WIDTH, VISION_LAYERS = 128, 24
TEXT_WIDTH, TEXT_LAYERS, TEXT_HEADS = 768, 4, 12
EMBED_DIM = 768
CONTEXT, VOCAB = 77, 49408

OPEN_CLIP_CONFIG = {
    "embed_dim": EMBED_DIM,
    "quick_gelu": True,
    "vision_cfg": {"image_size": PRETRAINED_SIZE, "layers": VISION_LAYERS, "width": VISION_WIDTH,
                   "head_width": 64, "patch_size": PATCH},
    "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": TEXT_WIDTH,
                 "heads": TEXT_HEADS, "layers": TEXT_LAYERS},
}


def key_rng(seed: int, key: str) -> np.random.RandomState:
    """A generator per (seed, key), so a tensor does not depend on the order keys are made in."""
    return np.random.RandomState((seed * 1_000_003 + zlib.crc32(key.encode())) % 2 ** 32)


def _normal(seed: int, key: str, shape, std: float, mean: float = 0.0) -> np.ndarray:
    values = key_rng(seed, key).standard_normal(shape) * std + mean
    return values.astype(np.float16)


def _block(out: Dict[str, np.ndarray], seed: int, prefix: str, width: int, layers: int) -> None:
    """One tower's residual blocks; residual-branch outputs scaled down with depth as CLIP's init."""
    branch = (2 * layers) ** -0.5
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}."
        out[p + "attn.in_proj_weight"] = _normal(seed, p + "attn.in_proj_weight", (3 * width, width), width ** -0.5)
        out[p + "attn.in_proj_bias"] = _normal(seed, p + "attn.in_proj_bias", (3 * width,), 0.1)
        out[p + "attn.out_proj.weight"] = _normal(seed, p + "attn.out_proj.weight", (width, width),
                                                  width ** -0.5 * branch)
        out[p + "attn.out_proj.bias"] = _normal(seed, p + "attn.out_proj.bias", (width,), 0.02)
        for ln in ("ln_1", "ln_2"):
            out[p + ln + ".weight"] = _normal(seed, p + ln + ".weight", (width,), 0.1, 1.0)
            out[p + ln + ".bias"] = _normal(seed, p + ln + ".bias", (width,), 0.1)
        out[p + "mlp.c_fc.weight"] = _normal(seed, p + "mlp.c_fc.weight", (4 * width, width), width ** -0.5)
        out[p + "mlp.c_fc.bias"] = _normal(seed, p + "mlp.c_fc.bias", (4 * width,), 0.1)
        out[p + "mlp.c_proj.weight"] = _normal(seed, p + "mlp.c_proj.weight", (width, 4 * width),
                                               (4 * width) ** -0.5 * branch)
        out[p + "mlp.c_proj.bias"] = _normal(seed, p + "mlp.c_proj.bias", (width,), 0.02)


def golden_clip_state(seed: int = SEED) -> Dict[str, np.ndarray]:
    """The OpenAI-layout state dict (float16 arrays) of the tiny CLIP."""
    w, t, e = VISION_WIDTH, TEXT_WIDTH, EMBED_DIM
    grid = PRETRAINED_SIZE // PATCH
    out: Dict[str, np.ndarray] = {
        "visual.class_embedding": _normal(seed, "visual.class_embedding", (w,), w ** -0.5),
        "visual.positional_embedding": _normal(seed, "visual.positional_embedding", (grid * grid + 1, w), w ** -0.5),
        "visual.proj": _normal(seed, "visual.proj", (w, e), w ** -0.5),
        "visual.conv1.weight": _normal(seed, "visual.conv1.weight", (w, 3, PATCH, PATCH), (3 * PATCH * PATCH) ** -0.5),
    }
    for ln in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        width = t if ln == "ln_final" else w
        out[ln + ".weight"] = _normal(seed, ln + ".weight", (width,), 0.1, 1.0)
        out[ln + ".bias"] = _normal(seed, ln + ".bias", (width,), 0.1)
    _block(out, seed, "visual.transformer", w, VISION_LAYERS)
    _block(out, seed, "transformer", t, TEXT_LAYERS)
    out["token_embedding.weight"] = _normal(seed, "token_embedding.weight", (VOCAB, t), 0.02)
    out["positional_embedding"] = _normal(seed, "positional_embedding", (CONTEXT, t), 0.01)
    out["text_projection"] = _normal(seed, "text_projection", (t, e), t ** -0.5)
    out["logit_scale"] = np.array(np.log(1 / 0.07), dtype=np.float16)
    return out


def checksum(state: Dict[str, np.ndarray]) -> float:
    """Sum of |w| over every weight in float64: detects a rebuild that is not bit-identical
    (e.g. a changed NumPy stream) before any comparison runs."""
    return float(sum(np.abs(v.astype(np.float64)).sum() for v in state.values()))


def write_golden_clip(path: Path, seed: int = SEED) -> float:
    """Write the tiny CLIP as an OpenAI-style state-dict file (float16 tensors plus OpenAI's
    three metadata entries); returns its checksum."""
    import torch

    state = golden_clip_state(seed)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}  # keeps 0-d shapes
    tensors.update(input_resolution=torch.tensor(PRETRAINED_SIZE), context_length=torch.tensor(CONTEXT),
                   vocab_size=torch.tensor(VOCAB))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return checksum(state)


def register_golden_model(directory: Path) -> str:
    """Register the tiny CLIP's architecture as an open_clip model config; returns its name."""
    import open_clip

    config = Path(directory) / f"{GOLDEN_MODEL}.json"
    config.write_text(json.dumps(OPEN_CLIP_CONFIG))
    open_clip.add_model_config(config)
    return GOLDEN_MODEL
