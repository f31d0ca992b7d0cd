"""The README's methods table, generated from the method registry (``models/methods/``).

    python -m tools.methods_table            # print the table
    python -m tools.methods_table --write    # replace it in README.md between its two markers

``tests/test_docs.py`` checks that README.md holds the table the registry gives.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import methods  # noqa: E402

START, END = "<!-- methods-table:start -->", "<!-- methods-table:end -->"


def table() -> str:
    """One row per registered method, in listing order."""
    rows = ["| `--method` | method | paper | recipe (epochs, batch, seed) | official checkpoints | docs |",
            "|---|---|---|---|---|---|"]
    for entry in methods.registry().values():
        paper = "—" if entry.paper is None else \
            f"[{entry.paper.venue}]({entry.paper.url}), [code](https://github.com/{entry.paper.code})"
        recipe = "training-free" if entry.recipe is None else \
            f"{entry.recipe.epochs}, {entry.recipe.batch_size}, {entry.recipe.seed}"
        official = "load" if entry.checkpoint is not None else "—"
        docs = f"[{entry.name}]({entry.docs})"
        rows.append(f"| `{entry.name}` | {entry.title} | {paper} | {recipe} | {official} | {docs} |")
    return "\n".join(rows)


def replaced(text: str) -> str:
    """``text`` (the README) with the table between the markers replaced by the current one."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md needs one {START} line before one {END} line")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    if not args.write:
        print(table())
        return 0
    readme = ROOT / "README.md"
    readme.write_text(replaced(readme.read_text()))
    print(f"wrote the methods table into {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
