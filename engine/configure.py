"""From flags (and a checkpoint) to a method, its configuration, the backbone's and the plan.

One policy for both scripts, reading each method's registry entry (``models/methods/``):

* method flags are the fields of the method's configuration; a flag for a part the method does
  not have (``--prompt_num`` for FAPrompt's CAP prompts) is an error naming why, and the design
  card's switches belong to the method whose entry allows them (``fapfl``);
* at test time the configuration comes from the checkpoint, and flags may change only what
  leaves the trained weights valid (:data:`SAFE_OVERRIDES`);
* ``--compat auto`` switches on the official code's behaviours for an official checkpoint;
* one seed rule (``engine.recipes.run_seed``);
* :func:`configure_train` turns train.py's flags into a checked :class:`TrainPlan` (the recipe
  with the flags on top) before anything is read or built.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from datasets.names import canonical_dataset
from engine import cli, distributed, validation
from engine.official import OFFICIAL_FLAGS, apply_official_flags
from engine.recipes import run_seed
from engine.runtimes import check_torch_runtime, read_manifest
from models import methods
from models.backbone import BackboneConfig
from models.config import STRUCTURE_SWITCHES, ModelConfig
from models.factory import apply_compat, make_config, method_entry, read_checkpoint
from utils.errors import UserError

log = logging.getLogger("zsad.configure")

# Settings that may differ from training without invalidating the weights.
SAFE_OVERRIDES = frozenset({"sigma", "sample_num", "seed", "dap_select", "official_noise", "official_state_kl",
                            "deep_prompt_fp16", "fused_focal_logits", "vv_aliased"})
GROUP_RATE_FLAGS = {"prompt": "learning_rate_prompt", "flow": "learning_rate_PFL", "linear": "learning_rate_linear",
                    "temperature": "learning_rate_temperature"}


def config_fields() -> frozenset:
    """Every field of every registered method's configuration (the method flags)."""
    classes = {m.config_class for m in methods.registry().values()}
    return frozenset(f.name for cls in classes for f in dataclasses.fields(cls))


