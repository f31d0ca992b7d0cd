"""Flags of the official FAPrompt, AnomalyCLIP, Bayes-PFL, APRIL-GAN, VCP-CLIP and AdaCLIP scripts that have no
flag of the same name here.

A command pasted from an official ``train.sh``/``test.sh`` must mean what it meant there or say
in one line what replaces a flag, never fail with an argparse error. Each flag below is either
an alias (``--pretrained_path``, ``--device_id``) or accepted with no effect, as in the
official code itself, with a note saying so. Flags that keep their official name and meaning
(``--epochs``, ``--num_flows`` / ``-nf``, ...) are ordinary flags; the Bayes-PFL training
``--sample_num`` (validation samples) is train.py's ``--val_sample_num`` and ``--learning_rate``
(unused by a recipe of parameter groups) is handled by ``engine.configure``. What a flag means
for one method alone (AnomalyCLIP's ``--n_ctx``, ``--feature_map_layer``) is that method's
registry entry's (``official_flags``).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch

from datasets.names import canonical_dataset
from engine.cli import nonnegative_int, probability
from utils.errors import UserError


@dataclass(frozen=True)
class OfficialFlag:
    name: str  # without the leading "--"
    scripts: Tuple[str, ...]  # "train", "test"
    meaning: str  # what it does here: the --help text and the note a run logs
    kwargs: Dict[str, Any] = field(default_factory=dict)  # argparse type / nargs


OFFICIAL_FLAGS = (
    OfficialFlag("pretrained_path", ("train", "test"), "Bayes-PFL: the CLIP weight file, as --pretrained PATH"),
    OfficialFlag("device_id", ("train", "test"),
                 "Bayes-PFL: the GPU index, as --device cuda:N (the CPU when no GPU is visible, as the "
                 "official code falls back)", {"type": nonnegative_int}),
    OfficialFlag("config_path", ("train", "test"),
                 "Bayes-PFL: its model JSON; no effect, the architecture is --model's open_clip configuration"),
    OfficialFlag("alpha", ("train",), "Bayes-PFL: an EMA decay its code never applies; no effect",
                 {"type": float}),
    OfficialFlag("print_freq", ("train",),
                 "no effect: losses are logged every epoch and shown live in the progress bar", {"type": int}),
    OfficialFlag("n_ctx", ("train", "test"),
                 "FAPrompt: passed but unused by its code (prompt lengths are --normal_ctx and --abnormal_ctx); "
                 "no effect, except for --method anomalyclip (its contexts' length)", {"type": int}),
    OfficialFlag("aug_rate", ("train",),
                 "APRIL-GAN: the probability of its 2x2 mosaic when training on MVTec-AD, as --mosaic_prob "
                 "(no effect on other datasets, as in its code)", {"type": probability}),
    OfficialFlag("group_id_list", ("train",),
                 "VCP-CLIP: which 3-way split of the auxiliary categories to train on; its default 2 is every "
                 "category (as here); a part of them is --train_classes", {"type": int, "nargs": "+"}),
    OfficialFlag("resume_checkpoint_path", ("train",),
                 "VCP-CLIP: start training from a saved model's weights; not supported (--resume continues an "
                 "interrupted run of ours)"),
    OfficialFlag("training_data", ("train",),
                 "AdaCLIP: the auxiliary datasets by name under its config.py DATA_ROOT; here their folders are "
                 "--train_data_path (several are trained on together)", {"nargs": "+"}),
    OfficialFlag("testing_data", ("train", "test"),
                 "AdaCLIP: train.py evaluates this target set every epoch and keeps the best (no effect here: the "
                 "last epoch is kept); test.py's target set by name, which is --data_path here"),
    OfficialFlag("ckt_path", ("test",), "AdaCLIP: the checkpoint, as --checkpoint_path"),
    OfficialFlag("save_fig", ("train", "test"), "AdaCLIP: write pictures; test.py --save_vis does (no effect)"),
    OfficialFlag("testing_model", ("test",), "AdaCLIP: dataset (--data_path) or image (--image)",
                 {"choices": ("dataset", "image")}),
    OfficialFlag("exp_indx", ("train",), "AdaCLIP: a name suffix of its output folders; no effect", {"type": int}),
    OfficialFlag("valid_freq", ("train",), "AdaCLIP: epochs between its target-set evaluations; no effect",
                 {"type": int}),
    OfficialFlag("mode", ("test",), "APRIL-GAN: zero_shot, or few_shot (as --k_shot, 10 unless given)",
                 {"choices": ("zero_shot", "few_shot")}),
    OfficialFlag("few_shot_features", ("test",),
                 "APRIL-GAN: the blocks of its few-shot bank; here the bank reads --features_list, which they "
                 "must equal", {"type": int, "nargs": "+"}),
    OfficialFlag("feature_map_layer", ("train", "test"),
                 "FAPrompt: parsed but unused by its code; no effect, except for --method anomalyclip (the "
                 "listed layers from that position on give maps)", {"type": int, "nargs": "+"}),
)


def add_official_flags(parser: argparse.ArgumentParser, script: str) -> None:
    group = parser.add_argument_group("flags of the official scripts (accepted so their commands run)")
    for flag in OFFICIAL_FLAGS:
        if script in flag.scripts:
            group.add_argument(f"--{flag.name}", default=None, help=flag.meaning, **flag.kwargs)


def apply_official_flags(args: argparse.Namespace, script: str) -> List[str]:
    """Turn the official flags in ``args`` into ours (in place); return the notes to log."""
    notes = []
    for flag in OFFICIAL_FLAGS:
        value = getattr(args, flag.name, None)
        if script not in flag.scripts or value is None:
            continue
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        if flag.name == "pretrained_path":
            if not os.path.isfile(value):
                raise UserError(f"--pretrained_path {value}: file not found (the CLIP weights, e.g. "
                                "ViT-L-14-336px.pt)")
            if args.pretrained not in (None, "openai", value):  # the official scripts pass --pretrained openai
                raise UserError(f"--pretrained_path {value} and --pretrained {args.pretrained} name different "
                                "weights; pass one of them")
            args.pretrained = value
        elif flag.name == "device_id":
            wanted = f"cuda:{value}"
            if args.device not in ("auto", wanted):
                raise UserError(f"--device_id {value} and --device {args.device} disagree; pass one of them")
            if not torch.cuda.is_available():
                args.device = "cpu"
                notes.append(f"--device_id {value}: no CUDA GPU is visible, running on the CPU")
            elif value >= torch.cuda.device_count():
                raise UserError(f"--device_id {value}: only {torch.cuda.device_count()} GPU(s) are visible "
                                f"(ids 0..{torch.cuda.device_count() - 1})")
            else:
                args.device = wanted
        elif flag.name == "mode":
            if value == "few_shot" and not args.k_shot:
                args.k_shot = 10  # the official --k_shot default
            if value == "zero_shot" and args.k_shot:
                notes.append(f"--mode zero_shot: --k_shot {args.k_shot} ignored, as the official test.py does")
                args.k_shot = 0
            notes.append(f"--mode {value}: {'--k_shot ' + str(args.k_shot) if args.k_shot else 'zero-shot'}")
        elif flag.name == "aug_rate":
            dataset = canonical_dataset(args.dataset or os.path.basename(os.path.normpath(args.train_data_path[0])))
            if dataset != "mvtec":
                notes.append(f"--aug_rate {value}: no effect, the official code tiles mosaics of MVTec-AD only")
            elif args.mosaic_prob is not None and args.mosaic_prob != value:
                raise UserError(f"--aug_rate {value} and --mosaic_prob {args.mosaic_prob} disagree; pass one of them")
            else:
                args.mosaic_prob = value
                notes.append(f"--aug_rate {value}: the 2x2 mosaic probability, as --mosaic_prob {value}")
        elif flag.name == "training_data":
            if not args.train_data_path:
                raise UserError(f"--training_data {shown}: AdaCLIP finds these under its config.py DATA_ROOT; pass "
                                "their folders instead: --train_data_path " +
                                " ".join(f"DATA/{name}" for name in value))
            notes.append(f"--training_data {shown}: the folders of --train_data_path are trained on")
        elif flag.name == "testing_data" and script == "test":
            if args.data_path is None and args.image is None:
                raise UserError(f"--testing_data {value}: AdaCLIP finds it under its config.py DATA_ROOT; pass its "
                                f"folder instead: --data_path DATA/{value}")
            notes.append(f"--testing_data {value}: --data_path {args.data_path} is tested")
        elif flag.name == "ckt_path":
            if args.checkpoint_path not in (None, value):
                raise UserError(f"--ckt_path {value} and --checkpoint_path {args.checkpoint_path} disagree; pass one")
            args.checkpoint_path = value
        elif flag.name == "testing_model" and value == "image" and args.image is None:
            raise UserError("--testing_model image: pass the image file or folder with --image")
        elif flag.name == "group_id_list":
            if list(value) != [2]:
                raise UserError(f"--group_id_list {shown}: VCP-CLIP's groups 0 and 1 train on a third of the auxiliary "
                                "categories; name the categories with --train_classes instead (group 2, every "
                                "category, is the default here)")
            notes.append("--group_id_list 2: every category of the auxiliary set, as here by default")
        elif flag.name == "resume_checkpoint_path":
            raise UserError(f"--resume_checkpoint_path {value}: starting from another run's weights is not supported; "
                            "--resume continues an interrupted run of ours")
        elif flag.name == "few_shot_features":
            listed = args.features_list
            if listed is not None and list(value) != list(listed):
                raise UserError(f"--few_shot_features {shown}: the few-shot bank reads --features_list "
                                f"{' '.join(map(str, listed))} here; pass the same layers")
            if listed is None:
                args.features_list = list(value)
            notes.append(f"--few_shot_features {shown}: the bank's layers, as --features_list")
        else:
            notes.append(f"--{flag.name} {shown}: {flag.meaning}")
    return notes
