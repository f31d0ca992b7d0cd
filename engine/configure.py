"""From flags (and a checkpoint) to a method, its configuration and the backbone's.

One policy for both scripts:

* method flags are the fields of the method's configuration; a flag for a part the method does
  not have (``--prompt_num`` for FAPrompt's CAP prompts) is an error naming why, and the design
  card's switches belong to ``--method fapfl`` alone;
* at test time the configuration comes from the checkpoint, and flags may change only what
  leaves the trained weights valid (:data:`SAFE_OVERRIDES`);
* ``--compat auto`` switches on the official code's behaviours for an official checkpoint;
* one seed rule (``engine.recipes.run_seed``).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from engine import cli
from engine.recipes import run_seed
from models.clip_baseline import ClipBaselineConfig
from models.config import STRUCTURE_SWITCHES, ModelConfig
from models.factory import apply_compat, make_config, method_backbone_defaults, read_checkpoint
from utils.errors import UserError

log = logging.getLogger("zsad.configure")

# Settings that may differ from training without invalidating the weights.
SAFE_OVERRIDES = frozenset({"sigma", "sample_num", "seed", "dap_select", "official_noise", "official_state_kl",
                            "deep_prompt_fp16", "fused_focal_logits", "vv_aliased"})
CONFIG_FIELDS = frozenset(f.name for cls in (ModelConfig, ClipBaselineConfig) for f in dataclasses.fields(cls))


def given_fields(args: argparse.Namespace) -> Dict[str, Any]:
    """The method-configuration flags given on the command line (``--seed`` is the run's)."""
    values = {k: v for k, v in vars(args).items() if k in CONFIG_FIELDS and k != "seed" and v is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _not_applicable(method: str, names, why: str) -> UserError:
    flags = ", ".join(f"--{n}" for n in sorted(names))
    verb = "does" if len(names) == 1 else "do"
    return UserError(f"{flags} {verb} not apply to --method {method} ({why})")


def check_applicable(method: str, config, given: Dict[str, Any]) -> None:
    """Every given flag must change something of ``method`` under ``config``'s switches."""
    if method == "clip":
        stray = set(given) - {f.name for f in dataclasses.fields(ClipBaselineConfig)}
        if stray:
            raise _not_applicable(method, stray, "the training-free baseline has no learned parts")
        return
    switches = set(given) & STRUCTURE_SWITCHES
    if switches and method != "fapfl":
        raise _not_applicable(method, switches, "the design card's switches are --method fapfl's")
    stray = set(given) - config.relevant_fields() - STRUCTURE_SWITCHES - {"features_list"}
    if stray:
        parts = f"prompt structure {config.prompt_structure}, DAP {'on' if config.dap else 'off'}, " \
                f"flows {config.flows}, pixel head {config.pixel_head}"
        raise _not_applicable(method, stray, f"its parts: {parts}")


def method_config(method: str, fields: Dict[str, Any]):
    """The method's preset with ``fields`` on top, every field checked to apply."""
    config = make_config(method, fields)
    check_applicable(method, config, fields)
    if "features_list" in fields and "features_list" not in config.relevant_fields():
        log.info("--features_list is accepted but unused by %s (as in its official code)", method)
    return config


def infer_method(given: Dict[str, Any], candidates: Tuple[str, ...]) -> str:
    """The first of ``candidates`` to which every given flag applies (a pasted official command
    has no --method); the first candidate when none does, so the error names the default."""
    for method in candidates:
        try:
            check_applicable(method, make_config(method, given), given)
            return method
        except UserError:
            continue
    return candidates[0]


def official_context_length(method: str, args: argparse.Namespace, fields: Dict[str, Any]) -> List[str]:
    """AnomalyCLIP's ``--n_ctx`` is the length of both its contexts (FAPrompt's has no effect);
    returns the notes to log."""
    n_ctx = getattr(args, "n_ctx", None)
    if method != "anomalyclip" or n_ctx is None:
        return []
    fields.setdefault("normal_ctx", n_ctx)
    fields.setdefault("abnormal_ctx", n_ctx)
    return [f"--n_ctx {n_ctx}: AnomalyCLIP's normal and abnormal context lengths"]


# ---------------------------------------------------------------------- test.py
def configure_test(args: argparse.Namespace):
    """(method, config, backbone config, checkpoint or None, seed source) from the checkpoint and
    flags; ``args.seed`` is set by the seed rule."""
    checkpoint = read_checkpoint(args.checkpoint_path) if args.checkpoint_path else None
    if checkpoint is None:
        method = args.method or "clip"
        if method != "clip":
            raise UserError(f"--method {method} needs --checkpoint_path (only 'clip' is training-free)")
        stored, backbone_cfg = {}, cli.backbone_config(args, **method_backbone_defaults("clip"))
    else:
        method = checkpoint.method
        if args.method not in (None, method):
            raise UserError(f"--checkpoint_path {args.checkpoint_path} is a {method} checkpoint, not "
                            f"{args.method}; drop --method")
        if args.model is not None and args.model != checkpoint.backbone.model and checkpoint.official:
            log.warning("official checkpoints were trained on %s; using --model %s", checkpoint.backbone.model,
                        args.model)
        elif args.model is not None and args.model != checkpoint.backbone.model:
            raise UserError(f"--checkpoint_path {args.checkpoint_path} was trained on the backbone "
                            f"{checkpoint.backbone.model}, not --model {args.model}; drop --model")
        stored, backbone_cfg = dict(checkpoint.config), cli.backbone_config(args, checkpoint.backbone)
    given = given_fields(args)
    official_context_length(method, args, given)
    args.seed, seed_source = run_seed(args.seed, checkpoint, method)
    base = make_config(method, stored)
    check_applicable(method, base, given)
    for key, value in given.items():
        before = stored.get(key, getattr(base, key, None))
        before = tuple(before) if isinstance(before, list) else before
        unsafe = checkpoint is not None and key not in SAFE_OVERRIDES
        if unsafe and not (checkpoint.official and key == "features_list") and value != before:
            raise UserError(f"--{key} cannot change at test time: the checkpoint was trained with {key} = {before}")
        stored[key] = value
    if "seed" in {f.name for f in dataclasses.fields(type(base))}:
        stored["seed"] = args.seed
    config = make_config(method, stored)
    compat = args.compat
    if compat == "auto":
        compat = "official" if checkpoint is not None and checkpoint.official else "ours"
    if compat == "official" and method in ("faprompt", "bayes_pfl", "anomalyclip"):
        config, backbone_cfg = apply_compat(method, config, backbone_cfg, "official")
        log.info("official-code compatibility on (SPEC section 8)")
    cli.check_geometry(backbone_cfg, config, given)
    return method, config, backbone_cfg, checkpoint, seed_source


def run_name(checkpoint) -> str:
    """A checkpoint's run: train.py's save folder (with the epoch for files other than final.pth),
    or an official file's name."""
    path = Path(checkpoint.path)
    if checkpoint.official:
        return path.stem
    name = checkpoint.info.get("run_name") or path.resolve().parent.name
    return name if path.stem == "final" else f"{name}_{path.stem}"


def training_summary(checkpoint) -> Optional[dict]:
    """The checkpoint's run summary for results.json: the stage its weights end in, and more."""
    if checkpoint is None:
        return None
    if checkpoint.official:  # released Bayes-PFL checkpoints are stage-2 models
        return {"stage": 2 if checkpoint.method == "bayes_pfl" else 1, "source": checkpoint.source}
    return dict(checkpoint.info) or None

