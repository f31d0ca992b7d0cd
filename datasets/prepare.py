"""Prepare a dataset for training and testing: write its AnomalyCLIP-style meta.json.

Two ways (docs/datasets.md, docs/data.md):

* ``--dataset NAME --root RAW [--out DIR] [--protocol P] [--strict] [--copy]``: convert the
  original download of a dataset of the papers' tables with the preprocessing their numbers came
  from (:mod:`datasets.raw`), into ``DIR`` (default ``data/NAME``); the download is only read.
  The counts found are compared with the papers' (a warning, an error with ``--strict``).
* ``--layout {mvtec,visa,folder} --root PATH [--out FILE]``: write ``PATH/meta.json`` for data
  already in one of three folder layouts (your own data: ``folder``).

``--list`` prints every dataset with its protocols.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from tabulate import tabulate

from datasets import raw
from datasets.layouts import LAYOUTS, build_meta, build_mvtec, match_masks, summary_table  # noqa: F401
from datasets.raw.base import Plan
from datasets.raw.counts import compare, load_known
from datasets.raw.writer import write_plan
from utils.errors import UserError, exit_with
from utils.io import write_json
from utils.log import setup_logging

log = logging.getLogger("zsad.datasets")


def write_meta(layout: str, root: Path, out: Optional[Path] = None) -> Path:
    """Build and atomically write meta.json (default ``root/meta.json``); return its path."""
    meta = build_meta(layout, root)
    out = Path(out) if out is not None else Path(root).expanduser() / "meta.json"
    write_json(out, meta)
    log.info("per-class summary (%s layout):\n%s", layout, summary_table(meta))
    log.info("wrote %s", out)
    return out


def describe(plan: Plan) -> str:
    """What metrics the prepared data can have: classification-only (no masks), or classes
    without normal test images (all anomalous), where tables print n/a."""
    counts = plan.counts()
    notes = []
    if not any(c[3] for c in counts.values()):
        notes.append("classification-only (no masks): pixel metrics are n/a")
    no_normal = [cls for cls, c in counts.items() if c[1] and not c[0]]
    if no_normal:
        notes.append(f"no normal test images in {', '.join(no_normal)}: image metrics are n/a there")
    no_train = [cls for cls, c in counts.items() if not c[2]]
    if len(no_train) == len(counts):
        notes.append("no normal training images: few-shot runs need reference images from elsewhere")
    return "; ".join(notes)


def convert(name: str, root: Path, out: Optional[Path] = None, protocol: Optional[str] = None,
            strict: bool = False, copy: bool = False) -> Path:
    """Convert the raw download of dataset ``name`` under ``root`` into ``out``; return meta.json's path."""
    dataset = raw.get(name)
    proto = dataset.protocol(protocol)
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder; pass the top folder of the {dataset.title} download")
    plan = Plan(root)
    proto.build(root, plan)
    if not plan.meta["test"]:
        raise UserError(f"no test images found under {root} for {dataset.name}; "
                        f"is --root the {dataset.title} download?")
    found = plan.counts()
    known = load_known().get((dataset.name, proto.name))
    table, differences = compare(found, known)
    log.info("%s, protocol %s (%s):\n%s", dataset.title, proto.name, proto.summary, table)
    note = describe(plan)
    if note:
        log.info("%s: %s", dataset.name, note)
    source = "; ".join(sorted({src for _, src in known.values()})) if known else ""
    if known is None:
        log.warning("no published counts for %s with protocol %s: the counts above are not checked", dataset.name,
                    proto.name)
    elif differences:
        if strict:
            raise UserError(f"{dataset.name} ({proto.name}) differs from the papers' data: {differences[0]}"
                            f"{f' (and {len(differences) - 1} more)' if len(differences) > 1 else ''}; "
                            "nothing written (drop --strict to prepare it anyway)")
        log.warning("%s differs from the papers' data (%s) in %d class(es), e.g. %s", dataset.name, source,
                    len(differences), differences[0])
    else:
        log.info("%s: every count matches the papers' data (%s)", dataset.name, source)
    out = Path(out) if out is not None else Path("data") / dataset.name
    provenance = {"dataset": dataset.name, "protocol": proto.name, "reference": proto.reference,
                  "source": str(root), "counts": {cls: dict(zip(("test_normal", "test_anomalous", "train_normal",
                                                                    "masks"), c)) for cls, c in found.items()},
                  "matches_known_counts": None if known is None else not differences}
    meta_path = write_plan(plan, out, provenance, copy=copy)
    log.info("wrote %s (%d files)", meta_path, len(plan.files))
    return meta_path


def list_table() -> str:
    rows = []
    for dataset in raw.registry().values():
        rows.append([dataset.name, dataset.title, dataset.kind,
                     ", ".join(f"{p.name}{' (default)' if p is dataset.default else ''}" for p in dataset.protocols)])
    return tabulate(rows, headers=["--dataset", "dataset", "kind", "--protocol"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", help="a dataset of the papers' tables, converted from its original download "
                                         "(--list shows them)")
    which.add_argument("--layout", help="data already in a folder layout: " + ", ".join(LAYOUTS))
    which.add_argument("--list", action="store_true", help="list the datasets and their protocols")
    parser.add_argument("--root", type=Path, help="the original download (--dataset) or the dataset root (--layout)")
    parser.add_argument("--out", type=Path, default=None,
                        help="--dataset: output folder (default data/NAME); --layout: output file "
                             "(default ROOT/meta.json)")
    parser.add_argument("--protocol", default=None, help="--dataset: the preprocessing lineage (default: the "
                                                         "dataset's first; --list shows them)")
    parser.add_argument("--strict", action="store_true",
                        help="--dataset: stop when the counts differ from the papers' data")
    parser.add_argument("--copy", action="store_true",
                        help="--dataset: copy the files instead of linking them to the download")
    args = parser.parse_args(argv)
    setup_logging()
    if args.list:
        print(list_table())
        return 0
    if args.root is None:
        parser.error("--root is required")
    if args.layout is not None:
        unused = [flag for flag, on in (("--protocol", args.protocol), ("--strict", args.strict),
                                        ("--copy", args.copy)) if on]
        if unused:
            raise UserError(f"{', '.join(unused)} only apply with --dataset")
        write_meta(args.layout, args.root, args.out)
    else:
        convert(args.dataset, args.root, args.out, args.protocol, args.strict, args.copy)
    return 0


if __name__ == "__main__":
    exit_with(main)
