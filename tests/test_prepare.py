"""meta.json generators: mvtec / visa / folder layouts, mask matching by stem, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.prepare import build_meta, build_mvtec, match_masks, write_meta
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def img(path: Path, value: int = 128, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def mask(path: Path, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[1:3, 2:5] = 255
    Image.fromarray(arr).save(path)
    return path


def rec(img_path, mask_path, cls, specie, anomaly):
    return {"img_path": img_path, "mask_path": mask_path, "cls_name": cls,
            "specie_name": specie, "anomaly": anomaly}


def run_cli(*args: str):
    return subprocess.run([sys.executable, "-m", "datasets.prepare", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    for name in ("000.png", "001.png"):
        img(root / "bottle/train/good" / name)
    img(root / "bottle/test/good/000.png")
    for name in ("000", "001"):
        img(root / f"bottle/test/broken_large/{name}.png")
        mask(root / f"bottle/ground_truth/broken_large/{name}_mask.png")
    img(root / "cable/train/good/000.png")
    img(root / "cable/test/cut/000.png")
    mask(root / "cable/ground_truth/cut/000_mask.png")
    # Things that must be ignored: hidden files/folders, non-images, loose files.
    (root / "bottle/test/broken_large/Thumbs.db").write_bytes(b"x")
    img(root / "bottle/test/broken_large/.hidden.png")
    img(root / ".cache/test/good/000.png")
    (root / "readme.txt").write_text("hi")
    return root


def test_mvtec_records_exact(mvtec_root: Path):
    meta = build_mvtec(mvtec_root)
    assert list(meta) == ["train", "test"]
    assert list(meta["test"]) == ["bottle", "cable"]
    assert meta["train"]["bottle"] == [
        rec("bottle/train/good/000.png", "", "bottle", "good", 0),
        rec("bottle/train/good/001.png", "", "bottle", "good", 0)]
    assert meta["test"]["bottle"] == [
        rec("bottle/test/broken_large/000.png",
            "bottle/ground_truth/broken_large/000_mask.png", "bottle", "broken_large", 1),
        rec("bottle/test/broken_large/001.png",
            "bottle/ground_truth/broken_large/001_mask.png", "bottle", "broken_large", 1),
        rec("bottle/test/good/000.png", "", "bottle", "good", 0)]
    assert meta["test"]["cable"] == [
        rec("cable/test/cut/000.png", "cable/ground_truth/cut/000_mask.png", "cable", "cut", 1)]
    assert meta["train"]["cable"] == [rec("cable/train/good/000.png", "", "cable", "good", 0)]


def test_btad_style_matches_by_stem_not_sort_order(tmp_path: Path):
    root = tmp_path / "btad"
    img(root / "01/train/good/0000.bmp")
    # Sorted image names: 1, 10, 2; sorted mask names: 10_mask, 1_mask, 2_mask -> a positional
    # pairing would give 1 <-> 10.
    for stem in ("1", "10", "2"):
        img(root / f"01/test/ko/{stem}.bmp")
        mask(root / f"01/ground_truth/ko/{stem}_mask.png")
    img(root / "02/test/ko/0000.bmp")
    mask(root / "02/ground_truth/ko/0000.png")      # same stem, other extension
    img(root / "02/test/ko/0001.BMP")                 # upper-case extension
    mask(root / "02/ground_truth/ko/0001.bmp")
    meta = build_mvtec(root)
    pairs = {r["img_path"]: r["mask_path"] for c in meta["test"].values() for r in c}
    assert pairs == {
        "01/test/ko/1.bmp": "01/ground_truth/ko/1_mask.png",
        "01/test/ko/10.bmp": "01/ground_truth/ko/10_mask.png",
        "01/test/ko/2.bmp": "01/ground_truth/ko/2_mask.png",
        "02/test/ko/0000.bmp": "02/ground_truth/ko/0000.png",
        "02/test/ko/0001.BMP": "02/ground_truth/ko/0001.bmp",
    }
    assert "02" not in meta["train"]


def test_match_masks_suffixes_and_ambiguity(tmp_path: Path):
    images = [tmp_path / n for n in ("a.png", "a_1.png", "b.jpg", "c.png")]
    masks = [tmp_path / n for n in ("a_gt.png", "a_1_mask.png", "b_label.png", "c.png",
                                    "c_mask.png")]
    got = {k.name: v.name for k, v in match_masks(images, masks).items()}
    # exact stem beats a suffix; "a_1_mask" belongs to "a_1", not to "a"
    assert got == {"a.png": "a_gt.png", "a_1.png": "a_1_mask.png", "b.jpg": "b_label.png",
                   "c.png": "c.png"}
    with pytest.raises(UserError, match="several masks"):
        match_masks([tmp_path / "d.png"], [tmp_path / "d.png", tmp_path / "d.bmp"])


def test_visa_layout(tmp_path: Path):
    root = tmp_path / "visa"
    rows = ["object,split,label,image,mask"]
    for cls in ("pcb1", "candle"):  # csv order of first appearance, not alphabetical
        base = f"{cls}/Data"
        img(root / f"{base}/Images/Normal/0000.JPG")
        img(root / f"{base}/Images/Normal/0001.JPG")
        img(root / f"{base}/Images/Anomaly/000.JPG")
        mask(root / f"{base}/Masks/Anomaly/000.png")
        rows += [f"{cls},train,normal,{base}/Images/Normal/0000.JPG,",
                 f"{cls},test,normal,{base}/Images/Normal/0001.JPG,",
                 f"{cls},test,anomaly,{base}/Images/Anomaly/000.JPG,{base}/Masks/Anomaly/000.png"]
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    meta = build_meta("visa", root)
    assert list(meta["test"]) == ["pcb1", "candle"]
    assert meta["train"]["candle"] == [
        rec("candle/Data/Images/Normal/0000.JPG", "", "candle", "good", 0)]
    assert meta["test"]["pcb1"] == [
        rec("pcb1/Data/Images/Normal/0001.JPG", "", "pcb1", "good", 0),
        rec("pcb1/Data/Images/Anomaly/000.JPG", "pcb1/Data/Masks/Anomaly/000.png",
            "pcb1", "bad", 1)]
    # a row pointing to a missing file
    (root / "split_csv/1cls.csv").write_text(
        "\n".join(rows + ["candle,test,normal,candle/Data/Images/Normal/9999.JPG,"]) + "\n")
    with pytest.raises(UserError, match=r"1 files listed in .*1cls.csv do not exist.*9999.JPG"):
        build_meta("visa", root)


def test_folder_layout_with_and_without_ground_truth(tmp_path: Path):
    root = tmp_path / "med"
    img(root / "headct/test/good/000.png")
    img(root / "headct/test/Ungood/000.png")
    img(root / "headct/test/Ungood/001.png")
    img(root / "isic/test/Ungood/ISIC_01.jpg")
    mask(root / "isic/ground_truth/Ungood/ISIC_01_segmentation.png")
    meta = build_meta("folder", root)
    assert meta["train"] == {}
    assert meta["test"]["headct"] == [
        rec("headct/test/Ungood/000.png", "", "headct", "Ungood", 1),
        rec("headct/test/Ungood/001.png", "", "headct", "Ungood", 1),
        rec("headct/test/good/000.png", "", "headct", "good", 0)]
    assert meta["test"]["isic"] == [
        rec("isic/test/Ungood/ISIC_01.jpg", "isic/ground_truth/Ungood/ISIC_01_segmentation.png",
            "isic", "Ungood", 1)]


def test_cli_writes_meta_and_summary(mvtec_root: Path):
    res = run_cli("--layout", "mvtec", "--root", str(mvtec_root))
    assert res.returncode == 0, res.stderr
    assert "test anomalous" in res.stderr and "bottle" in res.stderr
    meta = json.loads((mvtec_root / "meta.json").read_text())
    assert meta == json.loads(json.dumps(build_mvtec(mvtec_root)))


def test_missing_mask_is_error_and_keeps_old_meta(mvtec_root: Path):
    img(mvtec_root / "bottle/test/broken_large/002.png")  # no 002_mask.png
    (mvtec_root / "meta.json").write_text('{"old": {}}')
    with pytest.raises(UserError, match=r"1 anomalous images in .*broken_large have no mask"):
        write_meta("mvtec", mvtec_root)
    res = run_cli("--layout", "mvtec", "--root", str(mvtec_root))
    assert res.returncode == 2
    assert "002.png" in res.stderr and "Traceback" not in res.stderr
    assert (mvtec_root / "meta.json").read_text() == '{"old": {}}'
    assert not list(mvtec_root.glob(".meta.json*"))  # no temporary file left behind


@pytest.mark.parametrize("case", ["missing_root", "unknown_layout", "no_classes", "no_csv"])
def test_cli_bad_input_exits_2(tmp_path: Path, case: str):
    root, layout = tmp_path / "data", "mvtec"
    if case == "missing_root":
        expect = "does not exist"
    elif case == "unknown_layout":
        root.mkdir()
        layout, expect = "kitti", "unknown layout 'kitti'"
    elif case == "no_classes":
        (root / "stuff").mkdir(parents=True)
        expect = "no classes found"
    else:
        root.mkdir()
        layout, expect = "visa", "1cls.csv does not exist"
    res = run_cli("--layout", layout, "--root", str(root))
    assert res.returncode == 2
    assert expect in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (root / "meta.json").exists()
    with pytest.raises(UserError, match=expect):
        build_meta(layout, root)
