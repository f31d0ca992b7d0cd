"""Train learned prompts on an auxiliary dataset (its test split, SPEC section 1).

    python train.py --method faprompt --dataset visa --train_data_path data/visa --save_path checkpoints/visa

Every epoch writes ``epoch_N.pth`` (resumable with ``--resume``); the end writes ``final.pth``,
which ``test.py --checkpoint_path`` takes with no other model flag. Commands of the official
FAPrompt and Bayes-PFL ``train.sh`` run as they are (``engine.official``); without ``--method``
the method is the first of faprompt, bayes_pfl, fapfl that has every method flag given.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from datasets.augment import TrainAugment
from datasets.meta import MetaDataset
from datasets.names import canonical_dataset
from models.backbone import BackboneConfig, build_backbone
from models.factory import (apply_compat, build_model, config_class, make_config,
                            method_backbone_defaults, read_checkpoint)
from engine import cli, configure, distributed, validation
from engine.evaluation import validation_scores
from engine.feature_cache import DTYPES, MODES, CacheRequest, cache_wanted, open_caches
from engine.official import OFFICIAL_FLAGS, add_official_flags, apply_official_flags
from engine.recipes import RECIPES
from engine.trainer import Trainer, TrainSettings
from utils.errors import UserError, exit_with
from utils.log import setup_logging

log = logging.getLogger("zsad.train")
TRAINABLE = ("faprompt", "bayes_pfl", "fapfl", "anomalyclip")
GROUP_RATE_FLAGS = "--learning_rate_prompt, --learning_rate_PFL, --learning_rate_linear, --learning_rate_temperature"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("data and output")
    group.add_argument("--method", default=None, choices=TRAINABLE,
                       help="default: the first of faprompt, bayes_pfl, fapfl, anomalyclip to which every "
                            "method flag given applies")
    group.add_argument("--train_data_path", required=True, help="auxiliary dataset root (with meta.json)")
    group.add_argument("--dataset", default=None, help="auxiliary dataset name (default: the folder name)")
    group.add_argument("--train_classes", nargs="+", default=None, help="train on these categories only")
    group.add_argument("--save_path", default=None, help="checkpoint folder (default checkpoints/<dataset>_<method>)")
    group.add_argument("--resume", default=None, help="a checkpoint epoch_N.pth, or 'auto' for the latest in --save_path")
    group = parser.add_argument_group("optimisation (unset: the method's recipe)")
    group.add_argument("--epochs", "--epoch", dest="epochs", type=cli.positive_int, default=None,
                       help="epoch budget (two-stage methods: both stages together, as officially)")
    group.add_argument("--learning_rate", type=cli.positive_float, default=None,
                       help="FAPrompt: the learning rate; bayes_pfl and fapfl: accepted with no effect, as in "
                            "the official Bayes-PFL code (set the rates of the groups below)")
    group.add_argument("--learning_rate_prompt", type=cli.positive_float, default=None)
    group.add_argument("--learning_rate_PFL", type=cli.positive_float, default=None, help="flow parameters")
    group.add_argument("--learning_rate_linear", type=cli.positive_float, default=None)
    group.add_argument("--learning_rate_temperature", type=cli.positive_float, default=None)
    group.add_argument("--warmup", type=cli.fraction, default=0.1, help="warm-up fraction of the cosine schedule")
    group.add_argument("--patience", type=cli.nonnegative_int, default=3,
                       help="early-stopping patience (Bayes-PFL counter)")
    group.add_argument("--stage2_epochs", type=cli.nonnegative_int, default=0,
                       help="two-stage methods: reserve the last N epochs of --epochs for stage 2, so stage 1 "
                            "ends after epochs - N at the latest and stage 2 always runs (0: official, shared)")
    group.add_argument("--augment", default="auto", choices=("auto", "on", "off"),
                       help="official Bayes-PFL augmentation (auto: on for bayes_pfl and fapfl)")
    group.add_argument("--mosaic_prob", type=cli.probability, default=None,
                       help="2x2 mosaic probability (auto: 0.4 with MVTec as auxiliary set and augmentation on)")
    group = parser.add_argument_group("feature cache (the frozen image tower runs once per image)")
    group.add_argument("--feature_cache", default="auto", choices=MODES,
                       help="reuse the first epoch's image features in later epochs: memory, disk "
                            "(memory-mapped files, kept across runs), off; auto: memory or disk when "
                            "augmentation is off and the cache fits, else off")
    group.add_argument("--cache_dtype", default="float32", choices=tuple(DTYPES),
                       help="float32 trains bit-identically to no cache; float16 halves the cache")
    group.add_argument("--feature_cache_dir", default=None,
                       help="folder of the disk cache (default <save_path>/feature_cache)")
    group = parser.add_argument_group("validation and early stopping")
    group.add_argument("--val_protocol", default="auto", choices=validation.PROTOCOLS,
                       help="aux: held-out part of the auxiliary set (ours); target: a few target "
                            "categories (official Bayes-PFL); auto: the method's recipe")
    group.add_argument("--val_fraction", type=cli.fraction, default=0.1,
                       help="held-out fraction for --val_protocol aux")
    group.add_argument("--val_data_path", default=None, help="target dataset root for --val_protocol target")
    group.add_argument("--val_dataset", default=None, help="target dataset name for --val_protocol target")
    group.add_argument("--val_classes", nargs="+", default=None, help="validation categories (target protocol)")
    # the official Bayes-PFL train.py calls the validation sample count --sample_num (test.py's is R)
    group.add_argument("--val_sample_num", "--sample_num", dest="val_sample_num", type=cli.positive_int, default=5,
                       help="flow samples during validation")
    group = parser.add_argument_group("checkpoints")
    group.add_argument("--save_freq", type=cli.positive_int, default=1, help="write a checkpoint every N epochs")
    group.add_argument("--keep_checkpoints", type=cli.nonnegative_int, default=3,
                       help="epoch checkpoints kept (0: all)")
    group.add_argument("--interrupt_after_epoch", type=int, default=None, help=argparse.SUPPRESS)
    cli.add_common_flags(parser)
    cli.add_method_flags(parser, [config_class(TRAINABLE[0])], skip={"sample_num"})
    add_official_flags(parser, "train")
    return parser


def _learning_rates(args, recipe, notes: List[str]) -> Dict[str, float]:
    """The rates per parameter group; a two-stage recipe ignores --learning_rate (SPEC section 8)."""
    lr = dict(recipe["lr"])
    if "all" in lr:
        if args.learning_rate is not None:
            lr["all"] = args.learning_rate
        return lr
    if args.learning_rate is not None:
        notes.append(f"--learning_rate {args.learning_rate:g} has no effect on {args.method} (as in the official "
                     f"Bayes-PFL code): its parameter groups have their own rates, set by {GROUP_RATE_FLAGS}")
    for key, flag in (("prompt", "learning_rate_prompt"), ("flow", "learning_rate_PFL"),
                      ("linear", "learning_rate_linear"), ("temperature", "learning_rate_temperature")):
        if getattr(args, flag) is not None:
            lr[key] = getattr(args, flag)
    return lr


def _save_path(args) -> Path:
    name = args.dataset or Path(args.train_data_path).name
    return Path(args.save_path or f"checkpoints/{name}_{args.method}")


def _resume_checkpoint(args):
    """The checkpoint named by --resume (``auto``: the latest epoch in the save path), or None."""
    if not args.resume:
        return None
    path = args.resume
    if path == "auto":
        found = sorted(_save_path(args).glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        if not found:
            raise UserError(f"--resume auto: no epoch_*.pth in {_save_path(args)}")
        path = str(found[-1])
    checkpoint = read_checkpoint(path, flag="--resume")
    if not checkpoint.training:
        raise UserError(f"--resume {path}: not a resumable checkpoint of train.py (final.pth holds no "
                        "training state; pass an epoch_N.pth)")
    return checkpoint


@dataclass
class Plan:
    """What the flags (and a resumed checkpoint) ask for, checked; nothing is read or built yet."""

    method: str
    recipe: dict
    config: Any
    backbone: BackboneConfig
    device: torch.device
    protocol: str  # validation protocol
    epochs: int
    batch_size: int
    lr: Dict[str, float]
    fields: Dict[str, Any]  # the method flags given
    resume: Any = None  # the Checkpoint to resume, or None
    notes: List[str] = field(default_factory=list)  # warnings for the log


def plan(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Plan]:
    """Parse ``argv`` and resolve every setting; bad input raises :class:`UserError`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit_method = args.method
    args.method = args.method or configure.infer_method(configure.given_fields(args), TRAINABLE)
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
    method = args.method
    if explicit_method is None and method != "faprompt" and resume is None:
        notes.append(f"--method {method}: inferred from its flags (pass --method to choose)")
    recipe = RECIPES[method]
    args.seed = recipe["seed"] if args.seed is None else args.seed
    device = cli.resolve_device(args.device)
    compat = "ours" if args.compat == "auto" else args.compat

    fields = configure.given_fields(args)
    notes += configure.official_context_length(method, args, fields)
    if resume is not None:
        config = make_config(method, resume.config)
        backbone_cfg = cli.backbone_config(args, resume.backbone)
    else:
        config = configure.method_config(method, fields)
        backbone_cfg = cli.backbone_config(args, **method_backbone_defaults(method))
        config, backbone_cfg = apply_compat(method, config, backbone_cfg, compat)
    cli.check_geometry(backbone_cfg, config, fields)
    epochs = recipe["epochs"] if args.epochs is None else args.epochs
    if args.stage2_epochs and method == "faprompt":
        raise UserError("--stage2_epochs does not apply to --method faprompt (it trains in one stage)")
    if args.stage2_epochs >= epochs:
        raise UserError(f"--stage2_epochs {args.stage2_epochs} leaves stage 1 no epoch of --epochs {epochs}; "
                        f"use at most {epochs - 1}")
    protocol = validation.protocol(args.val_protocol, recipe["validation"], method, official=compat == "official")
    if args.val_data_path is not None and protocol != "target":
        notes.append(f"--val_data_path is read only with --val_protocol target (the official Bayes-PFL protocol, "
                     f"validating on target categories; also --compat official); validation here: {protocol}")
    if args.stage2_epochs and protocol == "none":
        raise UserError("--stage2_epochs needs validation (stage 2 stops on validation image AP); "
                        "drop --val_protocol none")
    batch_size = recipe["batch_size"] if args.batch_size is None else args.batch_size
    processes = distributed.launched_processes()
    if batch_size % processes:
        raise UserError(f"--batch_size {batch_size} is the global batch and cannot be split evenly over the "
                        f"{processes} processes torchrun started; choose a multiple of {processes}")
    if processes > 1 and args.feature_cache in ("memory", "disk"):
        raise UserError(f"--feature_cache {args.feature_cache} runs in one process (each torchrun process would "
                        "see other images every epoch); drop it, or train without torchrun")
    if processes > 1 and args.feature_cache == "auto":
        args.feature_cache = "off"  # as above; auto only asks for the cache where it applies
    lr = _learning_rates(args, recipe, notes)
    return args, Plan(method, recipe, config, backbone_cfg, device, protocol, epochs, batch_size, lr, fields,
                      resume, notes)


