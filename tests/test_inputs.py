"""Bad input, as a user meets it on the real command line: exit code 2, one error line that
names the flag or file, no traceback, and nothing half-written."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from scripts import BAYES, FAPROMPT, ROOT
from test_io import CreatesFile
from utils.errors import EXIT_USER_ERROR
from utils.io import torch_save

# (script, extra flags, text of the one error line); {names} are filled in below.
CASES = [
    ("train", ["--save_freq", "0"], "argument --save_freq: must be an integer >= 1, got 0"),
    ("train", ["--batch_size", "0"], "argument --batch_size: must be an integer >= 1, got 0"),
    ("train", ["--epochs", "0"], "argument --epochs/--epoch: must be an integer >= 1, got 0"),
    ("train", ["--dap_k", "17"], "--dap_k 17 exceeds the 16 patches of the 4x4 grid at --image_size 32"),
    ("train", ["--sigma", "-1"], "argument --sigma: must be a finite number >= 0, got -1"),
    ("train", ["--sigma", "nan"], "argument --sigma: must be a finite number >= 0, got nan"),
    ("train", ["--image_size", "36"], "--image_size 36 is not a multiple of the patch size 8"),
    ("train", ["--stage2_epochs", "1"], "--stage2_epochs does not apply to --method faprompt"),
    ("train_bayes", ["--epochs", "2", "--stage2_epochs", "2"],
     "--stage2_epochs 2 leaves stage 1 no epoch of --epochs 2"),
    ("train", ["--train_data_path", "{tmp}/nowhere"], "{tmp}/nowhere does not exist"),
    ("train", ["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
    ("test", ["--sigma", "inf"], "argument --sigma: must be a finite number >= 0, got inf"),
    ("test", ["--batch_size", "0"], "argument --batch_size: must be an integer >= 1, got 0"),
    ("test", ["--image_size", "36"], "--image_size 36 is not a multiple of the patch size 8"),
    ("test", ["--image_size", "8"], "--image_size 8 gives a 1x1 patch grid, fewer patches than the 4"),
    ("test", ["--checkpoint_path", "{tmp}/missing.pth"], "--checkpoint_path {tmp}/missing.pth: file not found"),
    ("test", ["--checkpoint_path", "{crafted}"], "--checkpoint_path {crafted}: refused"),
    ("test", ["--checkpoint_path", "{diverged}"], "non-finite scores (NaN or Inf) for category 'washer'"),
]


def test_bad_input_on_the_command_line(tmp_path, data, faprompt_checkpoint, tiny_model):
    """Each case runs as its script's __main__, all in one fresh interpreter (tests/tiny_cli.py)."""
    values = {"tmp": tmp_path, "crafted": tmp_path / "crafted.pth", "diverged": tmp_path / "diverged.pth"}
    marker = tmp_path / "created_by_unpickling"
    torch.save({"prompt_learner": CreatesFile(marker)}, values["crafted"])
    payload = torch.load(faprompt_checkpoint, weights_only=True)
    payload["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                             for k, v in payload["state_dict"].items()}
    torch_save(payload, values["diverged"])
    runs, expected, saves = [], [], []
    for i, (script, extra, text) in enumerate(CASES):
        save = tmp_path / f"out{i}"
        if script.startswith("train"):
            base = [str(ROOT / "train.py"), "--train_data_path", str(data), "--batch_size", "4", "--model", tiny_model,
                    *(BAYES if script == "train_bayes" else FAPROMPT)]
        else:
            base = [str(ROOT / "test.py"), "--checkpoint_path", str(faprompt_checkpoint), "--data_path", str(data)]
        runs.append([*base, "--pretrained", "none", "--image_size", "32", "--num_workers", "0", "--save_path",
                     str(save), *[a.format(**values) for a in extra]])
        expected.append(text.format(**values))
        saves.append(save)
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    subprocess.run([sys.executable, str(ROOT / "tests" / "tiny_cli.py"), str(tmp_path / "configs"),
                    str(tmp_path / "runs.json"), str(tmp_path / "results.json")], cwd=tmp_path, timeout=900, check=True)
    results = json.loads((tmp_path / "results.json").read_text())
    for result, text, save in zip(results, expected, saves):
        where, output = " ".join(result["argv"]), result["output"]
        assert result["code"] == EXIT_USER_ERROR, f"{where}\n{output}"
        assert "Traceback" not in output, where
        errors = [line for line in output.splitlines() if " ERROR " in line]
        assert len(errors) == 1 and text in errors[0], f"{where}\n{output}"
        written = sorted(p.name for p in save.rglob("*")) if save.exists() else []
        assert written in ([], ["test.log"]), f"{where}: {written}"  # a log at most, never results
    assert not marker.exists()


def test_scripts_exit_cleanly_in_their_own_process(tmp_path):
    """The plain ``python train.py`` / ``python test.py``, no helper in between."""
    for script, argv in (("train.py", ["--train_data_path", str(tmp_path / "none"), "--save_freq", "-2"]),
                         ("test.py", ["--checkpoint_path", str(tmp_path / "none.pth"), "--data_path", str(tmp_path)])):
        done = subprocess.run([sys.executable, str(ROOT / script), *argv], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
        assert done.returncode == EXIT_USER_ERROR, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and ("--save_freq" in lines[0] or "none.pth" in lines[0])
        assert list(tmp_path.iterdir()) == []
