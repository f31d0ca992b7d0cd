"""The published training recipes and the one seed rule of train.py and test.py.

Seeds: a run uses ``--seed`` when it is given, else the seed its checkpoint was trained with
(ours store it), else the method's recipe seed. Official checkpoints therefore test with the
seed of the official test scripts (Bayes-PFL's ``test.sh`` passes 333, FAPrompt's 111), and
``python test.py`` and ``bash test.sh`` agree because test.sh passes no seed of its own.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

# The published recipes (SPEC sections 4, 4b and 5); flags override any entry.
RECIPES: Dict[str, dict] = {
    "faprompt": dict(epochs=15, batch_size=8, seed=111, validation="none", augment=False,
                     lr={"all": 1e-3}),
    "bayes_pfl": dict(epochs=30, batch_size=32, seed=333, validation="aux", augment=True,
                      lr={"prompt": 1e-3, "flow": 1e-3, "linear": 1e-4, "temperature": 1e-2}),
    "fapfl": dict(epochs=20, batch_size=8, seed=111, validation="aux", augment=True,
                  lr={"prompt": 1e-3, "flow": 1e-3, "linear": 1e-4, "temperature": 1e-2}),
    # AnomalyCLIP (ICLR 2024): Adam 1e-3, betas (0.5, 0.999), batch 8, 15 epochs, as its train.sh
    "anomalyclip": dict(epochs=15, batch_size=8, seed=111, validation="none", augment=False,
                        lr={"all": 1e-3}),
}
BASELINE_SEED = 111  # the training-free baseline has no recipe; FAPrompt's and AnomalyCLIP's test seed


def method_seed(method: str) -> int:
    return RECIPES[method]["seed"] if method in RECIPES else BASELINE_SEED


def run_seed(flag: Optional[int], checkpoint: Any, method: str) -> Tuple[int, str]:
    """(seed, where it comes from): ``--seed``, else the checkpoint's (ours), else the recipe's.

    ``checkpoint`` is a ``models.factory.Checkpoint`` or None.
    """
    if flag is not None:
        return flag, "--seed"
    if checkpoint is not None and not checkpoint.official:
        seed = checkpoint.info.get("seed", checkpoint.config.get("seed"))
        if seed is not None:
            return int(seed), "the checkpoint"
    if checkpoint is not None:
        return method_seed(method), f"the official {method} test script"
    return method_seed(method), f"the {method} recipe"