def build_trainer(argv: Optional[Sequence[str]] = None) -> Trainer:
    """Everything a single-process ``main`` does before training: the configured :class:`Trainer`."""
    setup_logging()  # the console until the save folder exists
    args, run = plan(argv)
    return _build(args, run, distributed.current())


def _build(args, run: Plan, ctx: distributed.Context) -> Trainer:
    """This process's trainer: data, save folder (rank 0 writes), model, caches, resume state."""
    distributed.quiet_other_ranks(ctx)
    cli.keep_freed_memory(run.device)
    method, recipe, backbone_cfg = run.method, run.recipe, run.backbone
    dataset_name = args.dataset or Path(args.train_data_path).name
    augment = recipe["augment"] if args.augment == "auto" else args.augment == "on"
    mosaic = args.mosaic_prob
    if mosaic is None:
        mosaic = 0.4 if augment and canonical_dataset(dataset_name) == "mvtec" else 0.0
    request = CacheRequest(args.feature_cache, args.cache_dtype,
                           Path(args.feature_cache_dir or _save_path(args) / "feature_cache"))
    use_cache = cache_wanted(request, augment)
    full = MetaDataset(args.train_data_path, "test", classes=args.train_classes,
                       image_size=backbone_cfg.image_size)
    train_records, val_set = validation.validation_split(
        run.protocol, full, backbone_cfg.image_size, args.seed, args.val_fraction, dataset_name, args.val_data_path,
        args.val_dataset, args.val_classes)
    train_set = MetaDataset(full.root, "test", image_size=backbone_cfg.image_size, check_files=False,
                            records=train_records if train_records is not None else full.records,
                            augment=TrainAugment(mosaic_prob=mosaic) if augment else None)

    save_path = cli.ensure_writable(_save_path(args)) if ctx.is_main else _save_path(args)
    if ctx.is_main:  # nothing is written before every input is checked; rank 0 writes
        setup_logging(save_path / "train.log")
    if ctx.enabled:
        log.info("%d processes (%s), %d images of each batch of %d per process", ctx.world_size, ctx.backend,
                 run.batch_size // ctx.world_size, run.batch_size)
    for note in run.notes:
        log.warning(note)
    log.info("method %s, configuration %s", method, run.config)
    log.info("training on %d images of %s (%d categories)%s; augmentation %s, mosaic %.2f",
             len(train_set), full.root, len(train_set.classes),
             f", validating on {len(val_set)}" if val_set is not None else ", no validation",
             "on" if augment else "off", mosaic)

    cli.seed_everything(args.seed)
    backbone = build_backbone(backbone_cfg, run.device)
    model = build_model(method, run.config, backbone).to(run.device)
    two_stage = getattr(model, "two_stage", False)
    if args.stage2_epochs and not two_stage:
        raise UserError(f"--stage2_epochs does not apply to this {method} model (it trains in one stage)")
    if two_stage and val_set is None:
        log.warning("no validation: early stopping and stage 2 are off (only stage 1 is trained)")
    num_workers = cli.default_workers(run.device) if args.num_workers is None else args.num_workers
    settings = TrainSettings(epochs=run.epochs, batch_size=run.batch_size, seed=args.seed,
                             save_path=save_path, lr=run.lr, warmup=args.warmup,
                             patience=args.patience, num_workers=num_workers,
                             keep_checkpoints=args.keep_checkpoints, save_freq=args.save_freq,
                             stage2_epochs=args.stage2_epochs, interrupt_after_epoch=args.interrupt_after_epoch)
    caches = {} if not use_cache else open_caches(
        request, model, backbone_cfg, {"train": train_set, **({"val": val_set} if val_set is not None else {})})
    validate = None if val_set is None else (
        lambda m: validation_scores(m, val_set, run.device, run.batch_size, num_workers, args.val_sample_num,
                                    cache=caches.get("val")))
    trainer = Trainer(model, train_set, settings, backbone_cfg, run.device, validate,
                      run_info={"dataset": dataset_name, "train_data_path": str(full.root), "args": vars(args)},
                      cache=caches.get("train"), ctx=ctx)
    if run.resume is not None:
        trainer.resume(run.resume.training, run.resume.state_dict)
    return trainer


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()  # the console until the save folder exists
    args, run = plan(argv)
    with distributed.session(args.device) as (ctx, device):  # torchrun: one process per GPU
        run.device = device
        final = _build(args, run, ctx).run()
    log.info("done: test with  python test.py --checkpoint_path %s --data_path <target root>", final)
    return 0


if __name__ == "__main__":
    exit_with(main)
