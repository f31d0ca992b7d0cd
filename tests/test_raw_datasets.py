"""Raw-download converters (datasets/raw): every dataset and protocol on a miniature raw tree in
the download's exact layout, idempotence, read-only sources, known counts, and bad input."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from PIL import Image

from datasets import raw
from datasets.prepare import convert
from datasets.raw.counts import load_known
from datasets.raw.writer import PROVENANCE
from tests.raw_expected import EXAMPLE, EXPECTED
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CASES = [(d.name, p.name) for d in raw.registry().values() for p in d.protocols]
PAPER_DATASETS = {"mvtec", "visa", "mpdd", "btad", "sdd", "ksdd2", "dagm", "dtd", "elpv", "aitex", "rsdd", "headct",
                  "brainmri", "br35h", "isic", "clinicdb", "colondb", "kvasir", "endo", "tn3k", "lag", "covid"}


def tree_digest(root: Path) -> str:
    """Names, sizes and contents of every file under root (to prove the download is untouched)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def counts_of(meta: dict) -> dict:
    out = {}
    for cls in sorted(set(meta["test"]) | set(meta["train"])):
        test = meta["test"].get(cls, [])
        out[cls] = (sum(r["anomaly"] == 0 for r in test), sum(r["anomaly"] == 1 for r in test),
                    len(meta["train"].get(cls, [])), sum(bool(r["mask_path"]) for r in test))
    return out


def test_every_paper_dataset_has_a_converter_expected_counts_and_a_test():
    assert PAPER_DATASETS <= set(raw.names())
    assert len(CASES) >= len(PAPER_DATASETS)
    assert {f"{n}:{p}" for n, p in CASES} == set(EXPECTED) == set(EXAMPLE)
    known = load_known()
    for name in raw.names():
        dataset = raw.get(name)
        assert (name, dataset.default.name) in known, f"{name}: no known counts for its default protocol"
        assert dataset.url and dataset.licence and dataset.layout and dataset.sample
        for proto in dataset.protocols:
            assert proto.papers and proto.reference and proto.summary, (name, proto.name)
    for (name, proto), rows in known.items():
        assert name in raw.names() and proto in [p.name for p in raw.get(name).protocols], (name, proto)
        for cls, ((normal, anomalous, train, masks), source) in rows.items():
            assert source and (normal or anomalous), (name, proto, cls)
            assert None in (masks, anomalous) or masks <= anomalous, (name, proto, cls)


@pytest.mark.parametrize("name,protocol", CASES)
def test_converts_the_raw_layout(name, protocol, tmp_path):
    source = tmp_path / "raw"
    raw.get(name).sample(source, protocol)
    before = tree_digest(source)
    read_only(source)
    try:
        meta_path = convert(name, source, tmp_path / "out", protocol=protocol)
        first = meta_path.read_bytes()
        again = convert(name, source, tmp_path / "out", protocol=protocol)
    finally:
        writable(source)
    assert tree_digest(source) == before
    assert again.read_bytes() == first  # idempotent
    meta = json.loads(first)
    key = f"{name}:{protocol}"
    assert counts_of(meta) == EXPECTED[key]
    records = [r for split in meta.values() for recs in split.values() for r in recs]
    assert EXAMPLE[key] in records
    for rec in records:
        for rel in (rec["img_path"], rec["mask_path"]):
            if rel:
                assert not os.path.isabs(rel) and ".." not in rel.split("/")
                assert (tmp_path / "out" / rel).is_file(), rel
        assert rec["anomaly"] in (0, 1) and (rec["anomaly"] or not rec["mask_path"])
    provenance = json.loads((tmp_path / "out" / PROVENANCE).read_text())
    assert provenance["dataset"] == name and provenance["protocol"] == protocol


def _fresh(name: str, protocol: str, tmp_path: Path, tag: str):
    source = tmp_path / tag / "raw"
    return source, raw.get(name).sample(source, protocol)


def _expect_refusal(name, protocol, source, out):
    with pytest.raises(UserError) as err:
        convert(name, source, out, protocol=protocol)
    assert "\n" not in str(err.value)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))
    return str(err.value)


