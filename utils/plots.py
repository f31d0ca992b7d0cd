"""Curve and score-histogram figures of one category for the HTML report (matplotlib, Agg).

Figures are built with matplotlib's object API on an Agg canvas, so nothing touches pyplot's
global state or needs a display, and the import happens only when a figure is drawn.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from utils.io import write_bytes
from utils.metrics import MAX_FPR, Curve, OperatingPoint

LEVEL_STYLE = {"image": {"color": "#1f77b4", "ls": "-"}, "pixel": {"color": "#d62728", "ls": "--"}}
NORMAL_COLOUR, ANOMALOUS_COLOUR = "#2ca02c", "#d62728"


def _label(level: str, name: str, value: Optional[float]) -> str:
    return f"{level} ({name} {'n/a' if value is None else f'{100 * value:.1f}'})"


def category_figure(path: Path, title: str, curves: Dict[str, Optional[Curve]], metrics: Dict[str, Optional[float]],
                    points: Dict[str, Optional[OperatingPoint]], scores: np.ndarray, labels: np.ndarray,
                    dpi: int = 80) -> None:
    """Write one PNG with four panels: ROC, precision-recall, PRO (FPR <= 0.3) and the
    histogram of image scores of normal vs anomalous images with the F1-optimal threshold.

    Args:
        curves: ``{level}_{roc|pr}`` for level image/pixel and ``pixel_pro``; None = absent.
        metrics: the category's ``image_*``/``pixel_*`` values, for the legends.
        points: the F1-optimal operating point per level (``image``, ``pixel``) or None.
        scores, labels: image scores and 0/1 labels (N,) of the category.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 3.8), dpi=dpi)
    FigureCanvasAgg(fig)
    roc, pr, pro, hist = fig.subplots(1, 4)
    for level, style in LEVEL_STYLE.items():
        curve = curves.get(f"{level}_roc")
        if curve is not None:
            roc.plot(curve.x, curve.y, label=_label(level, "AUROC", metrics.get(f"{level}_auroc")), **style)
        curve = curves.get(f"{level}_pr")
        if curve is not None:
            # AP weighs each recall step by the precision at its lower threshold: a step plot
            pr.step(np.append(curve.x, 0.0), np.append(curve.y, curve.y[-1]), where="post",
                    label=_label(level, "AP", metrics.get(f"{level}_ap")), **style)
            point = points.get(level)
            if point is not None:
                pr.plot([point.recall], [point.precision], "o", color=style["color"], ms=7,
                        label=f"{level} F1-max {100 * point.f1:.1f}")
    curve = curves.get("pixel_pro")
    if curve is not None:
        pro.plot(curve.x, curve.y, label=_label("pixel", "AUPRO", metrics.get("pixel_aupro")), **LEVEL_STYLE["pixel"])
    roc.plot([0, 1], [0, 1], color="0.75", lw=0.8)
    _axes(roc, "ROC", "false positive rate", "true positive rate", (0, 1))
    _axes(pr, "precision-recall", "recall", "precision", (0, 1))
    _axes(pro, f"PRO (FPR ≤ {MAX_FPR:g})", "false positive rate", "per-region overlap", (0, MAX_FPR))
    _histogram(hist, scores, labels, points.get("image"))
    fig.suptitle(title, fontsize=12, fontweight="bold", x=0.01, ha="left")
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.14, top=0.86, wspace=0.22)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes(path, buffer.getvalue())


def _axes(ax, title: str, xlabel: str, ylabel: str, xlim) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_xlim(*xlim)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "undefined for this category", ha="center", va="center", transform=ax.transAxes,
                color="0.4", fontsize=9)


def _histogram(ax, scores: np.ndarray, labels: np.ndarray, point: Optional[OperatingPoint]) -> None:
    edges = np.histogram_bin_edges(scores, bins=int(np.clip(len(scores) // 3, 5, 40)))
    groups = [(scores[labels == label], f"{name} ({int((labels == label).sum())})", colour)
              for label, name, colour in ((0, "normal", NORMAL_COLOUR), (1, "anomalous", ANOMALOUS_COLOUR))
              if (labels == label).any()]
    if groups:  # side by side in each bin, so that neither class hides the other
        values, names, colours = zip(*groups)
        ax.hist(list(values), bins=edges, color=list(colours), label=list(names))
    if point is not None:
        ax.axvline(point.threshold, color="k", ls="--", lw=1.2, label=f"F1-opt threshold {point.threshold:.4g}")
    ax.set_title("image scores", fontsize=10)
    ax.set_xlabel("image score", fontsize=9)
    ax.set_ylabel("images", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
