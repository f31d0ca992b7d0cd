"""Results of an evaluation: per-category metrics with their curves and F1-optimal thresholds,
the tables (results.md/json/csv) and the per-image files (maps, scores.csv).

Metrics are macro-averaged over categories (docs/metrics.md); each category's metrics, curves
and thresholds come from one sort per level (:mod:`utils.metrics`), on the GPU when the model
runs there; the curves feed the HTML report (:mod:`engine.report`).
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tabulate import tabulate

from engine.evaluation import CategoryOutputs, pixel_inputs
from utils.io import atomic_open, write_json, write_text
from utils.metrics import Evaluation, evaluate_images, evaluate_pixels, macro_mean

IMAGE_KEYS = ("auroc", "ap", "f1_max")
PIXEL_KEYS = ("auroc", "ap", "f1_max", "aupro", "pro_legacy")
COLUMN_NAMES = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1_max": "I-F1max",
                "pixel_auroc": "P-AUROC", "pixel_ap": "P-AP", "pixel_f1_max": "P-F1max",
                "pixel_aupro": "P-AUPRO", "pixel_pro_legacy": "P-PRO(legacy)"}
METRIC_CHOICES = {"image": ("image",), "pixel": ("pixel",), "image-pixel": ("image", "pixel"),
                  "image-level": ("image",), "pixel-level": ("pixel",), "image-pixel-level": ("image", "pixel")}
Thresholds = Dict[str, Optional[Dict[str, float]]]


@dataclass
class CategoryResult:
    """One category's metrics (``image_*``/``pixel_*``, None where undefined) and the
    evaluations they came from (None for a level not requested or without data)."""

    metrics: Dict[str, Optional[float]]
    image: Optional[Evaluation] = None
    pixel: Optional[Evaluation] = None

    def thresholds(self) -> Thresholds:
        """``{"image": ..., "pixel": ...}``: the F1-optimal threshold with its precision,
        recall and F1, or None where F1-max is undefined."""
        out: Thresholds = {}
        for level, evaluation in (("image", self.image), ("pixel", self.pixel)):
            point = evaluation.best_f1() if evaluation is not None else None
            out[level] = asdict(point) if point is not None else None
        return out


def evaluate_category(cat: CategoryOutputs, scores: torch.Tensor, kinds: Sequence[str],
                      device: Optional[torch.device] = None) -> CategoryResult:
    """Image and pixel metrics of one category with their curves (pixel metrics on
    :func:`metrics_device`)."""
    result = CategoryResult({})
    if "image" in kinds:
        result.image = evaluate_images(np.array(cat.labels), scores.numpy())
        result.metrics.update({f"image_{k}": v for k, v in result.image.metrics.items()})
    if "pixel" in kinds:
        inputs = pixel_inputs(cat, device)
        if inputs is not None:
            result.pixel = evaluate_pixels(*inputs)
            values = result.pixel.metrics
        else:
            values = dict.fromkeys(PIXEL_KEYS)
        result.metrics.update({f"pixel_{k}": v for k, v in values.items()})
    return result


def columns(kinds: Sequence[str]) -> List[str]:
    cols = []
    if "image" in kinds:
        cols += [f"image_{k}" for k in IMAGE_KEYS]
    if "pixel" in kinds:
        cols += [f"pixel_{k}" for k in PIXEL_KEYS]
    return cols


def percent(value: Optional[float]) -> str:
    """A metric as the tables print it: percent with one decimal, "n/a" where undefined."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def results_table(per_category: Dict[str, Dict[str, Optional[float]]], mean: Dict[str, Optional[float]],
                  kinds: Sequence[str], fmt: str = "pipe") -> str:
    """Per-category table in percent (one decimal), "n/a" where undefined, macro mean last."""
    cols = columns(kinds)
    rows = [[name] + [percent(m.get(c)) for c in cols] for name, m in per_category.items()]
    rows.append(["mean"] + [percent(mean.get(c)) for c in cols])
    return tabulate(rows, headers=["category"] + [COLUMN_NAMES[c] for c in cols], tablefmt=fmt,
                    disable_numparse=True)


