"""Decision thresholds for new images: read from a test run's ``results.json`` or given.

A test run stores, per category, the F1-optimal image-score and pixel thresholds
(``results.json["thresholds"][category][level]["threshold"]``). ``test.py --image`` applies
those of the category named by ``--class_name`` (the class name its prompts use as well), so
an image is flagged when its score is at or above the image threshold and a pixel when its
map value is at or above the pixel threshold.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from utils.errors import UserError

log = logging.getLogger("zsad.thresholds")

# Settings of the run that produced the thresholds which must match the run applying them.
MATCHING = ("method", "checkpoint", "backbone", "pretrained", "image_size", "k_shot")


@dataclass
class Decision:
    """Thresholds to apply (None: no decision at that level) and where they came from."""

    image: Optional[float] = None
    pixel: Optional[float] = None
    source: str = ""


def load_thresholds(path: str, class_name: str, info: Optional[Dict[str, Any]] = None) -> Decision:
    """The category's thresholds from a ``results.json``; ``info`` (this run's settings) is
    compared with the stored run's, and differences are logged as warnings."""
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--thresholds {path}: file not found; pass the results.json of a test run")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--thresholds {path}: not a readable results.json ({err})")
    table = results.get("thresholds") if isinstance(results, dict) else None
    if not table:
        raise UserError(f"--thresholds {path} holds no thresholds (written by an older test.py?); re-run "
                        "test.py on the dataset or pass --threshold")
    if class_name not in table:
        raise UserError(f"--thresholds {path} has no category '{class_name}'; pass --class_name with one of: "
                        f"{', '.join(table)}")
    levels = table[class_name] or {}
    decision = Decision(*(_value(levels.get(level)) for level in ("image", "pixel")), source=f"{path} ({class_name})")
    if decision.image is None and decision.pixel is None:
        raise UserError(f"--thresholds {path}: category '{class_name}' has no thresholds (its F1-max was "
                        "undefined: no anomalous or no normal images); pass --threshold / --pixel_threshold")
    for key in MATCHING if info else ():
        if key in results and results[key] != info.get(key):
            log.warning("--thresholds %s came from a run with %s = %s, this run has %s: the scores may not be "
                        "comparable", path, key, results[key], info.get(key))
    return decision


def _value(entry: Any) -> Optional[float]:
    if entry is None:
        return None
    try:
        return float(entry["threshold"])
    except (TypeError, KeyError, ValueError):
        raise UserError(f"a threshold entry of --thresholds is malformed ({entry!r}); re-run test.py")
