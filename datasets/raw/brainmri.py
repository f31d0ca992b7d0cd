"""Brain MRI images for brain tumour detection (Chakrabarty, Kaggle 2019): 253 slices, 155 with a tumour."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, need_images, write_image
from datasets.raw.common import first_dir

CLASS = "brain_ct"  # Bayes-PFL's class name ("brain ct" in its prompts)


def _build(keep_normal: Callable[[Path], bool], keep_tumour: Callable[[Path], bool]):
    def build(root: Path, plan: Plan) -> None:
        top = first_dir(root, ("brain_tumor_dataset", "."), "the yes/ and no/ folders")
        for folder, label, keep in (("no", 0, keep_normal), ("yes", 1, keep_tumour)):
            for img in need_images(top / folder, f"{'tumour' if label else 'normal'} slices"):
                if keep(img):
                    plan.add("test", CLASS, "tumor" if label else "good", label, img)
    return build


def _sample(root: Path, protocol: str = "") -> Sample:
    top = root / "brain_tumor_dataset"
    names = {"no": ("1 no.jpeg", "N1.JPG", "No12.jpg", "no 9.png", "no.jpg"),
             "yes": ("Y1.jpg", "Y100.JPG", "Y109.JPG", "Y20.jpeg")}
    for folder, files in names.items():
        for i, name in enumerate(files):
            write_image(top / folder / name, seed=i, defect=(8, 8, 16, 16) if folder == "yes" else None)
    return Sample(class_dir=top / "yes", images=[top / "yes" / "Y100.JPG"])


# Bayes-PFL lists its prepared folders with case-sensitive globs: '*.jpg' for the normal slices and
# '*.JPG' for the tumours. On the Kaggle download that keeps 85 of the 98 normal and 68 of the 155
# tumour slices: the 153 images (68 anomalous) of its published meta.json.
DATASET = RawDataset(
    name="brainmri", title="BrainMRI", order=31, kind="medical", aliases=("brain_mri", "brain-mri"),
    url="https://www.kaggle.com/datasets/navoneel/brain-mri-images-for-brain-tumor-detection",
    licence="unknown (Kaggle upload without a stated licence)",
    checked=("a real copy (kianpaya/Brain-tumor-cnn@f631020): both protocols converted with --strict; 'bayes-pfl' "
             "selects exactly the 153 slices of Bayes-PFL's meta_BrainMRI.json"),
    layout="brain_tumor_dataset/{yes,no}/<name>.{jpg,JPG,jpeg,png} (also yes/ and no/ at the top): 155 tumour "
           "and 98 normal slices, mixed names and extensions",
    protocols=(Protocol("anomalyclip", "all 253 slices: no/ normal, yes/ anomalous; no masks",
                        ("FAPrompt", "AnomalyCLIP"), "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/brainmri.py",
                        _build(lambda p: True, lambda p: True)),
               Protocol("bayes-pfl", "no/*.jpg normal and yes/*.JPG anomalous (case-sensitive): 153 slices",
                        ("Bayes-PFL",), "xiaozhen228/Bayes-PFL@8f155a0:dataset/datasets/BrainMRI.py",
                        _build(lambda p: p.suffix == ".jpg", lambda p: p.suffix == ".JPG"))),
    notes="Classification-only: pixel metrics are n/a. The 253 of the download against Bayes-PFL's 153 is the "
          "'bayes-pfl' protocol's extension filter, checked on a real copy of the download.",
    sample=_sample)
