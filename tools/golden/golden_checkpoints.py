"""Seeded official-format prompt checkpoints for the golden fixtures.

The official modules' own initialisations leave many parts inert on a random CLIP (zero
biases, near-zero flow log-variances, saturated planar transforms), and an inert part cannot
reveal a misread formula: ``exp(lv/4)`` and ``exp(lv/2)`` agree when ``lv = 0``. So every
learnable tensor of an official module is drawn here from a seeded normal whose scale keeps its
part lively (log-variances of order one, planar transforms away from saturation, attention
logits well away from uniform). Values depend only on (seed, key name), never on key order, so
the tests rebuild the same checkpoint from the committed key/shape manifest. NumPy only.
"""
from __future__ import annotations

import math
import re
from typing import Dict, Tuple

import numpy as np

if __package__:  # imported as tools.golden.golden_checkpoints (tests) or run beside it (harnesses)
    from .golden_clip import key_rng
else:
    from golden_clip import key_rng

FAPROMPT_SEED = 111
BAYES_PFL_SEED = 333
ANOMALYCLIP_SEED = 222

# (pattern, mean, std or "fan_in" scale factor); the first match wins.
_FAPROMPT_RULES = [
    (r"^(ctx_pos|ctx_neg|compound_prompts_text\.\d+)$", 0.0, 0.02),
    (r"weight$", 0.0, ("fan_in", 1.0)),
    (r"bias$", 0.0, 0.02),
]
_BAYES_PFL_RULES = [
    (r"^prompt_context$", 0.0, 0.02),
    (r"^prompt_state_normal$", 0.5, 0.02),
    (r"^prompt_state_abnormal$", -0.5, 0.02),
    (r"^temperature_(pixel|image)$", math.log(1 / 0.07), 0.1),
    (r"encoder\.weight_(mean|log_variance)\.module\.\d\.bias$", 0.0, 0.3),
    (r"^PFL_context\.amor_w\.weight$", 0.0, 0.0012),  # wᵀz of order one for |z| ≈ √768
    (r"^PFL_context\.amor_u\.weight$", 0.0, 0.02),
    (r"^PFL_context\.amor_b\.weight$", 0.0, 0.02),
    (r"^PFL_\w+\.amor_w$", 0.0, 0.03),
    (r"^PFL_\w+\.amor_u$", 0.0, 0.1),
    (r"^PFL_\w+\.amor_b$", 0.0, 0.5),
    (r"^PFL_\w+\.state$", 0.0, 1.0),
    (r"^RCA\.q_proj_pre\.weight$", 0.0, ("fan_in", 10.0)),  # attention logits far from uniform
    (r"weight$", 0.0, ("fan_in", 1.0)),
    (r"bias$", 0.0, 0.05),
]


def _std(shape: Tuple[int, ...], spec) -> float:
    if isinstance(spec, tuple):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        return spec[1] / math.sqrt(max(1, fan_in))
    return float(spec)


def _rules(method: str):
    return _BAYES_PFL_RULES if method == "bayes_pfl" else _FAPROMPT_RULES  # AnomalyCLIP: prompt vectors too


def seeded_parameters(manifest: Dict[str, dict], method: str, seed: int) -> Dict[str, np.ndarray]:
    """float32 values for every floating-point *parameter* of ``manifest``
    ({key: {"shape", "dtype", "kind"}}); buffers are left to the module that derives them."""
    out: Dict[str, np.ndarray] = {}
    for key, entry in manifest.items():
        if entry["kind"] != "parameter" or not entry["dtype"].startswith("float"):
            continue
        shape = tuple(entry["shape"])
        for pattern, mean, spec in _rules(method):
            if re.search(pattern, key):
                values = key_rng(seed, key).standard_normal(shape) * _std(shape, spec) + mean
                out[key] = np.asarray(values, dtype=np.float32)
                break
        else:
            raise KeyError(f"no initialisation rule for {key}")
    return out


def checksum(values: Dict[str, np.ndarray]) -> float:
    return float(sum(np.abs(v.astype(np.float64)).sum() for v in values.values()))
