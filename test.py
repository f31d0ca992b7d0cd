"""Zero-shot test on a target dataset, or scoring of single images.

    python test.py --checkpoint_path checkpoints/visa_faprompt/final.pth --data_path data/mvtec --dataset mvtec
    python test.py --method clip --data_path data/mvtec          # training-free baseline
    python test.py --checkpoint_path CKPT --image img.png        # single image(s), no masks
    python test.py --checkpoint_path CKPT --image folder --class_name bottle --thresholds results/mvtec/results.json

The model configuration comes from the checkpoint (ours or an official FAPrompt / Bayes-PFL
file); flags may override the settings that do not invalidate the trained weights. The noise
seed follows one rule (``engine.recipes``): ``--seed``, else the checkpoint's, else the
method's. Results go to ``--save_path``, by default ``<save_root>/<dataset>_<method>_<run>``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from datasets.meta import MetaDataset
from datasets.names import canonical_dataset, known_categories
from datasets.transforms import image_to_tensor, load_image
from models.backbone import build_backbone
from models.factory import (METHODS, apply_compat, build_model, config_class, make_config,
                            method_backbone_defaults, model_from_checkpoint, read_checkpoint)
from models.scoring import fuse_image_scores
from engine import cli
from engine.evaluation import METRIC_CHOICES, check_finite, decision, results_table, run_test
from engine.official import add_official_flags, apply_official_flags
from engine.recipes import run_seed
from engine.report import Report
from engine.thresholds import Decision, load_thresholds
from utils.errors import UserError, exit_with, flags_not_applicable
from utils.filters import gaussian_blur
from utils.io import atomic_open
from utils.log import setup_logging
from utils.visualize import Visualiser, heat, write_png

log = logging.getLogger("zsad.test")

# Settings that may differ from training without invalidating the weights.
SAFE_OVERRIDES = {"sigma", "sample_num", "seed", "dap_select", "official_noise", "official_state_kl",
                  "deep_prompt_fp16", "fused_focal_logits"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


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
    cli.add_common_flags(parser)
    cli.add_method_flags(parser, [config_class(m) for m in METHODS])
    add_official_flags(parser, "test")
    return parser


def run_name(checkpoint) -> str:
    """A checkpoint's run: train.py's save folder (with the epoch for files other than final.pth),
    or an official file's name."""
    path = Path(checkpoint.path)
    if checkpoint.official:
        return path.stem
    name = checkpoint.info.get("run_name") or path.resolve().parent.name
    return name if path.stem == "final" else f"{name}_{path.stem}"


def _configure(args):
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
    cls = config_class(method)
    names = {f.name for f in dataclasses.fields(cls)}
    given = cli.given_method_flags(args, [config_class(m) for m in METHODS])
    if args.features_list is not None and "features_list" in names:
        given["features_list"] = tuple(args.features_list)
    args.seed, seed_source = run_seed(args.seed, checkpoint, method)
    if "seed" in names:
        given["seed"] = args.seed
    stray = sorted(set(given) - names - {"features_list"})
    if stray:
        raise flags_not_applicable(stray, method)
    for key, value in given.items():
        if key not in names:
            continue
        value = tuple(value) if isinstance(value, list) else value
        before = stored.get(key)
        before = tuple(before) if isinstance(before, list) else before
        unsafe = checkpoint is not None and key not in SAFE_OVERRIDES
        if unsafe and not (checkpoint.official and key == "features_list") and value != before:
            raise UserError(f"--{key} cannot change at test time: the checkpoint was trained with "
                            f"{key} = {before}")
        stored[key] = value
    config = make_config(method, stored)
    compat = args.compat
    if compat == "auto":
        compat = "official" if checkpoint is not None and checkpoint.official else "ours"
    if compat == "official" and method in ("faprompt", "bayes_pfl"):
        config, backbone_cfg = apply_compat(method, config, backbone_cfg, "official")
        log.info("official-code compatibility on (SPEC section 8)")
    cli.check_geometry(backbone_cfg, config, given)
    return method, config, backbone_cfg, checkpoint, seed_source


def _check_dataset_name(name: str, dataset: MetaDataset) -> None:
    """A known dataset name must share categories with the meta.json it is given."""
    known = known_categories(name)
    if known is not None and not set(known) & set(dataset.classes):
        raise UserError(f"--dataset {name}: none of its categories ({', '.join(known[:4])}, ...) is in "
                        f"{dataset.meta_path} (found {', '.join(dataset.classes[:4])}); check --data_path "
                        "or --dataset")


def _images(path: str):
    root = Path(path)
    if root.is_file():
        return [root]
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if files:
            return files
        raise UserError(f"--image {path}: the folder holds no image files")
    raise UserError(f"--image {path}: no such file or folder")