def given_fields(args: argparse.Namespace) -> Dict[str, Any]:
    """The method-configuration flags given on the command line (``--seed`` is the run's)."""
    names = config_fields()
    values = {k: v for k, v in vars(args).items() if k in names and k != "seed" and v is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _not_applicable(method: str, names, why: str) -> UserError:
    flags = ", ".join(f"--{n}" for n in sorted(names))
    verb = "does" if len(names) == 1 else "do"
    return UserError(f"{flags} {verb} not apply to --method {method} ({why})")


def check_applicable(method: str, config, given: Dict[str, Any]) -> None:
    """Every given flag must change something of ``method`` under ``config``'s switches."""
    entry = method_entry(method)
    stray = set(given) - {f.name for f in dataclasses.fields(entry.config_class)}
    if stray:
        why = "it has no learned parts" if not entry.trainable else "it has no such setting"
        raise _not_applicable(method, stray, why)
    switches = set(given) & STRUCTURE_SWITCHES
    if switches and not entry.switches:
        owners = ", ".join(f"--method {m.name}" for m in methods.registry().values() if m.switches)
        raise _not_applicable(method, switches, f"the design card's switches are {owners}'s")
    if not entry.trainable:
        return
    stray = set(given) - config.relevant_fields() - STRUCTURE_SWITCHES - {"features_list"}
    if stray and isinstance(config, ModelConfig):
        parts = f"prompt structure {config.prompt_structure}, DAP {'on' if config.dap else 'off'}, " \
                f"flows {config.flows}, pixel head {config.pixel_head}"
        raise _not_applicable(method, stray, f"its parts: {parts}")
    if stray:  # a model of its own: a setting its other settings leave unused (AdaCLIP's k without HSF)
        raise _not_applicable(method, stray, "unused under its other settings")


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


def official_aliases(method: str, flags: Dict[str, Any], fields: Dict[str, Any]) -> List[str]:
    """The configuration fields the method's own official flags imply (AnomalyCLIP's ``--n_ctx``
    is the length of both its contexts), set in ``fields`` unless given themselves; returns the
    notes to log. ``flags``: the official script flags given, by name (:func:`official_values`)."""
    entry, notes = method_entry(method), []
    for flag, handler in entry.official_flags.items():
        value = flags.get(flag)
        if value is None:
            continue
        try:
            note = handler(value, fields)
        except ValueError as err:
            raise UserError(f"--{flag} {_shown(value)}: {err}") from None
        notes.append(f"--{flag} {_shown(value)}: {note}")
    return notes


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def official_values(args: argparse.Namespace) -> Dict[str, Any]:
    """The official script flags given (``engine.official``), by name."""
    return {flag.name: vars(args).get(flag.name) for flag in OFFICIAL_FLAGS if vars(args).get(flag.name) is not None}


# ---------------------------------------------------------------------- test.py
def configure_test(args: argparse.Namespace):
    """(method, config, backbone config, checkpoint or None, seed source) from the checkpoint and
    flags; ``args.seed`` is set by the seed rule. A checkpoint runs on PyTorch: ``--runtime``
    onnxruntime/openvino are refused here (they need ``--exported``)."""
    check_torch_runtime(args)
    checkpoint = read_checkpoint(args.checkpoint_path) if args.checkpoint_path else None
    if checkpoint is None:
        free = methods.names(trainable=False)
        method = args.method or free[0]
        if method_entry(method).trainable:
            raise UserError(f"--method {method} needs --checkpoint_path (training-free: {', '.join(free)})")
        stored, backbone_cfg = {}, cli.backbone_config(args, **method_entry(method).backbone)
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
    official_aliases(method, official_values(args), given)
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
    if compat == "official" and method_entry(method).official is not None:
        config, backbone_cfg = apply_compat(method, config, backbone_cfg, "official")
        log.info("official-code compatibility on (docs/faithfulness.md)")
    cli.check_geometry(backbone_cfg, config, given)
    return method, config, backbone_cfg, checkpoint, seed_source


# Settings an exported model takes at test time: all else is inside its graph.
EXPORTED_OVERRIDES = frozenset({"sigma", "seed", "official_noise"})


def configure_exported(args: argparse.Namespace):
    """(method, config, backbone config, manifest, seed source) of ``--exported DIR``: the
    export's settings, with the test-time ones given on top; flags that would change the graph
    are refused (export again instead)."""
    manifest = read_manifest(args.exported)
    method = manifest["method"]
    if args.checkpoint_path is not None:
        raise UserError("--checkpoint_path and --exported: give one (an exported model holds its weights)")
    if args.method not in (None, method):
        raise UserError(f"--exported {args.exported} is a {method} model, not {args.method}; drop --method")
    backbone_cfg = BackboneConfig(**manifest["backbone"])
    for flag in ("model", "image_size", "pretrained"):
        value = getattr(args, flag, None)
        if value is not None and value != getattr(backbone_cfg, flag):
            raise UserError(f"--{flag} {value}: --exported {args.exported} was exported with "
                            f"{flag} = {getattr(backbone_cfg, flag)}; export again to change it")
    stored = dict(manifest["config"])
    for key, value in given_fields(args).items():
        before = stored.get(key)
        before = tuple(before) if isinstance(before, list) else before
        if key not in EXPORTED_OVERRIDES and value != before:
            raise UserError(f"--{key} cannot change for an exported model (it was exported with {key} = {before}); "
                            "export again with it")
        stored[key] = value
    if args.seed is not None:
        seed_source = "--seed"
    else:
        args.seed, seed_source = int(stored.get("seed", methods.get(method).test_seed)), "the export"
    if "seed" in stored:
        stored["seed"] = args.seed
    return method, make_config(method, stored), backbone_cfg, manifest, seed_source


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
    if checkpoint.official:  # the stage the released files end in (Bayes-PFL's: 2)
        return {"stage": method_entry(checkpoint.method).checkpoint.stage, "source": checkpoint.source}
    return dict(checkpoint.info) or None



# ---------------------------------------------------------------------- train.py
@dataclass
class TrainPlan:
    """What train.py's flags (and a resumed checkpoint) ask for, checked; nothing is read or
    built yet. ``recipe`` is the method's, ``epochs``/``batch_size``/``lr`` with the flags on top."""

    method: str
    recipe: methods.Recipe
    config: Any
    backbone: BackboneConfig
    device: torch.device
    protocol: str  # validation protocol
    epochs: int
    batch_size: int
    lr: Dict[str, float]
    fields: Dict[str, Any]  # the method flags given
    augment: bool = False
    resume: Any = None  # the Checkpoint to resume, or None
    notes: List[str] = field(default_factory=list)  # warnings for the log
    augment_off: bool = False  # --augment off

    def mosaic_prob(self, flag: Optional[float], dataset: str) -> float:
        """``--mosaic_prob``, else the recipe's for the auxiliary ``dataset``: with augmentation
        on, or where the mosaic is the recipe's only augmentation unless ``--augment off``."""
        if flag is not None:
            return flag
        applies = self.augment or (self.recipe.mosaic_alone and not self.augment_off)
        return self.recipe.mosaic_prob.get(dataset, 0.0) if applies else 0.0


def auxiliary_name(args: argparse.Namespace) -> str:
    """``--dataset``, else the auxiliary folders' names joined by "+" (``mvtec+colondb``)."""
    return args.dataset or "+".join(Path(root).name for root in args.train_data_path or [])


def save_path(args: argparse.Namespace) -> Path:
    """``--save_path``, else ``checkpoints/<dataset>_<method>``."""
    return Path(args.save_path or f"checkpoints/{auxiliary_name(args)}_{args.method}")


def _learning_rates(args: argparse.Namespace, method: str, recipe: methods.Recipe,
                    notes: List[str]) -> Dict[str, float]:
    """The rates per parameter group. ``--learning_rate`` sets the rate of a recipe's ``all``
    group (VCP-CLIP keeps its temperatures' own); a recipe of Bayes-PFL's parameter groups
    ignores it, as the official Bayes-PFL code does."""
    lr = dict(recipe.lr)
    if recipe.single_rate:
        if args.learning_rate is not None:
            lr["all"] = args.learning_rate
    elif args.learning_rate is not None:
        flags = ", ".join(f"--{GROUP_RATE_FLAGS[group]}" for group in lr)
        notes.append(f"--learning_rate {args.learning_rate:g} has no effect on {method} (as in the official "
                     f"Bayes-PFL code): its parameter groups have their own rates, set by {flags}")
    for group, flag in GROUP_RATE_FLAGS.items():
        if getattr(args, flag) is not None and group in lr:
            lr[group] = getattr(args, flag)
    return lr


def _resume_checkpoint(args: argparse.Namespace):
    """The checkpoint named by --resume (``auto``: the latest epoch in the save path), or None."""
    if not args.resume:
        return None
    path = args.resume
    if path == "auto":
        found = sorted(save_path(args).glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        if not found:
            raise UserError(f"--resume auto: no epoch_*.pth in {save_path(args)}")
        path = str(found[-1])
    checkpoint = read_checkpoint(path, flag="--resume")
    if not checkpoint.training:
        raise UserError(f"--resume {path}: not a resumable checkpoint of train.py (final.pth holds no "
                        "training state; pass an epoch_N.pth)")
    return checkpoint


def configure_train(parser: argparse.ArgumentParser,
                    argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, TrainPlan]:
    """Parse ``argv`` with train.py's ``parser`` and resolve every setting; bad input raises
    :class:`UserError`."""
    args = parser.parse_args(argv)
    explicit_method = args.method
    trainable = methods.names(trainable=True)
    args.method = args.method or infer_method(given_fields(args), trainable)
    resume = _resume_checkpoint(args)
    if resume is not None:  # the interrupted run's flags, unless given again
        stored = resume.training.get("run", {}).get("args", {})
        skip = {"resume", "interrupt_after_epoch"} | {flag.name for flag in OFFICIAL_FLAGS}  # already applied
        parser.set_defaults(**{k: v for k, v in stored.items() if k not in skip})
        args = parser.parse_args(argv)
        if explicit_method not in (None, resume.method):
            raise UserError(f"--resume {args.resume}: a {resume.method} checkpoint, not --method {explicit_method}")
        args.method = resume.method
    notes = apply_official_flags(args, "train")
    if not args.train_data_path:  # not argparse's required: AdaCLIP's --training_data says what to pass first
        raise UserError("--train_data_path is required: the auxiliary dataset root (with meta.json); several "
                        "roots are trained on together")
    method = args.method
    entry = method_entry(method)
    if explicit_method is None and method != trainable[0] and resume is None:
        notes.append(f"--method {method}: inferred from its flags (pass --method to choose)")
    recipe = entry.recipe.on(canonical_dataset(auxiliary_name(args)))  # the official settings for that dataset
    args.seed = recipe.seed if args.seed is None else args.seed
    device = cli.resolve_device(args.device)
    compat = "ours" if args.compat == "auto" else args.compat

    fields = given_fields(args)
    notes += official_aliases(method, official_values(args), fields)
    if resume is not None:
        config = make_config(method, resume.config)
        backbone_cfg = cli.backbone_config(args, resume.backbone)
    else:
        config = method_config(method, fields)
        backbone_cfg = cli.backbone_config(args, **entry.backbone)
        config, backbone_cfg = apply_compat(method, config, backbone_cfg, compat)
    cli.check_geometry(backbone_cfg, config, fields)
    epochs = recipe.epochs if args.epochs is None else args.epochs
    if args.stage2_epochs and not config.two_stage:
        raise UserError(f"--stage2_epochs does not apply to --method {method} (it trains in one stage)")
    if args.stage2_epochs >= epochs:
        raise UserError(f"--stage2_epochs {args.stage2_epochs} leaves stage 1 no epoch of --epochs {epochs}; "
                        f"use at most {epochs - 1}")
    official_protocol = recipe.official_validation if compat == "official" else None
    protocol = validation.protocol(args.val_protocol, recipe.validation, official_protocol)
    if args.val_data_path is not None and protocol != "target":
        notes.append(f"--val_data_path is read only with --val_protocol target (the official Bayes-PFL protocol, "
                     f"validating on target categories; also --compat official); validation here: {protocol}")
    if args.stage2_epochs and protocol == "none":
        raise UserError("--stage2_epochs needs validation (stage 2 stops on validation image AP); "
                        "drop --val_protocol none")
    batch_size = recipe.batch_size if args.batch_size is None else args.batch_size
    processes = distributed.launched_processes()
    if batch_size % processes:
        raise UserError(f"--batch_size {batch_size} is the global batch and cannot be split evenly over the "
                        f"{processes} processes torchrun started; choose a multiple of {processes}")
    if processes > 1 and args.feature_cache in ("memory", "disk"):
        raise UserError(f"--feature_cache {args.feature_cache} runs in one process (each torchrun process would "
                        "see other images every epoch); drop it, or train without torchrun")
    if processes > 1 and args.feature_cache == "auto":
        args.feature_cache = "off"  # as above; auto only asks for the cache where it applies
    lr = _learning_rates(args, method, recipe, notes)
    augment = recipe.augment if args.augment == "auto" else args.augment == "on"
    return args, TrainPlan(method, recipe, config, backbone_cfg, device, protocol, epochs, batch_size, lr, fields,
                           augment, resume, notes, augment_off=args.augment == "off")
