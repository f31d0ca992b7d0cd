"""Run scripts of the repository as their ``__main__`` with the tests' tiny open_clip models
(and the golden fixtures' CLIP) registered, so that subprocess tests see the command line as a user does.

    python tests/tiny_cli.py CONFIG_DIR train.py ARGS...          one run (its exit code)
    python tests/tiny_cli.py CONFIG_DIR RUNS.json RESULTS.json    several runs in one process

RUNS.json is a list of argv lists; RESULTS.json gets, per run, its exit code and everything it
wrote to stdout and stderr (a traceback of an escaping exception included).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.golden.golden_clip import register_golden_model  # noqa: E402
from utils.tiny_clip import register_tiny_model  # noqa: E402


def run_script(argv):
    """Run ``argv[0]`` as ``__main__`` with ``argv``; return its exit code."""
    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return 0


def run_captured(argv) -> dict:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = run_script(argv)
        except BaseException:  # what a user would see as a traceback
            traceback.print_exc()
            code = 1
    return {"argv": argv, "code": code, "output": out.getvalue() + err.getvalue()}


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    configs = tempfile.mkdtemp(dir=sys.argv[1])  # one folder per process: runs may overlap
    register_tiny_model(configs)
    register_golden_model(Path(configs))  # the golden fixtures' CLIP (official-format checkpoints)
    if sys.argv[2].endswith(".json"):
        runs = json.loads(Path(sys.argv[2]).read_text())
        Path(sys.argv[3]).write_text(json.dumps([run_captured(argv) for argv in runs]))
    else:
        sys.exit(run_script(sys.argv[2:]))
