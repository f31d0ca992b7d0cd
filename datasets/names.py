"""Class names: readable names for text prompts and the categories of the standard datasets.

The readable-name mapping is Bayes-PFL's (docs/data.md); FAPrompt uses the single word
"object" for every class, which the prompt learners decide, not this module.
"""
from __future__ import annotations

from typing import Dict, List, Optional

# Bayes-PFL's explicit renamings; every other name only has "_" replaced by " ".
_READABLE: Dict[str, str] = {
    "metal_nut": "metal nut",
    "pcb1": "printed circuit board",
    "pcb2": "printed circuit board",
    "pcb3": "printed circuit board",
    "pcb4": "printed circuit board",
    "macaroni1": "macaroni",
    "macaroni2": "macaroni",
    "pipe_fryum": "pipe fryum",
    "chewinggum": "chewing gum",
}

KNOWN_CATEGORIES: Dict[str, List[str]] = {
    "mvtec": ["carpet", "grid", "leather", "tile", "wood", "bottle", "capsule", "pill",
              "transistor", "zipper", "cable", "hazelnut", "metal_nut", "screw", "toothbrush"],
    "visa": ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
             "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"],
    "mpdd": ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate",
             "tubes"],
    "btad": ["01", "02", "03"],
}

# Lower-case spellings people use for the same dataset.
_ALIASES: Dict[str, str] = {"mvtecad": "mvtec", "mvtec_ad": "mvtec", "mvtec-ad": "mvtec"}

# Datasets with image labels only (no pixel masks): no pixel metrics for them.
CLASSIFICATION_ONLY = frozenset({"headct", "brainmri", "br35h"})


def readable_name(cls_name: str) -> str:
    """The class name as it goes into a text prompt, e.g. ``metal_nut`` -> ``metal nut``."""
    key = cls_name.strip().lower()
    return _READABLE.get(key, key.replace("_", " "))


def canonical_dataset(name: str) -> str:
    """Lower-case dataset name with aliases resolved (``MVTec_AD`` -> ``mvtec``)."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def known_categories(dataset: str) -> Optional[List[str]]:
    """The standard category list of ``dataset`` (alias-tolerant), or None if unknown."""
    cats = KNOWN_CATEGORIES.get(canonical_dataset(dataset))
    return list(cats) if cats is not None else None


def is_classification_only(dataset: str) -> bool:
    """True for datasets that have image labels but no masks (HeadCT, BrainMRI, Br35H)."""
    return canonical_dataset(dataset) in CLASSIFICATION_ONLY


def prompt_words(class_names, class_word: str) -> List[str]:
    """The word each image's prompts use: the generic "object" (FAPrompt, AnomalyCLIP), the
    readable class name (Bayes-PFL) or the class name as meta.json has it ("raw", APRIL-GAN)."""
    if class_word == "object":
        return ["object"] * len(class_names)
    if class_word == "name":
        return [readable_name(name) for name in class_names]
    if class_word == "raw":
        return list(class_names)
    raise ValueError(f"class_word must be 'object', 'name' or 'raw', got {class_word!r}")
