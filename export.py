"""Export a model's test-time graph to ONNX and/or OpenVINO for deployment (docs/deployment.md).

    python export.py --checkpoint_path checkpoints/visa_faprompt/final.pth --out exported/faprompt
    python export.py --checkpoint_path CKPT --format onnx --out exported/x --thresholds results/mvtec/results.json
    python test.py --exported exported/faprompt --data_path data/mvtec --precision bf16

The model is configured as test.py configures it (the same flags and rules), built on the CPU,
traced (``engine.export``) and checked: every written format is run beside the PyTorch model on
a random image, and the largest differences are printed. ``--class_names`` (or the categories
of ``--data_path``) choose the prompt words stored for methods whose prompts name the class.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from tabulate import tabulate

from datasets.meta import MetaDataset
from datasets.names import KNOWN_CATEGORIES
from engine import cli, configure
from engine.export import FORMATS, check_export, export_model, file_digest
from engine.official import add_official_flags, apply_official_flags
from engine.runtimes import Session
from engine.testing import load_test_model
from models import methods
from models.factory import config_class
from utils.errors import UserError, exit_with
from utils.log import setup_logging

log = logging.getLogger("zsad.export")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(description="Export a model's test-time graph to ONNX and/or OpenVINO.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("export")
    group.add_argument("--checkpoint_path", default=None, help="checkpoint of train.py or an official one")
    group.add_argument("--method", default=None, choices=methods.names(),
                       help="only for a training-free method (else read from the checkpoint)")
    group.add_argument("--out", required=True, help="the export folder to write (replaced if it is an earlier export)")
    group.add_argument("--format", nargs="+", default=["openvino", "onnx"], choices=FORMATS,
                       help="formats to write (OpenVINO is converted from the ONNX graph)")
    group.add_argument("--class_names", nargs="+", default=None,
                       help="categories whose prompt words are stored, for methods whose prompts name the class "
                            "(default: the categories of --data_path, else those of MVTec-AD, VisA, MPDD, BTAD)")
    group.add_argument("--data_path", default=None, help="a dataset root (meta.json) whose categories to store")
    group.add_argument("--thresholds", default=None, help="a results.json whose per-category thresholds to store")
    group.add_argument("--no_check", action="store_true", help="skip running the exported graphs beside PyTorch")
    cli.add_common_flags(parser)
    cli.add_method_flags(parser, list(dict.fromkeys(config_class(m) for m in methods.names())))
    add_official_flags(parser, "test")
    return parser


def class_names(args: argparse.Namespace, class_word: str) -> List[str]:
    if class_word == "object":
        return ["object"]
    if args.class_names:
        return list(args.class_names)
    if args.data_path:
        return list(MetaDataset(args.data_path, "test").classes)
    return [name for names in KNOWN_CATEGORIES.values() for name in names]


def read_thresholds(path: Optional[str]) -> Optional[dict]:
    """Per category {"image": t, "pixel": t} from a results.json (None: not given)."""
    if path is None:
        return None
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8")).get("thresholds")
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"--thresholds {path}: not a readable results.json ({err})") from None
    if not isinstance(table, dict) or not table:
        raise UserError(f"--thresholds {path} holds no thresholds; pass the results.json of a dataset test run")
    return {cat: {level: (entry or {}).get("threshold") for level, entry in (levels or {}).items()}
            for cat, levels in table.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    apply_official_flags(args, "test")
    if args.precision not in ("auto", "fp32"):
        raise UserError(f"--precision {args.precision}: the export is fp32; choose bf16 when running it "
                        "(test.py --exported DIR --runtime openvino --precision bf16)")
    method, config, backbone_cfg, checkpoint, _ = configure.configure_test(args)
    backbone_cfg = dataclasses.replace(backbone_cfg, precision="fp32")
    thresholds = read_thresholds(args.thresholds)
    names = class_names(args, config.class_word)
    model = load_test_model(method, config, backbone_cfg, checkpoint, args.seed, torch.device("cpu"))
    info = {"method": method, "config": _plain(config), "backbone": _plain(backbone_cfg),
            "checkpoint": str(args.checkpoint_path) if args.checkpoint_path else None,
            "checkpoint_sha256": file_digest(args.checkpoint_path),
            "run_name": configure.run_name(checkpoint) if checkpoint is not None else None,
            "training": configure.training_summary(checkpoint), "thresholds_source": args.thresholds}
    out = Path(args.out)
    with torch.no_grad():  # not set_grad_enabled: main() may run inside another program
        manifest = export_model(model, out, args.format, names, info, thresholds)
    log.info("wrote %s (%s; %d prompt word(s)) in %.0f s", out, ", ".join(manifest["formats"]),
             len(manifest["words"]), manifest["seconds"])
    if not args.no_check:
        rows = check_export(model, out, Session, manifest["formats"])
        log.info("largest difference from PyTorch on a random image:\n%s", tabulate(
            [[r["format"]] + [f"{r[k]:.2e}" for k in ("anomaly_map", "class_prob", "map_score")] for r in rows],
            headers=["format", "map", "class prob", "map score"], tablefmt="github"))
    return 0


def _plain(obj) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


if __name__ == "__main__":
    exit_with(main)
