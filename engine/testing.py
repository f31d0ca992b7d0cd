"""test.py's job once its flags are configured (``engine.configure.configure_test``): the dataset
or ``--image`` inputs, the results folder, the model, few-shot references, then the evaluation
(``engine.evaluation``) and its results files, report and visualisations.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from datasets.meta import ImageList, MetaDataset
from datasets.names import canonical_dataset, known_categories
from engine import cli, configure, distributed
from engine.evaluation import Timer, category_scores, iterate_categories, no_timer
from engine.fewshot import FewShotScorer, select_references
from engine.report import Report
from engine.runtimes import exported_thresholds, load_exported
from engine.results import (COLUMN_NAMES, METRIC_CHOICES, ScoreWriter, Thresholds, decision, evaluate_category,
                            fewshot_cells, results_table, save_maps, write_results)
from engine.thresholds import Decision, load_thresholds
from models.backbone import BackboneConfig
from models.factory import build_model, model_from_checkpoint
from utils.errors import UserError
from utils.io import atomic_open
from utils.log import setup_logging
from utils.visualize import Visualiser, heat, load_rgb, write_png

log = logging.getLogger("zsad.test")


def check_dataset_name(name: str, dataset: MetaDataset) -> None:
    """A known dataset name must share categories with the meta.json it is given."""
    known = known_categories(name)
    if known is not None and not set(known) & set(dataset.classes):
        raise UserError(f"--dataset {name}: none of its categories ({', '.join(known[:4])}, ...) is in "
                        f"{dataset.meta_path} (found {', '.join(dataset.classes[:4])}); check --data_path "
                        "or --dataset")


def decision_thresholds(args: argparse.Namespace, info: Dict[str, Any], manifest: Optional[dict] = None) -> Decision:
    """The thresholds --image applies: --thresholds (the --class_name category), else those an
    exported model's manifest stores for it, then the explicit --threshold / --pixel_threshold
    on top."""
    given = [f for f in ("thresholds", "threshold", "pixel_threshold") if getattr(args, f) is not None]
    if given and args.image is None:
        raise UserError(f"--{given[0]} applies to --image only; a dataset run finds its own thresholds "
                        "(results.json)")
    if args.thresholds:
        found = load_thresholds(args.thresholds, args.class_name, info)
    elif args.image is not None and manifest is not None:
        found = exported_thresholds(manifest, args.class_name)
    else:
        found = Decision()
    if args.threshold is not None:
        found.image = args.threshold
    if args.pixel_threshold is not None:
        found.pixel = args.pixel_threshold
    if found.image is not None or found.pixel is not None:
        log.info("thresholds: image %s, pixel %s%s", found.image, found.pixel,
                 f" (from {found.source})" if found.source else "")
    return found


def load_test_model(method: str, config, backbone_cfg: BackboneConfig, checkpoint, seed: int,
                    device: torch.device):
    """The model of a test run, in eval mode on ``device``: the backbone and the method's model
    built after seeding with ``seed``, the checkpoint's weights loaded (test.py and the API)."""
    cli.seed_everything(seed)
    backbone = cli.build_backbone(backbone_cfg, device)
    if checkpoint is None:
        model = build_model(method, config, backbone)
    else:
        model = model_from_checkpoint(checkpoint, config, backbone)
        log.info("loaded %s (%s)", checkpoint.path, checkpoint.source)
    return model.to(device).eval()


