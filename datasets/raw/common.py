"""Mechanisms several converters share: an MVTec-style tree (and its miniature), a folder of images
beside a folder of masks (the segmentation sets), label folders (the classification sets) and the
DRA converters' seeded 75/25 split of the normal images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from sklearn.model_selection import train_test_split

from datasets.raw.base import Plan, Sample, Source, mask_for, need_dir, need_images, unused_masks, write_image, \
    write_mask
from utils.errors import UserError
from datasets.scan import list_dirs, list_images


def add_mvtec_tree(plan: Plan, root: Path, classes: Optional[Sequence[str]] = None, normal: str = "good",
                   rename: Callable[[str], str] = lambda s: s, mask_stem: Callable[[str], str] = lambda s: s) -> None:
    """``CLS/train/NORMAL``, ``CLS/test/{NORMAL,SPECIE}``, ``CLS/ground_truth/SPECIE``.

    ``classes`` fixes the class folders that must exist (default: every folder with a test/);
    ``normal`` is the download's name of the normal folder (BTAD: ``ok``), written as ``good``;
    ``rename`` maps a specie folder name to the output's; ``mask_stem(stem)`` gives the image
    stem a mask file stands for (MVTec: ``000_mask`` -> ``000``).
    """
    found = [p.name for p in list_dirs(root) if (p / "test").is_dir()] if classes is None else list(classes)
    if not found:
        need_dir(root / "<class>" / "test", "class folders with test/ sub-folders")
    for cls in found:
        cls_dir = need_dir(root / cls, f"class {cls}")
        for split in ("train", "test"):
            species = list_dirs(need_dir(cls_dir / split, f"{split} images of class {cls}"))
            if not species:
                need_images(cls_dir / split / normal, f"{split} images of class {cls}")
            for specie_dir in species:
                images = need_images(specie_dir, f"{split} images of class {cls}")
                if specie_dir.name == normal:
                    for img in images:
                        plan.add(split, cls, "good", 0, img)
                    continue
                gt_dir = need_dir(cls_dir / "ground_truth" / specie_dir.name,
                                  f"masks of {cls}/{split}/{specie_dir.name}")
                masks = {mask_stem(m.stem): m for m in list_images(gt_dir)}
                for img in images:
                    plan.add(split, cls, rename(specie_dir.name), 1, img, mask_for(img, masks, gt_dir))
                unused_masks(masks, [masks[i.stem] for i in images])


def add_image_mask_folders(plan: Plan, cls: str, images_dir: Path, masks_dir: Path,
                           mask_stem: Callable[[str], str] = lambda s: s, specie: str = "anomaly",
                           pick: Optional[Callable[[Sequence[Path]], Iterable[Path]]] = None) -> None:
    """Every image of ``images_dir`` is anomalous with the mask of the same stem in ``masks_dir``
    (the polyp, skin-lesion and thyroid sets: no normal images)."""
    images = need_images(images_dir, f"images of {cls}")
    masks: Dict[str, Path] = {mask_stem(m.stem): m for m in need_images(masks_dir, f"masks of {cls}")}
    chosen = list(pick(images)) if pick is not None else images
    for img in chosen:
        plan.add("test", cls, specie, 1, img, mask_for(img, masks, masks_dir))
    if pick is None:
        unused_masks(masks, [masks[i.stem] for i in images])


def image_folder(folder: Path, sub: str, what: str) -> Path:
    """``folder/sub`` where a download nests its images one level deeper (COVID-19's images/, LAG's
    image/ beside other folders), else ``folder`` itself, which must exist."""
    need_dir(folder, what)
    return folder / sub if (folder / sub).is_dir() else folder


def add_label_folders(plan: Plan, cls: str, folders: Dict[Path, int], specie: str = "anomaly") -> None:
    """Classification sets: every image of each folder with that folder's label (1 anomalous),
    normal ones as specie ``good``, anomalous ones as ``specie``; all test images."""
    for folder, label in folders.items():
        for img in need_images(folder, f"{'anomalous' if label else 'normal'} images of {cls}"):
            plan.add("test", cls, specie if label else "good", label, img)


def first_dir(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``candidates`` (paths under ``root``) that is a folder: downloads of one
    dataset come with different folder names (e.g. ``Original`` or ``images``)."""
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    raise UserError(f"{root} has none of the folders {', '.join(candidates)} ({what}); is --root the top folder "
                    "of the download?")


