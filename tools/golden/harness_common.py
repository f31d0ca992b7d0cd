"""Scaffolding shared by the golden harnesses (``tools/golden/harness_*.py``): their command line,
a temporary copy of an official checkout with exact, counted edits, and the checkout's commit.

Standard library only. Each harness imports it inside the functions its command line runs,
where its own folder is first on the path (a checkout may bring a ``tools`` package of its own, as
AdaCLIP's does, so ``tools.golden`` is not the way in there)."""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Tuple


def command_line(doc: str, reference: str) -> Tuple[Path, Path, Optional[str]]:
    """(the checkout, the output .npz, the commit given) from ``--official``, ``--out``, ``--commit``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--official", required=True, help=f"a checkout of {reference}")
    parser.add_argument("--out", required=True)
    parser.add_argument("--commit", default=None, help="the checkout's commit, where it is not a git work tree")
    args = parser.parse_args()
    return Path(args.official).resolve(), Path(args.out).resolve(), args.commit


def copy_checkout(official: Path, name: str, *skipped: str) -> Path:
    """A copy of ``official`` in a new temporary folder, without .git and the ``skipped`` entries."""
    work = Path(tempfile.mkdtemp()) / name
    shutil.copytree(official, work, ignore=shutil.ignore_patterns(".git", *skipped))
    return work


def rewrite(path: Path, pattern: str, replacement: str, count: int, what: str) -> None:
    """Replace the regular expression ``pattern`` in ``path``: exactly ``count`` matches, else stop
    (the official code changed, so the edit must be looked at again)."""
    source, found = re.subn(pattern, replacement, path.read_text())
    if found != count:
        raise SystemExit(f"{path}: expected {count} {what}, found {found}")
    path.write_text(source)


def commit_of(official: Path, given: Optional[str]) -> str:
    """``given``, else the checkout's HEAD, else "unknown"."""
    return given or subprocess.run(["git", "-C", str(official), "rev-parse", "HEAD"], capture_output=True,
                                   text=True).stdout.strip() or "unknown"
