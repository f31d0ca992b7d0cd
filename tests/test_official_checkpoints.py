"""Official checkpoints at full size load through ``test.py --checkpoint_path``.

The key/shape/dtype manifests in tests/golden/*_full_manifest.json were taken from the
official modules built for ViT-L-14-336 (FAPrompt's and AnomalyCLIP's ``prompt_learner``,
Bayes-PFL's ``MyModel``; see tests/golden/README.md). Random tensors of exactly those keys and shapes are
saved in the official file formats and scored on one image by a CLIP of ViT-L-14-336's widths
(1024-wide vision, 768-wide text and embedding) with few layers and random weights.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test as test_script
from models.factory import read_checkpoint

GOLDEN = Path(__file__).resolve().parent / "golden"
WIDE_MODEL = "zsad-wide-vit"
WIDE_CONFIG = {  # ViT-L-14-336's widths; depth 4 (vision) and 9 (text: 8 deep-prompt layers + 1)
    "embed_dim": 768, "quick_gelu": True,
    "vision_cfg": {"image_size": 56, "layers": 4, "width": 1024, "head_width": 64, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 9},
}
EXPECTED = {
    "faprompt": {"abnormal_prompts": 10, "normal_ctx": 5, "abnormal_ctx": 2, "depth": 9, "t_n_ctx": 4, "dap_k": 10},
    "bayes_pfl": {"prompt_num": 3, "prompt_context_len": 5, "prompt_state_len": 5, "num_flows": 10},
    "anomalyclip": {"abnormal_prompts": 1, "normal_ctx": 12, "abnormal_ctx": 12, "depth": 9, "t_n_ctx": 4},
}


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("wide") / f"{WIDE_MODEL}.json"
    path.write_text(json.dumps(WIDE_CONFIG))
    open_clip.add_model_config(path)
    return WIDE_MODEL


def official_file(method: str, path: Path) -> Path:
    """Random tensors with every key, shape and dtype of the official module's state dict."""
    manifest = json.loads((GOLDEN / f"{method}_full_manifest.json").read_text())
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, entry in manifest.items():
        dtype = getattr(torch, entry["dtype"])
        if dtype.is_floating_point:
            state[key] = (torch.randn(entry["shape"], generator=g) * 0.02).to(dtype)
        else:
            state[key] = torch.zeros(entry["shape"], dtype=dtype)
    torch.save({"MyModel" if method == "bayes_pfl" else "prompt_learner": state}, path)
    return path


@pytest.mark.parametrize("method", ["faprompt", "bayes_pfl", "anomalyclip"])
def test_full_size_official_checkpoint_scores_an_image(method, wide_model, tmp_path):
    checkpoint = official_file(method, tmp_path / f"{method}.pth")
    read = read_checkpoint(str(checkpoint))
    assert read.method == method and read.official
    assert {k: read.config[k] for k in EXPECTED[method]} == EXPECTED[method]
    image = tmp_path / "part.png"
    Image.fromarray(np.random.RandomState(1).randint(0, 255, (60, 60, 3), dtype=np.uint8)).save(image)
    argv = ["--checkpoint_path", str(checkpoint), "--model", wide_model, "--pretrained", "none",
            "--image", str(image), "--class_name", "bottle", "--image_size", "56", "--device", "cpu",
            "--save_path", str(tmp_path / "out")]
    if method == "bayes_pfl":
        argv += ["--features_list", "1", "2", "3", "4", "--sample_num", "2"]
    if method == "anomalyclip":  # its test.sh's layer 24: the last of this 4-layer tower
        argv += ["--features_list", "4"]
    assert test_script.main(argv) == 0
    with open(tmp_path / "out" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["class_prob"]) <= 1.0
    assert np.load(tmp_path / "out" / rows[0]["map_file"]).shape == (56, 56)
