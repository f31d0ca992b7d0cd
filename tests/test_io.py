"""Atomic writes (permissions) and safe loading of torch files."""
from __future__ import annotations

import os
import pickle
import random
import stat

import numpy as np
import pytest
import torch

from engine.trainer import rng_state, set_rng_state
from models.factory import read_checkpoint
from utils.errors import UserError
from utils.io import torch_load, torch_save, write_json, write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        write_json(tmp_path / "b.json", {"a": 1})
        torch_save({"w": torch.zeros(2)}, tmp_path / "c.pth")
    finally:
        os.umask(previous)
    for name in ("a.txt", "b.json", "c.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.pth"]  # no temporary left


class CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _crafted_files(tmp_path):
    marker = tmp_path / "created_by_unpickling"
    payload = CreatesFile(marker)
    files = []
    for name, wrap in (("faprompt", "prompt_learner"), ("bayes", "MyModel")):
        path = tmp_path / f"{name}.pth"
        torch.save({wrap: {"weight": torch.zeros(1), "x": payload}}, path)  # torch's zip format
        files.append(path)
    for protocol in (2, 4):  # legacy raw pickles
        path = tmp_path / f"raw{protocol}.pth"
        with open(path, "wb") as handle:
            pickle.dump({"state_dict": payload}, handle, protocol=protocol)
        files.append(path)
    # the payload really does run code under an unsafe load (the test would prove nothing otherwise)
    pickle.loads(pickle.dumps(payload)).close()
    assert marker.exists()
    marker.unlink()
    return marker, files


def test_crafted_checkpoints_are_refused_without_running_code(tmp_path):
    marker, files = _crafted_files(tmp_path)
    for path in files:
        with pytest.raises(UserError) as err:
            read_checkpoint(str(path))
        message = str(err.value)
        assert str(path) in message and "\n" not in message
        assert not marker.exists()
    with pytest.raises(UserError, match="could run code"):
        read_checkpoint(str(files[0]))


def test_rng_state_is_plain_and_restores_exactly(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # leave a cached Gaussian in NumPy's state
    state = rng_state()
    torch_save(state, tmp_path / "rng.pth")
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    set_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


def test_epoch_checkpoint_of_the_old_format_gets_a_clear_message(tmp_path):
    path = tmp_path / "epoch_3.pth"
    torch.save({"format": "zsad-checkpoint/1", "training": {"rng": {"numpy": np.random.get_state()}}}, path)
    with pytest.raises(UserError) as err:
        read_checkpoint(str(path), flag="--resume")
    message = str(err.value)
    assert message.startswith(f"--resume {path}: an epoch checkpoint of an older train.py")
    assert "final.pth still loads" in message and "\n" not in message


def test_unreadable_file_keeps_the_cause(tmp_path):
    path = tmp_path / "broken.pth"
    torch_save({"w": torch.zeros(4)}, path)
    path.write_bytes(path.read_bytes()[:40])  # truncated zip
    with pytest.raises(UserError) as err:
        torch_load(path, f"--checkpoint_path {path}")
    message = str(err.value)
    assert message.startswith(f"--checkpoint_path {path}: not a readable checkpoint (")
    assert "failed finding central directory" in message and "\n" not in message  # torch's reason, kept
