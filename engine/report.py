"""``report.html``: a test run's results to look at, written into ``--save_path``.

The page holds the per-category metrics table with the macro mean, the F1-optimal decision
thresholds, one section per category and the run configuration. A section shows the ROC,
precision-recall and PRO (FPR <= 0.3) curves and the histogram of image scores with the
threshold marked (one PNG, ``report/<category>_curves.png``), then thumbnails of the
highest-scoring images, the missed anomalies (anomalous images with the lowest scores) and the
false alarms (normal images with the highest scores) under ``report/<category>/``. The curves
are the metrics' own points (:class:`utils.metrics.Evaluation`), downsampled for plotting, and
are also written as ``curves/<category>_{roc,pr,pro}.csv``. The page loads nothing from the
network: it is one HTML file with inline CSS and relative links to the PNGs next to it.

Cost per category: one matplotlib figure and at most ``3 * examples`` thumbnails, whatever the
size of the category; the maps are already in memory.
"""
from __future__ import annotations

import csv
import datetime
import html
import io
import logging
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote

import cv2
import numpy as np
import torch

from engine.evaluation import CategoryOutputs
from engine.results import COLUMN_NAMES, CategoryResult, Thresholds, columns, percent
from utils.io import write_text
from utils.metrics import PLOT_POINTS, Curve, OperatingPoint
from utils.plots import category_figure
from utils.visualize import load_rgb, panel, write_png

log = logging.getLogger("zsad.report")

