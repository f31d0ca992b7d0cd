"""The paper table: our figures on every prepared dataset beside the published ones.

    python -m tools.paper_table --results DIR [--data_root DATA_ROOT]

``DIR`` holds one test.py results folder per dataset, ``DIR/<dataset>/results.json`` (what
``PRESET=paper bash test.sh`` writes). The table has one row per dataset and metric: our macro
mean, the figures FAPrompt, Bayes-PFL and AnomalyCLIP published for that dataset
(``tools/published_results.csv``, every row with its source table), and our difference from the
published figure of the method that was tested. "n/a" marks a metric the data cannot have (no
masks, no normal images); "–" a figure the paper does not report. Datasets of ``datasets/raw``
without results are listed as not found. Writes ``DIR/paper_table.md`` and ``DIR/paper_table.csv``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tabulate import tabulate  # noqa: E402

from datasets import raw  # noqa: E402
from utils.errors import UserError, exit_with  # noqa: E402
from utils.io import write_text  # noqa: E402
from utils.log import setup_logging  # noqa: E402

PUBLISHED = Path(__file__).with_name("published_results.csv")
# (published column, label, our results.json key): the papers' PRO is the 200-threshold legacy PRO.
METRICS = (("image_auroc", "I-AUROC", "image_auroc"), ("image_ap", "I-AP", "image_ap"),
           ("pixel_auroc", "P-AUROC", "pixel_auroc"), ("pixel_pro", "P-PRO", "pixel_pro_legacy"))
PAPERS = (("faprompt", "FAPrompt"), ("bayes_pfl", "Bayes-PFL"), ("anomalyclip", "AnomalyCLIP"))
COLUMNS = ("method", "dataset", "trained_on", "image_auroc", "image_ap", "pixel_auroc", "pixel_pro", "provenance",
           "source", "table", "note")
PROVENANCE = ("paper", "quoted")  # from the paper's own table, or quoted from it by a third party (marked *)

Published = Dict[Tuple[str, str], Dict[str, Any]]


def load_published(path: Path = PUBLISHED) -> Tuple[Published, Dict[str, str]]:
    """``({(method, dataset): {metric: percent or None, "trained_on": auxiliary set}}, {method: its sources})``."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    table: Published = {}
    sources: Dict[str, set] = {}
    for row in rows:
        key = (row["method"], row["dataset"])
        if key in table:
            raise ValueError(f"{path}: two rows for {key}")
        table[key] = {m: float(row[m]) if row[m].strip() else None for m, _, _ in METRICS}
        table[key]["trained_on"] = row["trained_on"]
        table[key]["quoted"] = row["provenance"] == "quoted"
        sources.setdefault(row["method"], set()).add(f"{row['source']} {row['table']}".strip())
    return table, {m: "; ".join(sorted(s)) for m, s in sources.items()}


def collect(results: Path) -> Dict[str, dict]:
    """``{dataset: results.json}`` of every ``results/<dataset>/results.json``."""
    found = {}
    for path in sorted(results.glob("*/results.json")):
        try:
            found[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"cannot read {path} ({err}); rerun that dataset")
    return found


def _cell(value: Optional[float], quoted: bool = False) -> str:
    return "–" if value is None else f"{value:.1f}{'*' if quoted else ''}"


def trained_on(result: dict) -> Optional[str]:
    """The auxiliary dataset our checkpoint was trained on (train.py records it), else None."""
    training = result.get("training") or {}
    return training.get("dataset") if isinstance(training, dict) else None


def training_set(result: dict) -> str:
    """What the training-set table says of one of our results."""
    if not result.get("training") and str(result.get("checkpoint", "")).startswith("none"):
        return "training-free"
    return trained_on(result) or "not recorded"


def order(ours: Dict[str, dict]) -> List[str]:
    """Datasets in the registry's (the papers' tables') order, unknown names last."""
    return [name for name in raw.names() if name in ours] + sorted(set(ours) - set(raw.names()))


