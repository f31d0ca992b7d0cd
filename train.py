"""Train learned prompts on an auxiliary dataset (its test split; docs/training.md).

    python train.py --method faprompt --dataset visa --train_data_path data/visa --save_path checkpoints/visa

Every epoch writes ``epoch_N.pth`` (resumable with ``--resume``); the end writes ``final.pth``,
which ``test.py --checkpoint_path`` takes with no other model flag. Commands of the official
FAPrompt and Bayes-PFL ``train.sh`` run as they are (``engine.official``); without ``--method``
the method is the first trainable one of the registry (``models/methods/``) to which every method
flag given applies. The policy lives in ``engine.configure.configure_train``, the set-up in
``engine.training``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from engine import cli, configure, distributed, training, validation
from engine.feature_cache import DTYPES, MODES
from engine.official import add_official_flags
from models import methods
from models.factory import config_class
from utils.errors import exit_with
from utils.log import setup_logging

log = logging.getLogger("zsad.train")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("data and output")
    trainable = methods.names(trainable=True)
    group.add_argument("--method", default=None, choices=trainable,
                       help=f"default: the first of {', '.join(trainable)} to which every method flag given applies")
    group.add_argument("--train_data_path", nargs="+", default=None,
                       help="auxiliary dataset root (with meta.json); several are trained on together")
    group.add_argument("--dataset", default=None, help="auxiliary dataset name (default: the folder name)")
    group.add_argument("--train_classes", nargs="+", default=None, help="train on these categories only")
    group.add_argument("--save_path", default=None, help="checkpoint folder (default checkpoints/<dataset>_<method>)")
    group.add_argument("--resume", default=None,
                       help="a checkpoint epoch_N.pth, or 'auto' for the latest in --save_path")
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
                       help="2x2 mosaic probability (auto: the recipe's on MVTec-AD: 0.4 with augmentation "
                            "on, Bayes-PFL's; APRIL-GAN 0.2, its only augmentation; 0 elsewhere)")
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
    cli.add_method_flags(parser, list(dict.fromkeys(config_class(m) for m in trainable)), skip={"sample_num"})
    add_official_flags(parser, "train")
    return parser


def plan(argv: Optional[Sequence[str]] = None):
    """(args, :class:`engine.configure.TrainPlan`) of ``argv``; bad input raises ``UserError``."""
    return configure.configure_train(build_parser(), argv)


def build_trainer(argv: Optional[Sequence[str]] = None):
    """The single-process :class:`engine.trainer.Trainer` that ``main`` would run."""
    setup_logging()  # the console until the save folder exists
    args, run = plan(argv)
    return training.build_trainer(args, run, distributed.SINGLE)


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()  # the console until the save folder exists
    args, run = plan(argv)
    final = training.train(args, run)
    log.info("done: test with  python test.py --checkpoint_path %s --data_path <target root>", final)
    return 0


if __name__ == "__main__":
    exit_with(main)
