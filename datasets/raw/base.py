"""What a raw-download converter declares, and the plan it builds (docs/datasets.md).

A converter reads one dataset's original download as its source ships it (file names, formats,
label files) and fills a :class:`Plan`: the records of meta.json and, for every file a record
names, where it comes from: a source file to link or copy as it is, or an image computed from a
source file (a crop, a tile, a binarised mask). Nothing is written while a plan is built, so an
input problem stops the run before the output folder exists (:mod:`datasets.raw.writer`).

Output layout (the MVTec layout, whatever the source's): ``CLS/train/good/NAME``,
``CLS/test/SPECIE/NAME``, ``CLS/ground_truth/SPECIE/NAME`` with paths relative to the output
folder; :func:`datasets.prepare.build_mvtec` reads it back to the same records.
"""
from __future__ import annotations

import csv
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from datasets.scan import list_images
from utils.errors import UserError

Array = np.ndarray


@dataclass(frozen=True)
class Derived:
    """An output image computed from ``src``: ``make(src) -> HxW or HxWxC uint8`` (saved as PNG).

    ``key`` names the computation (e.g. "crop 0 0 512 512") so two outputs of one source differ.
    """

    src: Path
    make: Callable[[Path], Array]
    key: str = ""


Source = Union[Path, Derived]


@dataclass(frozen=True)
class Protocol:
    """One preprocessing lineage: what it does, which papers' numbers came from it, and the
    reference code it reimplements (``build(root, plan)`` fills the plan from the raw root)."""

    name: str
    summary: str
    papers: Tuple[str, ...]
    reference: str
    build: Callable[[Path, "Plan"], None]


@dataclass(frozen=True)
class RawDataset:
    """A dataset's converter: its name (the ``--dataset`` value, the module's name), where the
    download comes from, its raw layout in words, and its protocols (the first is the default).

    ``sample(root, protocol="")`` writes a miniature raw tree in the download's exact layout (the one
    ``protocol`` reads, where protocols read different downloads) for the tests and the demo, and
    returns the :class:`Sample` facts the tests need to break it on purpose.
    """

    name: str
    title: str
    url: str
    licence: str
    layout: str
    protocols: Tuple[Protocol, ...]
    sample: Callable[..., "Sample"]
    kind: str = "industrial"  # or "medical"
    checked: str = "the reference code only"  # what the layout was checked against
    aliases: Tuple[str, ...] = ()
    notes: str = ""
    order: int = 100

    @property
    def default(self) -> Protocol:
        return self.protocols[0]

    def protocol(self, name: Optional[str]) -> Protocol:
        if name is None:
            return self.default
        for proto in self.protocols:
            if proto.name == name:
                return proto
        raise UserError(f"--protocol {name} is not a protocol of {self.name}; choose one of "
                        f"{', '.join(p.name for p in self.protocols)}")


@dataclass
class Sample:
    """Facts about a miniature raw tree, for tests that break it: its label files (empty when
    the layout has none), one anomalous image with its mask (None when it has no masks), one
    folder whose emptying must stop the converter (a class, a split) and images to corrupt."""

    label_files: List[Path] = field(default_factory=list)
    image_with_mask: Optional[Tuple[Path, Path]] = None
    class_dir: Optional[Path] = None
    images: List[Path] = field(default_factory=list)


class Plan:
    """The meta.json records of a dataset and the source of every file they name."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.meta: Dict[str, "OrderedDict[str, List[dict]]"] = {"train": OrderedDict(), "test": OrderedDict()}
        self.files: "OrderedDict[str, Source]" = OrderedDict()
        self._checked: set = set()

    def add(self, split: str, cls: str, specie: str, anomaly: int, image: Source,
            mask: Optional[Source] = None, name: Optional[str] = None) -> dict:
        """Add one image (and its mask) as ``CLS/{train,test}/SPECIE/NAME``; ``name`` defaults to
        the source file's name (a derived image's stem + ``.png``). Returns the record."""
        split_dir = "train" if split == "train" else "test"
        image_name = name or _default_name(image)
        img_rel = self._place(f"{cls}/{split_dir}/{specie}/{image_name}", image)
        mask_rel = ""
        if mask is not None:
            mask_ext = ".png" if isinstance(mask, Derived) else Path(_src_path(mask)).suffix
            mask_rel = self._place(f"{cls}/ground_truth/{specie}/{Path(image_name).stem}_mask{mask_ext}", mask)
        record = {"img_path": img_rel, "mask_path": mask_rel, "cls_name": cls, "specie_name": specie,
                  "anomaly": int(anomaly)}
        self.meta[split].setdefault(cls, []).append(record)
        return record

    def _place(self, rel: str, src: Source) -> str:
        if rel in self.files:
            raise UserError(f"two source files map to {rel} ({_src_path(self.files[rel])} and {_src_path(src)}); "
                            "the download holds duplicates: remove one")
        path = _src_path(src)
        if path not in self._checked:  # one source may give several outputs (tiles)
            check_image(path)
            self._checked.add(path)
        self.files[rel] = src
        return rel

    def counts(self) -> "OrderedDict[str, Tuple[int, int, int, int]]":
        """Per class: (test normal, test anomalous, train normal, masks)."""
        out: "OrderedDict[str, Tuple[int, int, int, int]]" = OrderedDict()
        for cls in sorted(set(self.meta["test"]) | set(self.meta["train"])):
            test = self.meta["test"].get(cls, [])
            out[cls] = (sum(r["anomaly"] == 0 for r in test), sum(r["anomaly"] == 1 for r in test),
                        len(self.meta["train"].get(cls, [])), sum(bool(r["mask_path"]) for r in test))
        return out


def _src_path(src: Source) -> Path:
    return src.src if isinstance(src, Derived) else Path(src)


def _default_name(src: Source) -> str:
    if isinstance(src, Derived):
        return src.src.stem + ".png"
    return Path(src).name


# ---- checks shared by the converters ------------------------------------------------------------
def check_image(path: Path) -> None:
    """Raise :class:`UserError` unless ``path`` is a file whose header PIL can read."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; check --root (the folder of the original download)")
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - reading the header is the check
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable image ({err}); replace it with the file from the download")


