"""Build models by method name; save and read checkpoints (ours and both official formats).

A checkpoint of ours holds everything ``test.py`` needs: the method, the backbone and method
configurations, and the learnable weights (the frozen CLIP is never stored). Official
checkpoints load through the same reader: FAPrompt's ``{"prompt_learner": ...}`` and
Bayes-PFL's ``{"MyModel": ...}`` are mapped onto our modules by explicit name maps.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from models import bayes_pfl, faprompt
from models.backbone import BackboneConfig, ClipBackbone
from utils.errors import UserError, flags_not_applicable
from utils.io import UnsafeFileError, torch_load, torch_save

log = logging.getLogger("zsad.factory")

FORMAT = "zsad-checkpoint/1"
METHODS = ("faprompt", "bayes_pfl", "fapfl", "clip")
COMPAT = ("auto", "ours", "official")


def _registry() -> Dict[str, tuple]:
    from models import clip_baseline, fapfl

    return {
        "faprompt": (faprompt.FAPrompt, faprompt.FAPromptConfig),
        "bayes_pfl": (bayes_pfl.BayesPFL, bayes_pfl.BayesPFLConfig),
        "fapfl": (fapfl.FAPFL, fapfl.FAPFLConfig),
        "clip": (clip_baseline.ClipBaseline, clip_baseline.ClipBaselineConfig),
    }


def config_class(method: str):
    if method not in METHODS:
        raise UserError(f"--method {method}: choose one of {', '.join(METHODS)}")
    return _registry()[method][1]


def make_config(method: str, fields: Dict[str, Any]):
    """The method's config from ``fields`` (unknown names are an error)."""
    cls = config_class(method)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise flags_not_applicable(unknown, method)
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items()}
    return cls(**values)


def method_backbone_defaults(method: str) -> Dict[str, Any]:
    """Backbone settings that follow the method's official code (SPEC section 8)."""
    if method == "bayes_pfl":
        return {"pos_interpolation": "bicubic"}
    if method == "clip":
        return {"pos_interpolation": "bicubic"}
    return {"pos_interpolation": "bilinear"}


def apply_compat(method: str, config, backbone: BackboneConfig, compat: str):
    """Switch every official-code behaviour of ``method`` on (``compat="official"``)."""
    if compat not in ("ours", "official"):
        raise ValueError(compat)
    if compat == "ours":
        return config, backbone
    if method == "faprompt":
        return config.official(), backbone
    if method == "bayes_pfl":
        return config.official(), dataclasses.replace(backbone, activation="gelu")
    raise UserError(f"--compat official: --method {method} has no official code to be compatible with")


def build_model(method: str, config, backbone: ClipBackbone) -> nn.Module:
    """An untrained model of ``method`` on ``backbone``."""
    cls = _registry()[method][0]
    try:
        return cls(backbone, config)
    except ValueError as err:  # configuration the backbone cannot host
        raise UserError(f"--method {method}: {err}") from None


def learnable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state without the frozen backbone."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def load_learnable_state(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; every learnable tensor must be present and fit."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise UserError(f"{source} does not fit this model configuration "
                        f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); "
                        "it was made with other settings or for another method")


@dataclass
class Checkpoint:
    """What a checkpoint file says: method, configurations, weights, training state."""

    method: str
    backbone: BackboneConfig
    config: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]
    source: str = "ours"  # "ours", "official-faprompt" or "official-bayes_pfl"
    training: Dict[str, Any] = field(default_factory=dict)
    path: str = ""
    info: Dict[str, Any] = field(default_factory=dict)  # run summary: run name, seed, final stage

    @property
    def official(self) -> bool:
        return self.source.startswith("official")


def save_checkpoint(path: Path, model: nn.Module, backbone: BackboneConfig,
                    training: Optional[Dict[str, Any]] = None, info: Optional[Dict[str, Any]] = None) -> None:
    """Atomically write ``model`` (learnable weights + configurations), ``training`` state and
    the run summary ``info``. Everything must be tensors or plain values (safe loading)."""
    payload = {
        "format": FORMAT,
        "method": model.method,
        "backbone": asdict(backbone),
        "config": asdict(model.config),
        "state_dict": learnable_state_dict(model),
        "training": training or {},
        "info": info or {},
    }
    torch_save(payload, path)


def _load_payload(file: Path, where: str) -> Any:
    try:
        return torch_load(file, where)
    except UnsafeFileError as err:
        if err.refused.startswith("numpy"):  # epoch files of train.py before safe loading
            raise UserError(f"{where}: an epoch checkpoint of an older train.py, whose pickled NumPy RNG "
                            "state is refused by safe loading; that run's final.pth still loads, and to "
                            "continue training start the run again") from None
        raise


def read_checkpoint(path: str, flag: str = "--checkpoint_path") -> Checkpoint:
    """Read a checkpoint of ours or an official one (safe loading only: tensors and plain
    values); bad files raise :class:`UserError` naming ``flag``."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{flag} {path}: file not found")
    payload = _load_payload(file, f"{flag} {path}")
    if not isinstance(payload, dict):
        raise UserError(f"{flag} {path}: not a checkpoint (no dictionary inside)")
    if payload.get("format") == FORMAT:
        fields = {f.name for f in dataclasses.fields(BackboneConfig)}
        backbone = BackboneConfig(**{k: v for k, v in payload["backbone"].items() if k in fields})
        return Checkpoint(payload["method"], backbone, payload["config"], payload["state_dict"],
                          "ours", payload.get("training", {}), str(path), payload.get("info", {}))
    if "prompt_learner" in payload and faprompt.is_official_state(payload["prompt_learner"]):
        state, config = faprompt.official_to_ours(payload["prompt_learner"])
        return Checkpoint("faprompt", BackboneConfig(**method_backbone_defaults("faprompt")), config,
                          state, "official-faprompt", {}, str(path))
    if "MyModel" in payload and bayes_pfl.is_official_state(payload["MyModel"]):
        state, config = bayes_pfl.official_to_ours(payload["MyModel"])
        backbone = BackboneConfig(**method_backbone_defaults("bayes_pfl"))
        return Checkpoint("bayes_pfl", backbone, config, state, "official-bayes_pfl", {}, str(path))
    if "visual.conv1.weight" in payload or "state_dict" in payload:
        raise UserError(f"{flag} {path} looks like CLIP weights; pass it as --pretrained")
    raise UserError(f"{flag} {path}: unknown checkpoint format (expected one written by "
                    "train.py, an official FAPrompt or an official Bayes-PFL checkpoint)")


def model_from_checkpoint(ckpt: Checkpoint, config, backbone: ClipBackbone) -> nn.Module:
    """Build the checkpoint's model with ``config`` (possibly overridden) and load its weights."""
    model = build_model(ckpt.method, config, backbone)
    if ckpt.method == "bayes_pfl":
        stored = sum(1 for k in ckpt.state_dict if k.startswith("rca.proj.") and k.endswith(".weight"))
        if stored != len(config.features_list):
            raise UserError(f"--checkpoint_path {ckpt.path} has {stored} RCA layers; pass --features_list "
                            f"with {stored} layers (got {list(config.features_list)})")
    load_learnable_state(model, ckpt.state_dict, f"--checkpoint_path {ckpt.path}")
    return model
