"""Zero-shot test on a target dataset, or scoring of single images.

    python test.py --checkpoint_path checkpoints/visa_faprompt/final.pth --data_path data/mvtec --dataset mvtec
    python test.py --method clip --data_path data/mvtec          # training-free baseline
    python test.py --checkpoint_path CKPT --image img.png        # single image(s), no masks
    python test.py --checkpoint_path CKPT --image folder --class_name bottle --thresholds results/mvtec/results.json
    python test.py --exported exported/faprompt --runtime openvino --precision bf16 --data_path data/mvtec

The model configuration comes from the checkpoint (ours or an official FAPrompt, AnomalyCLIP or
Bayes-PFL file); flags may override the settings that do not invalidate the trained weights
(``engine.configure``). The noise seed follows one rule (``engine.recipes``): ``--seed``, else
the checkpoint's, else the method's. Results go to ``--save_path``, by default
``<save_root>/<dataset>_<method>_<run>``.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from engine import cli, configure, distributed, testing
from engine.official import apply_official_flags
from engine.test_flags import build_parser
from utils.errors import UserError, exit_with
from utils.log import setup_logging

log = logging.getLogger("zsad.test")


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()  # the console until the results folder exists
    args = build_parser().parse_args(argv)
    notes = apply_official_flags(args, "test")
    if args.image is None and args.data_path is None:
        raise UserError("pass --data_path (a dataset root with meta.json) or --image (a file or folder)")
    checkpoint = manifest = None
    if args.exported:
        method, config, backbone_cfg, manifest, seed_source = configure.configure_exported(args)
    else:
        method, config, backbone_cfg, checkpoint, seed_source = configure.configure_test(args)
    with distributed.session(args.device) as (ctx, device):  # torchrun: each process scores a part
        distributed.quiet_other_ranks(ctx)
        cli.keep_freed_memory(device)
        return testing.run(args, notes, method, config, backbone_cfg, checkpoint, seed_source, ctx, device, manifest)


if __name__ == "__main__":
    exit_with(main)
