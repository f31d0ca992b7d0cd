"""Training augmentation: the mask follows the geometry exactly; photometry leaves it alone;
the mosaic tiles four anomalous samples with their masks."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode

from datasets.augment import TrainAugment, mosaic
from datasets.meta import MetaDataset


def shape_pair(h: int = 72, w: int = 96):
    """A white polygon on black (image) and its exact mask; non-square to catch axis mix-ups."""
    img = np.zeros((h, w, 3), np.uint8)
    msk = np.zeros((h, w), np.uint8)
    pts = np.array([[14, 10], [70, 18], [60, 60], [22, 50]], np.int32)
    cv2.fillPoly(img, [pts], (255, 255, 255))
    cv2.fillPoly(msk, [pts], 255)
    return Image.fromarray(img), Image.fromarray(msk)


def test_geometry_moves_mask_exactly():
    img, msk = shape_pair()
    moved, reshaped = 0, 0
    for seed in range(120):
        aug = TrainAugment(seed=seed, photometric=False, interpolation=InterpolationMode.NEAREST)
        out_img, out_msk, info = aug(img, msk)
        a, m = np.asarray(out_img), np.asarray(out_msk)
        assert info == {} and a.shape[:2] == m.shape
        assert set(np.unique(m)) <= {0, 255}
        assert np.array_equal(m > 0, a[..., 0] > 0), seed
        moved += not np.array_equal(m, np.asarray(msk)) if m.shape == (72, 96) else 1
        reshaped += m.shape == (96, 72)
    assert moved > 60 and 20 < reshaped < 60  # rotation/rot90 happen about half the time


def test_default_bilinear_keeps_mask_aligned():
    img, msk = shape_pair()
    for seed in range(40):
        out_img, out_msk, _ = TrainAugment(seed=seed)(img, msk)
        fg = np.asarray(out_img.convert("L")) > 127
        m = np.asarray(out_msk) > 0
        assert (fg & m).sum() / (fg | m).sum() > 0.85, seed


def test_photometric_ops_never_touch_the_mask():
    img, msk = shape_pair()
    changed = 0
    for seed in range(60):
        out_img, out_msk, _ = TrainAugment(seed=seed, geometric=False)(img, msk)
        assert np.array_equal(np.asarray(out_msk), np.asarray(msk))
        changed += not np.array_equal(np.asarray(out_img), np.asarray(img))
    assert changed > 30


def test_seeding_and_disabled():
    img, msk = shape_pair()
    a = [np.asarray(TrainAugment(seed=7)(img, msk)[0]) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    state = torch.get_rng_state()
    TrainAugment(seed=7)(img, msk)
    assert torch.equal(state, torch.get_rng_state())  # a seeded augmenter leaves torch RNG alone
    torch.manual_seed(5)
    b1 = np.asarray(TrainAugment()(img, msk)[0])
    torch.manual_seed(5)
    b2 = np.asarray(TrainAugment()(img, msk)[0])
    assert np.array_equal(b1, b2)  # unseeded: follows the global torch RNG
    out = TrainAugment(enabled=False)(img, msk)
    assert out[0] is img and out[1] is msk


@pytest.fixture
def mosaic_root(tmp_path: Path) -> Path:
    """Class "obj": 1 normal + 4 anomalous 20x30 images, each a distinct grey level with its own
    mask rectangle; anomalous image 3 is 40x60 (resized into its tile)."""
    recs = [{"img_path": "good.png", "mask_path": "", "cls_name": "obj", "specie_name": "good",
             "anomaly": 0}]
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(tmp_path / "good.png")
    for i in range(4):
        h, w = (40, 60) if i == 3 else (20, 30)
        Image.fromarray(np.full((h, w, 3), 40 * (i + 1), np.uint8)).save(tmp_path / f"{i}.png")
        m = np.zeros((h, w), np.uint8)
        s = h // 20
        m[s * 2:s * (4 + i), s * 3:s * (8 + 2 * i)] = 255
        Image.fromarray(m).save(tmp_path / f"{i}_mask.png")
        recs.append({"img_path": f"{i}.png", "mask_path": f"{i}_mask.png", "cls_name": "obj",
                     "specie_name": "bad", "anomaly": 1})
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"obj": recs}}))
    return tmp_path


def test_mosaic_layout_labels_and_masks(mosaic_root: Path):
    ds = MetaDataset(mosaic_root, image_size=40)
    aug = TrainAugment(mosaic_prob=1.0, seed=0, geometric=False, photometric=False)
    masks = [ds.load_pair(r)[1] for r in ds.records[1:]]
    seen = set()
    for trial in range(8):
        img, msk, info = aug(*ds.load_pair(ds.records[0]), ds.records[0], ds)
        assert info == {"label": 1, "has_mask": True}
        a, m = np.asarray(img), np.asarray(msk)
        th, tw = a.shape[0] // 2, a.shape[1] // 2
        assert m.shape == a.shape[:2] and (th, tw) in ((20, 30), (40, 60))
        order = []
        for q, (y, x) in enumerate([(0, 0), (0, tw), (th, 0), (th, tw)]):
            tile, tile_mask = a[y:y + th, x:x + tw], m[y:y + th, x:x + tw]
            level = int(tile[0, 0, 0])
            assert (tile == level).all() and level % 40 == 0
            i = level // 40 - 1
            expect = np.asarray(masks[i].resize((tw, th), Image.NEAREST))
            assert np.array_equal(tile_mask, expect), (trial, q)
            order.append(i)
        assert (th, tw) == ((40, 60) if order[0] == 3 else (20, 30))  # first image's size
        assert sorted(order) == [0, 1, 2, 3]  # four distinct anomalous samples
        seen.add(tuple(order))
    assert len(seen) > 1  # the choice and order are random
    # through the dataset: the normal sample becomes an anomalous 2x2 mosaic
    item = MetaDataset(mosaic_root, image_size=40, augment=aug)[0]
    assert item["label"] == 1 and item["has_mask"] and item["mask"].sum() > 0
    assert item["image"].shape == (3, 40, 40)


def test_mosaic_function_pastes_in_row_major_order():
    tiles = [Image.new("RGB", (4, 3), (10 * (i + 1),) * 3) for i in range(4)]
    masks = [Image.new("L", (4, 3), 255 if i == 2 else 0) for i in range(4)]
    img, msk = mosaic(tiles, masks)
    a, m = np.asarray(img), np.asarray(msk)
    assert a[0, 0, 0] == 10 and a[0, 4, 0] == 20 and a[3, 0, 0] == 30 and a[3, 4, 0] == 40
    assert m[3:, :4].all() and m.sum() == 255 * 12


def test_defect_type_mosaic_draws_a_type_then_an_image(tmp_path: Path):
    """APRIL-GAN's pool: each tile a uniform defect type of the class ("good" included), then a
    uniform image of it; a mosaic of normal tiles stays normal."""
    recs = []
    for name, kind, count in (("good", 0, 9), ("crack", 1, 1), ("hole", 1, 2)):
        for i in range(count):
            level = {"good": 10, "crack": 100, "hole": 200}[name] + i
            Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(tmp_path / f"{name}{i}.png")
            if kind:
                Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / f"{name}{i}_mask.png")
            recs.append({"img_path": f"{name}{i}.png", "mask_path": f"{name}{i}_mask.png" if kind else "",
                         "cls_name": "obj", "specie_name": name, "anomaly": kind})
    recs.append({"img_path": "good0.png", "mask_path": "", "cls_name": "other", "specie_name": "good", "anomaly": 0})
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"obj": recs[:-1], "other": recs[-1:]}}))
    ds = MetaDataset(tmp_path, image_size=16)
    aug = TrainAugment(mosaic_prob=1.0, seed=3, geometric=False, photometric=False, mosaic_pool="defect_types")
    counts = {"good": 0, "crack": 0, "hole": 0}
    labels = set()
    for _ in range(150):  # (seeded)
        img, msk, info = aug(*ds.load_pair(ds.records[0]), ds.records[0], ds)
        a, m = np.asarray(img), np.asarray(msk)
        assert a.shape == (16, 16, 3)
        tiles = [int(a[y, x, 0]) for y, x in ((0, 0), (0, 8), (8, 0), (8, 8))]
        names = ["good" if t < 100 else "crack" if t < 200 else "hole" for t in tiles]
        for name, (y, x) in zip(names, ((0, 0), (0, 8), (8, 0), (8, 8))):
            counts[name] += 1
            assert (m[y:y + 8, x:x + 8] == (0 if name == "good" else 255)).all()
        assert info["label"] == int(names != ["good"] * 4) and info["has_mask"]
        labels.add(info["label"])
    # by type, each type a third of the 600 tiles (by image, "good" would be 9 in 12)
    assert all(150 <= c <= 250 for c in counts.values()), counts
    assert labels == {1} or labels == {0, 1}
    other = ds.records[-1]  # a class of normal images alone: its mosaic stays normal
    assert other["cls_name"] == "other"
    assert aug(*ds.load_pair(other), other, ds)[2] == {"label": 0, "has_mask": True}
    with pytest.raises(ValueError, match="mosaic_pool"):
        TrainAugment(mosaic_pool="tiles")


def test_mosaic_only_for_the_eligible_classes(mosaic_root: Path):
    """With several auxiliary sets, only the classes of the one with a mosaic rate get mosaics."""
    ds = MetaDataset(mosaic_root, image_size=40)
    record = ds.records[0]
    for classes, expected in ((frozenset({"other"}), {}), (frozenset({"obj"}), {"label": 1, "has_mask": True})):
        aug = TrainAugment(mosaic_prob=1.0, seed=0, geometric=False, photometric=False, mosaic_classes=classes)
        assert aug(*ds.load_pair(record), record, ds)[2] == expected
