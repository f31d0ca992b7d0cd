"""Known counts: what each dataset holds after each protocol, per class (known_counts.csv).

Every row gives one class's test normal, test anomalous, train normal images and masks, with its
source (a published meta.json, a paper, or the reference preprocessing); an empty cell is a count
nobody has published, which is not compared. The converter compares
the data it found with these rows, so a user knows whether they hold the papers' data: a
difference is a warning, or an error with ``--strict``.
"""
from __future__ import annotations

import csv
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from tabulate import tabulate

KNOWN_COUNTS = Path(__file__).with_name("known_counts.csv")
COLUMNS = ("dataset", "protocol", "class", "test_normal", "test_anomalous", "train_normal", "masks", "source")
FIELDS = ("test normal", "test anomalous", "train normal", "masks")
Counts = Tuple[Optional[int], Optional[int], Optional[int], Optional[int]]


def load_known(path: Path = KNOWN_COUNTS) -> Dict[Tuple[str, str], "OrderedDict[str, Tuple[Counts, str]]"]:
    """``{(dataset, protocol): {class: ((test normal, test anomalous, train normal, masks), source)}}``."""
    table: Dict[Tuple[str, str], "OrderedDict[str, Tuple[Counts, str]]"] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
    if tuple(rows[0]) != COLUMNS:
        raise ValueError(f"{path}: header must be {','.join(COLUMNS)}")
    for row in rows[1:]:
        key = (row[0], row[1])
        counts = tuple(int(v) if v.strip() else None for v in row[3:7])
        table.setdefault(key, OrderedDict())[row[2]] = (counts, row[7])
    return table


def compare(found: Mapping[str, Counts], known: Optional[Mapping[str, Tuple[Counts, str]]]
            ) -> Tuple[str, List[str]]:
    """(a per-class table of found vs expected counts, one line per difference)."""
    if known is None:
        rows = [[cls, *counts, ""] for cls, counts in found.items()]
        return tabulate(rows, headers=["class", *FIELDS, "expected"]), []
    differences: List[str] = []
    rows = []
    for cls in list(known) + [c for c in found if c not in known]:
        have = found.get(cls)
        want = known[cls][0] if cls in known else None
        if have is None:
            differences.append(f"class {cls} is missing (expected {_describe(want)})")
        elif want is None:
            differences.append(f"class {cls} is not in the papers' data ({_describe(have)})")
        elif not _matches(have, want):
            diff = ", ".join(f"{name} {h} (expected {w})" for name, h, w in zip(FIELDS, have, want)
                             if w is not None and h != w)
            differences.append(f"class {cls}: {diff}")
        cells = have if have is not None else ("-",) * 4
        same = have is not None and want is not None and _matches(have, want)
        rows.append([cls, *cells, "yes" if same else " / ".join("?" if w is None else str(w) for w in want)
                     if want else "not known"])
    return tabulate(rows, headers=["class", *FIELDS, "as expected (else expected)"]), differences


def _matches(have: Counts, want: Counts) -> bool:
    """Every known expected count equals the one found."""
    return all(w is None or h == w for h, w in zip(have, want))


def _describe(counts: Optional[Counts]) -> str:
    if counts is None:
        return "none"
    return ", ".join(f"{name} {'?' if n is None else n}" for name, n in zip(FIELDS, counts))
