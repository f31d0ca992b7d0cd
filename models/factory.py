"""Build models by method name; save and read checkpoints (ours and the official formats).

Every method is an entry of the registry (``models/methods/``): a preset of the one model, or
a model of its own such as the training-free ``clip`` baseline. A checkpoint of ours holds
everything ``test.py`` needs: the method, the backbone and model configurations, and the
learnable weights (the frozen CLIP is never stored). Official checkpoints load through the same
reader by the formats their registry entries declare. Errors name the flag to change
(:class:`utils.errors.UserError`).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from models import methods
from models.backbone import BackboneConfig, ClipBackbone
from models.methods import Method, UnknownMethod
from utils.errors import UserError, flags_not_applicable
from utils.io import UnsafeFileError, torch_load, torch_save

log = logging.getLogger("zsad.factory")

FORMAT = "zsad-checkpoint/2"
LEGACY_FORMATS = ("zsad-checkpoint/1",)
COMPAT = ("auto", "ours", "official")

# Format 1 (before the methods were presets of one model) named some parts differently.
_FORMAT_1_NAMES = (("prior_net.", "dap."), ("context_flow.", "flows.context."),
                   ("state_encoder.", "flows.state_encoder."), ("normal_flow.", "flows.normal."),
                   ("abnormal_flow.", "flows.abnormal."), ("log_temperature_pixel", "rca.log_temperature"),
                   ("log_temperature_image", "image_head.log_temperature"),
                   ("class_mapping.", "image_head.class_mapping."), ("image_mapping.", "image_head.image_mapping."),
                   ("fuse.", "image_head.fuse."))


def method_entry(method: str) -> Method:
    """The registry entry of ``--method method``."""
    try:
        return methods.get(method)
    except UnknownMethod:
        raise UserError(f"--method {method}: choose one of {', '.join(methods.names())}") from None


def config_class(method: str):
    return method_entry(method).config_class


def make_config(method: str, fields: Dict[str, Any]):
    """The method's configuration: its preset with ``fields`` on top (unknown names are an error)."""
    entry = method_entry(method)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(entry.config_class)})
    if unknown:
        raise flags_not_applicable(unknown, method)
    config = entry.config(**fields)
    try:
        config.validate()
    except ValueError as err:
        raise UserError(f"--method {method}: {err}") from None
    return config


def apply_compat(method: str, config, backbone: BackboneConfig, compat: str):
    """Switch every official-code behaviour of ``method`` on (``compat="official"``)."""
    if compat not in ("ours", "official"):
        raise ValueError(compat)
    if compat == "ours":
        return config, backbone
    entry = method_entry(method)
    if entry.official is None:
        raise UserError(f"--compat official: --method {method} has no official code to be compatible with")
    return entry.official_config(config), dataclasses.replace(backbone, **entry.official_backbone)


def build_model(method: str, config, backbone: ClipBackbone) -> nn.Module:
    """An untrained model of ``method`` on ``backbone``."""
    try:
        return method_entry(method).make_model(backbone, config)
    except ValueError as err:  # configuration the backbone cannot host
        raise UserError(f"--method {method}: {err}") from None


def learnable_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state without the frozen backbone."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def load_learnable_state(model: nn.Module, state: Dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``; every learnable tensor must be present and fit."""
    own = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k]))
    if missing or unexpected or mismatched:
        raise UserError(f"{source} does not fit this model configuration (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}, other shape {mismatched[:3]}); it was made with other settings or "
                        "for another method")
    model.load_state_dict(state, strict=False)


@dataclass
class Checkpoint:
    """What a checkpoint file says: method, configurations, weights, training state."""

    method: str
    backbone: BackboneConfig
    config: Dict[str, Any]
    state_dict: Dict[str, torch.Tensor]
    source: str = "ours"  # "ours" or "official-<method>"
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


def _format_1_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for old, new in _FORMAT_1_NAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed


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
    if payload.get("format") in (FORMAT,) + LEGACY_FORMATS:
        fields = {f.name for f in dataclasses.fields(BackboneConfig)}
        backbone = BackboneConfig(**{k: v for k, v in payload["backbone"].items() if k in fields})
        state = payload["state_dict"]
        if payload["format"] != FORMAT:
            state = _format_1_state(state)
        return Checkpoint(payload["method"], backbone, payload["config"], state, "ours",
                          payload.get("training", {}), str(path), payload.get("info", {}))
    found = methods.detect_official(payload)
    if found is not None:
        entry, raw = found
        state, config = entry.checkpoint.to_ours(raw)
        return Checkpoint(entry.name, BackboneConfig(**entry.backbone), config, state, f"official-{entry.name}", {},
                          str(path))
    if "visual.conv1.weight" in payload or "state_dict" in payload:
        raise UserError(f"{flag} {path} looks like CLIP weights; pass it as --pretrained")
    official = ", ".join(m.title for m in methods.registry().values() if m.checkpoint is not None)
    raise UserError(f"{flag} {path}: unknown checkpoint format (expected one written by train.py, "
                    f"or an official checkpoint of {official})")


def model_from_checkpoint(ckpt: Checkpoint, config, backbone: ClipBackbone) -> nn.Module:
    """Build the checkpoint's model with ``config`` (possibly overridden) and load its weights."""
    model = build_model(ckpt.method, config, backbone)
    stored = sum(1 for k in ckpt.state_dict if k.startswith("rca.proj.") and k.endswith(".weight"))
    if stored and stored != len(config.features_list):
        raise UserError(f"--checkpoint_path {ckpt.path} has {stored} RCA layers; pass --features_list "
                        f"with {stored} layers (got {list(config.features_list)})")
    load_learnable_state(model, ckpt.state_dict, f"--checkpoint_path {ckpt.path}")
    return model
