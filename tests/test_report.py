"""report.html, curves/*.csv and decision thresholds, end to end on the tiny backbone and
synthetic data: the page in headless Chromium, the CSV curves against the metrics, and the
stored thresholds applied by ``test.py --image`` against F1-max."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pytest

from datasets.meta import MetaDataset
from datasets.synthetic import generate
from scripts import test_script
from utils.errors import EXIT_USER_ERROR, run_cli
from utils.metrics import evaluate_pixels

CATEGORIES = ["washer", "weave", "wood"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Appended to a copy of the page: after loading, record every image that did not load.
IMAGE_CHECK = """<script>
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.getAttribute('src'); });
  var out = document.createElement('pre');
  out.id = 'image-check';
  out.textContent = JSON.stringify({total: images.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "data", seed=0, size=64, n_train=0, n_test_good=3,
                    n_test_defect=1)


@pytest.fixture(scope="module")
def common(tiny_model):
    # batch size 1: the --image runs below see the images in another order, and a map must
    # come out bit-identical for a pixel exactly at its threshold to be decided the same way
    return ["--method", "clip", "--model", tiny_model, "--pretrained", "none", "--image_size", "32",
            "--num_workers", "0", "--batch_size", "1"]


@pytest.fixture(scope="module")
def run(data, common, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert run_cli(test_script.main, ["--data_path", str(data), "--save_path", str(out), "--save_maps",
                                      *common]) == 0
    return out


def _rows(path: Path):
    return list(csv.DictReader(path.open(encoding="utf-8")))


def _f1(truth: np.ndarray, flagged: np.ndarray) -> float:
    tp = float((truth & flagged).sum())
    return 2 * tp / (truth.sum() + flagged.sum())


def _chromium(*args: str) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium; "
                                             ".ci/run installs it where apt-get is available)")
def test_report_opens_in_headless_chromium(run, tmp_path):
    page = (run / "report.html").read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and not [link for link in links if re.match(r"[a-z]+:", link)]  # relative links only: offline
    probe = run / "report_probe.html"  # beside the page, so that its relative links resolve alike
    probe.write_text(page.replace("</body>", IMAGE_CHECK + "</body>"), encoding="utf-8")
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    dom = _chromium(profile, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    probe.unlink()
    check = json.loads(unescape(re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S).group(1)))
    assert check["broken"] == [] and check["total"] == page.count("<img ") >= 3 * (1 + 2)
    table = re.search(r'<table id="metrics".*?</table>', dom, re.S).group(0)
    first_cells = [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<tr[^>]*><td>(.*?)</td>", table)]
    assert first_cells == CATEGORIES + ["mean"]
    shot = tmp_path / "report.png"
    _chromium(profile, "--window-size=1280,2400", f"--screenshot={shot}", (run / "report.html").as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_curve_csvs_match_the_metrics(run, data):
    results = json.loads((run / "results.json").read_text())
    scores = _rows(run / "scores.csv")
    dataset = MetaDataset(data, "test", image_size=32)
    for category in CATEGORIES:
        metrics = results["per_category"][category]
        curves = {kind: _rows(run / "curves" / f"{category}_{kind}.csv") for kind in ("roc", "pr", "pro")}
        image_roc = [r for r in curves["roc"] if r["level"] == "image"]  # few points: not downsampled
        fpr, tpr = (np.array([float(r[k]) for r in image_roc]) for k in ("fpr", "tpr"))
        assert np.trapezoid(tpr[::-1], fpr[::-1]) == pytest.approx(metrics["image_auroc"], abs=1e-9)
        # pixel level: the full curve of the saved maps before downsampling, then the CSV's points on it
        rows = [r for r in scores if r["category"] == category]
        maps = np.stack([np.load(run / r["map_file"]) for r in rows])
        masks = np.stack([dataset[i]["mask"].numpy() > 0.5 for i, rec in enumerate(dataset.records)
                          if rec["cls_name"] == category])
        evaluation = evaluate_pixels(masks, maps)
        full = evaluation.roc()
        assert np.trapezoid(full.y[::-1], full.x[::-1]) == pytest.approx(metrics["pixel_auroc"], abs=1e-9)
        for level, kind, value in (("pixel", "roc", "tpr"), ("pixel", "pr", "precision"), ("pixel", "pro", "pro")):
            points = [r for r in curves[kind] if r["level"] == level]
            assert len(points) >= 2  # PRO up to FPR 0.3 may hold only its two ends
            for r in points[:: max(1, len(points) // 25)]:
                threshold = float(r["threshold"])
                if np.isnan(threshold):  # the PRO point interpolated at FPR 0.3
                    continue
                on = maps >= threshold
                tp, fp = (on & masks).sum(), (on & ~masks).sum()
                x = {"roc": fp / (~masks).sum(), "pr": tp / masks.sum(), "pro": fp / (~masks).sum()}[kind]
                assert float(r["fpr" if kind != "pr" else "recall"]) == pytest.approx(x, abs=1e-12)
                if kind != "pro":
                    y = tp / masks.sum() if kind == "roc" else tp / (tp + fp)
                    assert float(r[value]) == pytest.approx(y, abs=1e-12)
        pro = np.array([[float(r["fpr"]), float(r["pro"])] for r in curves["pro"]])
        assert pro[:, 0].max() == pytest.approx(0.3)
        assert np.trapezoid(pro[::-1, 1], pro[::-1, 0]) / 0.3 == pytest.approx(metrics["pixel_aupro"], abs=1e-3)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert all(f'href="curves/{c}_roc.csv"' in page and f"report/{c}_curves.png" in page for c in CATEGORIES)


def test_stored_thresholds_reproduce_f1_max(run, data, common, tmp_path):
    """results.json's thresholds, applied to each category's images by test.py --image,
    give back the image and pixel F1-max of the table."""
    results = json.loads((run / "results.json").read_text())
    table = (run / "results.md").read_text()
    dataset = MetaDataset(data, "test", image_size=32)
    masks = {Path(item["img_path"]).resolve(): item["mask"].numpy() > 0.5 for item in dataset}
    for category in CATEGORIES:
        out = tmp_path / category
        assert run_cli(test_script.main, ["--image", str(data / category / "test"), "--class_name", category,
                                          "--thresholds", str(run / "results.json"), "--save_path", str(out),
                                          *common]) == 0
        rows = _rows(out / "scores.csv")
        labels = np.array(["/good/" not in r["img_path"] for r in rows])
        flagged = np.array([r["decision"] == "1" for r in rows])
        f1 = _f1(labels, flagged)
        metrics = results["per_category"][category]
        assert f1 == pytest.approx(metrics["image_f1_max"], abs=1e-12)
        assert f"{100 * f1:.1f}" in table.split(f"| {category}")[1].split("\n")[0]
        truth = np.stack([masks[Path(r["img_path"]).resolve()] for r in rows])
        predicted = np.stack([np.asarray(_png(out / r["mask_file"])) > 0 for r in rows])
        assert predicted.shape == truth.shape and _f1(truth, predicted) == pytest.approx(
            metrics["pixel_f1_max"], abs=1e-12)
        assert all((out / "vis" / Path(r["mask_file"]).name.replace("_mask", "")).is_file() for r in rows)
    dataset_rows = _rows(run / "scores.csv")  # the dataset run's own decision column agrees
    for category in CATEGORIES:
        rows = [r for r in dataset_rows if r["category"] == category]
        f1 = _f1(np.array([r["label"] == "1" for r in rows]), np.array([r["decision"] == "1" for r in rows]))
        assert f1 == pytest.approx(results["per_category"][category]["image_f1_max"], abs=1e-12)


def _png(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_explicit_thresholds(run, data, common, tmp_path):
    folder = str(data / "wood" / "test" / "good")
    out = tmp_path / "explicit"
    assert run_cli(test_script.main, ["--image", folder, "--threshold", "-1", "--save_path", str(out), *common]) == 0
    rows = _rows(out / "scores.csv")
    assert [r["decision"] for r in rows] == ["1"] * 3 and "mask_file" not in rows[0]
    out = tmp_path / "pixel"
    assert run_cli(test_script.main, ["--image", folder, "--pixel_threshold", "1e9", "--save_path", str(out),
                                      *common]) == 0
    rows = _rows(out / "scores.csv")
    assert "decision" not in rows[0] and all(not _png(out / r["mask_file"]).any() for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--image", "{folder}", "--thresholds", "{results}"], "has no category 'object'; pass --class_name"),
    (["--image", "{folder}", "--thresholds", "{tmp}/none.json"], "file not found"),
    (["--image", "{folder}", "--thresholds", "{old}", "--class_name", "wood"], "holds no thresholds"),
    (["--data_path", "{data}", "--thresholds", "{results}"], "applies to --image only"),
])
def test_bad_threshold_input(argv, message, run, data, common, tmp_path, caplog):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"per_category": {"wood": {}}}))
    values = {"folder": data / "wood" / "test", "results": run / "results.json", "tmp": tmp_path, "old": old,
              "data": data}
    argv = [a.format(**values) for a in argv] + ["--save_path", str(tmp_path / "out"), *common]
    assert run_cli(test_script.main, argv) == EXIT_USER_ERROR
    assert message in caplog.text
