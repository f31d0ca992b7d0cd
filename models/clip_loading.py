"""CLIP weights through open_clip: which model, which weights, and what to do offline.

:func:`build_clip` creates an ``open_clip`` CLIP from ``pretrained="openai"`` (or another
open_clip tag: its download and cache), a local OpenAI ``.pt`` file (TorchScript archive or
plain state dict), an open_clip checkpoint, or ``"none"`` (random weights, for tests). Files are
read with safe loading only (``utils.io.torch_load``); an offline machine looks in the cache at
once instead of retrying downloads; every failure is one line naming the flag to change.
:func:`check_supported` refuses open_clip models whose features ``models.backbone`` would
compute wrongly. The forward passes live in ``models/backbone.py``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import warnings
from typing import Optional, Protocol

import open_clip
import torch
from torch import nn

from utils.errors import UserError, fetch_error, first_sentence
from utils.io import UnsafeFileError, torch_load

log = logging.getLogger("zsad.backbone")

ACTIVATIONS = ("auto", "quick_gelu", "gelu")
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


class WeightsSpec(Protocol):
    """What :func:`build_clip` reads of a ``models.backbone.BackboneConfig``."""

    model: str
    pretrained: str
    activation: str
    cache_dir: Optional[str]


def check_supported(clip: nn.Module) -> None:
    """Refuse open_clip models whose features this wrapper would compute wrongly."""
    visual = getattr(clip, "visual", None)
    if visual is None or not hasattr(visual, "transformer") or not hasattr(visual, "conv1") \
            or not hasattr(clip, "token_embedding"):
        raise UserError("only open_clip CLIP models with a ViT image tower and the standard text tower are "
                        "supported (e.g. ViT-L-14-336, ViT-B-16); timm, ResNet and custom-text towers are not")
    reasons = []
    if getattr(visual, "attn_pool", None) is not None:
        reasons.append("attentional pooling")
    if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool", False):
        reasons.append(f"image pooling '{getattr(visual, 'pool_type', '?')}' (the methods need the class token)")
    if getattr(clip, "text_pool_type", "argmax") != "argmax":
        reasons.append(f"text pooling '{clip.text_pool_type}' (the methods pool at the EOT token)")
    for tower, blocks in (("image", visual.transformer.resblocks), ("text", clip.transformer.resblocks)):
        block = blocks[0]
        if type(block).__name__ != "ResidualAttentionBlock" or not isinstance(getattr(block, "attn", None),
                                                                             nn.MultiheadAttention):
            reasons.append(f"custom {tower} blocks ({type(block).__name__})")
        elif hasattr(block, "ln_1_kv"):
            reasons.append(f"cross-attention {tower} blocks")
    if reasons:
        raise UserError(f"this open_clip model is not supported: {'; '.join(reasons)}. Use a CLIP ViT such as "
                        "ViT-L-14-336 or ViT-B-16")


# ---------------------------------------------------------------------- loading
def _read_weight_file(path: str) -> tuple[dict, bool]:
    """State dict from an OpenAI ``.pt`` (TorchScript or plain) or an open_clip checkpoint.

    Returns the tensors and whether the file is in OpenAI's format (which implies QuickGELU).
    """
    openai_format = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated but is OpenAI's format
            state = torch.jit.load(path, map_location="cpu").state_dict()
        openai_format = True
    except (RuntimeError, ValueError):
        try:
            state = torch_load(path, f"--pretrained {path}", "weight file")
        except UnsafeFileError:
            raise
        except UserError as err:
            raise UserError(f"{err}; pass an OpenAI .pt file (e.g. ViT-L-14-336px.pt) or an open_clip "
                            "checkpoint") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict) and "visual.conv1.weight" not in state:
                state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"--pretrained {path}: the file holds no state dict")
    if any(key in state for key in _OPENAI_EXTRA_KEYS):
        openai_format = True
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()
             if k not in _OPENAI_EXTRA_KEYS}
    if "visual.conv1.weight" not in state:
        raise UserError(f"--pretrained {path}: this is not a CLIP weight file (no visual.conv1.weight); "
                        "if it is a method checkpoint, pass it as --checkpoint_path instead")
    return state, openai_format


def _load_state(clip: nn.Module, state: dict, path: str, model_name: str) -> None:
    """Copy ``state`` into ``clip``; the pretrained position grid may differ from the config."""
    pos_key = "visual.positional_embedding"
    if pos_key in state and state[pos_key].shape != clip.visual.positional_embedding.shape:
        clip.visual.positional_embedding = nn.Parameter(torch.empty_like(state[pos_key], dtype=torch.float32))
    own = clip.state_dict()
    # scripted archives also store buffers open_clip keeps out of its state dict (attn_mask)
    transient = {name for name, _ in clip.named_buffers()} - set(own)
    state = {k: v for k, v in state.items() if k not in transient}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        detail = "; ".join(f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("shape mismatch", mismatched)) if keys)
        raise UserError(f"--pretrained {path} does not fit --model {model_name} ({detail}); "
                        "pass the --model the weights were trained for")
    clip.load_state_dict(state, strict=True)


@contextlib.contextmanager
def _quiet_root_logger():
    """Mute open_clip's root-logger warnings while we build a model whose weights we load
    ourselves (it would report the model as "initialized randomly")."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _bare_model(name: str) -> nn.Module:
    with _quiet_root_logger():
        return open_clip.create_model(name, pretrained=None)