def rows(ours: Dict[str, dict], published: Published) -> List[List[str]]:
    """One row per (dataset, metric): dataset, metric, ours, each paper's figure, difference."""
    out = []
    for dataset in order(ours):
        result = ours[dataset]
        method = result.get("method", "")
        for column, label, key in METRICS:
            if key not in result.get("metrics", []):
                continue
            value = result.get("mean", {}).get(key)
            mine = None if value is None else 100 * value
            theirs = [published.get((paper, dataset), {}) for paper, _ in PAPERS]
            paper = published.get((method, dataset), {})
            same = paper.get(column)
            ours_on = trained_on(result)
            if mine is None or same is None:
                diff = ""
            elif ours_on is not None and ours_on != paper["trained_on"]:
                diff = f"n/c (trained on {ours_on}, paper on {paper['trained_on']})"
            else:
                diff = f"{mine - same:+.1f}"
            out.append([dataset, label, "n/a" if mine is None else f"{mine:.1f}",
                        *(_cell(row.get(column), row.get("quoted", False)) for row in theirs), diff])
    return out


def write_table(results: Path, data_root: Optional[Path], published_path: Path = PUBLISHED) -> str:
    ours = collect(results)
    if not ours:
        raise UserError(f"no results found in {results}/<dataset>/results.json; run PRESET=paper bash test.sh first")
    published, sources = load_published(published_path)
    methods = sorted({r.get("method", "?") for r in ours.values()})
    headers = ["dataset", "metric", f"ours ({', '.join(methods)})", *(name for _, name in PAPERS),
               "ours − same method"]
    body = rows(ours, published)
    missing = [n for n in raw.names() if n not in ours]
    unprepared = [n for n in missing if data_root is not None and not (data_root / n / "meta.json").is_file()]
    failed = [n for n in missing if n not in unprepared]
    text = ["# Zero-shot results beside the published figures", "",
            "Our macro means in percent (test.py results under " f"`{results}`); published figures from "
            "`tools/published_results.csv`. n/a: the data cannot have that metric (no masks, or no normal "
            "images); –: not on record (not reported, or the paper's table is not in the CSV yet); *: quoted from "
            "the paper by a third party, not checked against the paper. P-PRO is the 200-threshold PRO the papers "
            "report (our `pixel_pro_legacy`).",
            "", tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True), ""]
    text += ["", "Auxiliary training set behind each figure (n/c above: not comparable, the training sets differ):", "",
             tabulate([[d, training_set(ours[d]), *(published.get((p, d), {}).get("trained_on", "–")
                                                     for p, _ in PAPERS)] for d in order(ours)],
                      headers=["dataset", "ours", *(name for _, name in PAPERS)], tablefmt="pipe"), "", "Sources:", ""]
    text += [f"- {name}: {sources.get(paper, 'no published figures on record')}" for paper, name in PAPERS]
    shown = {paper for paper, _ in PAPERS}  # a tested method without a column: its figures give the difference
    text += [f"- {m} (the difference column): {sources[m]}" for m in methods if m not in shown and m in sources]
    if unprepared:
        text += ["", f"Not found (no <name>/meta.json under {data_root}): {', '.join(unprepared)}"]
    if failed:
        text += ["", f"Not found (no results{' although prepared' if data_root else ''}): {', '.join(failed)}"]
    markdown = "\n".join(text) + "\n"
    write_text(results / "paper_table.md", markdown)
    buffer = io.StringIO()
    csv.writer(buffer).writerows([headers, *body])
    write_text(results / "paper_table.csv", buffer.getvalue())
    return markdown


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", required=True, type=Path, help="folder with one results folder per dataset")
    parser.add_argument("--data_root", type=Path, default=None, help="where the datasets were looked for")
    args = parser.parse_args(argv)
    setup_logging()
    print(write_table(args.results, args.data_root))
    return 0


if __name__ == "__main__":
    exit_with(main)
