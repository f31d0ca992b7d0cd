"""MetaDataset, preprocessing, hold-out split and their user errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from datasets.meta import MetaDataset, collate, holdout_split
from datasets.names import KNOWN_CATEGORIES, is_classification_only, known_categories, readable_name
from datasets.transforms import OPENAI_MEAN, OPENAI_STD, image_to_tensor, load_mask, mask_to_tensor
from utils.errors import UserError

S = 64


def save(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path.as_posix()


def rec(img_path, mask_path, cls, specie, anomaly):
    return {"img_path": img_path, "mask_path": mask_path, "cls_name": cls,
            "specie_name": specie, "anomaly": anomaly}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two classes; 32x32 images; the bottle mask is a 0/1 block at rows 10..19, cols 4..11."""
    r = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("bottle", "cable"):
        for i in range(3):
            save(r / f"{cls}/train/good/{i}.png", rng.integers(0, 255, (32, 32, 3), np.uint8))
        save(r / f"{cls}/test/good/0.png", rng.integers(0, 255, (32, 32, 3), np.uint8))
        save(r / f"{cls}/test/bad/0.png", rng.integers(0, 255, (32, 32, 3), np.uint8))
        m = np.zeros((32, 32), np.uint8)
        m[10:20, 4:12] = 1 if cls == "bottle" else 255
        save(r / f"{cls}/ground_truth/bad/0_mask.png", m)
    save(r / "cable/test/bad/1.png", np.zeros((32, 32), np.uint8))  # grey-scale, no mask
    meta = {"train": {c: [rec(f"{c}/train/good/{i}.png", "", c, "good", 0) for i in range(3)]
                      for c in ("bottle", "cable")},
            "test": {c: [rec(f"{c}/test/good/0.png", "", c, "good", 0),
                         rec(f"{c}/test/bad/0.png", f"{c}/ground_truth/bad/0_mask.png",
                             c, "bad", 1)]
                     for c in ("bottle", "cable")}}
    meta["test"]["cable"].append(rec("cable/test/bad/1.png", "", "cable", "bad", 1))
    (r / "meta.json").write_text(json.dumps(meta))
    return r


def write_meta(root: Path, meta) -> None:
    (root / "meta.json").write_text(json.dumps(meta))


def test_names():
    assert readable_name("metal_nut") == "metal nut"
    assert readable_name("pcb3") == "printed circuit board"
    assert readable_name("macaroni2") == "macaroni"
    assert readable_name("chewinggum") == "chewing gum"
    assert readable_name("Bracket_Black") == "bracket black"
    assert known_categories("MVTec_AD") == KNOWN_CATEGORIES["mvtec"]
    assert len(KNOWN_CATEGORIES["mvtec"]) == 15 and len(KNOWN_CATEGORIES["visa"]) == 12
    assert known_categories("nope") is None
    assert is_classification_only("HeadCT") and not is_classification_only("mvtec")


