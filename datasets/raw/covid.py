"""COVID-19 Radiography Database (Chowdhury et al. 2020; Rahman et al. 2021): chest X-rays by diagnosis."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, write_image
from datasets.raw.common import add_label_folders, first_dir, image_folder

CLASS = "chest"


def build(root: Path, plan: Plan) -> None:
    """Normal radiographs normal, COVID-19 ones anomalous; the lung-opacity and viral-pneumonia folders
    are left out, and the lung masks are not defect masks (none written)."""
    top = first_dir(root, ("COVID-19_Radiography_Dataset", "."), "the diagnosis folders")
    normal = first_dir(top, ("Normal", "NORMAL"), "the normal radiographs")
    # releases with lung masks keep each diagnosis's radiographs in an images/ sub-folder
    add_label_folders(plan, CLASS, {image_folder(normal, "images", "the normal radiographs"): 0,
                                    image_folder(top / "COVID", "images", "the COVID-19 radiographs"): 1},
                      specie="covid")


def sample(root: Path, protocol: str = "") -> Sample:
    top = root / "COVID-19_Radiography_Dataset"
    for folder, n in (("COVID", 2), ("Normal", 3), ("Lung_Opacity", 1), ("Viral Pneumonia", 1)):
        for i in range(1, n + 1):
            write_image(top / folder / "images" / f"{folder}-{i}.png", seed=i, gray=True,
                        defect=(8, 8, 16, 16) if folder != "Normal" else None)
            write_image(top / folder / "masks" / f"{folder}-{i}.png", seed=i, gray=True)
        (top / f"{folder}.metadata.xlsx").write_bytes(b"PK")
    return Sample(class_dir=top / "COVID", images=[top / "Normal" / "images" / "Normal-2.png"])


DATASET = RawDataset(
    name="covid", title="COVID-19 Radiography Database", order=35, kind="medical", aliases=("covid-19", "covid19"),
    url="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
    licence="see the Kaggle page (research use with citation)",
    checked="the reference code only",
    layout="COVID-19_Radiography_Dataset/{COVID,Normal,Lung_Opacity,Viral Pneumonia}/{images,masks}/<Class>-N.png "
           "(299x299; masks are lung fields) and <Class>.metadata.xlsx; earlier releases: images directly in the "
           "class folders, NORMAL for Normal",
    protocols=(Protocol("anomalyclip", "Normal normal, COVID anomalous, the other diagnoses left out; no masks",
                        ("AnomalyCLIP",), "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/covid.py", build),),
    notes="Classification-only. AnomalyCLIP's generator counts every folder but NORMAL of its own copy as "
          "anomalous; which diagnoses that copy held is not in its code. The two classes here give the "
          "database's Normal and COVID counts; a different copy shows up as a count difference.",
    sample=sample)
