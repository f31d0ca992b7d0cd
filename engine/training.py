"""From a checked :class:`engine.configure.TrainPlan` to a ready :class:`engine.trainer.Trainer`:
the data and its validation split, the save folder, the model, the feature caches and the
resumed state. train.py parses flags and calls :func:`train`; tests and benchmarks call
:func:`build_trainer` to hold the trainer before it runs.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from datasets.augment import TrainAugment
from datasets.meta import MetaDataset, combine
from datasets.names import canonical_dataset
from engine import cli, distributed, validation
from engine.configure import TrainPlan, auxiliary_name, save_path
from engine.evaluation import validation_scores
from engine.feature_cache import CacheRequest, cache_wanted, open_caches
from engine.trainer import Trainer, TrainSettings
from models.factory import build_model, method_entry
from utils.log import setup_logging

log = logging.getLogger("zsad.train")


def build_trainer(args: argparse.Namespace, run: TrainPlan, ctx: distributed.Context) -> Trainer:
    """This process's trainer: data, save folder (rank 0 writes), model, caches, resume state."""
    distributed.quiet_other_ranks(ctx)
    cli.keep_freed_memory(run.device)
    method, backbone_cfg = run.method, run.backbone
    dataset_name = auxiliary_name(args)
    single = len(args.train_data_path) == 1  # one root: its --train_classes are read (and checked) alone
    parts = [MetaDataset(root, "test", classes=args.train_classes if single else None,
                         image_size=backbone_cfg.image_size) for root in args.train_data_path]
    # the mosaic rate of each auxiliary set (several: by folder name), applied to its own classes
    names = [dataset_name] if single else [Path(root).name for root in args.train_data_path]
    rates = [run.mosaic_prob(args.mosaic_prob, canonical_dataset(name)) for name in names]
    mosaic = max(rates)
    mosaic_classes = None if min(rates) == mosaic else \
        frozenset(c for part, rate in zip(parts, rates) if rate > 0 for c in part.classes)
    request = CacheRequest(args.feature_cache, args.cache_dtype,
                           Path(args.feature_cache_dir or save_path(args) / "feature_cache"))
    blocker = method_entry(method).cache_blocker
    use_cache = cache_wanted(request, run.augment or mosaic > 0, blocker(run.config) if blocker else "")
    full = combine(parts)
    if args.train_classes is not None and not single:
        full = MetaDataset(full.root, "test", classes=args.train_classes, image_size=backbone_cfg.image_size,
                           records=full.records, check_files=False)
    train_records, val_set = validation.validation_split(
        run.protocol, full, backbone_cfg.image_size, args.seed, args.val_fraction, dataset_name, args.val_data_path,
        args.val_dataset, args.val_classes, run.recipe.target_validation)
    train_set = MetaDataset(full.root, "test", image_size=backbone_cfg.image_size, check_files=False,
                            records=train_records if train_records is not None else full.records,
                            augment=TrainAugment(mosaic_prob=mosaic, geometric=run.augment, photometric=run.augment,
                                                 mosaic_pool=run.recipe.mosaic_pool, mosaic_classes=mosaic_classes)
                            if run.augment or mosaic > 0 else None)

    folder = cli.ensure_writable(save_path(args)) if ctx.is_main else save_path(args)
    if ctx.is_main:  # nothing is written before every input is checked; rank 0 writes
        setup_logging(folder / "train.log")
    if ctx.enabled:
        log.info("%d processes (%s), %d images of each batch of %d per process", ctx.world_size, ctx.backend,
                 run.batch_size // ctx.world_size, run.batch_size)
    for note in run.notes:
        log.warning(note)
    log.info("method %s, configuration %s", method, run.config)
    log.info("training on %d images of %s (%d categories)%s; augmentation %s, mosaic %.2f",
             len(train_set), " + ".join(str(part.root) for part in parts), len(train_set.classes),
             f", validating on {len(val_set)}" if val_set is not None else ", no validation",
             "on" if run.augment else "off", mosaic)

    cli.seed_everything(args.seed)
    backbone = cli.build_backbone(backbone_cfg, run.device)
    model = build_model(method, run.config, backbone).to(run.device)
    if model.two_stage and val_set is None:
        log.warning("no validation: early stopping and stage 2 are off (only stage 1 is trained)")
    num_workers = cli.default_workers(run.device) if args.num_workers is None else args.num_workers
    settings = TrainSettings(epochs=run.epochs, batch_size=run.batch_size, seed=args.seed, save_path=folder,
                             lr=run.lr, betas=run.recipe.betas, weight_decay=run.recipe.weight_decay,
                             warmup=args.warmup, patience=args.patience,
                             num_workers=num_workers, keep_checkpoints=args.keep_checkpoints,
                             save_freq=args.save_freq, stage2_epochs=args.stage2_epochs,
                             interrupt_after_epoch=args.interrupt_after_epoch)
    caches = {} if not use_cache else open_caches(
        request, model, backbone_cfg, {"train": train_set, **({"val": val_set} if val_set is not None else {})})
    validate = None if val_set is None else (
        lambda m: validation_scores(m, val_set, run.device, run.batch_size, num_workers, args.val_sample_num,
                                    cache=caches.get("val"), ctx=ctx))
    trainer = Trainer(model, train_set, settings, backbone_cfg, run.device, validate,
                      run_info={"dataset": dataset_name, "train_data_path": [str(part.root) for part in parts],
                                "args": vars(args)},
                      cache=caches.get("train"), ctx=ctx)
    if run.resume is not None:
        trainer.resume(run.resume.training, run.resume.state_dict)
    return trainer


def train(args: argparse.Namespace, run: TrainPlan) -> Path:
    """Train in this process (one of several under torchrun); the final checkpoint's path."""
    with distributed.session(args.device) as (ctx, device):  # torchrun: one process per GPU
        run.device = device
        return build_trainer(args, run, ctx).run()
