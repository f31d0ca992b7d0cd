"""Part ``correctness`` of benchmarks/device_check.py: FAPrompt and Bayes-PFL with random
weights on a batch against the same images one at a time, under fp32 and bf16 autocast; bf16
against fp32; Bayes-PFL's batched pass against the official per-image loop."""
from __future__ import annotations

import argparse
from typing import Callable, Dict, Sequence

import torch

from benchmarks import bayes_pfl, common
from benchmarks.checks.base import Recorder, section, set_precision


def _faprompt_outputs(model, images: torch.Tensor, names: Sequence[str], sigma: float) -> Dict[str, torch.Tensor]:
    from utils.filters import gaussian_blur

    with torch.no_grad():
        out = model(images, names)
    return {"map": out.anomaly_map, "map_blurred": gaussian_blur(out.anomaly_map, sigma),
            "class_prob": out.class_prob, "map_score": out.map_score, "image_score": out.fused_score,
            "selected": out.selected}


def _bayes_outputs(model, images: torch.Tensor, names: Sequence[str], sigma: float, seed: int):
    from utils.filters import gaussian_blur

    model.start_evaluation(seed)
    with torch.no_grad():
        prediction = model.predict(images, names)
    return {"map": prediction.anomaly_map, "map_blurred": gaussian_blur(prediction.anomaly_map, sigma),
            "class_prob": prediction.class_prob, "map_score": prediction.map_score}


def _single_outputs(outputs_of: Callable[[torch.Tensor, Sequence[str]], Dict[str, torch.Tensor]],
                    images: torch.Tensor, names: Sequence[str]) -> Dict[str, torch.Tensor]:
    singles = [outputs_of(images[i:i + 1], names[i:i + 1]) for i in range(images.shape[0])]
    return {key: torch.cat([s[key] for s in singles]) for key in singles[0]}


def _diffs(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> Dict[str, float]:
    out = {}
    for key in a:
        if key == "selected":
            out["selected_sets_equal"] = float(all(set(x.tolist()) == set(y.tolist()) for x, y in zip(a[key], b[key])))
        else:
            out[key] = common.max_abs_diff(a[key], b[key])
    return out


def _print_diffs(label: str, diffs: Dict[str, float]) -> None:
    text = ", ".join(f"{k} {v:.1e}" if k != "selected_sets_equal" else f"DAP sets equal: {bool(v)}"
                     for k, v in diffs.items())
    print(f"{label:34s} {text}", flush=True)


def part_correctness(rec: Recorder, args: argparse.Namespace, device: torch.device, model_name: str,
                     image_size: int) -> None:
    section(f"correctness: {model_name} at {image_size} px, random weights, batch of "
            f"{args.check_images} vs single images")
    result: Dict[str, object] = {"model": model_name, "image_size": image_size, "images": args.check_images}
    rec.data["correctness"] = result
    images = common.random_images(args.check_images, image_size, device, args.seed + 1)
    precisions = [p for p in ("fp32", "bf16") if p in args.precisions or p == "fp32"]

    def faprompt_check():
        backbone = common.make_backbone(model_name, args.pretrained, image_size, device, "fp32",
                                        pos_interpolation="bilinear", seed=args.seed)
        model = common.build_method("faprompt", backbone, device, args.seed)
        names = ["bottle"] * args.check_images
        sigma = model.config.sigma
        out, batched = {}, {}
        for precision in precisions:
            set_precision(backbone, precision)
            batched[precision] = _faprompt_outputs(model, images, names, sigma)
            single = _single_outputs(lambda x, n: _faprompt_outputs(model, x, n, sigma), images, names)
            out[f"batch_vs_single_{precision}"] = _diffs(batched[precision], single)
            _print_diffs(f"FAPrompt batch vs single, {precision}:", out[f"batch_vs_single_{precision}"])
        if "bf16" in batched:
            out["bf16_vs_fp32"] = _diffs(batched["bf16"], batched["fp32"])
            _print_diffs("FAPrompt bf16 vs fp32 (batch):", out["bf16_vs_fp32"])
        result["faprompt"] = out

    def bayes_check():
        backbone = common.make_backbone(model_name, args.pretrained, image_size, device, "fp32",
                                        pos_interpolation="bicubic", seed=args.seed)
        model = common.build_method("bayes_pfl", backbone, device, args.seed)
        names = ["bottle"] * args.check_images
        sigma, seed = model.config.sigma, 111
        out, batched = {}, {}
        for precision in precisions:
            set_precision(backbone, precision)
            batched[precision] = _bayes_outputs(model, images, names, sigma, seed)
            model.start_evaluation(seed)  # one noise stream over the single images, as over the batch
            singles = []
            with torch.no_grad():
                for i in range(args.check_images):
                    p = model.predict(images[i:i + 1], names[i:i + 1])
                    singles.append({"map": p.anomaly_map, "map_blurred": _blur(p.anomaly_map, sigma),
                                    "class_prob": p.class_prob, "map_score": p.map_score})
            single = {k: torch.cat([s[k] for s in singles]) for k in singles[0]}
            out[f"batch_vs_single_{precision}"] = _diffs(batched[precision], single)
            _print_diffs(f"Bayes-PFL batch vs single, {precision}:", out[f"batch_vs_single_{precision}"])
            out[f"batched_vs_official_loop_{precision}"] = bayes_pfl.agreement(model, images, names, seed)
            _print_diffs(f"Bayes-PFL ours vs official loop, {precision}:",
                         out[f"batched_vs_official_loop_{precision}"])
        if "bf16" in batched:
            out["bf16_vs_fp32"] = _diffs(batched["bf16"], batched["fp32"])
            _print_diffs("Bayes-PFL bf16 vs fp32 (batch):", out["bf16_vs_fp32"])
        result["bayes_pfl"] = out

    rec.guard("correctness.faprompt", faprompt_check)
    rec.guard("correctness.bayes_pfl", bayes_check)


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    from utils.filters import gaussian_blur

    return gaussian_blur(maps, sigma)

