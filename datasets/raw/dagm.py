"""DAGM 2007 (Wieler and Hahn): ten synthetic textures with weakly labelled (elliptical) defects."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, need_dir, need_images, write_image, write_mask
from utils.errors import UserError

CLASSES = tuple(f"Class{i}" for i in range(1, 11))
STATES = ("Train", "Test")
Item = Tuple[str, Path, Path]  # (state, image, mask or None)


def _state(root: Path, cls: str, state: str) -> Tuple[List[Path], Dict[str, Path]]:
    """A class's images of one state (``NNNN.PNG``) and its masks by image id (``Label/NNNN_label.PNG``)."""
    folder = need_dir(root / cls / state, f"the {state} images of {cls}")
    images = need_images(folder, f"the {state} images of {cls}")
    masks = {m.stem.split("_")[0]: m for m in need_images(folder / "Label", f"the {state} labels of {cls}")}
    stray = sorted(set(masks) - {i.stem for i in images})
    if stray:
        raise UserError(f"{masks[stray[0]]} (a mask) has no image {stray[0]}.PNG in {folder}; restore it")
    return images, masks


def _items(root: Path, cls: str, states=STATES) -> Tuple[List[Item], List[Item]]:
    """(defective, defect-free) images of the states, each sorted by image id."""
    defective, clean = [], []
    for state in states:
        images, masks = _state(root, cls, state)
        for img in images:
            (defective if img.stem in masks else clean).append((state, img, masks.get(img.stem)))
    return sorted(defective, key=lambda t: t[1].stem), sorted(clean, key=lambda t: t[1].stem)


def build_test_split(root: Path, plan: Plan) -> None:
    """The Test split of all ten classes as shipped: images with a label anomalous (elliptical masks);
    the Train split's defect-free images are the training (few-shot reference) images."""
    for cls in CLASSES:
        defective, clean = _items(root, cls, ("Test",))
        for _, img, mask in defective:
            plan.add("test", cls, "defect", 1, img, mask)
        for _, img, _ in clean:
            plan.add("test", cls, "good", 0, img)
        for _, img, _ in _items(root, cls, ("Train",))[1]:
            plan.add("train", cls, "good", 0, img)


def build_balanced(root: Path, plan: Plan) -> None:
    """Per class and state, as many defect-free test images as there are defective ones (the first by
    id; AdaCLIP takes them in file-system order), the other defect-free images for training; every
    defective image of both states tested."""
    for cls in CLASSES:
        for state in STATES:
            defective, clean = _items(root, cls, (state,))
            for _, img, mask in defective:
                plan.add("test", cls, "defect", 1, img, mask)
            for n, (_, img, _) in enumerate(clean):
                plan.add("test" if n < len(defective) else "train", cls, "good", 0, img)


def build_bayes(root: Path, plan: Plan) -> None:
    """Classes 1-5, 7 and 8 (renamed Fabric1..): every defective image of Train and Test, and as many
    defect-free ones, the lowest ids first; no training images. The masks are the download's ellipses:
    Bayes-PFL re-annotated its masks by hand and publishes them only in its own copy."""
    for k in (1, 2, 3, 4, 5, 7, 8):
        defective, clean = _items(root, f"Class{k}")
        for _, img, mask in defective:
            plan.add("test", f"Fabric{k}", "anomaly", 1, img, mask)
        for _, img, _ in clean[:len(defective)]:
            plan.add("test", f"Fabric{k}", "good", 0, img)


def sample(root: Path, protocol: str = "") -> Sample:
    # ids are unique within a class across Train and Test, as in the download
    for cls in CLASSES:
        for state, ids, defective in (("Train", (1, 2, 3), (2,)), ("Test", (4, 5, 6), (5,))):
            for n in ids:
                bad = n in defective
                write_image(root / cls / state / f"{n:04d}.PNG", size=(24, 24), seed=n, gray=True,
                            defect=(6, 6, 14, 12) if bad else None)
                if bad:
                    write_mask(root / cls / state / "Label" / f"{n:04d}_label.PNG", size=(24, 24), box=(6, 6, 14, 12))
            (root / cls / state / "Label" / "Labels.txt").write_text("Image\tDefect\tImageFile\n")
    return Sample(image_with_mask=(root / "Class7/Test/0005.PNG", root / "Class7/Test/Label/0005_label.PNG"),
                  class_dir=root / "Class8", images=[root / "Class1/Test/0004.PNG"])


DATASET = RawDataset(
    name="dagm", title="DAGM 2007", order=7, aliases=("dagm2007", "dagm-2007"),
    url="https://www.kaggle.com/datasets/mhskjelvareid/dagm-2007-competition-dataset-optical-inspection",
    licence="free for research (HCI Heidelberg); no formal licence",
    checked="the reference code and Bayes-PFL's published file list (meta_DAGM.json); no copy of the download",
    layout="Class1..Class10/{Train,Test}/NNNN.PNG (512x512 grey) with {Train,Test}/Label/NNNN_label.PNG (filled "
           "ellipses) and Labels.txt; ids unique per class across Train and Test",
    protocols=(Protocol("anomalyclip", "the Test split of the ten classes as shipped, elliptical masks; the Train "
                                       "split's defect-free images for training",
                        ("AnomalyCLIP", "FAPrompt"), "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/DAGM.py",
                        build_test_split),
               Protocol("adaclip", "per class and split: every defective image and as many defect-free ones tested, "
                                   "the other defect-free ones for training", ("AdaCLIP",),
                        "caoyunkang/AdaCLIP@e27ee32:data_preprocess/dagm-pre.py", build_balanced),
               Protocol("bayes-pfl", "classes 1-5, 7, 8: every defective image of both splits and as many defect-free "
                                     "ones (lowest ids); the download's elliptical masks", ("Bayes-PFL",),
                        "xiaozhen228/Bayes-PFL@8f155a0:dataset/datasets/DAGM.py (from its pos/neg copy)",
                        build_bayes)),
    notes="Bayes-PFL's pixel-level DAGM figures use masks it re-annotated by hand, which only its own copy "
          "(DATA_three.zip, in the MVTec layout: prepare it with --layout mvtec) holds; from the download, "
          "'bayes-pfl' gives the same images with elliptical masks, so only its image-level figures compare.",
    sample=sample)
