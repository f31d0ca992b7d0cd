"""train.py and test.py imported for the tests, with the small settings the tests run them at."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from utils.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    """Import a top-level script by path ("test" would clash with the standard library)."""
    spec = importlib.util.spec_from_file_location(f"zsad_{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


train_script = _load_script("train")
test_script = _load_script("test")
export_script = _load_script("export")
FAPROMPT = ["--method", "faprompt", "--depth", "3", "--t_n_ctx", "2", "--dap_k", "4"]
BAYES = ["--method", "bayes_pfl", "--features_list", "2", "4", "--val_sample_num", "2", "--val_fraction", "0.34"]


def tiny_flags(tiny_model: str) -> list:
    return ["--model", tiny_model, "--pretrained", "none", "--image_size", "32", "--num_workers", "0"]


def train(data, save, common, *extra) -> int:
    return run_cli(train_script.main, ["--train_data_path", str(data), "--save_path", str(save), "--batch_size", "4",
                                       *common, *extra])


def one_epoch(save, data, tiny_model: str, *flags) -> Path:
    """final.pth of one epoch of ``flags`` on ``data`` with the tiny model, saved in ``save``."""
    assert train(data, save, tiny_flags(tiny_model), *flags, "--epochs", "1") == 0
    return save / "final.pth"


def test(ckpt, data, save, common, *extra) -> int:
    return run_cli(test_script.main, ["--checkpoint_path", str(ckpt), "--data_path", str(data), "--save_path",
                                      str(save), *common[2:], *extra])


test.__test__ = False  # not a pytest test


def zero_and_one_shot(checkpoint, data, save, common, method: str) -> None:
    """test.py on ``checkpoint`` zero-shot and with ``--k_shot 1``: each run writes results for
    ``method`` with image and pixel metrics, and report.html."""
    import json

    for shots in ("0", "1"):
        out = save / f"test_{shots}"
        assert test(checkpoint, data, out, common, "--k_shot", shots) == 0
        results = json.loads((out / "results.json").read_text())
        assert results["method"] == method and results["k_shot"] == int(shots)
        assert results["mean"]["pixel_auroc"] is not None and results["mean"]["image_auroc"] is not None
        assert (out / "report.html").is_file()
