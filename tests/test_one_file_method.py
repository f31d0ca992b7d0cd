"""Adding a method is one file: docs/adding_a_method.md, done on a copy of the repository.

The copy gets one new file, ``models/methods/cap_rca.py`` (FAPrompt's CAP prompts without the
DAP prior, read by Bayes-PFL's RCA head: a new preset of existing parts), and nothing else.
``train.py`` trains it one epoch and ``test.py`` tests its checkpoint, each in its own process
as a user runs them; ``--help`` lists it, and the copy without the file does not know it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

METHOD_FILE = '''"""cap_rca: CAP prompts read by the RCA head (an example preset of existing parts)."""
from models.methods.base import Method, Recipe, frozen
from models.scoring import ScoreRule

METHOD = Method(
    name="cap_rca",
    title="CAP + RCA",
    paper=None,
    docs="docs/adding_a_method.md",  # the example of that page
    order=50,
    preset=frozen(dict(prompt_structure="cap", class_word="object", dap=False, flows="none", pixel_head="rca",
                       image_head="fixed", sigma=4.0)),
    backbone=frozen({"pos_interpolation": "bilinear"}),
    recipe=Recipe(epochs=1, batch_size=4, seed=5, lr=frozen({"all": 1e-3})),
    score=ScoreRule(fusion="prob", map_score="topk", topk=100),
)
'''


def _copy_repository(target: Path) -> None:
    """The checkout's files (tracked and untracked-not-ignored) without the large fixtures."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    files = [f for f in listed if f and (ROOT / f).is_file() and not f.startswith(("tests/golden/", "tests/legacy/"))]
    assert len(files) > 50 and "models/methods/faprompt.py" in files
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target / name)


def _run(repo: Path, tmp: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    command = [sys.executable, str(repo / "tests" / "tiny_cli.py"), str(tmp / "configs"), *argv]
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def test_a_method_added_in_one_file_trains_and_tests(tmp_path, data, common):
    repo = tmp_path / "repo"
    _copy_repository(repo)
    unknown = _run(repo, tmp_path, "train.py", "--method", "cap_rca", "--train_data_path", str(data))
    assert unknown.returncode == 2 and "cap_rca" in unknown.stderr + unknown.stdout

    (repo / "models" / "methods" / "cap_rca.py").write_text(METHOD_FILE)
    listing = _run(repo, tmp_path, "train.py", "--help")
    assert listing.returncode == 0 and "cap_rca" in listing.stdout
    flags = [*common, "--features_list", "2", "4", "--depth", "3", "--t_n_ctx", "2"]
    save = tmp_path / "checkpoints"
    trained = _run(repo, tmp_path, "train.py", "--method", "cap_rca", "--train_data_path", str(data),
                   "--save_path", str(save), *flags)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    assert (save / "final.pth").is_file() and (save / "epoch_1.pth").is_file()  # the recipe's one epoch

    results = tmp_path / "results"
    tested = _run(repo, tmp_path, "test.py", "--checkpoint_path", str(save / "final.pth"), "--data_path", str(data),
                  "--save_path", str(results), *common[2:])
    assert tested.returncode == 0, tested.stdout[-2000:] + tested.stderr[-2000:]
    summary = json.loads((results / "results.json").read_text())
    assert summary["method"] == "cap_rca" and summary["seed"] == 5  # the checkpoint's (its recipe's) seed
    assert summary["config"]["pixel_head"] == "rca" and summary["config"]["features_list"] == [2, 4]
    assert set(summary["mean"]) >= {"image_auroc", "pixel_auroc"}
    assert all(0.0 <= v <= 1.0 for v in summary["mean"].values() if v is not None)
    assert (results / "report.html").is_file()
