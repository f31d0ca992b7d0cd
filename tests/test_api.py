"""engine.api: a loaded checkpoint scores paths, PIL images and arrays exactly as test.py --image;
the docs example runs; bad input is one line."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.api import Detector
from scripts import test as run_test
from scripts import tiny_flags
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = {"pretrained": "none", "image_size": 32, "num_workers": 0}


def _images(data: Path, n: int = 3):
    paths = sorted((data / "weave" / "test").rglob("*.png"))[:n]
    assert len(paths) == n
    return paths


def test_api_scores_as_test_py_does(faprompt_checkpoint, data, tiny_model, tmp_path):
    folder = tmp_path / "line"
    folder.mkdir()
    for i, path in enumerate(_images(data)):
        (folder / f"{i}.png").write_bytes(path.read_bytes())
    save = tmp_path / "cli"
    assert run_test(faprompt_checkpoint, data, save, tiny_flags(tiny_model), "--image", str(folder),
                    "--class_name", "weave", "--threshold", "0.5") == 0
    with open(save / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3

    detector = Detector.load(faprompt_checkpoint, class_name="weave", threshold=0.5, **TINY)
    paths = sorted(folder.glob("*.png"))
    result = detector.score(paths)
    assert result.names == [str(p) for p in paths] and result.maps.shape == (3, 32, 32)
    for i, row in enumerate(rows):
        assert abs(result.scores[i] - float(row["image_score"])) < 1e-6
        assert np.abs(result.maps[i] - np.load(save / row["map_file"])).max() < 1e-6
        assert result.decisions[i] == (row["decision"] == "1")
    assert result.masks is None

    pil = [Image.open(p).convert("RGB") for p in paths]
    arrays = [np.asarray(img) for img in pil]
    for other in (detector.score(pil), detector.score(arrays)):
        assert np.allclose(other.scores, result.scores, atol=1e-6) and np.allclose(other.maps, result.maps, atol=1e-6)
    assert detector.score(arrays[0]).maps.shape == (1, 32, 32)


def test_the_docs_example_runs(faprompt_checkpoint, data, tiny_model, tmp_path, capsys):
    save = tmp_path / "results"
    assert run_test(faprompt_checkpoint, data, save, tiny_flags(tiny_model), "--metrics", "image") == 0
    block = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S).group(1)
    images = _images(data, 2)
    code = (block.replace('"checkpoints/visa_faprompt/final.pth"', repr(str(faprompt_checkpoint)))
            .replace('"results/mvtec_faprompt_train_visa/results.json"', repr(str(save / "results.json")))
            .replace('class_name="bottle",', 'class_name="weave", pretrained="none", image_size=32,')
            .replace('["line/0001.png", "line/0002.png"]', repr([str(p) for p in images])))
    assert code != block and "bottle" not in code and "line/0001" not in code
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and all(line.endswith(("ANOMALOUS", "ok")) for line in printed)
    assert namespace["worst"].shape == (32, 32)


def test_bad_input_is_one_line(faprompt_checkpoint, tiny_model):
    with pytest.raises(UserError, match="unrecognized arguments: --no_such_setting 1; it takes test.py's flags"):
        Detector.load(faprompt_checkpoint, no_such_setting=1, **TINY)
    with pytest.raises(UserError, match="does not exist|not found"):
        Detector.load(Path("missing.pth"), **TINY)
    detector = Detector.load(faprompt_checkpoint, **TINY)
    for bad, words in ((np.zeros((8, 8), np.float32), "uint8"), (42, "expected a file path"), ([], "no images"),
                       ("no/such/file.png", "does not exist")):
        with pytest.raises(UserError, match=words) as err:
            detector.score(bad)
        assert "\n" not in str(err.value)
