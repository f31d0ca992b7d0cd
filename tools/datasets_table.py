"""docs/datasets.md's per-dataset sections, generated from the converters (``datasets/raw/``) and
their known counts (``datasets/raw/known_counts.csv``).

    python -m tools.datasets_table            # print the sections
    python -m tools.datasets_table --write    # replace them in docs/datasets.md between the markers

``tests/test_docs.py`` checks that docs/datasets.md holds what the converters give.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets import raw  # noqa: E402
from datasets.raw.counts import load_known  # noqa: E402

DOC = ROOT / "docs" / "datasets.md"
START, END = "<!-- datasets:start -->", "<!-- datasets:end -->"


def _sum(rows, i: int) -> str:
    """The total of one count over the classes, "?" where a class's count is not published."""
    values = [counts[i] for counts, _ in rows.values()]
    return "?" if None in values else str(sum(values))


def _totals(rows) -> str:
    sums = [_sum(rows, i) for i in range(4)]
    sources = sorted({source for _, source in rows.values()})
    return (f"{len(rows)} class(es): {sums[0]} normal and {sums[1]} anomalous test images, {sums[2]} normal "
            f"training images, {sums[3]} masks ({'; '.join(sources)})")


def overview() -> str:
    lines = ["| `--dataset` | dataset | kind | `--protocol` (default first) | test images (normal / anomalous) |",
             "|---|---|---|---|---|"]
    known = load_known()
    for d in raw.registry().values():
        rows = known.get((d.name, d.default.name), {})
        lines.append(f"| [`{d.name}`](#{d.name}) | {d.title} | {d.kind} | "
                     f"{', '.join(p.name for p in d.protocols)} | {_sum(rows, 0)} / {_sum(rows, 1)} |")
    return "\n".join(lines)


def sections() -> str:
    known = load_known()
    parts = [overview()]
    for d in raw.registry().values():
        lines = [f"### {d.name}", "", f"**{d.title}** (`--dataset {d.name}`)", "",
                 f"- Source: {d.url}", f"- Licence: {d.licence}", f"- Raw layout: {d.layout}",
                 f"- Layout checked against: {d.checked}"]
        if d.aliases:
            lines.append(f"- Also accepted: {', '.join(f'`{a}`' for a in d.aliases)}")
        for p in d.protocols:
            rows = known.get((d.name, p.name))
            lines += [f"- Protocol `{p.name}`{' (default)' if p is d.default else ''}: {p.summary}. "
                      f"Used by {', '.join(p.papers)}; reference `{p.reference}`.",
                      f"  Expected: {_totals(rows) if rows else 'no published counts'}."]
        if d.notes:
            lines.append(f"- Note: {d.notes}")
        lines += ["", "```bash", f"python -m datasets.prepare --dataset {d.name} --root /downloads/{d.name} "
                  f"--out data/{d.name}", "```"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def render(text: str) -> str:
    """``text`` with the generated part between the markers replaced."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{sections()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="update docs/datasets.md in place")
    args = parser.parse_args()
    if args.write:
        DOC.write_text(render(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(sections())
    return 0


if __name__ == "__main__":
    sys.exit(main())
