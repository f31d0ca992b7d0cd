"""Head CT - hemorrhage (Kitamura, Kaggle 2018): 200 head CT slices, 100 with a hemorrhage; image labels only."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, read_csv, write_image
from utils.errors import UserError

LABELS = "labels.csv"
CLASS = "head_ct"  # Bayes-PFL's prompts say "head ct"; the other methods use "object"


def _images_dir(root: Path) -> Path:
    for candidate in (root / "head_ct" / "head_ct", root / "head_ct"):  # the Kaggle zip nests the folder
        if candidate.is_dir():
            return candidate
    raise UserError(f"{root} has no head_ct/ folder of images; is --root the Kaggle download?")


def build(root: Path, plan: Plan) -> None:
    """``labels.csv`` (id, hemorrhage) names each slice ``{id:03d}.png``: hemorrhage 1 is anomalous, 0
    normal; all 200 are test images, none training (AdaCLIP's headct-pre)."""
    images = _images_dir(root)
    labels = next((p for p in (root / LABELS, root / "head_ct" / LABELS) if p.is_file()), root / LABELS)
    rows = read_csv(labels, ("id", "hemorrhage"), "the slice labels")
    if not rows:
        raise UserError(f"{labels} has no rows; restore it from the download")
    for n, row in enumerate(rows, start=2):
        if not row["id"].isdigit() or row["hemorrhage"] not in ("0", "1"):
            raise UserError(f"{labels} line {n}: expected an integer id and hemorrhage 0/1, got "
                            f"{row['id']!r}, {row['hemorrhage']!r}")
        label = int(row["hemorrhage"])
        plan.add("test", CLASS, "hemorrhage" if label else "good", label, images / f"{int(row['id']):03d}.png")


def sample(root: Path, protocol: str = "") -> Sample:
    lines = ["id, hemorrhage"]
    for i in range(4):
        write_image(root / "head_ct" / "head_ct" / f"{i:03d}.png", seed=i, gray=True,
                    defect=(8, 8, 16, 16) if i < 2 else None)
        lines.append(f"{i},{int(i < 2)}")
    (root / LABELS).write_text("\n".join(lines) + "\n")
    return Sample(label_files=[root / LABELS], class_dir=root / "head_ct",
                  images=[root / "head_ct" / "head_ct" / "003.png"])


DATASET = RawDataset(
    name="headct", title="HeadCT", order=30, kind="medical", aliases=("head_ct", "head-ct"),
    url="https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
    licence="CC BY-SA 4.0 (Kaggle)",
    checked=("a real copy (NeiderSmith/head_ct_dataset@5cafd87): converted with --strict, the same 200 slices and "
             "labels as Bayes-PFL's meta_HeadCT.json"),
    layout="head_ct/NNN.png (000..199; RGB and RGBA) and labels.csv ('id, hemorrhage': 1 for 000..099), at the top "
           "or inside head_ct/ (mirrors differ)",
    protocols=(Protocol("adaclip", "every slice as a test image, hemorrhage 1 anomalous; no masks",
                        ("FAPrompt", "Bayes-PFL", "AnomalyCLIP"),
                        "caoyunkang/AdaCLIP@e27ee32:data_preprocess/headct-pre.py", build),),
    notes="Classification-only: pixel metrics are n/a. Bayes-PFL's meta.json gives its anomalous slices a "
          "mask path; no mask ships with the download, so none is written here.",
    sample=sample)
