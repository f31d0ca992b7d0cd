"""VisA (Zou et al., ECCV 2022): 12 object classes, pixel masks; the split comes with the download."""
from __future__ import annotations

from pathlib import Path

from datasets.raw.base import Plan, Protocol, RawDataset, Sample, read_csv, write_image, write_mask
from utils.errors import UserError

SPLIT = "split_csv/1cls.csv"


def build(root: Path, plan: Plan) -> None:
    """Every row of ``split_csv/1cls.csv`` (object, split, label, image, mask), in file order:
    the one-class split of the VisA paper, which AnomalyCLIP's generator reads too."""
    rows = read_csv(root / SPLIT, ("object", "split", "label", "image", "mask"), "VisA's one-class split")
    if not rows:
        raise UserError(f"{root / SPLIT} has no rows; restore it from the VisA download")
    for n, row in enumerate(rows, start=2):
        if row["split"] not in ("train", "test") or row["label"] not in ("normal", "anomaly"):
            raise UserError(f"{root / SPLIT} line {n}: split must be train/test and label normal/anomaly, got "
                            f"{row['split']!r}, {row['label']!r}")
        anomalous = row["label"] == "anomaly"
        if anomalous and not row["mask"]:
            raise UserError(f"{root / SPLIT} line {n}: anomalous image {row['image']} has no mask")
        plan.add(row["split"], row["object"], "bad" if anomalous else "good", int(anomalous), root / row["image"],
                 root / row["mask"] if anomalous else None)


def sample(root: Path, protocol: str = "") -> Sample:
    lines = ["object,split,label,image,mask"]
    for cls in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, seed=i)
            lines.append(f"{cls},{'train' if i < 2 else 'test'},normal,{rel},")
        for i in range(2):
            rel, mask = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG", f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / rel, seed=10 + i, defect=(4, 4, 12, 10))
            write_mask(root / mask, value=1)  # VisA masks may store 1 for defects; > 0 is a defect
            lines.append(f"{cls},test,anomaly,{rel},{mask}")
        (root / cls / "image_anno.csv").write_text("image,label,mask\n")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / SPLIT).write_text("\n".join(lines) + "\n")
    return Sample(label_files=[root / SPLIT], class_dir=root / "candle",
                  image_with_mask=(root / "pcb1/Data/Images/Anomaly/001.JPG", root / "pcb1/Data/Masks/Anomaly/001.png"),
                  images=[root / "candle/Data/Images/Normal/0002.JPG"])


DATASET = RawDataset(
    name="visa", title="VisA", order=2,
    url="https://github.com/amazon-science/spot-diff (VisA_20220922.tar)",
    licence="CC BY 4.0",
    checked=("the download's own split file (amazon-science/spot-diff@2a692ab split_csv/1cls.csv, all 10,821 rows, "
             "with stand-in images): every count as expected"),
    layout="CLS/Data/Images/{Normal/NNNN.JPG, Anomaly/NNN.JPG}, CLS/Data/Masks/Anomaly/NNN.png, CLS/image_anno.csv, "
           "split_csv/1cls.csv (object, split, label, image, mask; paths relative to the top folder)",
    protocols=(Protocol("anomalyclip", "the one-class split of split_csv/1cls.csv", ("FAPrompt", "Bayes-PFL",
                                                                                      "AnomalyCLIP"),
                        "zqhang/AnomalyCLIP@45ed4dd:generate_dataset_json/visa.py", build),),
    sample=sample)