def run(args: argparse.Namespace, notes: List[str], method: str, config, backbone_cfg: BackboneConfig, checkpoint,
        seed_source: str, ctx: distributed.Context, device: torch.device, manifest: Optional[dict] = None) -> int:
    """Test (or score ``--image`` inputs) in this process, one of several under torchrun: the
    ``checkpoint``'s model, or with ``args.exported`` the export whose ``manifest`` configure read."""
    dataset_name = args.dataset or (Path(args.data_path).name if args.data_path else "images")
    kinds = METRIC_CHOICES[args.metrics]
    if args.image is None:
        dataset = MetaDataset(args.data_path, "test", classes=args.classes, image_size=backbone_cfg.image_size)
        if args.dataset:
            check_dataset_name(args.dataset, dataset)
    else:
        dataset = ImageList(args.image, args.class_name, backbone_cfg.image_size)
    if manifest is not None:
        run, source = manifest.get("run_name"), f"{manifest.get('checkpoint') or 'none (training-free)'} (exported)"
    else:
        run = configure.run_name(checkpoint) if checkpoint is not None else None
        source = str(args.checkpoint_path or "none (training-free)")
    info = {"method": method, "checkpoint": source,
            "run_name": run, "dataset": dataset_name, "data_path": str(dataset.root),
            "backbone": backbone_cfg.model, "pretrained": backbone_cfg.pretrained,
            "image_size": backbone_cfg.image_size, "seed": args.seed, "seed_from": seed_source,
            "k_shot": args.k_shot, "config": dataclasses.asdict(config),
            "training": configure.training_summary(checkpoint) if manifest is None else manifest.get("training")}
    if manifest is not None:
        info["exported"] = str(args.exported)
    thresholds = decision_thresholds(args, info, manifest)  # bad input fails before anything is written
    if manifest is not None:  # a missing runtime or a damaged file fails before anything is written
        model = load_exported(args, config, manifest)
        model.check_classes(dataset.item_classes())
        info.update(runtime=model.session.runtime, precision=model.session.precision)
        log.info("exported %s model %s on %s (%s)", model.method, args.exported, info["runtime"], info["precision"])
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
    if manifest is None:
        model = load_test_model(method, config, backbone_cfg, checkpoint, args.seed, device)
    batch_size = cli.default_test_batch(device) if args.batch_size is None else args.batch_size
    sigma = config.sigma
    num_workers = cli.default_workers(device) if args.num_workers is None else args.num_workers
    fewshot = None if references is None else FewShotScorer(model, references, args.shot_weight,
                                                             backbone_cfg.image_size, batch_size, device)
    if args.image is not None:
        run_images(model, dataset, device, batch_size, num_workers, sigma, save_path, thresholds, fewshot, ctx)
        log.info("wrote maps, overlays and scores.csv for %d image(s) to %s", len(dataset), save_path)
        return 0
    visualiser = Visualiser(save_path / "vis", dataset.root, args.vis_top_k) if args.save_vis and ctx.is_main else None
    report = None if args.no_report or not ctx.is_main else Report(save_path, dataset.root)
    per_category, mean = run_test(model, dataset, device, batch_size, num_workers, sigma, kinds, save_path, info,
                                  save_maps_flag=args.save_maps, visualiser=visualiser, report=report,
                                  fewshot=fewshot, ctx=ctx)
    if not ctx.is_main:
        return 0
    log.info("%s on %s (%s):\n%s", method, dataset_name, canonical_dataset(dataset_name),
             results_table(per_category, mean, kinds, fmt="github"))
    written = ["results.md", "results.json", "results.csv"] + ([] if args.no_report else ["report.html"])
    log.info("results: %s", ", ".join(str(save_path / name) for name in written))
    return 0