def add_seeded_split(plan: Plan, cls: str, normal: List[Tuple[str, Source]]) -> None:
    """The DRA/InCTRL converters' split of the normal images: ``train_test_split(test_size=0.25,
    random_state=42)`` over ``normal`` in the order given, a quarter tested, the rest for training;
    each ``(output name, source)`` added in name order."""
    train, test = train_test_split(normal, test_size=0.25, random_state=42)
    for split, items in (("train", train), ("test", test)):
        for name, source in sorted(items, key=lambda item: item[0]):
            plan.add(split, cls, "good", 0, source, name=name)


def mvtec_sample(root: Path, classes: Sequence[str], defect: str, twice: str) -> Sample:
    """A miniature MVTec-layout download: per class one train/good, one test/good and one
    test/``defect`` image with its ``_mask.png``; class ``twice`` has a second defect image."""
    for cls in classes:
        write_image(root / cls / "train/good/000.png", seed=1)
        write_image(root / cls / "test/good/000.png", seed=2)
        write_image(root / cls / f"test/{defect}/000.png", seed=3, defect=(4, 4, 12, 10))
        write_mask(root / cls / f"ground_truth/{defect}/000_mask.png")
    write_image(root / twice / f"test/{defect}/001.png", seed=4, defect=(4, 4, 12, 10))
    write_mask(root / twice / f"ground_truth/{defect}/001_mask.png")
    return Sample(image_with_mask=(root / twice / f"test/{defect}/001.png",
                                   root / twice / f"ground_truth/{defect}/001_mask.png"),
                  class_dir=root / classes[-1] if classes[-1] != twice else root / classes[0],
                  images=[root / classes[0] / "test/good/000.png"])


@dataclass(frozen=True)
class ImageMaskFolders:
    """A set whose images are all anomalous, each with the mask of its stem in another folder (the
    polyp, skin-lesion and thyroid sets): its converter and its miniature download.

    ``images`` / ``masks``: the folder names downloads of the set use (the first present is read);
    ``mask_suffix``: what the mask stem adds to the image stem (ISIC: ``_Segmentation``);
    ``names``: two file stems of the miniature; the extensions are the download's."""

    cls: str
    images: Tuple[str, ...]
    masks: Tuple[str, ...]
    names: Tuple[str, str]
    image_ext: str
    mask_ext: str
    mask_suffix: str = ""

    def build(self, root: Path, plan: Plan) -> None:
        add_image_mask_folders(plan, self.cls, first_dir(root, self.images, "the images"),
                               first_dir(root, self.masks, "the masks"),
                               mask_stem=lambda stem: stem[:-len(self.mask_suffix)]
                               if self.mask_suffix and stem.endswith(self.mask_suffix) else stem)

    def sample(self, root: Path, protocol: str = "") -> Sample:
        images, masks = root / self.images[0], root / self.masks[0]
        for i, name in enumerate(self.names):
            write_image(images / f"{name}{self.image_ext}", seed=i, defect=(6, 6, 20, 16))
            write_mask(masks / f"{name}{self.mask_suffix}{self.mask_ext}", box=(6, 6, 20, 16))
        last = self.names[-1]
        return Sample(image_with_mask=(images / f"{last}{self.image_ext}",
                                       masks / f"{last}{self.mask_suffix}{self.mask_ext}"),
                      class_dir=images, images=[images / f"{self.names[0]}{self.image_ext}"])
