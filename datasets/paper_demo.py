"""The paper-table demo: several datasets of the papers' tables, each written as a miniature raw
download in its source's exact layout and prepared by its own converter.

    python -m datasets.paper_demo --out DIR     # DIR/raw/<name> (the downloads), DIR/<name> (prepared)

It exercises the whole chain of ``PRESET=paper bash test.sh`` (raw download, converter, test,
table beside the published figures) in seconds. The miniature sets are tiny, so their counts
differ from the papers' (the converter says so) and their figures mean nothing.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from datasets import raw
from datasets.prepare import convert
from utils.errors import exit_with
from utils.log import setup_logging

log = logging.getLogger("zsad.datasets")

# one of each kind: masks and normal images, classification-only, no normal test images
DEMO = ("mvtec", "btad", "headct", "isic")


def generate(out: Path, names: Sequence[str] = DEMO) -> None:
    for name in names:
        source = out / "raw" / name
        raw.get(name).sample(source)
        convert(name, source, out / name)
    log.info("prepared %s under %s (miniature downloads in %s)", ", ".join(names), out, out / "raw")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the downloads and the prepared sets")
    parser.add_argument("--datasets", nargs="+", default=list(DEMO), help="which datasets (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging()
    generate(args.out, args.datasets)
    return 0


if __name__ == "__main__":
    exit_with(main)
