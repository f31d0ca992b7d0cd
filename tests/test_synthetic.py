"""Synthetic dataset: determinism, layout, pixel-exact masks, meta.json consistency."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.meta import MetaDataset
from datasets.prepare import build_mvtec
from datasets.synthetic import CATEGORIES, generate, render
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(size=96, n_train=2, n_test_good=2, n_test_defect=3)


def digests(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "set", seed=3, **SMALL)


def test_deterministic_by_seed(synth: Path, tmp_path: Path):
    again = generate(tmp_path / "again", seed=3, **SMALL)
    assert digests(again) == digests(synth)
    other = digests(generate(tmp_path / "other", seed=4, **SMALL))
    first = digests(synth)
    assert other.keys() == first.keys()
    pngs = [k for k in first if k.endswith(".png")]
    assert sum(other[k] != first[k] for k in pngs) == len(pngs)


def test_layout_categories_and_defects(synth: Path):
    cats = sorted(p.name for p in synth.iterdir() if p.is_dir())
    assert len(cats) >= 3 and cats == sorted(CATEGORIES)
    kinds = set()
    for cat in cats:
        species = sorted(p.name for p in (synth / cat / "test").iterdir())
        defects = [s for s in species if s != "good"]
        assert len(defects) >= 2 and "good" in species
        assert sorted(p.name for p in (synth / cat / "ground_truth").iterdir()) == defects
        assert len(list((synth / cat / "train/good").glob("*.png"))) == SMALL["n_train"]
        for d in defects:
            names = sorted(p.name for p in (synth / cat / "ground_truth" / d).iterdir())
            assert names == [f"{i:03d}_mask.png" for i in range(SMALL["n_test_defect"])]
        kinds.update(defects)
    assert len(kinds) >= 4


def test_masks_are_pixel_exact(synth: Path):
    for cat, defects in CATEGORIES.items():
        for i in range(SMALL["n_test_good"]):
            saved = np.asarray(Image.open(synth / cat / f"test/good/{i:03d}.png"))
            assert np.array_equal(saved, render(cat, "good", 96, 3, "test", i)[0])
        for d in defects:
            for i in range(SMALL["n_test_defect"]):
                clean, defective, mask = render(cat, d, 96, 3, "test", i)
                saved = np.asarray(Image.open(synth / cat / f"test/{d}/{i:03d}.png"))
                gt = synth / cat / f"ground_truth/{d}/{i:03d}_mask.png"
                saved_mask = np.asarray(Image.open(gt))
                assert np.array_equal(saved, defective)
                assert saved_mask.dtype == np.uint8 and set(np.unique(saved_mask)) == {0, 255}
                assert np.array_equal(saved_mask > 0, mask)
                changed = np.any(defective != clean, axis=2)
                assert np.array_equal(changed, mask), (cat, d, i)
                assert mask.sum() >= 4


def test_meta_json_consistent(synth: Path):
    meta = json.loads((synth / "meta.json").read_text())
    assert meta == json.loads(json.dumps(build_mvtec(synth)))
    files = {p.relative_to(synth).as_posix() for p in synth.rglob("*.png")}
    listed = {r[k] for s in meta.values() for recs in s.values() for r in recs
              for k in ("img_path", "mask_path") if r[k]}
    assert listed == files
    for recs in meta["test"].values():
        for r in recs:
            assert bool(r["mask_path"]) == (r["anomaly"] == 1) == (r["specie_name"] != "good")
    ds = MetaDataset(synth, image_size=32)
    item = ds[len(ds) - 1]
    assert item["label"] == 1 and item["mask"].sum() > 0


def test_cli_and_bad_input(tmp_path: Path):
    out = tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "datasets.synthetic", "--out", str(out),
                          "--size", "64", "--categories", "washer", "--train", "1",
                          "--test-good", "1", "--test-defect", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert sorted(json.loads((out / "meta.json").read_text())["test"]) == ["washer"]
    # regenerating into its own previous output is allowed; a foreign folder is not
    generate(out, size=64, categories=["wood"], n_train=0, n_test_good=1, n_test_defect=1)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["wood"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    res = subprocess.run([sys.executable, "-m", "datasets.synthetic", "--out", str(foreign)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not empty" in res.stderr and "Traceback" not in res.stderr
    assert (foreign / "keep.txt").exists()
    with pytest.raises(UserError, match="unknown synthetic category 'cat'"):
        generate(tmp_path / "x", categories=["cat"])
