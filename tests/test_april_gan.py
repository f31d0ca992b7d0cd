"""APRIL-GAN against the official code (ByChelsea/VAND-APRIL-GAN), stage by stage, on the golden
tiny CLIP (fixtures: tools/golden/harness_april_gan.py): text ensemble, image feature, raw layer
tokens, per-layer maps, the summed map, the image probability, a training step's loss and
gradients; its official checkpoint format loads."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import cli
from models.backbone import BackboneConfig
from models.factory import build_model, make_config, read_checkpoint
from tools.golden.golden_clip import IMAGE_SIZE, register_golden_model, write_golden_clip
from tools.golden.harness_april_gan import FEATURES, linear_weights

FIXTURES = Path(__file__).resolve().parent / "golden"


def close(ours, reference, what: str, tol: float = 1e-5) -> None:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape}, reference {reference.shape}"
    bound = tol * max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(ours - reference).max())
    assert error <= bound, f"{what}: max difference {error:.3g} exceeds {bound:.3g}"


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    work = tmp_path_factory.mktemp("april_gan_golden")
    name = register_golden_model(work)
    write_golden_clip(work / "clip.pt")
    # the official code at 518 px: exact GELU, the grid resized bicubically with antialias
    backbone = cli.build_backbone(BackboneConfig(model=name, pretrained=str(work / "clip.pt"), image_size=IMAGE_SIZE,
                                                 activation="gelu", pos_interpolation="bicubic"), torch.device("cpu"))
    model = build_model("april_gan", make_config("april_gan", {}), backbone)
    with torch.no_grad():
        for linear, (weight, bias) in zip(model.linear, linear_weights(backbone.vision_width, backbone.embed_dim,
                                                                        len(FEATURES))):
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
    with np.load(FIXTURES / "april_gan_official.npz") as data:
        reference = {k: data[k] for k in data.files}
    provenance = json.loads((FIXTURES / "april_gan_official.json").read_text())
    return model, reference, provenance["class_name"]


def test_april_gan_test_time_equals_the_official_code(golden):
    model, ref, word = golden
    model.eval()
    images = torch.from_numpy(ref["images"])
    with torch.no_grad():
        close(model.text_features(word), ref["text"], "text ensemble [D, 2]")
        feats = model.encode_images(images)
        close(feats.cls, ref["image_features"], "image feature")
        for layer in FEATURES:
            close(feats.patch_raw[layer], ref[f"tokens/{layer}"], f"raw tokens of block {layer}")
        logits = model.layer_logits(feats, model._pairs([word] * 3))
        for layer, layer_logits in zip(FEATURES, logits):
            close(layer_logits.softmax(1), ref[f"probs/{layer}"], f"map of block {layer}")
        pred = model.predict(images, [word] * 3)
    close(pred.anomaly_map, ref["anomaly_map"], "summed map")
    close(pred.class_prob, ref["class_prob"], "image probability")


def test_april_gan_training_step_equals_the_official_code(golden):
    model, ref, word = golden
    model.train()
    model.zero_grad()
    out = model(torch.from_numpy(ref["images"]), [word] * 3)
    terms = model.loss(out, torch.from_numpy(ref["masks"]), torch.tensor([1, 1, 0]))
    terms["total"].backward()
    close(terms["total"].item(), ref["loss"], "loss")
    for i, linear in enumerate(model.linear):
        close(linear.weight.grad[:32], ref[f"grad/{i}/weight"], f"gradient of linear map {i}")
        close(linear.bias.grad, ref[f"grad/{i}/bias"], f"gradient of bias {i}")
    model.zero_grad()


def test_official_checkpoint_format_loads(golden, tmp_path):
    """``{"trainable_linearlayer": {fc.i.weight, fc.i.bias}}`` (official train.py) is read as an
    official APRIL-GAN checkpoint; its weights land in ``linear.i``."""
    model, _, _ = golden
    state = {f"fc.{i}.{kind}": torch.randn(*getattr(model.linear[i], kind).shape)
             for i in range(len(FEATURES)) for kind in ("weight", "bias")}
    torch.save({"trainable_linearlayer": state}, tmp_path / "visa_pretrained.pth")
    checkpoint = read_checkpoint(str(tmp_path / "visa_pretrained.pth"))
    assert checkpoint.method == "april_gan" and checkpoint.official
    assert set(checkpoint.state_dict) == {f"linear.{k[3:]}" for k in state}
    assert torch.equal(checkpoint.state_dict["linear.2.weight"], state["fc.2.weight"])


def test_april_gan_trains_and_tests_end_to_end(data, common, tmp_path):
    """One epoch on the synthetic data, then test.py zero-shot and with --k_shot 1."""
    from scripts import test, train

    save = tmp_path / "april_gan"
    assert train(data, save, common, "--method", "april_gan", "--features_list", "2", "4", "--epochs", "1") == 0
    for shots in ("0", "1"):
        out = tmp_path / f"test_{shots}"
        assert test(save / "final.pth", data, out, common, "--k_shot", shots) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["method"] == "april_gan" and results["k_shot"] == int(shots)
        assert results["mean"]["pixel_auroc"] is not None and (out / "report.html").is_file()
