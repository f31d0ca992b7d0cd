"""ELPV (Deitsch et al., 2019): electroluminescence images of solar cells, graded defect probabilities."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, need_file, write_image
from datasets.raw.common import add_seeded_split
from utils.errors import UserError

CLASS = "elpv"
LABELS = "labels.csv"


def _data_dir(root: Path) -> Path:
    """The folder of labels.csv: the top (the classic layout) or src/elpv_dataset/data (since 2024)."""
    for candidate in (root, root / "src" / "elpv_dataset" / "data"):
        if (candidate / LABELS).is_file():
            return candidate
    need_file(root / LABELS, "the cell labels")
    return root


def _read_labels(path: Path):
    """(image, defect probability, module type) per line; whitespace-separated, no header."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            rows.append((parts[0], float(parts[1]), parts[2]))
        except (IndexError, ValueError):
            raise UserError(f"{path} line {n}: expected 'images/cellNNNN.png probability type', got {line.strip()!r}")
    if not rows:
        raise UserError(f"{path} has no rows; restore it from the download")
    return rows


def build(root: Path, plan: Plan) -> None:
    """Probability 0 normal, 1 anomalous (species mono/poly by module type), 1/3 and 2/3 left out. The
    normal cells are split 75/25 into train and test by scikit-learn's ``train_test_split`` with
    ``random_state=42`` over labels.csv's order, as the DRA/InCTRL converter does."""
    data = _data_dir(root)
    rows = _read_labels(data / LABELS)
    normal = [r[0] for r in rows if r[1] == 0.0]
    if not normal:
        raise UserError(f"{data / LABELS} lists no cell with defect probability 0; is it ELPV's labels.csv?")
    for name, probability, kind in rows:
        if probability == 1.0:
            plan.add("test", CLASS, kind, 1, data / name)
    add_seeded_split(plan, CLASS, [(Path(name).name, data / name) for name in normal])


def sample(root: Path, protocol: str = "") -> Sample:
    lines = []
    grades = [(0.0, "mono")] * 5 + [(1.0, "mono"), (1.0, "poly"), (1 / 3, "poly"), (2 / 3, "mono"), (0.0, "poly")]
    for i, (probability, kind) in enumerate(grades, start=1):
        write_image(root / "images" / f"cell{i:04d}.png", size=(30, 30), seed=i, gray=True,
                    defect=(10, 10, 20, 20) if probability else None)
        lines.append(f"images/cell{i:04d}.png  {probability!r:<20}{kind}")
    (root / LABELS).write_text("\n".join(lines) + "\n")
    return Sample(label_files=[root / LABELS], class_dir=root / "images", images=[root / "images" / "cell0006.png"])


DATASET = RawDataset(
    name="elpv", title="ELPV", order=10, aliases=("elpv-dataset",),
    url="https://github.com/zae-bayern/elpv-dataset",
    licence="CC BY-NC-SA 4.0",
    checked="a real copy (zae-bayern/elpv-dataset@411fd72): converted with --strict, every count as expected",
    layout="images/cellNNNN.png (300x300 grey) and labels.csv (no header, whitespace-separated: path, defect "
           "probability 0, 1/3, 2/3 or 1, module type mono/poly); since 2024 under src/elpv_dataset/data/",
    protocols=(Protocol("dra", "probability 0 normal (75/25 train/test, seed 42), 1 anomalous (mono, poly), "
                               "1/3 and 2/3 left out; no masks", ("FAPrompt",),
                        "mala-lab/InCTRL@cc535d0:datasets/preprocess/convert_elpv.py (the DRA converter)", build),),
    notes="Classification-only: pixel metrics are n/a.",
    sample=sample)
