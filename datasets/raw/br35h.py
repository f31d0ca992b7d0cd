"""Br35H :: Brain Tumor Detection 2020 (Hamada, Kaggle): 3000 MRI slices, half with a tumour."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, need_dir, need_images, write_image
from datasets.raw.common import add_label_folders
from datasets.scan import list_dirs

CLASS = "brain"


def _top(root: Path) -> Path:
    return root / "Br35H" if (root / "Br35H" / "no").is_dir() else root


def build_labelled(root: Path, plan: Plan) -> None:
    """no/ normal, yes/ anomalous; the unlabelled pred/ folder is left out."""
    top = _top(root)
    add_label_folders(plan, CLASS, {top / "no": 0, top / "yes": 1}, specie="yes")


def build_every_folder(root: Path, plan: Plan) -> None:
    """Every top folder but no/ is anomalous, as AnomalyCLIP's generator lists them: with the
    download's pred/ present, its 60 unlabelled slices count as tumours."""
    top = _top(root)
    need_dir(top / "no", "the normal slices")
    for folder in list_dirs(top):
        label = int(folder.name != "no")
        for img in need_images(folder, f"slices of {folder.name}/"):
            plan.add("test", CLASS, folder.name if label else "good", label, img)


def sample(root: Path, protocol: str = "") -> Sample:
    for folder, prefix in (("no", "no"), ("yes", "y"), ("pred", "pred")):
        for i in range(2 if folder != "pred" else 1):
            write_image(root / folder / f"{prefix}{i}.jpg", seed=i,
                        defect=(8, 8, 16, 16) if folder == "yes" else None)
    return Sample(class_dir=root / "yes", images=[root / "no" / "no1.jpg"])


DATASET = RawDataset(
    name="br35h", title="Br35H", order=32, kind="medical", aliases=("br35",),
    url="https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection",
    licence="unknown (Kaggle upload without a stated licence)",
    checked="the reference code and Bayes-PFL's published file list (meta_Br35H.json)",
    layout="yes/yN.jpg (1500 tumours), no/noN.jpg (1500 normal), pred/predN.jpg (60 unlabelled)",
    protocols=(Protocol("adaclip", "yes/ anomalous and no/ normal, 3000 slices; pred/ (unlabelled) left out",
                        ("Bayes-PFL", "AdaCLIP"), "caoyunkang/AdaCLIP@e27ee32:data_preprocess/br35h.py",
                        build_labelled),
               Protocol("anomalyclip", "every folder but no/ anomalous, pred/ included (3060 slices)",
                        ("AnomalyCLIP",), "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/br35.py",
                        build_every_folder)),
    notes="Classification-only: pixel metrics are n/a. Which protocol FAPrompt's table used is not stated in its "
          "code; its counts are not published.",
    sample=sample)