def write_results(save_path: Path, per_category: Dict[str, Dict[str, Optional[float]]], kinds: Sequence[str],
                  info: Dict[str, Any],
                  thresholds: Optional[Dict[str, Thresholds]] = None) -> Dict[str, Optional[float]]:
    """Write results.md, results.json (with each category's F1-optimal ``thresholds``) and
    results.csv atomically; return the macro mean."""
    mean = macro_mean(per_category)
    table = results_table(per_category, mean, kinds)
    header = "\n".join(f"- {k}: {v}" for k, v in info.items() if not isinstance(v, dict))
    write_text(save_path / "results.md",
               f"# Results\n\n{header}\n\nMetrics in percent, macro mean over categories. "
               "P-AUPRO is the MVTec AD AUPRO (FPR ≤ 0.3); P-PRO(legacy) is the 200-threshold PRO "
               "of the FAPrompt/AnomalyCLIP tables. n/a: undefined for that category.\n\n" + table + "\n")
    write_json(save_path / "results.json", {**info, "per_category": per_category, "mean": mean,
                                            "metrics": columns(kinds), "thresholds": thresholds or {}})
    cols = columns(kinds)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["category"] + cols)
    for name, m in list(per_category.items()) + [("mean", mean)]:
        writer.writerow([name] + ["" if m.get(c) is None else f"{m[c]:.6f}" for c in cols])
    write_text(save_path / "results.csv", buffer.getvalue())
    return mean


def decision(score: float, threshold: Optional[float]) -> str:
    """The decision column: 1 (anomalous) when score >= threshold, 0, or "" without one."""
    return "" if threshold is None else str(int(float(score) >= threshold))


class ScoreWriter:
    """``scores.csv``: every image's path, category, label, image score, class probability,
    map score and map file, and its decision at the category's F1-optimal image threshold;
    few-shot runs add the few-shot score (the maximum of the few-shot map) last."""

    HEADER = ["img_path", "category", "label", "image_score", "class_prob", "map_score", "map_file", "decision"]

    def __init__(self, path: Path, fewshot: bool = False):
        self.path = path
        self.header = self.HEADER + ["fewshot_score"] * fewshot
        self.rows: List[List[Any]] = []

    def add(self, cat: CategoryOutputs, scores: torch.Tensor, map_files: Sequence[str],
            threshold: Optional[float] = None) -> None:
        for i, p in enumerate(cat.paths):
            self.rows.append([p, cat.name, cat.labels[i] if cat.labels[i] >= 0 else "",
                              f"{float(scores[i]):.6f}", f"{cat.class_prob[i]:.6f}",
                              f"{cat.map_score[i]:.6f}", map_files[i] if map_files else "",
                              decision(float(scores[i]), threshold)] + fewshot_cells(cat, i))

    def write(self) -> None:
        with atomic_open(self.path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(self.rows)


def fewshot_cells(cat: CategoryOutputs, i: int) -> List[str]:
    """Image i's ``fewshot_score`` cell of scores.csv (none in a zero-shot run)."""
    return [f"{v:.6f}" for v in cat.fewshot_score[i:i + 1]]


def map_file_name(root: Path, dataset_root: Path, img_path: str) -> Path:
    """maps/<path relative to the dataset root>.npy (unique per image)."""
    try:
        rel = Path(img_path).resolve().relative_to(dataset_root.resolve())
    except ValueError:
        rel = Path(Path(img_path).name)
    return root / rel.with_suffix(".npy")


def save_maps(cat: CategoryOutputs, root: Path, dataset_root: Path) -> List[str]:
    """Write each image's smoothed float32 map; return the relative file names."""
    names = []
    for i, path in enumerate(cat.paths):
        target = map_file_name(root, dataset_root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(target, "wb") as handle:
            np.save(handle, cat.maps[i].numpy().astype(np.float32))
        names.append(str(target.relative_to(root.parent)))
    return names
