"""What makes a method a method: one :class:`Method` entry per module of ``models/methods/``.

An entry is plain data plus two small functions (build the model, read an official checkpoint).
Everything the rest of the code needs to know about a method is here, so that adding a method
is adding one file (``docs/adding_a_method.md``):

* the preset: the switches and sizes of :class:`models.config.ModelConfig` that make the method,
  and the official code's behaviours where it departs from its paper (``--compat official``);
* backbone defaults (position-embedding interpolation; the activation under official compat);
* the training :class:`Recipe` (epochs, batch, seed, learning-rate groups, validation,
  augmentation and its dataset rule), or none for a training-free method;
* the test-time :class:`models.scoring.ScoreRule` and the seed of the official test script;
* official checkpoints: how to recognise one, and the name map onto our modules;
* official flag aliases (a flag of the official scripts that sets fields of ours);
* the paper and the docs page.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from models.config import ModelConfig
from models.model import ZSADModel
from models.scoring import ScoreRule

State = Dict[str, Any]
EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen(values: Optional[Mapping[str, Any]] = None) -> Mapping[str, Any]:
    """A read-only copy of ``values`` (entries are shared by every run of the process)."""
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class Paper:
    """The publication a method comes from."""

    title: str
    venue: str  # e.g. "ICCV 2025"
    arxiv: str  # the arXiv id, e.g. "2407.11111"
    code: str  # the official repository, "owner/name" on GitHub

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


@dataclass(frozen=True)
class Recipe:
    """The published training recipe; every entry can be overridden by a flag of train.py.

    lr: ``{"all": rate}`` (one parameter group; ``--learning_rate`` sets it) or Bayes-PFL's four
        groups ``prompt``, ``flow``, ``linear``, ``temperature`` (``--learning_rate_*``).
    validation: ``none`` or ``aux`` (a held-out part of the auxiliary set) by default;
        ``official_validation`` under ``--compat official`` (``target``: categories of the target
        dataset, as Bayes-PFL's code validates), None to keep ``validation``.
    target_validation: default categories of the ``target`` protocol, by auxiliary dataset:
        ``{aux: (target dataset, [categories])}``.
    augment: the Bayes-PFL augmentation on by default; ``mosaic_prob``: the 2x2 mosaic probability
        by (canonical) auxiliary dataset while augmentation is on, 0 for the others;
        ``mosaic_pool``: how its tiles are drawn (datasets.augment.TrainAugment); ``mosaic_alone``:
        the mosaic applies with the augmentation off too (APRIL-GAN: its only augmentation).
    by_dataset: the official train scripts' other settings for an auxiliary dataset
        (canonical name → ``epochs`` and/or ``lr``), e.g. APRIL-GAN's 3 epochs on MVTec-AD.
    companions: the datasets trained on together with an auxiliary dataset by the official
        scripts (AdaCLIP: MVTec-AD with ColonDB, VisA with ClinicDB); train.sh adds them.
    """

    epochs: int
    batch_size: int
    seed: int
    lr: Mapping[str, float]
    betas: Tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0  # > 0: AdamW with this decoupled weight decay (AdaCLIP), else Adam
    validation: str = "none"
    official_validation: Optional[str] = None
    target_validation: Mapping[str, Tuple[str, Tuple[str, ...]]] = field(default_factory=lambda: EMPTY)
    augment: bool = False
    mosaic_prob: Mapping[str, float] = field(default_factory=lambda: EMPTY)
    mosaic_pool: str = "anomalous"
    mosaic_alone: bool = False
    by_dataset: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: EMPTY)
    companions: Mapping[str, Tuple[str, ...]] = field(default_factory=lambda: EMPTY)

    def on(self, dataset: str) -> "Recipe":
        """The recipe for training on the (canonical) auxiliary ``dataset``."""
        changes = dict(self.by_dataset.get(dataset, {}))
        if "lr" in changes:
            changes["lr"] = frozen({**self.lr, **changes["lr"]})
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def single_rate(self) -> bool:
        """One learning rate for every parameter (``--learning_rate`` sets it)."""
        return "all" in self.lr


@dataclass(frozen=True)
class OfficialCheckpoint:
    """How an official checkpoint file of the method is recognised and read.

    detect(payload) → the official state dict if ``payload`` (the loaded file) is one, else None.
    to_ours(state) → (our state dict, the configuration fields its tensor shapes imply).
    stage: the training stage the released files end in (Bayes-PFL's are stage-2 models).
    """

    detect: Callable[[Mapping[str, Any]], Optional[State]]
    to_ours: Callable[[State], Tuple[State, Dict[str, Any]]]
    stage: int = 1


@dataclass(frozen=True)
class Method:
    """One method: a preset of the one model (or its own model class) and everything around it.

    name: the ``--method`` value and the registry key (the module's name).
    order: position in listings and in the inference of a method from its flags (lowest first).
    preset: fields of ``config_class`` that make the method (unset fields keep the class default).
    official: fields switched on by ``--compat official`` (None: no official code to follow).
    backbone: BackboneConfig fields the method's official code uses (``pos_interpolation``).
    official_backbone: BackboneConfig fields switched by ``--compat official`` (``activation``).
    recipe: the training recipe; None for a training-free method.
    score: the test-time score rule, or a function of the configuration that gives it (for a
        method whose switches may change); None for a model that scores by itself (``build``).
    test_seed: the seed of the official test script (official checkpoints; training-free runs).
    switches: the design card's switches may be set by flags (the combined model alone).
    checkpoint: official checkpoint format, or None.
    official_flags: what a flag of the method's official scripts that has no flag of ours means for
        it: ``handler(value, fields) → note``, which sets the configuration ``fields`` it implies
        (AnomalyCLIP's ``--n_ctx`` is both context lengths) or raises ValueError naming what to do.
    cache_blocker: ``cache_blocker(config)`` → why the feature cache cannot apply to a
        configuration (its trained parts change the image tower's outputs), or "".
    config_class / build: the configuration dataclass and ``build(backbone, config, method)``,
        by default :class:`models.config.ModelConfig` and :class:`models.model.ZSADModel`.
    """

    name: str
    title: str
    paper: Optional[Paper]
    docs: str
    order: int = 100
    preset: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    official: Optional[Mapping[str, Any]] = None
    backbone: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    official_backbone: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    recipe: Optional[Recipe] = None
    score: Union[ScoreRule, Callable[[Any], ScoreRule], None] = None
    test_seed: int = 111
    switches: bool = False
    checkpoint: Optional[OfficialCheckpoint] = None
    official_flags: Mapping[str, Callable[[Any, Dict[str, Any]], str]] = field(default_factory=lambda: EMPTY)
    cache_blocker: Optional[Callable[[Any], str]] = None
    config_class: type = ModelConfig
    build: Optional[Callable[..., Any]] = None

    @property
    def trainable(self) -> bool:
        return self.recipe is not None

    def config(self, **fields: Any):
        """The preset with ``fields`` on top (lists become tuples; unknown names raise TypeError)."""
        values = {**self.preset, **fields}
        return self.config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def official_config(self, config):
        """``config`` with every official-code behaviour switched on."""
        if self.official is None:
            raise ValueError(f"{self.name} has no official code to be compatible with")
        return dataclasses.replace(config, **self.official)

    def score_rule(self, config) -> Optional[ScoreRule]:
        return self.score(config) if callable(self.score) else self.score

    def make_model(self, backbone, config):
        """An untrained model of this method on ``backbone``."""
        if self.build is not None:
            return self.build(backbone, config, self)
        return ZSADModel(backbone, config, self.name, self.score_rule(config))