def run_images(model, dataset, device: torch.device, batch_size: int, num_workers: int, sigma: float,
               save_path: Path, thresholds, fewshot: Optional[FewShotScorer] = None,
               ctx: distributed.Context = distributed.SINGLE) -> None:
    """Score images without ground truth (a ``datasets.meta.ImageList``) through the same
    prediction, smoothing and fusion as a dataset, and write ``maps/*.npy``, overlays on one
    colour scale in ``vis/``, and ``scores.csv``; with ``thresholds`` (an
    ``engine.thresholds.Decision``) also a decision column and a binary mask PNG per image;
    with few-shot references, their map and score added and a ``fewshot_score`` column. ``ctx``:
    this process among those of a torchrun launch."""
    cats = list(iterate_categories(model, dataset, device, batch_size, num_workers, sigma, desc="score",
                                   ctx=ctx, fewshot=fewshot))
    if not cats:  # a process other than rank 0: it scored its part
        return
    cat = cats[0]  # one class name for every image
    scores = category_scores(cat, model.score_rule, fewshot.weight if fewshot is not None else 0.0)
    maps = cat.maps
    low, high = float(maps.min()), float(maps.max())
    header = ["img_path", "image_score", "class_prob", "map_score", "map_file"]
    header += ["fewshot_score"] * (fewshot is not None)
    header += ["decision"] * (thresholds.image is not None) + ["mask_file"] * (thresholds.pixel is not None)
    rows = []
    for i, path in enumerate(cat.paths):
        stem = f"{i:04d}_{Path(path).stem}"
        with atomic_open(save_path / "maps" / f"{stem}.npy", "wb") as handle:
            np.save(handle, maps[i].numpy().astype(np.float32))
        overlay = heat(load_rgb(path, dataset.image_size), maps[i].numpy(), low, high)
        write_png(save_path / "vis" / f"{stem}.png", overlay)
        row = [path, f"{float(scores[i]):.6f}", f"{cat.class_prob[i]:.6f}", f"{cat.map_score[i]:.6f}",
               f"maps/{stem}.npy"] + fewshot_cells(cat, i)
        verdict = ""
        if thresholds.image is not None:
            row.append(decision(float(scores[i]), thresholds.image))
            verdict = " -> anomalous" if row[-1] == "1" else " -> normal"
        if thresholds.pixel is not None:  # compared in float64, as the metrics' thresholds are
            mask = maps[i].numpy() >= np.float64(thresholds.pixel)
            write_png(save_path / "vis" / f"{stem}_mask.png", mask.astype(np.uint8) * 255)
            row.append(f"vis/{stem}_mask.png")
        rows.append(row)
        log.info("%s: image score %.4f (p_cls %.4f)%s", path, float(scores[i]), cat.class_prob[i], verdict)
    with atomic_open(save_path / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    if model.score_rule.fusion == "minmax" and len(cat.paths) > 1:
        log.info("image scores are min-max fused over these %d images (Bayes-PFL's rule)", len(cat.paths))


def run_test(model, dataset: MetaDataset, device: torch.device, batch_size: int, num_workers: int,
             sigma: float, kinds: Sequence[str], save_path: Path, info: Dict[str, Any],
             save_maps_flag: bool = False, visualiser: Optional[Callable] = None, report=None,
             fewshot: Optional[FewShotScorer] = None, timer: Timer = no_timer,
             ctx: distributed.Context = distributed.SINGLE):
    """Evaluate ``model`` on ``dataset`` (with few-shot references when ``fewshot`` is given);
    write results (and maps, visualisations and the :class:`engine.report.Report` when
    given); return the tables (on rank 0; None, None on the other processes of a torchrun
    launch, which only score their parts; ``ctx`` says which this process is)."""
    per_category: Dict[str, Dict[str, Optional[float]]] = {}
    thresholds: Dict[str, Thresholds] = {}
    if not ctx.is_main:  # score this process's parts; rank 0 evaluates and writes
        for _ in iterate_categories(model, dataset, device, batch_size, num_workers, sigma, ctx=ctx, fewshot=fewshot,
                                    timer=timer):
            pass
        return None, None
    scores_out = ScoreWriter(save_path / "scores.csv", fewshot is not None) if save_maps_flag else None
    shot_weight = fewshot.weight if fewshot is not None else 0.0
    for cat in iterate_categories(model, dataset, device, batch_size, num_workers, sigma, ctx=ctx, fewshot=fewshot,
                                  timer=timer):
        scores = category_scores(cat, model.score_rule, shot_weight)
        with timer("metrics"):
            result = evaluate_category(cat, scores, kinds, device)
        per_category[cat.name], thresholds[cat.name] = result.metrics, result.thresholds()
        files = save_maps(cat, save_path / "maps", dataset.root) if save_maps_flag else []
        if scores_out is not None:
            image_point = thresholds[cat.name]["image"]
            scores_out.add(cat, scores, files, image_point["threshold"] if image_point else None)
        if visualiser is not None:
            visualiser(cat, scores)
        if report is not None:
            with timer("report"):
                report.add(cat, scores, result)
        log.info("%s: %s", cat.name, ", ".join(
            f"{COLUMN_NAMES[k]} {'n/a' if v is None else f'{100 * v:.1f}'}" for k, v in per_category[cat.name].items()))
    if scores_out is not None:
        scores_out.write()
    mean = write_results(save_path, per_category, kinds, info, thresholds)
    if report is not None:
        with timer("report"):
            report.write(per_category, mean, kinds, info, thresholds)
    return per_category, mean
