"""Time utils.metrics.pixel_metrics against the scikit-learn + regionprops baseline.

Run from anywhere: ``python benchmarks/metrics.py [--images 100] [--size 518]``.

One synthetic category (``utils.synthetic_maps``: smooth float32 maps, a few blobs in every
other mask) is scored by (a) ``pixel_metrics`` (AUROC, AP, F1-max, AUPRO, legacy PRO from one
sort) and (b) the usual baseline: scikit-learn's ``roc_auc_score``, ``average_precision_score`` and
``precision_recall_curve`` plus the 200-threshold ``regionprops`` PRO loop. Both times,
their ratio and the agreement of the shared metrics are printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: E402

from utils.metrics import pixel_metrics  # noqa: E402
from utils.metrics_reference import legacy_pro, sklearn_f1_max  # noqa: E402
from utils.synthetic_maps import synthetic_category  # noqa: E402


def baseline(masks: np.ndarray, maps: np.ndarray) -> tuple[dict, float, float]:
    """scikit-learn curves plus the classic per-threshold regionprops PRO loop
    (``utils.metrics_reference``). Returns the metrics, the scikit-learn seconds and the
    PRO-loop seconds."""
    start = time.perf_counter()
    labels, scores = masks.ravel(), maps.ravel()
    out = {
        "auroc": roc_auc_score(labels, scores),
        "ap": average_precision_score(labels, scores),
        "f1_max": sklearn_f1_max(labels, scores),
    }
    sklearn_seconds = time.perf_counter() - start

    start = time.perf_counter()
    out["pro_legacy"] = legacy_pro(masks, maps)
    return out, sklearn_seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of pixel_metrics")
    args = parser.parse_args()

    masks, maps = (t.numpy() for t in synthetic_category(args.images, args.size, args.seed))
    print(f"category: {args.images} images of {args.size}x{args.size} = {maps.size:,} pixels, "
          f"{int(masks.sum()):,} anomalous")
    pixel_metrics(masks[:2, :32, :32], maps[:2, :32, :32])  # one-time library warm-up

    times = []
    for _ in range(max(1, args.repeats)):
        start = time.perf_counter()
        ours = pixel_metrics(masks, maps)
        times.append(time.perf_counter() - start)
    ours_seconds = min(times)
    runs = ", ".join(f"{t:.2f}" for t in times)
    print(f"(a) pixel_metrics, full suite:        {ours_seconds:8.2f} s  (best of: {runs})")

    reference, sklearn_seconds, pro_seconds = baseline(masks, maps)
    base_seconds = sklearn_seconds + pro_seconds
    print(f"(b) baseline sklearn AUROC+AP+F1:     {sklearn_seconds:8.2f} s")
    print(f"    baseline 200-threshold PRO loop:  {pro_seconds:8.2f} s")
    print(f"    baseline total:                   {base_seconds:8.2f} s")
    print(f"speed-up (b) / (a):                   {base_seconds / ours_seconds:8.1f} x")

    print("metric       ours              baseline          |difference|")
    for key in ("auroc", "ap", "f1_max", "pro_legacy", "aupro"):
        theirs = reference.get(key)
        diff = f"{abs(ours[key] - theirs):.2e}" if theirs is not None else "-"
        theirs_text = f"{theirs:.12f}" if theirs is not None else "-"
        print(f"{key:12s} {ours[key]:.12f}    {theirs_text:16s}  {diff}")
    agree = all(abs(ours[k] - reference[k]) <= 1e-9 for k in ("auroc", "ap", "f1_max"))
    print("AUROC/AP/F1-max agree with scikit-learn to 1e-9:", "yes" if agree else "NO")
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
