"""The feature cache (engine/feature_cache.py): bit-identical training, invalidation, storage."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from engine import feature_cache
from engine.feature_cache import CacheRequest, FeatureStore, shard_indices
from models.backbone import ClipBackbone
from models.factory import read_checkpoint
from scripts import BAYES, FAPROMPT, train_script
from utils.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, run_cli

FAPFL = ["--method", "fapfl", "--features_list", "2", "4", "--depth", "3", "--t_n_ctx", "2", "--dap_k", "4",
         "--sample_num", "2", "--val_sample_num", "2", "--val_fraction", "0.34"]
METHODS = {"faprompt": FAPROMPT, "bayes_pfl": [*BAYES, "--augment", "off", "--patience", "0"],
           "fapfl": [*FAPFL, "--augment", "off", "--patience", "0"],
           "anomalyclip": ["--method", "anomalyclip", "--depth", "3", "--n_ctx", "4", "--t_n_ctx", "2",
                           "--features_list", "2", "4"],
           "april_gan": ["--method", "april_gan", "--features_list", "2", "4"],
           "vcp_clip": ["--method", "vcp_clip", "--features_list", "2", "4", "--augment", "off"],
           # AdaCLIP with text prompts only: its image tower stays prompt-free, so the cache applies
           "adaclip": ["--method", "adaclip", "--features_list", "2", "4", "--prompting_depth", "3",
                       "--prompting_branch", "L", "--k_clusters", "2"]}
# their recipes train on the whole auxiliary set
UNVALIDATED = {"faprompt", "anomalyclip", "april_gan", "vcp_clip", "adaclip"}
# what each method's encode_images keeps (tiny model: layers 2 and 4, V-V from block 2)
FIELDS = {"faprompt": {"cls_raw", "vv_proj"}, "bayes_pfl": {"cls", "patch_raw.2", "patch_raw.4"},
          "fapfl": {"cls", "patch_raw.2", "patch_raw.4", "vv_proj"},
          "anomalyclip": {"cls_raw", "vv_layers.2", "vv_layers.4"},
          "april_gan": {"cls", "patch_raw.2", "patch_raw.4"}, "vcp_clip": {"cls", "patch_raw.2", "patch_raw.4"},
          "adaclip": {"cls", "patch_raw.2", "patch_raw.4"}}


@pytest.fixture()
def image_passes(monkeypatch):
    """The number of images that went through the image tower, per call."""
    calls = []
    original = ClipBackbone.encode_image

    def counting(self, images, *args, **kwargs):
        calls.append(images.shape[0])
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(ClipBackbone, "encode_image", counting)
    return calls


def _train(data, save, common, *extra):
    # test_cli's 18 images; batches of 5 end with one of 3 (of 2 with 6 held out for validation),
    # where a batch's small matrix products would differ from a full batch's
    return run_cli(train_script.main, ["--train_data_path", str(data), "--save_path", str(save), *common,
                                       "--batch_size", "5", *extra])


def _weights(save: Path):
    return read_checkpoint(str(save / "final.pth")).state_dict


def _history(save: Path, epoch: int):
    return read_checkpoint(str(save / f"epoch_{epoch}.pth")).training["state"]["history"]


def _assert_identical(a: Path, b: Path, epochs: int = 3) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ: {different[:5]}"
    assert _history(a, epochs) == _history(b, epochs)  # every loss term and validation score


@pytest.mark.parametrize("method", list(METHODS))
def test_three_epochs_with_the_cache_equal_three_without(method, data, tmp_path, common, image_passes):
    extra = [*METHODS[method], "--epochs", "3", "--seed", "5"]
    assert _train(data, tmp_path / "off", common, *extra, "--feature_cache", "off") == 0
    uncached = sum(image_passes)
    image_passes.clear()
    assert _train(data, tmp_path / "memory", common, *extra, "--feature_cache", "memory") == 0
    cached = sum(image_passes)
    _assert_identical(tmp_path / "off", tmp_path / "memory")
    # the tower ran once per image (+ the one-image probe) instead of once per image and epoch
    n_train = 18 if method in UNVALIDATED else 12
    n_val = 18 - n_train
    validations = 3 if n_val else 0
    assert uncached == 3 * n_train + validations * n_val
    assert cached == 1 + n_train + n_val

    # interrupted after epoch 1, resumed: the disk cache is reused, the result is the same
    image_passes.clear()
    broken = tmp_path / "disk"
    assert _train(data, broken, common, *extra, "--feature_cache", "disk", "--interrupt_after_epoch", "1") \
        == EXIT_INTERRUPTED
    assert run_cli(train_script.main, ["--train_data_path", str(data), "--save_path", str(broken),
                                       "--resume", "auto"]) == 0
    _assert_identical(tmp_path / "off", broken)
    assert sum(image_passes) == 1 + n_train + n_val + 1  # the resumed run encodes only its probe
    key = json.loads((broken / "feature_cache" / "train" / "key.json").read_text())
    assert set(key["fields"]) == FIELDS[method]  # exactly what the model reads, e.g. no cls_raw for Bayes-PFL
    assert (broken / "feature_cache" / "train" / "complete.json").is_file()
    assert (broken / "feature_cache" / "val" / "complete.json").is_file() == (method not in UNVALIDATED)


def test_memory_cache_refills_after_a_resume(data, tmp_path, common, image_passes):
    extra = [*FAPROMPT, "--epochs", "3", "--seed", "5"]
    assert _train(data, tmp_path / "off", common, *extra, "--feature_cache", "off") == 0
    broken = tmp_path / "memory"
    assert _train(data, broken, common, *extra, "--feature_cache", "memory", "--interrupt_after_epoch", "2") \
        == EXIT_INTERRUPTED
    image_passes.clear()
    assert run_cli(train_script.main, ["--train_data_path", str(data), "--save_path", str(broken),
                                       "--resume", "auto"]) == 0
    assert sum(image_passes) == 1 + 18  # the resumed epoch 3 fills the new cache
    _assert_identical(tmp_path / "off", broken)


def _rebuild_reason(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if "feature cache" in r.getMessage()
             and ("building it" in r.getMessage() or "reused" in r.getMessage())]
    assert lines, caplog.text
    return lines[0]


def test_changed_inputs_rebuild_the_disk_cache(data, tmp_path, common, caplog, tiny_model):
    shared = ["--feature_cache", "disk", "--feature_cache_dir", str(tmp_path / "cache"), "--epochs", "1",
              *FAPROMPT]

    def run(*extra, save="run"):
        caplog.clear()
        assert _train(data, tmp_path / save, common, *shared, *extra) == 0
        return _rebuild_reason(caplog)

    assert "no cache there yet" in run()
    assert "complete, reused" in run(save="again")
    # the image list: a category left out
    assert "images" in run("--train_classes", "washer", "wood")
    assert "complete, reused" in run("--train_classes", "washer", "wood")
    # an image file rewritten (its modification time)
    image = next(data.glob("wood/test/good/*.png"))
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10 ** 9))
    assert "images" in run("--train_classes", "washer", "wood")
    # the image size (and with it the grid: the field shapes)
    reason = run("--image_size", "48")
    assert "image_size" in reason and "fields" in reason
    # the backbone: other weights (random weights are drawn from the seed)
    reason = run("--image_size", "48", "--seed", "7")
    assert "weights" in reason and "first_image_features" in reason
    # the V-V start
    assert "vv_start" in run("--image_size", "48", "--seed", "7", "--vv_start", "3")
    # the storage type
    assert "dtype" in run("--image_size", "48", "--seed", "7", "--vv_start", "3", "--cache_dtype", "float16")


def test_truncated_or_half_written_cache_is_rebuilt(data, tmp_path, common, caplog):
    extra = [*FAPROMPT, "--epochs", "2", "--feature_cache", "disk", "--feature_cache_dir", str(tmp_path / "cache")]
    assert _train(data, tmp_path / "a", common, *extra) == 0
    folder = tmp_path / "cache" / "train"
    victim = folder / "vv_proj.bin"
    full_size = victim.stat().st_size
    with open(victim, "r+b") as handle:
        handle.truncate(full_size // 2)
    caplog.clear()
    assert _train(data, tmp_path / "b", common, *extra) == 0
    assert "truncated" in _rebuild_reason(caplog) and "vv_proj.bin" in _rebuild_reason(caplog)
    assert victim.stat().st_size == full_size
    _assert_identical(tmp_path / "a", tmp_path / "b", epochs=2)
    # without its completion marker (a run stopped while writing) the cache is not read
    (folder / "complete.json").unlink()
    caplog.clear()
    assert _train(data, tmp_path / "c", common, *extra) == 0
    assert "no completion marker" in _rebuild_reason(caplog)
    _assert_identical(tmp_path / "a", tmp_path / "c", epochs=2)


def test_augmentation_refuses_the_cache(data, tmp_path, common, caplog):
    argv = [*BAYES, "--epochs", "1", "--augment", "on"]
    assert _train(data, tmp_path / "a", common, *argv, "--feature_cache", "disk") == EXIT_USER_ERROR
    assert "--feature_cache disk needs --augment off" in caplog.text
    caplog.clear()
    assert _train(data, tmp_path / "b", common, *argv, "--patience", "0") == 0  # auto
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feature cache")]
    assert messages == ["feature cache off: augmentation or the mosaic is on (the images change every epoch)"]
    assert not (tmp_path / "b" / "feature_cache").exists()
    # a mosaic alone changes the images too
    caplog.clear()
    mosaic = [*BAYES, "--epochs", "1", "--augment", "off", "--mosaic_prob", "0.5"]
    assert _train(data, tmp_path / "c", common, *mosaic, "--feature_cache", "memory") == EXIT_USER_ERROR
    assert "needs --augment off and no mosaic" in caplog.text


def test_auto_follows_the_budget(data, tmp_path, common, caplog, monkeypatch):
    def run(memory, disk):
        monkeypatch.setattr(feature_cache, "available_memory", lambda: memory)
        monkeypatch.setattr(feature_cache, "free_disk", lambda path: disk)
        caplog.clear()
        assert _train(data, tmp_path / "save", common, *FAPROMPT, "--epochs", "1") == 0
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feature cache ")]
        return lines[0]

    per_image = 4 * (16 * 32 + 32)  # tiny model: V-V tokens [16, 32] and the CLS feature [32], float32
    need = 18 * per_image
    assert run(memory=2 * need, disk=0).startswith("feature cache memory:")
    line = run(memory=need, disk=need)
    assert line.startswith("feature cache off:") and "fits neither" in line
    assert run(memory=2 * need - 1, disk=2 * need).startswith("feature cache disk:")
    # a complete disk cache for this run is reused whatever the budget says
    assert run(memory=need, disk=0).startswith("feature cache disk: a complete cache")
    monkeypatch.setattr(feature_cache, "available_memory", lambda: need - 1)
    assert _train(data, tmp_path / "other", common, *FAPROMPT, "--feature_cache", "memory") == EXIT_USER_ERROR
    assert "--feature_cache memory: the cache needs" in caplog.text


def test_float16_halves_the_cache(data, tmp_path, common):
    for dtype in ("float32", "float16"):
        assert _train(data, tmp_path / dtype, common, *FAPROMPT, "--epochs", "2", "--feature_cache", "disk",
                      "--cache_dtype", dtype) == 0
    sizes = {d: sum(f.stat().st_size for f in (tmp_path / d / "feature_cache" / "train").glob("*.bin"))
             for d in ("float32", "float16")}
    assert sizes["float32"] == 18 * 4 * (16 * 32 + 32) == 2 * sizes["float16"]
    a, b = _history(tmp_path / "float32", 2), _history(tmp_path / "float16", 2)
    assert a[0] == b[0]  # epoch 1 computes the features either way
    assert a[1]["total"] != b[1]["total"] and abs(a[1]["total"] - b[1]["total"]) < 1e-2 * abs(a[1]["total"])


# ---------------------------------------------------------------------- the store itself
LAYOUT = {"cls": (4,), "patch_raw.2": (3, 5)}


def _rows(indices, offset=0.0):
    n = len(indices)
    base = torch.tensor(indices, dtype=torch.float32)[:, None] + offset
    return {"cls": base.expand(n, 4) * 1.5, "patch_raw.2": base[:, :, None].expand(n, 3, 5) - 0.25}


@pytest.mark.parametrize("disk", [False, True])
def test_store_round_trip_and_completion(tmp_path, disk):
    directory = tmp_path / "train" if disk else None
    store = FeatureStore(LAYOUT, range(6), torch.float32, directory, {"k": 1})
    store.put([4, 1, 0], _rows([4, 1, 0]))
    with pytest.raises(ValueError, match="not cached yet"):
        store.get([1, 2], torch.device("cpu"))
    assert not store.complete and (not disk or not (directory / "complete.json").exists())
    store.put([5, 3, 2], _rows([5, 3, 2]))
    assert store.complete and (not disk or (directory / "complete.json").is_file())
    got = store.get([2, 5, 0], torch.device("cpu"))
    assert all(torch.equal(got[k], _rows([2, 5, 0])[k]) for k in LAYOUT)
    store.close()
    if disk:  # reopened in a new run: complete, same rows
        again = FeatureStore(LAYOUT, range(6), torch.float32, directory, {"k": 1})
        assert again.complete
        got = again.get([3, 1], torch.device("cpu"))
        assert all(torch.equal(got[k], _rows([3, 1])[k]) for k in LAYOUT)
        again.close()


def test_half_written_store_is_not_read(tmp_path):
    store = FeatureStore(LAYOUT, range(4), torch.float32, tmp_path / "c", {"k": 1})
    store.put([0, 1], _rows([0, 1]))
    store.close()  # as if the run stopped here
    again = FeatureStore(LAYOUT, range(4), torch.float32, tmp_path / "c", {"k": 1})
    assert not again.complete
    with pytest.raises(ValueError, match="not cached yet"):
        again.get([0], torch.device("cpu"))
    again.close()


def test_a_cache_in_use_is_locked(tmp_path):
    store = FeatureStore(LAYOUT, range(2), torch.float32, tmp_path / "c", {"k": 1})
    with pytest.raises(UserError, match="in use by another run"):
        FeatureStore(LAYOUT, range(2), torch.float32, tmp_path / "c", {"k": 1})
    store.close()
    FeatureStore(LAYOUT, range(2), torch.float32, tmp_path / "c", {"k": 1}).close()


def test_rank_shards(tmp_path):
    assert shard_indices(7, 0, 3) == [0, 3, 6] and shard_indices(7, 2, 3) == [2, 5]
    assert sorted(shard_indices(7, 0, 2) + shard_indices(7, 1, 2)) == list(range(7))
    request = CacheRequest("disk", directory=tmp_path, rank=1, world_size=2)
    assert feature_cache._role_dir(request, "train") == tmp_path / "train.rank1of2"
    stores = [FeatureStore(LAYOUT, shard_indices(5, r, 2), torch.float32, tmp_path / f"r{r}", {"shard": r})
              for r in (0, 1)]
    with pytest.raises(ValueError, match="not in this cache's shard"):
        stores[1].put([0], _rows([0]))
    for r, store in enumerate(stores):
        mine = shard_indices(5, r, 2)
        store.put(mine, _rows(mine))
        assert store.complete
        got = store.get(mine, torch.device("cpu"))
        assert torch.equal(got["cls"], _rows(mine)["cls"])
        store.close()
    assert (tmp_path / "r0" / "cls.bin").stat().st_size == 3 * 4 * 4
    assert (tmp_path / "r1" / "cls.bin").stat().st_size == 2 * 4 * 4


def test_weights_digest_sees_one_changed_value(tiny_model):
    from models.backbone import BackboneConfig, build_backbone

    backbone = build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=32))
    before = feature_cache.weights_digest(backbone)
    assert feature_cache.weights_digest(backbone) == before
    with torch.no_grad():
        backbone.clip.visual.transformer.resblocks[2].mlp.c_fc.weight[3, 7] += 1e-6
    assert feature_cache.weights_digest(backbone) != before


@pytest.mark.parametrize("method, switches, fields", [
    ("fapfl", {}, {"cls", "patch_raw.2", "patch_raw.4", "vv_proj"}),
    ("fapfl", {"pixel_head": "rca", "image_head": "fixed", "flows": "none"},
     {"cls_raw", "patch_raw.2", "patch_raw.4", "patch_proj.4"}),
    ("fapfl", {"pixel_head": "similarity", "image_head": "fixed", "flows": "none"}, {"cls_raw", "vv_proj"}),
    ("anomalyclip", {}, {"cls_raw", "vv_layers.2", "vv_layers.4"}),
    ("anomalyclip", {"vv_aliased": True}, {"cls_raw", "vv_proj"}),
])
def test_encode_images_keeps_what_the_switches_read(tiny_model, method, switches, fields):
    """Each set of switches reads exactly the fields its encode_images keeps: the forward from
    them equals the plain forward (a missing field would fail, a superfluous one is listed)."""
    from models.backbone import BackboneConfig, build_backbone
    from models import methods
    from models.methods import preset

    backbone = build_backbone(BackboneConfig(model=tiny_model, pretrained="none", image_size=32))
    sizes = dict(features_list=(2, 4), depth=3, t_n_ctx=2, dap_k=4, sample_num=2)
    model = methods.get(method).make_model(backbone, preset(method, **sizes, **switches)).eval()
    images = torch.randn(2, 3, 32, 32)
    kept = feature_cache.flatten(model.encode_images(images))
    assert set(kept) == fields
    restored = feature_cache.unflatten(kept, 2, torch.device("cpu"))
    model.start_evaluation()
    plain = model.predict(images, ["wood", "weave"])
    model.start_evaluation()
    out = model(None, ["wood", "weave"], features=restored)
    assert torch.equal(out.anomaly_map, plain.anomaly_map) and torch.equal(out.class_prob, plain.class_prob)
