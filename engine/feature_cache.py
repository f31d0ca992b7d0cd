"""Cache of the frozen backbone's image features across epochs (``train.py --feature_cache``).

Without augmentation every epoch feeds the frozen image tower the same images. The first
epoch therefore stores, per image, exactly the tensors the model reads (the non-empty fields of
its ``encode_images`` output: for FAPrompt the V-V tokens and the CLS feature, for Bayes-PFL the
CLS feature and the raw tokens of the selected layers) and later epochs pass them to
``model(images, class_names, features=...)`` instead of running the tower; their batches are
loaded without the image. Validation images have a cache of their own, filled by the first
validation.

* ``memory``: tensors in RAM, rebuilt by every run. ``disk``: one memory-mapped file per field
  under ``DIR/<role>/`` (``train``, ``val``), kept across runs: ``key.json`` says what the
  cache depends on, ``complete.json`` (written atomically after the last row is flushed) is
  the completion marker. A cache whose marker is missing, whose key differs or whose files
  have the wrong size is rebuilt, with a log line saying why; a half-written one is never read.
  It survives Ctrl-C and ``--resume``: the resumed run reads the complete cache (or refills an
  incomplete one while it trains).
* The key: backbone name, a digest of the vision tower's weights, image size, position
  interpolation, activation, precision, device type, the stored fields and their shapes (the
  layers), the V-V start, the storage dtype, the images (paths, sizes, mtimes, order), the
  shard, and a digest of the features of the first image computed now. That last entry is
  computed first anyway (it gives the field shapes for the budget): whatever else changes the
  image pass (e.g. another torch version) changes it too.
* float32 storage reproduces the uncached run bit for bit: the backbone's features do not
  depend on the batch they were computed in, and the cached path draws the same random numbers
  (the same DataLoader, sampler and generator; the models' noise draws follow the image pass
  either way). float16 halves the storage and rounds the features of epochs 2+.
* Sharding: a cache holds the indices ``rank, rank + world_size, ...`` of its dataset (all of
  them for one process); a distributed trainer opens one per rank and must feed each rank only
  the indices its cache holds.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.meta import MetaDataset
from models.backbone import ImageFeatures
from utils.errors import UserError
from utils.io import write_json

try:  # POSIX advisory locks; without them concurrent runs are not detected
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger("zsad.feature_cache")

MODES = ("auto", "memory", "disk", "off")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
MEMORY_SHARE = 0.5  # auto: memory when the cache fits in this share of the available RAM
DISK_SHARE = 0.9  # auto (and disk): the cache may take this share of the free disk
KEY_FILE, MARKER_FILE, LOCK_FILE = "key.json", "complete.json", ".lock"

Layout = Dict[str, Tuple[int, ...]]  # field name -> per-image shape
LAYER_FIELDS = ("patch_raw", "patch_proj", "vv_layers")  # the per-layer fields of ImageFeatures


# ---------------------------------------------------------------------- features <-> fields
def flatten(features: ImageFeatures) -> Dict[str, torch.Tensor]:
    """The non-empty fields of ``features`` by name (``cls``, ``patch_raw.6``, ...), [B, ...]."""
    fields = {name: getattr(features, name) for name in ("cls", "cls_raw", "vv_proj")}
    for kind in LAYER_FIELDS:
        fields.update({f"{kind}.{layer}": t for layer, t in sorted(getattr(features, kind).items())})
    return {name: t for name, t in fields.items() if t is not None and t.numel() > 0}


def unflatten(fields: Dict[str, torch.Tensor], batch: int, device: torch.device) -> ImageFeatures:
    """The inverse of :func:`flatten`: absent fields become empty [B, 0] tensors (or None, {})."""
    empty = torch.zeros(batch, 0, device=device)

    def layers(kind: str) -> Dict[int, torch.Tensor]:
        return {int(name.split(".")[1]): t for name, t in fields.items() if name.startswith(kind + ".")}

    return ImageFeatures(cls=fields.get("cls", empty), cls_raw=fields.get("cls_raw", empty),
                         vv_proj=fields.get("vv_proj"), **{kind: layers(kind) for kind in LAYER_FIELDS})


def bytes_per_image(layout: Layout, dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(math.prod(shape) * size for shape in layout.values())


# ---------------------------------------------------------------------- key
def _digest(*chunks) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        hasher.update(chunk if isinstance(chunk, (bytes, memoryview, np.ndarray)) else str(chunk).encode())
    return hasher.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the bits
        tensor = tensor.view(torch.int16)
    return tensor.numpy().reshape(-1).view(np.uint8)


def weights_digest(backbone) -> str:
    """Digest of every tensor of the vision tower (names, shapes, values; its position embedding
    is the one interpolated to the image size). At ViT-L-14-336 size (1.2 GB) this takes about
    a second."""
    items = sorted(backbone.clip.visual.state_dict().items())
    return _digest(*[part for name, t in items for part in (name, tuple(t.shape), t.dtype, _tensor_bytes(t))])


def _features_digest(fields: Dict[str, torch.Tensor]) -> str:
    return _digest(*[part for name, t in sorted(fields.items()) for part in (name, _tensor_bytes(t.float()))])


def images_digest(dataset: MetaDataset, indices: Sequence[int]) -> str:
    """Digest of the held images: their paths, sizes and modification times, in order."""
    parts = []
    for index in indices:
        path = dataset.abs_path(dataset.records[index]["img_path"])
        stat = os.stat(path)
        parts.append(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n")
    return _digest("".join(parts))


def _precision(backbone) -> str:
    """What the backbone computes in (as ``ClipBackbone.autocast`` decides)."""
    on_cpu = backbone.device.type != "cuda"
    if backbone.precision == "fp32" or (on_cpu and backbone.precision != "bf16"):
        return f"fp32 on {backbone.device.type}"
    return f"{'fp16' if backbone.precision == 'fp16' else 'bf16'} autocast on {backbone.device.type}"


# ---------------------------------------------------------------------- storage
def shard_indices(n: int, rank: int = 0, world_size: int = 1) -> List[int]:
    """The dataset indices rank ``rank`` of ``world_size`` caches: rank, rank + world_size, ..."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of world size {world_size}")
    return list(range(rank, n, world_size))