@pytest.mark.parametrize("name,protocol", CASES)
def test_bad_raw_input_is_one_line_and_writes_nothing(name, protocol, tmp_path):
    checked = 0
    source, sample = _fresh(name, protocol, tmp_path, "not_image")
    assert sample.images, f"{name}: the sample names no image to break"
    sample.images[0].write_bytes(b"not an image")
    assert sample.images[0].name in _expect_refusal(name, protocol, source, tmp_path / "not_image" / "out")
    checked += 1
    for i, label_file in enumerate(_fresh(name, protocol, tmp_path, "labels")[1].label_files):
        source, sample = _fresh(name, protocol, tmp_path, f"labels{i}")
        sample.label_files[i].unlink()
        assert label_file.name in _expect_refusal(name, protocol, source, tmp_path / f"labels{i}" / "out")
        checked += 1
    source, sample = _fresh(name, protocol, tmp_path, "mask")
    if sample.image_with_mask is not None:
        image, mask = sample.image_with_mask
        assert mask.is_file()
        image.unlink()
        message = _expect_refusal(name, protocol, source, tmp_path / "mask" / "out")
        assert image.name in message or mask.name in message, message
        checked += 1
    source, sample = _fresh(name, protocol, tmp_path, "empty")
    if sample.class_dir is not None:
        for path in sorted(sample.class_dir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        _expect_refusal(name, protocol, source, tmp_path / "empty" / "out")
        checked += 1
    assert checked >= 2


def test_output_must_not_touch_the_download_or_foreign_folders(tmp_path):
    source = tmp_path / "raw"
    raw.get("mvtec").sample(source)
    with pytest.raises(UserError, match="inside the raw download"):
        convert("mvtec", source, source / "prepared")
    with pytest.raises(UserError, match="contains the raw download"):
        convert("mvtec", source, tmp_path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not written by datasets.prepare"):
        convert("mvtec", source, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_an_unwritable_output_is_one_line(tmp_path):
    source = tmp_path / "raw"
    raw.get("mvtec").sample(source)
    blocker = tmp_path / "a_file"  # a file where --out needs a folder: fails for root too
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write under --out"):
        convert("mvtec", source, blocker / "out")
    assert blocker.read_text() == "x"


def test_copies_instead_of_links(tmp_path):
    source = tmp_path / "raw"
    raw.get("mvtec").sample(source)
    convert("mvtec", source, tmp_path / "out", copy=True)
    files = [p for p in (tmp_path / "out").rglob("*.png")]
    assert files and not any(p.is_symlink() for p in files)
    shutil.rmtree(source)
    assert all(p.stat().st_size > 0 for p in files)


def run_cli(*args: str):
    return subprocess.run([sys.executable, "-m", "datasets.prepare", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_lists_converts_and_refuses_in_one_line(tmp_path):
    listing = run_cli("--list")
    assert listing.returncode == 0 and all(name in listing.stdout for name in PAPER_DATASETS)
    source = tmp_path / "raw"
    raw.get("mvtec").sample(source)
    strict = run_cli("--dataset", "mvtec", "--root", str(source), "--out", str(tmp_path / "s"), "--strict")
    assert strict.returncode == 2 and "differs from the papers' data" in strict.stderr
    assert "Traceback" not in strict.stderr and not (tmp_path / "s").exists()
    unknown = run_cli("--dataset", "nosuch", "--root", str(source))
    assert unknown.returncode == 2 and "choose one of" in unknown.stderr
    done = run_cli("--dataset", "MVTec-AD", "--root", str(source), "--out", str(tmp_path / "ok"))
    assert done.returncode == 0, done.stderr
    assert "differs from the papers' data" in done.stderr and (tmp_path / "ok" / "meta.json").is_file()


def test_dra_split_and_crops_follow_the_reference(tmp_path):
    """ELPV: the six normal cells of the sample, in labels.csv order (1-5, 10), split by
    train_test_split(test_size=0.25, random_state=42): cells 1 and 2 tested, the rest for training.
    KolektorSDD bands are a third of the image's height; AITEX tiles are squares of its height."""
    raw.get("elpv").sample(tmp_path / "elpv")
    meta = json.loads(convert("elpv", tmp_path / "elpv", tmp_path / "elpv_out").read_text())
    normal_test = sorted(r["img_path"] for r in meta["test"]["elpv"] if not r["anomaly"])
    assert normal_test == ["elpv/test/good/cell0001.png", "elpv/test/good/cell0002.png"]
    assert len(meta["train"]["elpv"]) == 4

    for name, example, size in (("sdd", "SDD/test/defect/kos01_Part1_1.png", (20, 20)),
                                ("aitex", "AITEX/test/Fuzzyball/0002_019_02_2.png", (16, 16))):
        raw.get(name).sample(tmp_path / name)
        out = convert(name, tmp_path / name, tmp_path / f"{name}_out").parent
        with Image.open(out / example) as img:
            assert img.size == size, name
        with Image.open(out / example.replace("/test/", "/ground_truth/").replace(".png", "_mask.png")) as mask:
            assert mask.size == size and set(np.unique(np.asarray(mask)).tolist()) == {0, 255}, name
