"""Zero-shot test on a target dataset, or scoring of single images.

    python test.py --checkpoint_path checkpoints/visa_faprompt/final.pth --data_path data/mvtec --dataset mvtec
    python test.py --method clip --data_path data/mvtec          # training-free baseline
    python test.py --checkpoint_path CKPT --image img.png        # single image(s), no masks
    python test.py --checkpoint_path CKPT --image folder --class_name bottle --thresholds results/mvtec/results.json

The model configuration comes from the checkpoint (ours or an official FAPrompt, AnomalyCLIP or
Bayes-PFL file); flags may override the settings that do not invalidate the trained weights
(``engine.configure``). The noise seed follows one rule (``engine.recipes``): ``--seed``, else
the checkpoint's, else the method's. Results go to ``--save_path``, by default
``<save_root>/<dataset>_<method>_<run>``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Optional, Sequence

from engine import cli, configure, distributed, testing
from engine.official import add_official_flags, apply_official_flags
from engine.results import METRIC_CHOICES
from models import methods
from models.factory import config_class
from utils.errors import UserError, exit_with
from utils.log import setup_logging

log = logging.getLogger("zsad.test")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("model, data and output")
    group.add_argument("--checkpoint_path", default=None, help="checkpoint of train.py or an official one")
    group.add_argument("--method", default=None, choices=methods.names(),
                       help="only needed for a training-free method: "
                            f"{', '.join(methods.names(trainable=False))} (else read from the checkpoint)")
    group.add_argument("--data_path", default=None, help="target dataset root (with meta.json)")
    group.add_argument("--dataset", default=None, help="target dataset name (default: the folder name)")
    group.add_argument("--classes", nargs="+", default=None, help="test these categories only")
    group.add_argument("--image", default=None, help="score an image file or a folder of images (no masks)")
    group.add_argument("--class_name", default="object",
                       help="class name of --image inputs (prompts, and the category read from --thresholds)")
    group.add_argument("--save_path", default=None,
                       help="results folder (default <save_root>/<dataset>_<method>_<checkpoint's run name>)")
    group.add_argument("--save_root", default="results", help="parent of the default --save_path")
    group.add_argument("--metrics", default="image-pixel", choices=sorted(METRIC_CHOICES))
    group.add_argument("--save_vis", action="store_true", help="write overlays and a top-k strip per category")
    group.add_argument("--vis_top_k", type=cli.nonnegative_int, default=8, help="images in each category's strip")
    group.add_argument("--save_maps", action="store_true", help="write every smoothed map (.npy) and scores.csv")
    group.add_argument("--no_report", action="store_true",
                       help="skip report.html, its figures and curves/*.csv (written by default)")
    group.add_argument("--thresholds", default=None,
                       help="--image: apply the F1-optimal thresholds of --class_name from this results.json")
    group.add_argument("--threshold", type=float, default=None,
                       help="--image: flag images with score >= this (overrides --thresholds)")
    group.add_argument("--pixel_threshold", type=float, default=None,
                       help="--image: mask pixels with map value >= this (overrides --thresholds)")
    group = parser.add_argument_group("few-shot normal references (docs/fewshot.md)")
    group.add_argument("--k_shot", type=int, default=0, help="normal reference images per category (0: zero-shot)")
    group.add_argument("--shot_seed", type=int, default=0, help="seed choosing the references of the train split")
    group.add_argument("--reference_path", default=None,
                       help="folder of normal references (DIR/<category>/ per category, or DIR for one "
                            "category or --image) instead of the train split")
    group.add_argument("--shot_weight", type=float, default=1.0,
                       help="weight of the few-shot map and score added to the zero-shot ones")
    cli.add_common_flags(parser)
    cli.add_method_flags(parser, list(dict.fromkeys(config_class(m) for m in methods.names())))
    add_official_flags(parser, "test")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()  # the console until the results folder exists
    args = build_parser().parse_args(argv)
    notes = apply_official_flags(args, "test")
    if args.image is None and args.data_path is None:
        raise UserError("pass --data_path (a dataset root with meta.json) or --image (a file or folder)")
    method, config, backbone_cfg, checkpoint, seed_source = configure.configure_test(args)
    with distributed.session(args.device) as (ctx, device):  # torchrun: each process scores a part
        distributed.quiet_other_ranks(ctx)
        cli.keep_freed_memory(device)
        return testing.run(args, notes, method, config, backbone_cfg, checkpoint, seed_source, ctx, device)


if __name__ == "__main__":
    exit_with(main)
