"""export.py and test.py --exported: every method's graph on onnxruntime and OpenVINO gives the
PyTorch maps and metrics; bad export folders and missing runtimes are one line, exit code 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.api import Detector
from scripts import BAYES, FAPROMPT, export_script, one_epoch, test_script
from utils.errors import EXIT_USER_ERROR, run_cli

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

FAPFL = ["--method", "fapfl", "--features_list", "2", "4", "--depth", "3", "--t_n_ctx", "2", "--dap_k", "4",
         "--sample_num", "2", "--val_sample_num", "2", "--val_fraction", "0.34", "--patience", "0"]
TRAINED = {"faprompt": FAPROMPT, "anomalyclip": ["--method", "anomalyclip", "--depth", "3", "--n_ctx", "4",
                                                 "--t_n_ctx", "2", "--features_list", "2", "4"],
           "bayes_pfl": [*BAYES, "--sample_num", "2", "--patience", "0"], "fapfl": FAPFL,
           "april_gan": ["--method", "april_gan", "--features_list", "2", "4"],
           "vcp_clip": ["--method", "vcp_clip", "--features_list", "2", "4"]}
METHODS = ["clip", "winclip", *TRAINED]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, data, tiny_model):
    """Per method: the export.py flags naming its model (a one-epoch checkpoint, or --method clip)."""
    found = {"clip": ["--method", "clip"], "winclip": ["--method", "winclip"]}
    for method, flags in TRAINED.items():
        checkpoint = one_epoch(tmp_path_factory.mktemp(method), data, tiny_model, *flags, "--augment", "off")
        found[method] = ["--checkpoint_path", str(checkpoint)]
    return found


def _test(save: Path, data: Path, tiny_model: str, *extra) -> int:
    return run_cli(test_script.main, ["--data_path", str(data), "--save_path", str(save), "--pretrained", "none",
                                      "--num_workers", "0", "--save_maps", "--no_report", *extra])


def _results(save: Path):
    results = json.loads((save / "results.json").read_text())
    maps = {p.name: np.load(p) for p in sorted((save / "maps").rglob("*.npy"))}
    assert maps, f"no maps in {save}"
    return results, maps


@pytest.mark.parametrize("method", METHODS)
def test_exported_model_equals_pytorch(method, sources, data, tiny_model, tmp_path):
    out = tmp_path / "exported"
    model_flags = ["--model", tiny_model, "--pretrained", "none", "--image_size", "32"]
    assert run_cli(export_script.main, [*sources[method], *model_flags, "--out", str(out),
                                        "--data_path", str(data)]) == 0
    assert torch.is_grad_enabled()  # export.py's main leaves the caller's autograd state alone
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["method"] == method and manifest["image_size"] == 32
    assert {"model.onnx", "model.xml", "model.bin", "prompts.npz"} <= {p.name for p in out.iterdir()}

    eager = tmp_path / "eager"
    model = ["--model", tiny_model, "--image_size", "32"]
    assert _test(eager, data, tiny_model, *sources[method], *model) == 0
    reference, reference_maps = _results(eager)
    for runtime in ("onnxruntime", "openvino"):
        save = tmp_path / runtime
        assert _test(save, data, tiny_model, "--exported", str(out), "--runtime", runtime) == 0
        results, maps = _results(save)
        assert results["runtime"] == runtime and results["exported"] == str(out)
        assert maps.keys() == reference_maps.keys()
        worst = max(float(np.abs(maps[k] - reference_maps[k]).max()) for k in maps)
        assert worst < 1e-4, f"{method} on {runtime}: maps differ by {worst}"
        # the tiny random model's maps are nearly flat: differences of 1e-7 reorder near-ties, so
        # pixel metrics move by up to about 2e-4 (0.02 points); at full size see benchmarks/RESULTS.md
        for category, metrics in reference["per_category"].items():
            assert metrics, category
            for name, value in metrics.items():
                got = results["per_category"][category][name]
                assert (got is None) == (value is None)
                assert value is None or abs(got - value) < 1e-3, (method, runtime, category, name, got, value)


def test_exported_image_scores_and_stored_thresholds(sources, data, tiny_model, tmp_path):
    """--image through an export: the scores of the PyTorch run, and the thresholds stored by
    export.py --thresholds applied to --class_name."""
    eager = tmp_path / "eager"
    model = ["--model", tiny_model, "--image_size", "32"]
    assert _test(eager, data, tiny_model, *sources["faprompt"], *model) == 0
    out = tmp_path / "exported"
    assert run_cli(export_script.main, [*sources["faprompt"], *model, "--pretrained", "none", "--out", str(out),
                                        "--format", "onnx", "--thresholds", str(eager / "results.json")]) == 0
    folder = sorted((data / "weave" / "test").rglob("*.png"))[:2]
    assert len(folder) == 2
    images = tmp_path / "images"
    images.mkdir()
    for path in folder:
        shutil.copy(path, images / path.name)
    rows = {}
    for name, flags in (("torch", [*sources["faprompt"], *model]), ("onnx", ["--exported", str(out)])):
        save = tmp_path / f"image_{name}"
        assert run_cli(test_script.main, ["--image", str(images), "--class_name", "weave", "--save_path", str(save),
                                          "--pretrained", "none", "--num_workers", "0", *flags,
                                          *(["--thresholds", str(eager / "results.json")] if name == "torch"
                                            else [])]) == 0
        rows[name] = (save / "scores.csv").read_text().splitlines()
    assert len(rows["onnx"]) == 3 and rows["onnx"][0].endswith("decision,mask_file")
    for mine, theirs in zip(rows["onnx"][1:], rows["torch"][1:]):
        a, b = mine.split(","), theirs.split(",")
        assert abs(float(a[1]) - float(b[1])) < 1e-5 and a[-2] == b[-2]

    # the Python API on the export: the checkpoint's scores, maps and stored thresholds
    tiny = {"pretrained": "none", "num_workers": 0}
    checkpoint = sources["faprompt"][1]
    reference = Detector.load(checkpoint, class_name="weave", thresholds=eager / "results.json", model=tiny_model,
                              image_size=32, **tiny).score(folder)
    for runtime in ("onnxruntime", "auto"):
        exported = Detector.load(exported=out, runtime=runtime, class_name="weave", **tiny).score(folder)
        assert np.abs(exported.maps - reference.maps).max() < 1e-4
        assert np.allclose(exported.scores, reference.scores, atol=1e-5)
        assert (exported.decisions == reference.decisions).all() and exported.masks is not None


def test_adaclip_export_is_refused_in_one_line(data, tiny_model, tmp_path, capsys):
    """AdaCLIP's image score clusters patches with scikit-learn's k-means, which no graph holds: it
    has no export_outputs, and export.py says so before it writes anything."""
    checkpoint = one_epoch(tmp_path / "adaclip", data, tiny_model, "--method", "adaclip", "--features_list", "2", "4",
                           "--prompting_depth", "3", "--k_clusters", "2")
    capsys.readouterr()
    out = tmp_path / "exported"
    assert run_cli(export_script.main, ["--checkpoint_path", str(checkpoint), "--model", tiny_model,
                                        "--pretrained", "none", "--image_size", "32", "--out", str(out),
                                        "--data_path", str(data)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()  # after the random-weights banner
    assert "--method adaclip cannot be exported" in err[-1], err
    assert not out.exists()


def test_bad_exports_are_one_line(sources, data, tiny_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "exported"
    assert run_cli(export_script.main, ["--method", "clip", "--model", tiny_model, "--pretrained", "none",
                                        "--image_size", "32", "--out", str(out), "--format", "onnx", "--no_check"]) == 0
    manifest = json.loads((out / "export.json").read_text())

    def refused(*flags, needle):
        capsys.readouterr()
        assert _test(tmp_path / "bad", data, tiny_model, *flags) == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not (tmp_path / "bad").exists()

    refused("--exported", str(tmp_path / "nowhere"), needle="folder not found")
    refused("--exported", str(data), needle="no export.json")
    refused("--exported", str(out), "--method", "faprompt", needle="is a clip model")
    refused("--exported", str(out), "--image_size", "64", needle="exported with image_size = 32")
    refused("--exported", str(out), "--runtime", "openvino", needle="no openvino model")
    refused("--exported", str(out), "--precision", "bf16", "--runtime", "onnxruntime", needle="bf16")
    refused("--exported", str(out), "--temperature", "0.5", needle="cannot change for an exported model")
    refused("--method", "clip", "--runtime", "onnxruntime", needle="pass --exported")
    refused("--exported", str(out), "--k_shot", "1", needle="--k_shot needs the PyTorch model")
    # exported without --class_names: MVTec-AD's, VisA's, ... words, not the synthetic set's
    assert "weave" not in manifest["words"]
    refused("--exported", str(out), needle="no prompts for the word")

    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    (damaged / "model.onnx").write_bytes(b"not a model")
    refused("--exported", str(damaged), needle="cannot load it")

    other = tmp_path / "other"
    shutil.copytree(out, other)
    (other / "export.json").write_text(json.dumps({**manifest, "format": 99}))
    refused("--exported", str(other), needle="not an export manifest")

    import builtins
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    refused("--exported", str(out), needle="pip install onnxruntime")
    monkeypatch.undo()

    capsys.readouterr()  # an export folder is never written over something that is not one
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run_cli(export_script.main, ["--method", "clip", "--model", tiny_model, "--pretrained", "none",
                                        "--image_size", "32", "--out", str(foreign)]) == EXIT_USER_ERROR
    assert "not an export folder" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "mine"