@contextlib.contextmanager
def _hub_offline_unless_reachable(host: str = "huggingface.co"):
    """Put huggingface_hub in offline (cache-only) mode while ``host`` does not resolve.

    Without this, an offline machine spends about a minute in download retries before the
    cached file (or the error) is reached.
    """
    try:
        socket.getaddrinfo(host, 443)
        reachable = True
    except OSError:
        reachable = False
    try:
        from huggingface_hub import constants as hub_constants
    except ImportError:
        reachable, hub_constants = True, None
    if reachable:
        yield
        return
    log.warning("%s is unreachable: looking for cached CLIP weights only", host)
    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def build_clip(config: WeightsSpec) -> tuple[nn.Module, str]:
    """Create the open_clip model with weights; returns it and the resolved activation."""
    if config.activation not in ACTIVATIONS:
        raise UserError(f"--activation must be one of {ACTIVATIONS}")
    try:
        model_cfg = open_clip.get_model_config(config.model)
    except Exception as err:  # hf-hub: names reach the network; keep the reason
        raise UserError(f"--model {config.model}: its open_clip configuration could not be read "
                        f"({first_sentence(err)})") from None
    if model_cfg is None:
        raise UserError(f"--model {config.model}: unknown open_clip model; see open_clip.list_models()")
    config_quick = bool(model_cfg.get("quick_gelu", False))
    pretrained = config.pretrained
    openai_like = False
    if pretrained.lower() == "none":
        log.warning("!" * 78)
        log.warning("--pretrained none: CLIP has RANDOM weights. Results mean nothing; use this only for tests.")
        log.warning("!" * 78)
        clip = _bare_model(config.model)
    elif os.path.isfile(pretrained):
        state, openai_like = _read_weight_file(pretrained)
        clip = _bare_model(config.model)
        _load_state(clip, state, pretrained, config.model)
        log.info("loaded CLIP weights from %s", pretrained)
    elif os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise UserError(f"--pretrained {pretrained}: file not found")
    else:
        tags = open_clip.list_pretrained_tags_by_model(config.model)
        if pretrained not in tags:
            raise UserError(f"--pretrained {pretrained}: not a file and not an open_clip tag for "
                            f"{config.model} (known tags: {', '.join(tags) or 'none'})")
        openai_like = pretrained == "openai"
        log.info("fetching the '%s' weights of %s through open_clip (cached after the first run)",
                 pretrained, config.model)
        try:
            with _hub_offline_unless_reachable():
                clip = open_clip.create_model(config.model, pretrained=pretrained,
                                              force_quick_gelu=openai_like, cache_dir=config.cache_dir)
        except Exception as err:  # download, cache and file errors each get their own advice
            raise UserError(fetch_error(err, f"the '{pretrained}' weights of {config.model}", config.model,
                                        config.cache_dir)) from None
    activation = config.activation
    if activation == "auto":
        activation = "quick_gelu" if (openai_like or config_quick) else "gelu"
    return clip, activation