def test_item_shapes_and_values(root: Path):
    ds = MetaDataset(root, image_size=S)
    assert ds.classes == ["bottle", "cable"] and len(ds) == 5
    item = ds[1]
    assert item["image"].shape == (3, S, S) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (S, S) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["label"] == 1 and item["has_mask"] is True and item["cls_name"] == "bottle"
    assert item["img_path"] == str(root.resolve() / "bottle/test/bad/0.png")
    # preprocessing is exactly torchvision's PIL pipeline of docs/data.md
    ref = T.Compose([T.Resize((S, S), interpolation=T.InterpolationMode.BICUBIC),
                     lambda im: im.convert("RGB"), T.ToTensor(),
                     T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    assert torch.equal(item["image"], ref(Image.open(item["img_path"])))
    # the 0/1 mask block, upsampled 2x, lands exactly where nearest resizing puts it
    expect = torch.zeros(S, S)
    expect[20:40, 8:24] = 1
    assert torch.equal(item["mask"], expect)
    assert torch.equal(ds[3]["mask"], expect)  # the 0/255 mask of cable gives the same


def test_normal_and_classification_only_records(root: Path):
    ds = MetaDataset(root, image_size=S)
    normal = ds[0]
    assert normal["label"] == 0 and normal["has_mask"] is True and normal["mask"].sum() == 0
    no_mask = ds[4]
    assert no_mask["label"] == 1 and no_mask["has_mask"] is False and no_mask["mask"].sum() == 0
    assert no_mask["image"].shape == (3, S, S)  # grey-scale converted to RGB
    batch = next(iter(DataLoader(ds, batch_size=5, collate_fn=collate)))
    assert batch["image"].shape == (5, 3, S, S)
    assert batch["label"].tolist() == [0, 1, 0, 1, 1]
    assert batch["has_mask"].tolist() == [True, True, True, True, False]


def test_mask_binarisation_and_resize(tmp_path: Path):
    m = np.zeros((10, 10), np.uint8)
    m[2:4, 2:4] = [[1, 3], [255, 128]]  # 0/1, JPEG-like noise, 0/255 all count as > 0
    save(tmp_path / "m.png", m)
    loaded = load_mask(tmp_path / "m.png")
    assert loaded.dtype == bool and loaded.sum() == 4
    t = mask_to_tensor(loaded, 20)
    assert t.shape == (20, 20) and t.sum() == 16 and torch.equal(t[4:8, 4:8], torch.ones(4, 4))
    palette = Image.fromarray(m).convert("P")
    assert image_to_tensor(palette, 16).shape == (3, 16, 16)


def test_split_and_class_selection(root: Path):
    train = MetaDataset(root, split="train", image_size=S)
    assert len(train) == 6 and all(r["anomaly"] == 0 for r in train.records)
    only = MetaDataset(root, classes=["cable"], image_size=S)
    assert only.classes == ["cable"] and len(only) == 3
    both = MetaDataset(root, classes=["cable", "bottle"], image_size=S)
    assert both.classes == ["bottle", "cable"]  # meta.json order


def test_holdout_split(root: Path):
    records = [rec(f"{c}/{i}.png", "", c, "x", a) for c in ("a", "b")
               for a in (0, 1) for i in range(10)] + [rec("c/0.png", "", "c", "good", 0)]
    train, val = holdout_split(records, 0.3, seed=1)
    assert len(val) == 12 and len(train) == 29
    for c in ("a", "b"):
        for a in (0, 1):
            assert sum(r["cls_name"] == c and r["anomaly"] == a for r in val) == 3
    assert any(r["cls_name"] == "c" for r in train)  # a 1-record group stays in train
    assert sorted(map(str, train + val)) == sorted(map(str, records))
    assert holdout_split(records, 0.3, seed=1) == (train, val)
    assert holdout_split(records, 0.3, seed=2)[1] != val
    with pytest.raises(UserError, match="fraction"):
        holdout_split(records, 1.0)
    ds = MetaDataset(root, image_size=S)
    tr, va = holdout_split(ds.records, 0.5, seed=0)
    sub = MetaDataset(root, image_size=S, records=va)
    assert sub.records == va and len(sub) == 1 and sub.classes == ["cable"]


def test_augment_hook(root: Path):
    def flip(img, mask, record, dataset):
        assert dataset.root == root.resolve() and "img_path" in record
        return img.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT), \
            {"label": 1}
    item = MetaDataset(root, image_size=S, augment=flip)[1]
    expect = torch.zeros(S, S)
    expect[20:40, S - 24:S - 8] = 1
    assert torch.equal(item["mask"], expect)
    assert MetaDataset(root, image_size=S, augment=flip)[0]["label"] == 1


def test_missing_root_and_meta(tmp_path: Path):
    with pytest.raises(UserError, match=r"dataset root .*nowhere does not exist"):
        MetaDataset(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"meta.json does not exist; generate it"):
        MetaDataset(tmp_path)
    (tmp_path / "meta_visa.json").write_text("{}")  # the official Bayes-PFL data folder
    with pytest.raises(UserError, match=r"meta_visa.json is Bayes-PFL's layout .* one dataset's folder"):
        MetaDataset(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match=r"cannot parse .*meta.json"):
        MetaDataset(tmp_path)


def test_bad_split_and_classes(root: Path):
    with pytest.raises(UserError,
                       match=r"split 'val' is not in .*meta.json \(available: train, test\)"):
        MetaDataset(root, split="val")
    with pytest.raises(UserError,
                       match=r"unknown class 'screw' .*meta.json \(available: bottle, cable\)"):
        MetaDataset(root, classes=["screw"])
    meta = json.loads((root / "meta.json").read_text())
    meta["test"]["empty"] = []
    write_meta(root, meta)
    with pytest.raises(UserError, match=r"class 'empty' has no records .*meta.json"):
        MetaDataset(root)
    assert len(MetaDataset(root, classes=["bottle"], image_size=S)) == 2


def test_missing_files_reported_with_count(root: Path):
    meta = json.loads((root / "meta.json").read_text())
    meta["test"]["bottle"] += [rec(f"bottle/test/bad/{n}.png", "", "bottle", "bad", 1)
                               for n in ("x", "y", "z", "w")]
    write_meta(root, meta)
    with pytest.raises(UserError, match=r"^4 files listed in .*meta.json do not exist, e.g. "
                                        r"bottle/test/bad/x.png, bottle/test/bad/y.png, "
                                        r"bottle/test/bad/z.png;"):
        MetaDataset(root)


def test_mask_size_mismatch_and_unreadable_image(root: Path):
    save(root / "bottle/ground_truth/bad/0_mask.png", np.zeros((16, 32), np.uint8))
    with pytest.raises(UserError,
                       match=r"1 masks listed in .*meta.json differ in size.*0_mask.png"):
        MetaDataset(root)
    MetaDataset(root, check_files=False)  # the header check is optional
    save(root / "bottle/ground_truth/bad/0_mask.png", np.zeros((32, 32), np.uint8))
    (root / "cable/test/good/0.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"cannot read image .*cable/test/good/0.png"):
        MetaDataset(root)
    ds = MetaDataset(root, check_files=False)
    with pytest.raises(UserError, match=r"cannot read image .*cable/test/good/0.png"):
        ds[2]