def score_images(model, paths, class_name: str, device, image_size: int, batch_size: int, sigma: float,
                 save_path: Path, thresholds: Optional[Decision] = None) -> None:
    """Maps (.npy and overlay .png) and scores.csv for images without ground truth; with
    thresholds, a decision column (1 = anomalous) and a binary mask PNG beside each overlay."""
    thresholds = thresholds or Decision()
    maps, probs, map_scores = [], [], []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = torch.stack([image_to_tensor(load_image(p), image_size) for p in chunk]).to(device)
        with torch.no_grad():
            pred = model.predict(images, [class_name] * len(chunk))
        blurred = gaussian_blur(pred.anomaly_map.float(), sigma)
        check_finite(blurred, pred, [class_name] * len(chunk), [str(p) for p in chunk])
        maps.append(blurred.cpu())
        probs.append(pred.class_prob.cpu())
        map_scores.append(pred.map_score.cpu())
    maps, probs, map_scores = torch.cat(maps), torch.cat(probs).double(), torch.cat(map_scores).double()
    if model.score_fusion == "minmax" and len(paths) < 2:
        scores = probs  # min-max fusion needs several images; a lone image is scored by p_cls
    else:
        scores = fuse_image_scores(probs, map_scores, model.score_fusion)
    low, high = float(maps.min()), float(maps.max())
    header = ["img_path", "image_score", "class_prob", "map_score", "map_file"]
    header += ["decision"] * (thresholds.image is not None) + ["mask_file"] * (thresholds.pixel is not None)
    rows = []
    for i, path in enumerate(paths):
        stem = f"{i:04d}_{Path(path).stem}"
        npy = save_path / "maps" / f"{stem}.npy"
        npy.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(npy, "wb") as handle:
            np.save(handle, maps[i].numpy().astype(np.float32))
        rgb = np.asarray(load_image(path).convert("RGB").resize((image_size, image_size)))
        write_png(save_path / "vis" / f"{stem}.png", heat(rgb, maps[i].numpy(), low, high))
        row = [str(path), f"{float(scores[i]):.6f}", f"{float(probs[i]):.6f}", f"{float(map_scores[i]):.6f}",
               f"maps/{stem}.npy"]
        verdict = ""
        if thresholds.image is not None:
            row.append(decision(float(scores[i]), thresholds.image))
            verdict = " -> anomalous" if row[-1] == "1" else " -> normal"
        if thresholds.pixel is not None:  # compared in float64, as the metrics' thresholds are
            mask = maps[i].numpy() >= np.float64(thresholds.pixel)
            write_png(save_path / "vis" / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
            row.append(f"vis/{stem}_mask.png")
        rows.append(row)
        log.info("%s: image score %.4f (p_cls %.4f)%s", path, float(scores[i]), float(probs[i]), verdict)
    with atomic_open(save_path / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    if model.score_fusion == "minmax" and len(paths) > 1:
        log.info("image scores are min-max fused over these %d images (Bayes-PFL's rule)", len(paths))


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
    method, config, backbone_cfg, checkpoint, seed_source = _configure(args)
    dataset_name = args.dataset or (Path(args.data_path).name if args.data_path else "images")
    device = cli.resolve_device(args.device)
    kinds = METRIC_CHOICES[args.metrics]
    dataset, paths = None, None
    if args.image is None:
        dataset = MetaDataset(args.data_path, "test", classes=args.classes, image_size=backbone_cfg.image_size)
        if args.dataset:
            _check_dataset_name(args.dataset, dataset)
    else:
        paths = _images(args.image)
    run = run_name(checkpoint) if checkpoint is not None else None
    info = {"method": method, "checkpoint": str(args.checkpoint_path or "none (training-free)"),
            "run_name": run, "dataset": dataset_name, "data_path": str(dataset.root if dataset is not None else args.image),
            "backbone": backbone_cfg.model, "pretrained": backbone_cfg.pretrained,
            "image_size": backbone_cfg.image_size, "seed": args.seed, "seed_from": seed_source,
            "config": dataclasses.asdict(config), "training": _training_summary(checkpoint)}
    thresholds = _decision(args, info)  # bad --thresholds input fails before anything is written
    default = Path(args.save_root) / "_".join(part for part in (dataset_name, method, run) if part)
    save_path = cli.ensure_writable(Path(args.save_path) if args.save_path else default)
    setup_logging(save_path / "test.log")  # nothing is written before every input is checked
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
    batch_size = 8 if args.batch_size is None else args.batch_size
    sigma = config.sigma
    if paths is not None:
        score_images(model, paths, args.class_name, device, backbone_cfg.image_size, batch_size, sigma, save_path,
                     thresholds)
        log.info("wrote maps, overlays and scores.csv for %d image(s) to %s", len(paths), save_path)
        return 0
    num_workers = cli.default_workers() if args.num_workers is None else args.num_workers
    visualiser = Visualiser(save_path / "vis", dataset.root, args.vis_top_k) if args.save_vis else None
    report = None if args.no_report else Report(save_path, dataset.root)
    per_category, mean = run_test(model, dataset, device, batch_size, num_workers, sigma, kinds, save_path, info,
                                  save_maps_flag=args.save_maps, visualiser=visualiser, report=report)
    log.info("%s on %s (%s):\n%s", method, dataset_name, canonical_dataset(dataset_name),
             results_table(per_category, mean, kinds, fmt="github"))
    written = ["results.md", "results.json", "results.csv"] + ([] if args.no_report else ["report.html"])
    log.info("results: %s", ", ".join(str(save_path / name) for name in written))
    return 0


def _training_summary(checkpoint) -> Optional[dict]:
    """The checkpoint's run summary for results.json: the stage its weights end in, and more."""
    if checkpoint is None:
        return None
    if checkpoint.official:  # released Bayes-PFL checkpoints are stage-2 models
        return {"stage": 2 if checkpoint.method == "bayes_pfl" else 1, "source": checkpoint.source}
    return dict(checkpoint.info) or None


if __name__ == "__main__":
    exit_with(main)