def need_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else one line saying which folder of the download is missing."""
    if not path.is_dir():
        raise UserError(f"{path} is not a folder: {what} (is --root the top folder of the original download?)")
    return path


def need_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path} does not exist: {what} (is --root the top folder of the original download?)")
    return path


def need_images(folder: Path, what: str, recursive: bool = False,
                pattern: Optional[str] = None) -> List[Path]:
    """The sorted images of a folder that must hold some (an empty class is an error). Every one is
    checked to be a readable image, also those a protocol then leaves out: a broken file means a
    broken download."""
    need_dir(folder, what)
    found = list_images(folder, recursive)
    if pattern is not None:
        found = [p for p in found if p.match(pattern)]
    if not found:
        raise UserError(f"{folder} holds no images{f' matching {pattern}' if pattern else ''}: {what}; "
                        "restore the folder from the download")
    for path in found:
        check_image(path)
    return found


def read_csv(path: Path, columns: Sequence[str], what: str, delimiter: str = ",") -> List[Dict[str, str]]:
    """Rows of a label file with the named columns (a missing file or column is one clear line)."""
    need_file(path, what)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        missing = [c for c in columns if c not in fields]
        if missing:
            raise UserError(f"{path} lacks the column(s) {', '.join(missing)} ({what}); found {', '.join(fields)}")
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def mask_for(image: Path, masks: Dict[str, Path], where: Path) -> Path:
    """The mask registered under the image's stem, or one line naming the image without one."""
    if image.stem not in masks:
        raise UserError(f"{image} has no mask in {where}; restore the mask from the download")
    return masks[image.stem]


def unused_masks(masks: Dict[str, Path], used: Sequence[Path]) -> None:
    """A mask whose image is missing is an error: the download is incomplete."""
    left = sorted(set(masks.values()) - set(used))
    if left:
        raise UserError(f"{len(left)} mask(s) have no image, e.g. {left[0]}; restore the images from the "
                        "download or remove the stray masks")


def binary(values: Array, threshold: int = 0) -> Array:
    """0/255 uint8 mask of ``values > threshold``."""
    return np.where(values > threshold, 255, 0).astype(np.uint8)


def mask_above(threshold: int) -> Callable[[Path], Array]:
    """A :class:`Derived` maker: the grey mask file binarised at ``> threshold`` (0/255)."""
    return lambda path: binary(load_array(path, gray=True), threshold)


def load_array(path: Path, gray: bool = False) -> Array:
    """Pixels of an image file (L for ``gray``, else RGB), uint8; an unreadable file is one clear line."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L" if gray else "RGB"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; restore it from the download")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable image ({err}); replace it with the file from the download")


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the header; an unreadable file is one clear line."""
    check_image(path)
    with Image.open(path) as img:
        return img.size


# ---- miniature raw trees (tests and the demo) ----------------------------------------------------
def write_image(path: Path, size: Tuple[int, int] = (32, 24), value: int = 120, seed: int = 0,
                gray: bool = False, defect: Optional[Tuple[int, int, int, int]] = None) -> Path:
    """A small textured image (``size`` = width, height) in the format of ``path``'s suffix; a
    ``defect`` box (x0, y0, x1, y1) is painted bright, so the samples are a (tiny) real task."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    arr = np.clip(value + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    if defect is not None:
        arr[defect[1]:defect[3], defect[0]:defect[2]] = 250
    Image.fromarray(arr).save(path)
    return path


def write_mask(path: Path, size: Tuple[int, int] = (32, 24), box: Tuple[int, int, int, int] = (4, 4, 12, 10),
               value: int = 255) -> Path:
    """A mask with one rectangle ``box`` = (x0, y0, x1, y1) set to ``value``, the rest 0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[box[1]:box[3], box[0]:box[2]] = value
    Image.fromarray(arr).save(path)
    return path

