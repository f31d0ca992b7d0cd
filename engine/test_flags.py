"""test.py's flags, in one parser the script and the Python API (:mod:`engine.api`) share, so a
setting means the same in both."""
from __future__ import annotations

import argparse

from engine import cli
from engine.official import add_official_flags
from engine.results import METRIC_CHOICES
from engine.runtimes import RUNTIMES
from models import methods
from models.factory import config_class

DESCRIPTION = "Zero-shot test on a target dataset, or scoring of single images."


def build_parser() -> argparse.ArgumentParser:
    """The parser of test.py."""
    parser = cli.Parser(description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    group = parser.add_argument_group("exported models (docs/deployment.md)")
    group.add_argument("--exported", default=None, help="a folder written by export.py, instead of --checkpoint_path")
    group.add_argument("--runtime", default="auto", choices=("auto",) + RUNTIMES,
                       help="auto: torch for a checkpoint; for --exported, openvino if it was exported to "
                            "OpenVINO, else onnxruntime. --precision bf16 runs OpenVINO (or torch on the CPU) "
                            "in bfloat16")
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
