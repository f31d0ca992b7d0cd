"""Train learned prompts on an auxiliary dataset (its test split, SPEC section 1).

    python train.py --method faprompt --dataset visa --train_data_path data/visa --save_path checkpoints/visa

Every epoch writes ``epoch_N.pth`` (resumable with ``--resume``); the end writes ``final.pth``,
which ``test.py --checkpoint_path`` takes with no other model flag.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

from datasets.augment import TrainAugment
from datasets.meta import MetaDataset, holdout_split
from datasets.names import canonical_dataset, known_categories
from models.backbone import build_backbone
from models.factory import (METHODS, apply_compat, build_model, config_class, make_config,
                            method_backbone_defaults, read_checkpoint)
from engine import cli
from engine.evaluation import validation_scores
from engine.feature_cache import DTYPES, MODES, CacheRequest, cache_wanted, open_caches
from engine.trainer import Trainer, TrainSettings
from utils.errors import UserError, exit_with, flags_not_applicable
from utils.log import setup_logging

log = logging.getLogger("zsad.train")

# The published recipes (SPEC sections 4 and 5); flags override any entry.
RECIPES: Dict[str, dict] = {
    "faprompt": dict(epochs=15, batch_size=8, seed=111, validation="none", augment=False,
                     lr={"all": 1e-3}),
    "bayes_pfl": dict(epochs=30, batch_size=32, seed=333, validation="aux", augment=True,
                      lr={"prompt": 1e-3, "flow": 1e-3, "linear": 1e-4, "temperature": 1e-2}),
    "fapfl": dict(epochs=20, batch_size=8, seed=111, validation="aux", augment=True,
                  lr={"prompt": 1e-3, "flow": 1e-3, "linear": 1e-4, "temperature": 1e-2}),
}
# Bayes-PFL's official validation categories when validating on the target dataset.
TARGET_VALIDATION = {"visa": ("mvtec", ["bottle", "hazelnut", "wood", "zipper", "leather"]),
                     "mvtec": ("visa", ["chewinggum", "cashew", "pipe_fryum", "capsules", "candle"])}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("data and output")
    group.add_argument("--method", default="faprompt", choices=[m for m in METHODS if m != "clip"])
    group.add_argument("--train_data_path", required=True, help="auxiliary dataset root (with meta.json)")
    group.add_argument("--dataset", default=None, help="auxiliary dataset name (default: the folder name)")
    group.add_argument("--train_classes", nargs="+", default=None, help="train on these categories only")
    group.add_argument("--save_path", default=None, help="checkpoint folder (default checkpoints/<dataset>_<method>)")
    group.add_argument("--resume", default=None, help="a checkpoint epoch_N.pth, or 'auto' for the latest in --save_path")
    group = parser.add_argument_group("optimisation (unset: the method's recipe)")
    group.add_argument("--epochs", "--epoch", dest="epochs", type=int, default=None)
    group.add_argument("--learning_rate", type=float, default=None,
                       help="FAPrompt: the learning rate; two-stage methods: prompts and flows")
    group.add_argument("--learning_rate_prompt", type=float, default=None)
    group.add_argument("--learning_rate_PFL", type=float, default=None, help="flow parameters")
    group.add_argument("--learning_rate_linear", type=float, default=None)
    group.add_argument("--learning_rate_temperature", type=float, default=None)
    group.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the cosine schedule")
    group.add_argument("--patience", type=int, default=3, help="early-stopping patience (Bayes-PFL counter)")
    group.add_argument("--augment", default="auto", choices=("auto", "on", "off"),
                       help="official Bayes-PFL augmentation (auto: on for bayes_pfl and fapfl)")
    group.add_argument("--mosaic_prob", type=float, default=None,
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
    group.add_argument("--val_protocol", default="auto", choices=("auto", "aux", "target", "none"),
                       help="aux: held-out part of the auxiliary set (ours); target: a few target "
                            "categories (official Bayes-PFL); auto: the method's recipe")
    group.add_argument("--val_fraction", type=float, default=0.1, help="held-out fraction for --val_protocol aux")
    group.add_argument("--val_data_path", default=None, help="target dataset root for --val_protocol target")
    group.add_argument("--val_dataset", default=None, help="target dataset name for --val_protocol target")
    group.add_argument("--val_classes", nargs="+", default=None, help="validation categories (target protocol)")
    group.add_argument("--val_sample_num", type=int, default=5, help="flow samples during validation")
    group = parser.add_argument_group("checkpoints")
    group.add_argument("--save_freq", type=int, default=1, help="write a checkpoint every N epochs")
    group.add_argument("--keep_checkpoints", type=int, default=3, help="epoch checkpoints kept (0: all)")
    for flag in ("--print_freq", "--n_ctx"):  # official flags without an effect here
        group.add_argument(flag, type=int, default=None, help=argparse.SUPPRESS)
    group.add_argument("--feature_map_layer", type=int, nargs="+", default=None, help=argparse.SUPPRESS)
    group.add_argument("--interrupt_after_epoch", type=int, default=None, help=argparse.SUPPRESS)
    cli.add_common_flags(parser)
    cli.add_method_flags(parser, [config_class(m) for m in ("faprompt", "bayes_pfl", "fapfl")])
    return parser


def _learning_rates(args, recipe) -> Dict[str, float]:
    lr = dict(recipe["lr"])
    if "all" in lr:
        if args.learning_rate is not None:
            lr["all"] = args.learning_rate
        return lr
    if args.learning_rate is not None:
        lr["prompt"] = lr["flow"] = args.learning_rate
    for key, flag in (("prompt", "learning_rate_prompt"), ("flow", "learning_rate_PFL"),
                      ("linear", "learning_rate_linear"), ("temperature", "learning_rate_temperature")):
        if getattr(args, flag) is not None:
            lr[key] = getattr(args, flag)
    return lr


def _validation(args, dataset_name: str, train_set: MetaDataset, image_size: int, recipe, official: bool):
    """(training records, validation dataset or None) for the chosen protocol; with official
    compatibility Bayes-PFL validates on target categories, as its official code does."""
    protocol = args.val_protocol
    if protocol == "auto":
        protocol = "target" if official and args.method == "bayes_pfl" else recipe["validation"]
    if protocol == "none":
        return None, None
    if protocol == "aux":
        train_records, val_records = holdout_split(train_set.records, args.val_fraction, args.seed)
        if not val_records:
            raise UserError(f"--val_fraction {args.val_fraction} holds out no image of "
                            f"{args.train_data_path}; raise it or use --val_protocol none")
        return train_records, MetaDataset(train_set.root, "test", image_size=image_size, records=val_records,
                                          check_files=False)
    if args.val_data_path is None:
        raise UserError("validation on target categories (--val_protocol target, or --compat official for "
                        "bayes_pfl) needs --val_data_path (the target dataset root); or pass --val_protocol aux")
    classes = args.val_classes
    if classes is None and args.val_dataset is not None:
        target = canonical_dataset(args.val_dataset)
        if known_categories(target) is None:
            raise UserError(f"--val_dataset {args.val_dataset} has no known categories; pass --val_classes")
        official = {name: cats for name, cats in TARGET_VALIDATION.values()}
        classes = official.get(target, known_categories(target))
    if classes is None:
        default = TARGET_VALIDATION.get(canonical_dataset(dataset_name))
        if default is None:
            raise UserError(f"--val_protocol target: no default validation categories for auxiliary set "
                            f"'{dataset_name}'; pass --val_dataset or --val_classes")
        classes = default[1]
    return None, MetaDataset(args.val_data_path, "test", classes=classes, image_size=image_size)


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
    checkpoint = read_checkpoint(path)
    if not checkpoint.training:
        raise UserError(f"--resume {path}: not a resumable checkpoint of train.py (final.pth holds no "
                        "training state; pass an epoch_N.pth)")
    return checkpoint


def build_trainer(argv: Optional[Sequence[str]] = None) -> Trainer:
    """Everything ``main`` does before training: the configured :class:`Trainer`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    resume = _resume_checkpoint(args)
    if resume is not None:  # the interrupted run's flags, unless given again
        stored = resume.training.get("run", {}).get("args", {})
        parser.set_defaults(**{k: v for k, v in stored.items() if k not in ("resume", "interrupt_after_epoch")})
        args = parser.parse_args(argv)
        if resume.method != args.method:
            raise UserError(f"--resume {args.resume}: a {resume.method} checkpoint, not --method {args.method}")
    method = args.method
    recipe = RECIPES[method]
    dataset_name = args.dataset or Path(args.train_data_path).name
    save_path = cli.ensure_writable(_save_path(args))
    setup_logging(save_path / "train.log")
    args.seed = recipe["seed"] if args.seed is None else args.seed
    cli.seed_everything(args.seed)
    device = cli.resolve_device(args.device)
    compat = "ours" if args.compat == "auto" else args.compat

    fields = cli.method_fields(args, config_class(method))
    stray = set(cli.given_method_flags(args, [config_class(m) for m in ("faprompt", "bayes_pfl", "fapfl")]))
    stray -= set(fields) | {"features_list"}
    if stray:
        raise flags_not_applicable(stray, method)
    if args.features_list is not None and "features_list" not in fields:
        log.info("--features_list is accepted but unused by %s (as in its official code)", method)
    if resume is not None:
        config = make_config(method, resume.config)
        backbone_cfg = cli.backbone_config(args, resume.backbone)
    else:
        config = make_config(method, fields)
        backbone_cfg = cli.backbone_config(args, **method_backbone_defaults(method))
        config, backbone_cfg = apply_compat(method, config, backbone_cfg, compat)
    log.info("method %s, configuration %s", method, config)

    augment = recipe["augment"] if args.augment == "auto" else args.augment == "on"
    mosaic = args.mosaic_prob
    if mosaic is None:
        mosaic = 0.4 if augment and canonical_dataset(dataset_name) == "mvtec" else 0.0
    request = CacheRequest(args.feature_cache, args.cache_dtype,
                           Path(args.feature_cache_dir or save_path / "feature_cache"))
    use_cache = cache_wanted(request, augment)
    full = MetaDataset(args.train_data_path, "test", classes=args.train_classes,
                       image_size=backbone_cfg.image_size)
    train_records, val_set = _validation(args, dataset_name, full, backbone_cfg.image_size, recipe,
                                          official=compat == "official")
    train_set = MetaDataset(full.root, "test", image_size=backbone_cfg.image_size, check_files=False,
                            records=train_records if train_records is not None else full.records,
                            augment=TrainAugment(mosaic_prob=mosaic) if augment else None)
    log.info("training on %d images of %s (%d categories)%s; augmentation %s, mosaic %.2f",
             len(train_set), full.root, len(train_set.classes),
             f", validating on {len(val_set)}" if val_set is not None else ", no validation",
             "on" if augment else "off", mosaic)

    backbone = build_backbone(backbone_cfg, device)
    model = build_model(method, config, backbone).to(device)
    if getattr(model, "two_stage", False) and val_set is None:
        log.warning("no validation: early stopping and stage 2 are off (only stage 1 is trained)")
    batch_size = args.batch_size or recipe["batch_size"]
    num_workers = cli.default_workers() if args.num_workers is None else args.num_workers
    settings = TrainSettings(epochs=args.epochs or recipe["epochs"], batch_size=batch_size, seed=args.seed,
                             save_path=save_path, lr=_learning_rates(args, recipe), warmup=args.warmup,
                             patience=args.patience, num_workers=num_workers,
                             keep_checkpoints=args.keep_checkpoints, save_freq=args.save_freq,
                             interrupt_after_epoch=args.interrupt_after_epoch)
    caches = {} if not use_cache else open_caches(
        request, model, backbone_cfg, {"train": train_set, **({"val": val_set} if val_set is not None else {})})
    validate = None
    if val_set is not None:
        def validate(m):
            return validation_scores(m, val_set, device, batch_size, num_workers, args.val_sample_num,
                                     cache=caches.get("val"))
    trainer = Trainer(model, train_set, settings, backbone_cfg, device, validate,
                      run_info={"dataset": dataset_name, "train_data_path": str(full.root), "args": vars(args)},
                      cache=caches.get("train"))
    if resume is not None:
        trainer.resume(resume.training, resume.state_dict)
    return trainer


def main(argv: Optional[Sequence[str]] = None) -> int:
    final = build_trainer(argv).run()
    log.info("done: test with  python test.py --checkpoint_path %s --data_path <target root>", final)
    return 0


if __name__ == "__main__":
    exit_with(main)
