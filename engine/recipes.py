"""The one seed rule of train.py and test.py.

A run uses ``--seed`` when it is given, else the seed its checkpoint was trained with (ours
store it), else the seed of the method's official test script (official checkpoints and
training-free runs; its registry entry's ``test_seed``). Official checkpoints therefore test
with the seed of the official test scripts (Bayes-PFL's ``test.sh`` passes 333, FAPrompt's
111), and ``python test.py`` and ``bash test.sh`` agree because test.sh passes no seed of its own.
train.py uses ``--seed``, else the recipe's.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

from models import methods


def run_seed(flag: Optional[int], checkpoint: Any, method: str) -> Tuple[int, str]:
    """(seed, where it comes from): ``--seed``, else the checkpoint's (ours), else the method's
    test seed. ``checkpoint`` is a ``models.factory.Checkpoint`` or None."""
    if flag is not None:
        return flag, "--seed"
    if checkpoint is not None and not checkpoint.official:
        seed = checkpoint.info.get("seed", checkpoint.config.get("seed"))
        if seed is not None:
            return int(seed), "the checkpoint"
    entry = methods.get(method)
    if checkpoint is not None:
        return entry.test_seed, f"the official {method} test script"
    return entry.test_seed, f"the {method} recipe"
