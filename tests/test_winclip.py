"""WinCLIP against anomalib 2.7's WinClipModel, stage by stage, on the golden tiny CLIP
(fixtures: tools/golden/harness_winclip.py), in both window-attention modes; its window masks
and harmonic aggregation on hand-checked cases."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compare import close
from engine import cli
from models.backbone import BackboneConfig
from models.factory import build_model, make_config
from models.winclip import harmonic_aggregation, window_indices
from tools.golden.golden_clip import PRETRAINED_SIZE, register_golden_model, write_golden_clip

FIXTURES = Path(__file__).resolve().parent / "golden"
MODES = {"as_is": "across", "seq_first": "window"}


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    work = tmp_path_factory.mktemp("winclip_golden")
    provenance = json.loads((FIXTURES / "winclip_anomalib.json").read_text())
    name = register_golden_model(work)
    assert write_golden_clip(work / "clip.pt") == provenance["clip_checksum"]
    backbone = cli.build_backbone(BackboneConfig(model=name, pretrained=str(work / "clip.pt"),
                                                 image_size=PRETRAINED_SIZE), torch.device("cpu"))
    with np.load(FIXTURES / "winclip_anomalib.npz") as data:
        reference = {k: data[k] for k in data.files}
    return backbone, reference, provenance["class_name"]


@pytest.mark.parametrize("run", list(MODES))
def test_winclip_equals_anomalib(golden, run):
    backbone, ref, word = golden
    model = build_model("winclip", make_config("winclip", {"prompts": "anomalib", "window_attention": MODES[run]}),
                        backbone).eval()
    images = torch.from_numpy(ref["images"])
    with torch.no_grad():
        close(model.text_features(word), ref["text"], "text ensemble")
        feats = model.encode_images(images)
        close(feats.cls, ref[f"{run}/image_embeddings"], "image embeddings")
        for scale in (2, 3):
            close(feats.windows[scale], ref[f"{run}/windows/{scale}"], f"windows at scale {scale}")
        pred = model.predict(images, [word] * len(images))
    close(pred.class_prob, ref[f"{run}/image_score"], "image score")
    close(pred.anomaly_map, ref[f"{run}/anomaly_map"], "anomaly map")


def test_anomalib_windows_are_all_alike(golden):
    """Why --window_attention across is a quirk (anomalib issue #2571): when the windows attend
    across each other, every window's pooled CLS token sees the same inputs, so all windows of
    all images get one feature, and the maps carry no localisation."""
    _, ref, _ = golden
    for scale in (2, 3):
        across, within = ref[f"as_is/windows/{scale}"], ref[f"seq_first/windows/{scale}"]
        assert np.abs(across - across[:1, :1]).max() < 1e-4 * np.abs(across).max()
        assert np.abs(within - within[:1, :1]).max() > 1e-2 * np.abs(within).max()
    flat = ref["as_is/anomaly_map"]
    assert (flat.max((1, 2)) - flat.min((1, 2))).max() < 1e-5


def test_paper_prompts_differ_from_anomalib_in_one_template(golden):
    from models.winclip import ANOMALIB_TEMPLATES, TEMPLATES

    assert len(TEMPLATES) == len(ANOMALIB_TEMPLATES) == 21
    assert [a != b for a, b in zip(TEMPLATES, ANOMALIB_TEMPLATES)].count(True) == 1
    assert len(set(ANOMALIB_TEMPLATES)) == 20 and len(set(TEMPLATES)) == 21


def test_window_masks_and_harmonic_aggregation():
    windows = window_indices(3, 2)  # a 3x3 grid, 2x2 windows
    assert windows.tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    assert window_indices(4, 3).tolist() == [[0, 1, 2, 4, 5, 6, 8, 9, 10], [1, 2, 3, 5, 6, 7, 9, 10, 11],
                                             [4, 5, 6, 8, 9, 10, 12, 13, 14], [5, 6, 7, 9, 10, 11, 13, 14, 15]]
    scores = torch.tensor([[0.5, 0.25, 1.0, 0.2]])
    patches = harmonic_aggregation(scores, windows, 9)[0]
    # patch 4 lies in every window: 4 / (2 + 4 + 1 + 5); patch 0 only in the first
    assert patches[4].item() == pytest.approx(4 / 12) and patches[0].item() == pytest.approx(0.5)
    assert patches[1].item() == pytest.approx(2 / (2 + 4))
    with pytest.raises(ValueError, match="does not fit"):
        window_indices(2, 3)


def test_winclip_runs_through_test_py(common, tmp_path):
    """--method winclip end to end (tiny model, 32 px: a 4x4 grid, windows of 2 and 3), zero-shot
    and with --k_shot 4 (WinCLIP+): results and report.html."""
    from datasets.synthetic import generate
    from scripts import test_script
    from utils.errors import run_cli

    data = generate(tmp_path / "data", seed=3, size=64, categories=["weave", "wood"], n_train=4, n_test_good=2,
                    n_test_defect=1)
    for shots in ("0", "4"):
        out = tmp_path / f"winclip_{shots}"
        assert run_cli(test_script.main, ["--method", "winclip", "--data_path", str(data), "--save_path", str(out),
                                          "--k_shot", shots, "--shot_weight", "0.5", *common]) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["method"] == "winclip" and results["config"]["scales"] == [2, 3]
        assert results["k_shot"] == int(shots) and results["mean"]["pixel_auroc"] is not None
        assert (out / "report.html").is_file()


@pytest.mark.parametrize("run", list(MODES))
def test_winclip_plus_equals_anomalib(golden, run):
    """WinCLIP+ through engine.fewshot with --shot_weight 0.5: our distance 1 − cos is twice
    WinCLIP's (1 − cos) / 2, and our fusion adds where WinCLIP averages, so the map and image
    score are exactly twice anomalib's (the same metrics)."""
    from engine.fewshot import FewShotScorer, References, bank_from_images

    backbone, ref, word = golden
    model = build_model("winclip", make_config("winclip", {"prompts": "anomalib", "window_attention": MODES[run]}),
                        backbone).eval()
    images, references = torch.from_numpy(ref["images"]), torch.from_numpy(ref["references"])
    scorer = FewShotScorer(model, References({word: []}, "golden references"), 0.5, PRETRAINED_SIZE, 2,
                           torch.device("cpu"))
    scorer.use_bank(word, bank_from_images(model, [references[:1], references[1:]]))
    pred, extra = scorer.predict(images, [word] * len(images))
    close(pred.anomaly_map + 0.5 * extra.map, 2 * ref[f"{run}/fewshot/anomaly_map"], "WinCLIP+ map")
    close(pred.class_prob + 0.5 * extra.score, 2 * ref[f"{run}/fewshot/image_score"], "WinCLIP+ image score")
