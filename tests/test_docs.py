"""The repository explains itself: its docs point at what exists, and its code keeps its layers.

* every relative link of README.md and docs/ reaches a file (and a heading, with ``#anchor``),
  and every repository path they name in inline code exists;
* the README stays a front door (at most 200 lines) and holds the methods table the registry
  gives (``python -m tools.methods_table --write``);
* no code cites a document the repository does not have;
* no method name is compared with a string literal outside the registry;
* the project's imports form no circle, and tests import nothing from benchmarks/.
"""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Set

from tools import datasets_table, methods_table

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets", "engine", "models", "utils", "tools", "benchmarks")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SUFFIXES = (".py", ".md", ".sh", ".json", ".txt", ".toml", ".cff", ".npz", ".html")


def _tracked() -> List[str]:
    """The checkout's files: tracked and untracked-not-ignored."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).exists()]


def _markdown() -> List[Path]:
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    assert len(pages) >= 15, "docs/ holds the pages of the README's map"
    return pages


def _anchors(page: Path) -> Set[str]:
    """GitHub's heading anchors of a page."""
    slugs = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return slugs


def test_every_relative_link_and_named_path_exists():
    checked = 0
    for page in _markdown():
        text = FENCE.sub("", page.read_text())  # commands in code blocks name example paths
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.relative_to(ROOT)}: link to {target} reaches nothing"
            if anchor and resolved.suffix == ".md":
                assert anchor in _anchors(resolved), f"{page.relative_to(ROOT)}: no heading #{anchor} in {path}"
            checked += 1
        for span in CODE.findall(text):
            candidate = span.strip().split("::")[0].split(":")[0]
            if " " in candidate or any(c in candidate for c in "<>*{}$=") or candidate.startswith(("-", "http")):
                continue
            if not (candidate.endswith(SUFFIXES) or candidate.endswith("/")) or "/" not in candidate:
                continue
            exists = (ROOT / candidate).exists() or (page.parent / candidate).exists()
            assert exists, f"{page.relative_to(ROOT)} names `{span}`, which is not in the repository"
            checked += 1
    assert checked >= 100


def test_readme_is_a_front_door_with_the_registry_table():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert methods_table.replaced(readme) == readme, "run: python -m tools.methods_table --write"
    for name in methods_table.methods.names():
        assert f"`{name}`" in readme


def test_datasets_page_holds_what_the_converters_give():
    page = (ROOT / "docs" / "datasets.md").read_text()
    assert datasets_table.render(page) == page, "run: python -m tools.datasets_table --write"
    for name in datasets_table.raw.names():
        assert f"`--dataset {name}`" in page


def test_code_cites_no_missing_document():
    files = [f for f in _tracked() if f.endswith((".py", ".sh"))]
    assert len(files) > 80
    for name in files:
        text = (ROOT / name).read_text()
        internal = "S" + "PEC"  # the maintainers' method notes, which users do not have (spelled apart: this file)
        assert not re.search(rf"\b{internal}\b", text), f"{name} cites {internal}, which is not in the repository"
        for cited in re.findall(r"\bdocs/[\w/]+\.md", text):
            assert (ROOT / cited).is_file(), f"{name} cites {cited}, which does not exist"


def test_no_method_name_literal_outside_the_registry():
    names = "|".join(methods_table.methods.names())
    pattern = re.compile(rf"[\"']({names})[\"']")
    scope = [f for f in _tracked() if f.endswith(".py") and (f.startswith("engine/") or f in (
        "models/model.py", "models/factory.py", "models/interface.py", "models/config.py", "train.py", "test.py"))]
    assert len(scope) >= 15
    for name in scope:
        found = pattern.findall((ROOT / name).read_text())
        assert not found, f"{name} names the method(s) {found}: read the registry (models/methods/) instead"


def _imports(path: Path, module: str) -> Set[str]:
    """Project modules ``module`` imports anywhere in its file (function-level imports too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES or name in ("train", "test")}


def _graph() -> Dict[str, Set[str]]:
    files = [f for f in _tracked() if f.endswith(".py") and f.split("/")[0] in PACKAGES + ("train.py", "test.py")]
    modules = {f[:-3].replace("/", ".").removesuffix(".__init__"): ROOT / f for f in files}
    graph = {}
    for module, path in modules.items():
        graph[module] = {name for name in _imports(path, module) if name in modules and name != module}
    return graph


def test_no_import_circles():
    graph = _graph()
    assert len(graph) > 60
    state: Dict[str, int] = {}

    def visit(node: str, trail: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [node, nxt])
                                     if nxt in trail else f"import circle through {node} -> {nxt}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_layers_point_down():
    """utils <- datasets <- models <- engine <- scripts; benchmarks and tools on top."""
    rank = {"utils": 0, "datasets": 1, "models": 2, "engine": 3, "train": 4, "test": 4}
    for module, targets in _graph().items():
        own = rank.get(module.split(".")[0])
        if own is None:
            continue
        for target in targets:
            other = rank.get(target.split(".")[0], 5)
            assert other <= own, f"{module} (layer {own}) imports {target} (layer {other})"


def test_tests_import_nothing_from_benchmarks():
    tests = sorted((ROOT / "tests").glob("*.py"))
    assert len(tests) > 20
    for path in tests:
        for name in _imports(path, path.stem):
            assert not name.startswith("benchmarks"), f"{path.name} imports {name}"