class FeatureStore:
    """Per-image fields for the dataset indices ``held``, in RAM or memory-mapped files.

    Rows are written with :meth:`put` (any order, each row once or more) and read with
    :meth:`get`; once every held row was written the store is complete (a disk store then
    flushes its files and writes its completion marker).
    """

    def __init__(self, layout: Layout, held: Sequence[int], dtype: torch.dtype,
                 directory: Optional[Path] = None, key: Optional[Dict[str, Any]] = None):
        self.layout, self.dtype, self.directory = dict(layout), dtype, directory
        self.key = key or {}
        self.held = list(held)
        self.slot = {index: slot for slot, index in enumerate(self.held)}
        self.filled = np.zeros(len(self.held), dtype=bool)
        self.complete = False
        self._lock = None
        self._maps: Dict[str, np.memmap] = {}
        if directory is None:
            self.arrays = {name: torch.empty((len(self.held), *shape), dtype=dtype) for name, shape in layout.items()}
        else:
            self._lock = _acquire_lock(directory)
            self.arrays = self._open_files()

    # ---- disk ---------------------------------------------------------------------------------
    def _file(self, name: str) -> Path:
        return self.directory / f"{name}.bin"

    def _expected_bytes(self, name: str) -> int:
        return len(self.held) * math.prod(self.layout[name]) * torch.empty((), dtype=self.dtype).element_size()

    def _reuse_problem(self) -> Optional[str]:
        """Why the files in the directory cannot be read as this cache, or None."""
        marker, key_file = self.directory / MARKER_FILE, self.directory / KEY_FILE
        if not marker.is_file():
            if key_file.is_file() or any(self.directory.glob("*.bin")):
                return "incomplete: no completion marker (interrupted while it was written)"
            return "no cache there yet"
        try:
            stored = json.loads(marker.read_text())["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"unreadable completion marker {marker}"
        if stored != self.key:
            changed = sorted(k for k in set(stored) | set(self.key) if stored.get(k) != self.key.get(k))
            return f"it was built for other {', '.join(changed)}"
        for name in self.layout:
            path = self._file(name)
            size = path.stat().st_size if path.is_file() else None
            if size != self._expected_bytes(name):
                return f"{path.name} holds {size or 0} bytes, expected {self._expected_bytes(name)} (truncated)"
        return None

    def _open_files(self) -> Dict[str, torch.Tensor]:
        np_dtype = np.float16 if self.dtype == torch.float16 else np.float32
        problem = self._reuse_problem()
        if problem is None:
            log.info("feature cache %s: complete, reused", self.directory)
            self.complete = True
            self.filled[:] = True
            # copy-on-write: reads come from the file, nothing is ever written back
            self._maps = {name: np.memmap(self._file(name), dtype=np_dtype, mode="c",
                                          shape=(len(self.held), *shape)) for name, shape in self.layout.items()}
        else:
            log.info("feature cache %s: building it (%s)", self.directory, problem)
            for old in [*self.directory.glob("*.bin"), self.directory / MARKER_FILE, self.directory / KEY_FILE]:
                old.unlink(missing_ok=True)
            write_json(self.directory / KEY_FILE, self.key)
            self._maps = {name: np.memmap(self._file(name), dtype=np_dtype, mode="w+",
                                          shape=(len(self.held), *shape)) for name, shape in self.layout.items()}
        return {name: torch.from_numpy(array) for name, array in self._maps.items()}

    def _finish_files(self) -> None:
        for name, array in self._maps.items():
            array.flush()
            with open(self._file(name), "rb+") as handle:
                os.fsync(handle.fileno())
        write_json(self.directory / MARKER_FILE,
                   {"key": self.key, "files": {f"{n}.bin": self._expected_bytes(n) for n in self.layout}})
        log.info("feature cache %s: complete (%d images)", self.directory, len(self.held))

    # ---- rows ---------------------------------------------------------------------------------
    def _slots(self, indices: Sequence[int]) -> torch.Tensor:
        try:
            return torch.tensor([self.slot[int(i)] for i in indices], dtype=torch.long)
        except KeyError as err:
            raise ValueError(f"image {err.args[0]} is not in this cache's shard") from None

    def put(self, indices: Sequence[int], fields: Dict[str, torch.Tensor]) -> None:
        """Store rows: ``fields`` maps every field of the layout to [len(indices), ...]."""
        if set(fields) != set(self.layout):
            raise ValueError(f"fields {sorted(fields)} differ from the cache layout {sorted(self.layout)}")
        if self.complete:
            return
        slots = self._slots(indices)
        for name, values in fields.items():
            self.arrays[name][slots] = values.detach().to("cpu", self.dtype)
        self.filled[slots.numpy()] = True
        if self.filled.all():
            if self.directory is not None:
                self._finish_files()
            self.complete = True

    def get(self, indices: Sequence[int], device: torch.device) -> Dict[str, torch.Tensor]:
        """Rows [len(indices), ...] of every field as float32 on ``device``."""
        slots = self._slots(indices)
        missing = [int(indices[i]) for i in np.flatnonzero(~self.filled[slots.numpy()])]
        if missing:
            raise ValueError(f"images {missing[:5]} are not cached yet")
        return {name: array[slots].to(device, torch.float32) for name, array in self.arrays.items()}

    def close(self) -> None:
        self.arrays, self._maps = {}, {}
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _acquire_lock(directory: Path):
    """An exclusive lock on the cache folder for this process's lifetime: a second run that
    writes or reads the same cache at the same time would corrupt or misread it."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / LOCK_FILE, "a")
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UserError(f"the feature cache {directory} is in use by another run; wait for it or "
                            "pass another --feature_cache_dir") from None
    return handle


# ---------------------------------------------------------------------- datasets
class CachedView(Dataset):
    """``dataset``'s items with their ``index``, loaded without the image when ``with_image``
    is False (their features come from the cache)."""

    def __init__(self, dataset: MetaDataset, with_image: bool):
        self.dataset, self.with_image = dataset, with_image

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.dataset.item(index, with_image=self.with_image)
        item["index"] = index
        return item


class DatasetCache:
    """The feature cache of one dataset (``role``: train or val) and how batches use it."""

    def __init__(self, role: str, dataset: MetaDataset, store: FeatureStore):
        self.role, self.dataset, self.store = role, dataset, store

    def loader_dataset(self) -> CachedView:
        """The dataset a DataLoader should read now: images only while the cache is filling."""
        return CachedView(self.dataset, with_image=not self.store.complete)

    def features(self, model, batch: Dict[str, Any], device: torch.device) -> ImageFeatures:
        """The batch's image features: from the cache, or computed (and stored) from its images."""
        index = batch["index"].tolist()
        if batch["image"] is None:
            return unflatten(self.store.get(index, device), len(index), device)
        features = model.encode_images(batch["image"].to(device, non_blocking=True))
        self.store.put(index, flatten(features))
        return features


# ---------------------------------------------------------------------- opening
@dataclass
class CacheRequest:
    """What ``--feature_cache``, ``--cache_dtype`` and ``--feature_cache_dir`` asked for."""

    mode: str = "auto"
    dtype: str = "float32"
    directory: Optional[Path] = None  # disk caches: DIRECTORY/<role>
    rank: int = 0
    world_size: int = 1


def available_memory() -> Optional[int]:
    """Bytes of RAM available to new allocations (Linux MemAvailable), or None if unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def free_disk(path: Path) -> int:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def human_size(n: Optional[float]) -> str:
    """Bytes as B, KiB, MiB or GiB ("unknown" for None)."""
    if n is None:
        return "unknown"
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _role_dir(request: CacheRequest, role: str) -> Path:
    suffix = f".rank{request.rank}of{request.world_size}" if request.world_size > 1 else ""
    return Path(request.directory) / f"{role}{suffix}"


def _resolve_mode(request: CacheRequest, need: int, per_image: int, images: int,
                  reusable: bool) -> Tuple[str, str]:
    """(memory, disk or off, why) for the request; an impossible explicit request is a user error."""
    mode = request.mode
    memory, disk = available_memory(), free_disk(request.directory)
    size = f"{human_size(per_image)} per image x {images} images = {human_size(need)}"
    if mode == "memory":
        if memory is not None and need > memory:
            raise UserError(f"--feature_cache memory: the cache needs {size} but only "
                            f"{human_size(memory)} of memory is available; use --feature_cache disk or "
                            "--cache_dtype float16")
        return "memory", f"as requested ({size})"
    if mode == "disk":
        if not reusable and need > DISK_SHARE * disk:
            raise UserError(f"--feature_cache disk: the cache needs {size} but "
                            f"{request.directory} has {human_size(disk)} free; pass --feature_cache_dir on a "
                            "larger disk, or --cache_dtype float16")
        return "disk", f"as requested ({size})"
    if reusable:
        return "disk", f"a complete cache for this run is in {request.directory} ({size})"
    if memory is not None and need <= MEMORY_SHARE * memory:
        return "memory", f"{size} fits in half of the {human_size(memory)} of available memory"
    if need <= DISK_SHARE * disk:
        return "disk", (f"{size} exceeds half of the {human_size(memory)} of available memory; "
                        f"{human_size(disk)} free in {request.directory}")
    return "off", (f"{size} fits neither in half of the {human_size(memory)} of available memory nor in "
                   f"the {human_size(disk)} free in {request.directory}")


def cache_wanted(request: CacheRequest, augment: bool, blocker: str = "") -> bool:
    """Whether to open caches (checked before anything is built). Augmentation (``augment``: the
    pipeline or the 2x2 mosaic), or a method whose trained parts change the image tower's outputs
    (``blocker`` says why), makes an explicit ``memory``/``disk`` request a user error and turns
    ``auto`` off, saying so."""
    if request.mode not in MODES:
        raise UserError(f"--feature_cache {request.mode}: choose one of {', '.join(MODES)}")
    if request.dtype not in DTYPES:
        raise UserError(f"--cache_dtype {request.dtype}: choose one of {', '.join(DTYPES)}")
    if request.mode == "off":
        log.info("feature cache off (--feature_cache off)")
        return False
    if blocker:
        if request.mode != "auto":
            raise UserError(f"--feature_cache {request.mode}: {blocker}; drop the flag")
        log.info("feature cache off: %s", blocker)
        return False
    if augment:
        if request.mode != "auto":
            raise UserError(f"--feature_cache {request.mode} needs --augment off and no mosaic (--mosaic_prob 0): "
                            "augmentation changes the images every epoch, so their features cannot be reused")
        log.info("feature cache off: augmentation or the mosaic is on (the images change every epoch)")
        return False
    return True


def open_caches(request: CacheRequest, model, backbone_config,
                datasets: Dict[str, MetaDataset]) -> Dict[str, DatasetCache]:
    """Feature caches for ``datasets`` (role -> dataset; :func:`cache_wanted` said yes), or {}
    when ``auto`` finds no room. ``model`` provides ``encode_images`` and its ``backbone``; the
    first dataset's first image is encoded once to learn the fields and their shapes."""
    backbone, dtype = model.backbone, DTYPES[request.dtype]
    first = next(iter(datasets.values()))
    probe = flatten(model.encode_images(first.item(0)["image"][None].to(backbone.device)))
    layout = {name: tuple(t.shape[1:]) for name, t in probe.items()}
    base = {"model": backbone_config.model, "weights": weights_digest(backbone),
            "image_size": backbone.image_size, "pos_interpolation": backbone.pos_interpolation,
            "activation": backbone.activation, "precision": _precision(backbone),
            "fields": {name: list(shape) for name, shape in layout.items()},
            "vv_start": model.vv_start if "vv_proj" in layout else None,
            "dtype": request.dtype, "shard": [request.rank, request.world_size],
            "first_image_features": _features_digest(probe)}
    held = {role: shard_indices(len(ds), request.rank, request.world_size) for role, ds in datasets.items()}
    keys = {role: {**base, "role": role, "images": images_digest(datasets[role], held[role]),
                   "image_count": len(held[role])} for role in datasets}
    per_image = bytes_per_image(layout, dtype)
    count = sum(len(h) for h in held.values())
    reusable = all(_is_complete(_role_dir(request, role), keys[role]) for role in datasets)
    mode, why = _resolve_mode(request, per_image * count, per_image, count, reusable)
    log.info("feature cache %s: %s", mode, why)
    if mode == "off":
        return {}
    return {role: DatasetCache(role, datasets[role],
                               FeatureStore(layout, held[role], dtype,
                                            _role_dir(request, role) if mode == "disk" else None, keys[role]))
            for role in datasets}


def _is_complete(directory: Path, key: Dict[str, Any]) -> bool:
    """Whether ``directory`` holds a completion marker for ``key`` (sizes are checked on opening)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return json.loads((directory / MARKER_FILE).read_text())["key"] == key
    return False
