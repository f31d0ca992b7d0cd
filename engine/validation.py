"""Which images validate a training run (early stopping and Bayes-PFL's stage switch).

``aux`` (ours): a stratified hold-out of the auxiliary set, so no target image is seen.
``target`` (official Bayes-PFL): five categories of the *target* dataset, which uses target data.
``none``: no validation (two-stage models then train stage 1 only).
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

from datasets.meta import MetaDataset, holdout_split
from datasets.names import canonical_dataset, known_categories
from utils.errors import UserError

PROTOCOLS = ("auto", "aux", "target", "none")
Targets = Mapping[str, Tuple[str, Sequence[str]]]  # auxiliary set → (target dataset, categories)


def protocol(requested: str, recipe_protocol: str, official_protocol: Optional[str] = None) -> str:
    """``auto``: the recipe's, or under official compatibility the official code's where the
    recipe names one (Bayes-PFL validates on target categories)."""
    if requested != "auto":
        return requested
    return official_protocol or recipe_protocol


def validation_split(chosen: str, train_set: MetaDataset, image_size: int, seed: int, fraction: float,
                     dataset_name: str, val_data_path: Optional[str] = None, val_dataset: Optional[str] = None,
                     val_classes: Optional[Sequence[str]] = None,
                     targets: Optional[Targets] = None) -> Tuple[Optional[List[dict]], Optional[MetaDataset]]:
    """(training records or None for all of them, validation dataset or None) for ``chosen``;
    ``targets``: the recipe's default categories of the target protocol."""
    targets = targets or {}
    if chosen == "none":
        return None, None
    if chosen == "aux":
        train_records, val_records = holdout_split(train_set.records, fraction, seed)
        if not val_records:
            raise UserError(f"--val_fraction {fraction} holds out no image of {train_set.root}; raise it or "
                            "use --val_protocol none")
        return train_records, MetaDataset(train_set.root, "test", image_size=image_size, records=val_records,
                                          check_files=False)
    if val_data_path is None:
        raise UserError("validation on target categories (--val_protocol target, or --compat official for "
                        "bayes_pfl) needs --val_data_path (the target dataset root); or pass --val_protocol aux")
    classes = list(val_classes) if val_classes else None
    if classes is None and val_dataset is not None:
        target = canonical_dataset(val_dataset)
        if known_categories(target) is None:
            raise UserError(f"--val_dataset {val_dataset} has no known categories; pass --val_classes")
        official = {name: list(cats) for name, cats in targets.values()}
        classes = official.get(target, known_categories(target))
    if classes is None:
        default = targets.get(canonical_dataset(dataset_name))
        if default is None:
            raise UserError(f"--val_protocol target: no default validation categories for auxiliary set "
                            f"'{dataset_name}'; pass --val_dataset or --val_classes")
        classes = list(default[1])
    return None, MetaDataset(val_data_path, "test", classes=classes, image_size=image_size)