EXAMPLES = 4
THUMB_SIZE = 200  # pixels of each half of a thumbnail; the page shows them at 150
CURVE_COLUMNS = {"roc": ("fpr", "tpr"), "pr": ("recall", "precision"), "pro": ("fpr", "pro")}
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1400px;
color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}
h3{font-size:1em;margin:1.2em 0 .4em}.muted{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}tr.mean td{font-weight:bold;background:#fafafa}
table.config td,table.config th{text-align:left;vertical-align:top}
img.curves{width:100%;max-width:1280px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;font-size:.8em;max-width:310px}figure img{height:150px;display:block}
.arg{white-space:nowrap}
figcaption{word-break:break-all}.wrong{color:#b00020;font-weight:bold}.right{color:#2e7d32}
"""


@dataclass
class Example:
    """One thumbnail: its file (relative to the page), image path, score and label."""

    file: str
    source: str
    score: float
    label: int


@dataclass
class Section:
    name: str
    anchor: str
    figure: str
    normal: int
    anomalous: int
    threshold: Optional[float]
    groups: List[Tuple[str, str, List[Example]]] = field(default_factory=list)
    csv_files: List[str] = field(default_factory=list)


class Report:
    """Collects each category's figures while the evaluation runs; :meth:`write` writes the page.

    Args:
        save_path: the run's ``--save_path`` (the page goes there).
        dataset_root: image paths in captions are shown relative to it.
        examples: thumbnails per group (top scores, missed anomalies, false alarms).
    """

    def __init__(self, save_path: Path, dataset_root: Path, examples: int = EXAMPLES,
                 max_points: int = PLOT_POINTS):
        self.save_path, self.dataset_root = Path(save_path), Path(dataset_root)
        self.examples, self.max_points = examples, max_points
        self.sections: List[Section] = []
        self._names: set = set()

    # ---- per category
    def add(self, cat: CategoryOutputs, scores: torch.Tensor, result: CategoryResult) -> None:
        """Write the category's curves (CSV and figure) and thumbnails."""
        stem = self._file_stem(cat.name)
        curves = self._curves(result)
        points = {level: ev.best_f1() if ev is not None else None
                  for level, ev in (("image", result.image), ("pixel", result.pixel))}
        values, labels = scores.double().numpy(), np.array(cat.labels)
        figure = f"report/{stem}_curves.png"
        category_figure(self.save_path / figure, cat.name, curves, result.metrics, points, values, labels)
        threshold = points["image"].threshold if points["image"] else None
        section = Section(cat.name, f"cat-{stem}", figure, int((labels == 0).sum()), int((labels == 1).sum()),
                          threshold, csv_files=self._write_csv(stem, curves))
        section.groups = self._examples(cat, stem, values, labels, points["pixel"])
        self.sections.append(section)

    def _file_stem(self, name: str) -> str:
        stem = re.sub(r"[^\w.-]+", "_", name) or "category"
        while stem in self._names:  # two names that differ only in unsafe characters
            stem += "_"
        self._names.add(stem)
        return stem

    def _curves(self, result: CategoryResult) -> Dict[str, Optional[Curve]]:
        """``{level}_{roc|pr}`` and ``pixel_pro``, downsampled (None where undefined)."""
        curves: Dict[str, Optional[Curve]] = {}
        for level, evaluation in (("image", result.image), ("pixel", result.pixel)):
            if evaluation is None:
                continue
            found = {"roc": evaluation.roc(), "pr": evaluation.pr()}
            if level == "pixel":
                found["pro"] = evaluation.pro()
            for kind, curve in found.items():
                curves[f"{level}_{kind}"] = curve.downsample(self.max_points) if curve is not None else None
        return curves

    def _write_csv(self, stem: str, curves: Dict[str, Optional[Curve]]) -> List[str]:
        """``curves/<category>_{roc,pr,pro}.csv``: level, threshold, x, y (full float precision;
        threshold inf flags nothing, nan marks the PRO point interpolated at FPR 0.3)."""
        written = []
        for kind, (x_name, y_name) in CURVE_COLUMNS.items():
            rows = [[level, *(format(float(v), ".17g") for v in values)]
                    for level in ("image", "pixel") if curves.get(f"{level}_{kind}") is not None
                    for values in zip(curves[f"{level}_{kind}"].thresholds, curves[f"{level}_{kind}"].x,
                                      curves[f"{level}_{kind}"].y)]
            name = f"curves/{stem}_{kind}.csv"
            if not rows:  # no such curve in this run: drop a previous run's file
                (self.save_path / name).unlink(missing_ok=True)
                continue
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["level", "threshold", x_name, y_name])
            writer.writerows(rows)
            write_text(self.save_path / name, buffer.getvalue())
            written.append(name)
        return written

    def _examples(self, cat: CategoryOutputs, stem: str, scores: np.ndarray, labels: np.ndarray,
                  pixel_point: Optional[OperatingPoint]) -> List[Tuple[str, str, List[Example]]]:
        """The three thumbnail groups; each image is rendered once, on the category's colour scale."""
        k = self.examples
        descending = np.argsort(-scores, kind="stable")
        groups = [
            ("Highest scores", "the images the model finds most anomalous", list(descending[:k])),
            ("Worst misses: anomalous", "anomalous images with the lowest scores",
             [i for i in descending[::-1] if labels[i] == 1][:k]),
            ("Worst misses: normal", "normal images with the highest scores",
             [i for i in descending if labels[i] == 0][:k]),
        ]
        low = float(min(m.min() for m in cat.maps))
        high = float(max(m.max() for m in cat.maps))
        files: Dict[int, str] = {}
        out = []
        for title, note, index in groups:
            examples = []
            for i in map(int, index):
                if i not in files:
                    files[i] = f"report/{stem}/{i:04d}.png"
                    self._thumbnail(cat, i, low, high, pixel_point, self.save_path / files[i])
                examples.append(Example(files[i], self._relative(cat.paths[i]), float(scores[i]), int(labels[i])))
            out.append((title, note, examples))
        return out

    def _thumbnail(self, cat: CategoryOutputs, i: int, low: float, high: float,
                   pixel_point: Optional[OperatingPoint], target: Path) -> None:
        """Drawn at thumbnail size, so that the outlines stay visible (2 px)."""
        amap = cat.maps[i].numpy()
        predicted = amap >= pixel_point.threshold if pixel_point is not None else None
        mask = cat.masks[i].numpy() > 0.5 if cat.has_mask[i] else None
        size = (THUMB_SIZE, THUMB_SIZE)
        small = {name: None if m is None else cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
                 for name, m in (("mask", mask), ("predicted", predicted))}
        amap = cv2.resize(amap, size, interpolation=cv2.INTER_AREA)
        write_png(target, panel(load_rgb(cat.paths[i], THUMB_SIZE), amap, small["mask"], low, high,
                                predicted=small["predicted"], thickness=2))

    def _relative(self, path: str) -> str:
        try:
            return str(Path(path).resolve().relative_to(self.dataset_root.resolve()))
        except ValueError:
            return Path(path).name

    # ---- the page
    def write(self, per_category: Dict[str, Dict[str, Optional[float]]], mean: Dict[str, Optional[float]],
              kinds: Sequence[str], info: Dict[str, Any], thresholds: Dict[str, Thresholds]) -> Path:
        """Write ``report.html`` atomically and return its path."""
        title = f"{info.get('method', '')} on {info.get('dataset', '')}".strip()
        anchors = {s.name: s.anchor for s in self.sections}
        parts = [
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>Anomaly detection report: {_e(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>Anomaly detection report: {_e(title)}</h1>",
            f'<p class="muted">written {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}; metrics in percent, '
            "macro mean over categories; full precision in results.json and results.csv.</p>",
            "<h2>Metrics</h2>", _metrics_table(per_category, mean, kinds, anchors),
            '<p class="muted">P-AUPRO: the MVTec AD AUPRO (FPR ≤ 0.3); P-PRO(legacy): the 200-threshold PRO of the '
            "FAPrompt/AnomalyCLIP tables; n/a: undefined for that category.</p>",
            "<h2>Decision thresholds</h2>", _thresholds_table(thresholds, anchors),
            '<p class="muted">F1-optimal thresholds: an image (pixel) is flagged anomalous when its score is at or '
            "above the threshold. Apply them to new images with <code>python test.py --image ... --class_name "
            "CATEGORY --thresholds results.json</code>.</p>",
        ]
        for section in self.sections:
            parts.append(_section_html(section))
        parts += ["<h2>Run configuration</h2>", _config_table(info), "</body></html>"]
        path = self.save_path / "report.html"
        write_text(path, "\n".join(parts) + "\n")
        log.info("report: %s", path)
        return path


# ---- HTML pieces
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Tuple[str, Sequence[str]]], table_id: str,
           css: str = "") -> str:
    """rows: (row class, cells as HTML)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cls, cells in rows)
    return f'<table id="{table_id}" class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _link(name: str, anchors: Dict[str, str]) -> str:
    return f'<a href="#{anchors[name]}">{_e(name)}</a>' if name in anchors else _e(name)


def _metrics_table(per_category, mean, kinds, anchors) -> str:
    cols = columns(kinds)
    rows = [("", [_link(name, anchors)] + [percent(m.get(c)) for c in cols]) for name, m in per_category.items()]
    rows.append(("mean", ["mean"] + [percent(mean.get(c)) for c in cols]))
    return _table(["category"] + [COLUMN_NAMES[c] for c in cols], rows, "metrics")


def _thresholds_table(thresholds: Dict[str, Thresholds], anchors) -> str:
    headers = ["category"] + [f"{level} {what}" for level in ("image", "pixel")
                              for what in ("threshold", "precision", "recall", "F1")]
    rows = []
    for name, levels in thresholds.items():
        cells = [_link(name, anchors)]
        for level in ("image", "pixel"):
            point = levels.get(level)
            cells += (["n/a"] * 4 if point is None else
                      [f"{point['threshold']:.6g}"] + [percent(point[k]) for k in ("precision", "recall", "f1")])
        rows.append(("", cells))
    return _table(headers, rows, "thresholds")


def _section_html(section: Section) -> str:
    links = ", ".join(f'<a href="{quote(f)}">{_e(Path(f).name)}</a>' for f in section.csv_files)
    threshold = "n/a" if section.threshold is None else f"{section.threshold:.6g}"
    parts = [
        f'<h2 id="{section.anchor}">{_e(section.name)}</h2>',
        f'<p class="muted">{section.normal} normal and {section.anomalous} anomalous images; F1-optimal image '
        f"threshold {threshold}. Curve points: {links or 'none'}.</p>",
        f'<img class="curves" src="{quote(section.figure)}" alt="curves of {_e(section.name)}">',
        '<p class="muted">Thumbnails: the image with the ground truth in green and, in magenta, the pixels at or '
        "above the F1-optimal pixel threshold; beside it the anomaly map (blue low, red high, one scale per "
        "category). The decision at the image threshold is green where right, red where wrong.</p>",
    ]
    for title, note, examples in section.groups:
        parts.append(f'<h3>{_e(title)} <span class="muted">({_e(note)})</span></h3><div class="grid">')
        if not examples:
            parts.append('<p class="muted">none in this category</p>')
        for ex in examples:
            verdict = ""
            if section.threshold is not None:  # green where the decision is right, red where wrong
                flagged = ex.score >= section.threshold
                css = "right" if int(flagged) == ex.label else "wrong"
                verdict = f' · <span class="{css}">{"flagged" if flagged else "passed"}</span>'
            kind = {1: "anomalous", 0: "normal"}.get(ex.label, "")
            parts.append(f'<figure><img src="{quote(ex.file)}" alt="{_e(ex.source)}"><figcaption>score '
                         f"{ex.score:.4g} · {kind}{verdict}<br>{_e(ex.source)}</figcaption></figure>")
        parts.append("</div>")
    return "\n".join(parts)


def _config_table(info: Dict[str, Any]) -> str:
    rows = [("", [_e(k), _e(v)]) for k, v in info.items() if not isinstance(v, dict)]
    rows.append(("", ["command", " ".join(f'<span class="arg">{_e(shlex.quote(a))}</span>' for a in sys.argv)]))
    for key, value in info.items():
        if isinstance(value, dict):
            rows += [("", [_e(f"{key}.{k}"), _e(v)]) for k, v in value.items()]
    return _table(["setting", "value"], rows, "config", css="config")
