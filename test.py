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
import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

from datasets.meta import ImageList, MetaDataset
from datasets.names import canonical_dataset, known_categories
from engine import cli, configure, distributed
from engine.evaluation import METRIC_CHOICES, results_table, run_images, run_test
from engine.fewshot import FewShotScorer, select_references
from engine.official import add_official_flags, apply_official_flags
from engine.report import Report
from engine.thresholds import Decision, load_thresholds
from models.backbone import build_backbone
from models.factory import METHODS, build_model, config_class, model_from_checkpoint
from utils.errors import UserError, exit_with
from utils.log import setup_logging
from utils.visualize import Visualiser

log = logging.getLogger("zsad.test")



def build_parser() -> argparse.ArgumentParser:
    parser = cli.Parser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("model, data and output")
    group.add_argument("--checkpoint_path", default=None, help="checkpoint of train.py or an official one")
    group.add_argument("--method", default=None, choices=METHODS,
                       help="only needed for the training-free 'clip' baseline (else read from the checkpoint)")
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
    group = parser.add_argument_group("few-shot normal references (README: Few-shot)")
    group.add_argument("--k_shot", type=int, default=0, help="normal reference images per category (0: zero-shot)")
    group.add_argument("--shot_seed", type=int, default=0, help="seed choosing the references of the train split")
    group.add_argument("--reference_path", default=None,
                       help="folder of normal references (DIR/<category>/ per category, or DIR for one "
                            "category or --image) instead of the train split")
    group.add_argument("--shot_weight", type=float, default=1.0,
                       help="weight of the few-shot map and score added to the zero-shot ones")
    cli.add_common_flags(parser)
    cli.add_method_flags(parser, [config_class("faprompt"), config_class("clip")])
    add_official_flags(parser, "test")
    return parser


def _check_dataset_name(name: str, dataset: MetaDataset) -> None:
    """A known dataset name must share categories with the meta.json it is given."""
    known = known_categories(name)
    if known is not None and not set(known) & set(dataset.classes):
        raise UserError(f"--dataset {name}: none of its categories ({', '.join(known[:4])}, ...) is in "
                        f"{dataset.meta_path} (found {', '.join(dataset.classes[:4])}); check --data_path "
                        "or --dataset")


def _decision(args, info) -> Decision:
    """The thresholds --image applies: --thresholds (the --class_name category), then the
    explicit --threshold / --pixel_threshold on top."""
    given = [f for f in ("thresholds", "threshold", "pixel_threshold") if getattr(args, f) is not None]
    if given and args.image is None:
        raise UserError(f"--{given[0]} applies to --image only; a dataset run finds its own thresholds "
                        "(results.json)")
    found = load_thresholds(args.thresholds, args.class_name, info) if args.thresholds else Decision()
    if args.threshold is not None:
        found.image = args.threshold
    if args.pixel_threshold is not None:
        found.pixel = args.pixel_threshold
    if found.image is not None or found.pixel is not None:
        log.info("thresholds: image %s, pixel %s%s", found.image, found.pixel,
                 f" (from {found.source})" if found.source else "")
    return found


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
        return _test(args, notes, method, config, backbone_cfg, checkpoint, seed_source, ctx, device)


def _test(args, notes, method, config, backbone_cfg, checkpoint, seed_source, ctx, device) -> int:
    dataset_name = args.dataset or (Path(args.data_path).name if args.data_path else "images")
    kinds = METRIC_CHOICES[args.metrics]
    if args.image is None:
        dataset = MetaDataset(args.data_path, "test", classes=args.classes, image_size=backbone_cfg.image_size)
        if args.dataset:
            _check_dataset_name(args.dataset, dataset)
    else:
        dataset = ImageList(args.image, args.class_name, backbone_cfg.image_size)
    run = configure.run_name(checkpoint) if checkpoint is not None else None
    info = {"method": method, "checkpoint": str(args.checkpoint_path or "none (training-free)"),
            "run_name": run, "dataset": dataset_name, "data_path": str(dataset.root),
            "backbone": backbone_cfg.model, "pretrained": backbone_cfg.pretrained,
            "image_size": backbone_cfg.image_size, "seed": args.seed, "seed_from": seed_source,
            "k_shot": args.k_shot, "config": dataclasses.asdict(config),
            "training": configure.training_summary(checkpoint)}
    thresholds = _decision(args, info)  # bad --thresholds input fails before anything is written
    references = select_references(args.k_shot, args.shot_seed, args.reference_path, args.shot_weight, dataset)
    if references is not None:
        info.update(shot_seed=args.shot_seed, shot_weight=args.shot_weight, reference_source=references.source,
                    references=references.as_json(dataset.root if args.image is None else None))
    default = Path(args.save_root) / "_".join(part for part in (dataset_name, method, run) if part)
    save_path = Path(args.save_path) if args.save_path else default
    if ctx.is_main:  # nothing is written before every input is checked; only rank 0 writes
        save_path = cli.ensure_writable(save_path)
        setup_logging(save_path / "test.log")
    if ctx.enabled:
        log.info("%d processes (%s) score a part of every category each; rank 0 computes the metrics",
                 ctx.world_size, ctx.backend)
    for note in notes:
        log.warning(note)
    log.info("seed %d (from %s)", args.seed, seed_source)
    cli.seed_everything(args.seed)
    backbone = build_backbone(backbone_cfg, device)
    if checkpoint is None:
        model = build_model(method, config, backbone)
    else:
        model = model_from_checkpoint(checkpoint, config, backbone)
        log.info("loaded %s (%s)", checkpoint.path, checkpoint.source)
    model.to(device).eval()
    batch_size = cli.default_test_batch(device) if args.batch_size is None else args.batch_size
    sigma = config.sigma
    num_workers = cli.default_workers(device) if args.num_workers is None else args.num_workers
    fewshot = None if references is None else FewShotScorer(model, references, args.shot_weight,
                                                             backbone_cfg.image_size, batch_size, device)
    if args.image is not None:
        run_images(model, dataset, device, batch_size, num_workers, sigma, save_path, thresholds, fewshot)
        log.info("wrote maps, overlays and scores.csv for %d image(s) to %s", len(dataset), save_path)
        return 0
    visualiser = Visualiser(save_path / "vis", dataset.root, args.vis_top_k) if args.save_vis and ctx.is_main else None
    report = None if args.no_report or not ctx.is_main else Report(save_path, dataset.root)
    per_category, mean = run_test(model, dataset, device, batch_size, num_workers, sigma, kinds, save_path, info,
                                  save_maps_flag=args.save_maps, visualiser=visualiser, report=report,
                                  fewshot=fewshot)
    if not ctx.is_main:
        return 0
    log.info("%s on %s (%s):\n%s", method, dataset_name, canonical_dataset(dataset_name),
             results_table(per_category, mean, kinds, fmt="github"))
    written = ["results.md", "results.json", "results.csv"] + ([] if args.no_report else ["report.html"])
    log.info("results: %s", ", ".join(str(save_path / name) for name in written))
    return 0


if __name__ == "__main__":
    exit_with(main)
