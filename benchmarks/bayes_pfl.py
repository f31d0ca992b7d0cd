"""Bayes-PFL test-time throughput: our batched pass against the official per-image, per-sample loop.

Run from anywhere: ``python benchmarks/bayes_pfl.py [--model ViT-L-14-336] [--image_size 518]
[--batch_size 8] [--sample_num 10] [--prompt_num 3] [--precision auto] [--iters 5]``;
``--model tiny`` for a quick CPU run.

Both sides score the same ``--batch_size`` random images per iteration (random head weights,
eval mode, seeded flow noise from ``model.start_evaluation``) and blur the maps (sigma 8):

(a) ours, batched: one ``model.predict(images, names)`` call: one image pass, and all
    2·B·R sampled prompts of all images through the text encoder in one call.
(b) the official test, written here from our model's pieces: one image at a time; for every
    flow sample r a text-encoder call for the B normal prompts and another for the B
    abnormal prompts (the official TextEncoder loops over the samples), then the image head
    and RCA on the concatenated features; per layer both logits of every pair are upsampled
    and each pair's 2-way softmax is taken separately, the maps collected and averaged.

Before timing, (a) on the batch and (b) on its first ``--agreement_images`` images (default 1)
are run in fp32 with the same noise, and their maps, class probabilities and map scores must
agree to 1e-4 (else the run stops). ``--class_name`` takes several names, given to the images
in turn (the per-class prompts and top-k then differ within a batch).
Prints images/s of both and the ratio (a)/(b).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import common  # noqa: E402

AGREEMENT_TOLERANCE = 1e-4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, iters=5, warmup=1)
    parser.add_argument("--batch_size", type=int, default=8, help="images per iteration (a: one call)")
    parser.add_argument("--sample_num", type=int, default=10, help="flow samples R per image")
    parser.add_argument("--prompt_num", type=int, default=3, help="prompt-bank pairs B")
    parser.add_argument("--class_name", nargs="+", default=["bottle"],
                        help="class name(s), given to the images of the batch in turn")
    parser.add_argument("--agreement_images", type=int, default=1,
                        help="how many images of the batch (a) and (b) must agree on before timing")
    parser.add_argument("--sigma", type=float, default=8.0, help="Gaussian blur of the maps (0: none)")
    parser.add_argument("--noise_seed", type=int, default=111, help="seed of start_evaluation")
    return parser


def predict_batched(model, images: torch.Tensor, names: Sequence[str], sigma: float):
    """(a): one ``predict`` call; returns (blurred maps, Prediction)."""
    from utils.filters import gaussian_blur

    with torch.no_grad():
        prediction = model.predict(images, names)
        maps = gaussian_blur(prediction.anomaly_map, sigma)
    return maps, prediction


def official_predict_one(model, image: torch.Tensor, name: str):
    """The official test's work for one image [1, 3, S, S], built from our model's pieces.

    Returns a ``Prediction`` (unblurred map [1, S, S], class probability [1], map score [1]).
    """
    from models import methods
    from models.scoring import Prediction, topk_mean

    backbone, cfg = model.backbone, model.config
    if model.noise is None:
        model.start_evaluation()
    with torch.no_grad():
        feats = model.encode_images(image)
        context_eps, normal_eps, abnormal_eps = model.noise.draw(1, backbone.device)
        context = model.flows.context(feats.cls, context_eps)
        normal = model.flows.normal(normal_eps, 1)
        abnormal = model.flows.abnormal(abnormal_eps, 1)
        template, eot = model.bank.templates(backbone, model.words([name]))
        b = model.bank.context.shape[0]
        eot_b = eot.expand(b)
        normal_text: List[torch.Tensor] = []
        abnormal_text: List[torch.Tensor] = []
        for r in range(context.z.shape[1]):  # one sample at a time, as the official TextEncoder
            prompts = model.bank.embeddings(template, context.z[:, r:r + 1], normal.z[r:r + 1],
                                            abnormal.z[r:r + 1])  # [1, 2, 1, B, L, W]
            normal_text.append(backbone.encode_text_embeddings(prompts[0, 0, 0], eot_b))
            abnormal_text.append(backbone.encode_text_embeddings(prompts[0, 1, 0], eot_b))
        text = torch.cat([torch.cat(normal_text), torch.cat(abnormal_text)])  # [2·R·B, E], r·B + b
        text = F.normalize(text, dim=-1)
        k = text.shape[0] // 2
        pairs = text.view(1, 2, k, -1)

        class_logits = model.image_head(feats, pairs, cfg.features_list, int(model.stage))  # [1, 2, K]
        class_prob = torch.stack([class_logits[:, :, i].softmax(dim=1)[:, 1] for i in range(k)]).mean(0)

        size, grid = backbone.image_size, backbone.grid_size
        maps = []
        for index, layer in enumerate(cfg.features_list):
            dense = model.rca.dense(index, feats.patch_raw[layer])
            updated = model.rca.attend(text.unsqueeze(0), dense)
            logits = model.rca.log_temperature.exp() * dense @ updated.transpose(1, 2)  # [1, P, 2K]
            logits = logits.transpose(1, 2).reshape(1, 2 * k, grid, grid)
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
            for i in range(k):  # the pair softmax, pair by pair
                pair = torch.stack([logits[:, i], logits[:, i + k]], dim=1).softmax(dim=1)
                maps.append(pair[:, 1])
        anomaly_map = torch.stack(maps).mean(0)  # [1, S, S]
        map_score = topk_mean(anomaly_map, methods.get("bayes_pfl").score.k(name))
    return Prediction(anomaly_map, class_prob, map_score)


def predict_per_image(model, images: torch.Tensor, names: Sequence[str], sigma: float):
    """(b): the official loop over images; returns (blurred maps, list of Predictions)."""
    from utils.filters import gaussian_blur

    maps, predictions = [], []
    truncate = model.backbone.truncate_text
    model.backbone.truncate_text = False  # the official text encoder runs all 77 positions
    try:
        for i in range(images.shape[0]):
            prediction = official_predict_one(model, images[i:i + 1], names[i])
            maps.append(gaussian_blur(prediction.anomaly_map, sigma))
            predictions.append(prediction)
    finally:
        model.backbone.truncate_text = truncate
    return torch.cat(maps), predictions


@contextlib.contextmanager
def full_precision(backbone):
    """fp32 backbone and no TF32 inside the block (the agreement check compares algorithms)."""
    saved = (backbone.precision, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    backbone.precision = "fp32"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        backbone.precision, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def agreement(model, images: torch.Tensor, names: Sequence[str], seed: int, count: int = 1) -> Dict[str, float]:
    """Largest differences between (a) on the batch and (b) on its first ``count`` images, each
    side drawing its flow noise from ``start_evaluation(seed)``."""
    model.start_evaluation(seed)
    _, batched = predict_batched(model, images, names, 0)
    model.start_evaluation(seed)
    _, singles = predict_per_image(model, images[:count], names[:count], 0)
    fields = {"map": "anomaly_map", "class_prob": "class_prob", "map_score": "map_score"}
    return {key: max(common.max_abs_diff(getattr(batched, field)[i:i + 1], getattr(single, field))
                     for i, single in enumerate(singles))
            for key, field in fields.items()}


def run(args: argparse.Namespace, backbone=None) -> Dict[str, object]:
    settings = common.setup(args)
    device = settings["device"]
    if backbone is None:
        backbone = common.make_backbone(settings["model"], args.pretrained, settings["image_size"], device,
                                        args.precision, pos_interpolation="bicubic", seed=args.seed)
    backbone.precision = args.precision
    model = common.build_method("bayes_pfl", backbone, device, args.seed, sample_num=args.sample_num,
                                prompt_num=args.prompt_num)
    images = common.random_images(args.batch_size, backbone.image_size, device, args.seed)
    names = [args.class_name[i % len(args.class_name)] for i in range(args.batch_size)]

    with full_precision(backbone):
        difference = agreement(model, images, names, args.noise_seed, args.agreement_images)
    worst = max(difference.values())
    if not worst < AGREEMENT_TOLERANCE:
        raise AssertionError(f"(a) and (b) disagree on the first {args.agreement_images} image(s) by {worst:.2e} "
                             f"(fp32): {difference}")
    difference_run = None
    if settings["precision"] != "fp32":  # the same comparison at the timed precision, for information
        difference_run = agreement(model, images, names, args.noise_seed, args.agreement_images)

    model.start_evaluation(args.noise_seed)
    with common.peak_memory(device) as memory_a:
        timing_a = common.measure(lambda: predict_batched(model, images, names, args.sigma),
                                  args.iters, args.warmup, device)
    model.start_evaluation(args.noise_seed)
    with common.peak_memory(device) as memory_b:
        timing_b = common.measure(lambda: predict_per_image(model, images, names, args.sigma),
                                  args.iters, args.warmup, device)

    ips_a = common.throughput(args.batch_size, timing_a)
    ips_b = common.throughput(args.batch_size, timing_b)
    b, r = args.prompt_num, args.sample_num
    return {
        "benchmark": "bayes_pfl",
        "settings": {**settings, "pretrained": args.pretrained, "batch_size": args.batch_size,
                     "sample_num": r, "prompt_num": b, "sigma": args.sigma, "class_name": args.class_name,
                     "agreement_images": args.agreement_images,
                     "features_list": list(model.config.features_list),
                     "text_calls_per_batch": {"batched": 1, "per_image": 2 * r * args.batch_size},
                     "prompts_per_text_call": {"batched": 2 * b * r * args.batch_size, "per_image": b}},
        "environment": common.environment(device),
        "batched": {"timing": timing_a, "images_per_s": ips_a, "memory": memory_a},
        "per_image": {"timing": timing_b, "images_per_s": ips_b, "memory": memory_b},
        "ratio": ips_a / ips_b,
        "agreement_fp32": difference,
        "agreement_run_precision": difference_run,
    }


def report(result: Dict[str, object]) -> str:
    s = result["settings"]
    a, b = result["batched"], result["per_image"]
    head = (f"Bayes-PFL test-time throughput: {s['model']} ({s['pretrained']} weights), {s['image_size']} px, "
            f"{s['device']}, precision {s['precision']}, B={s['prompt_num']} pairs x R={s['sample_num']} samples, "
            f"layers {s['features_list']}, blur sigma {s['sigma']}, {a['timing']['iters']} timed iters of "
            f"{s['batch_size']} images after {a['timing']['warmup']} warm-up")
    rows = [
        ["(a) ours, batched", s["batch_size"], s["text_calls_per_batch"]["batched"],
         s["prompts_per_text_call"]["batched"], 1000 * a["timing"]["mean_s"] / s["batch_size"],
         a["images_per_s"], common.gib(a["memory"]["peak_bytes"])],
        ["(b) official per-image/sample loop", 1, s["text_calls_per_batch"]["per_image"],
         s["prompts_per_text_call"]["per_image"], 1000 * b["timing"]["mean_s"] / s["batch_size"],
         b["images_per_s"], common.gib(b["memory"]["peak_bytes"])],
    ]
    table = common.format_table(rows, ["variant", "batch", "text calls", "prompts/call", "ms/image",
                                       "images/s", "peak mem"])
    d = result["agreement_fp32"]
    lines = [head, table, f"speed-up (a)/(b): {result['ratio']:.2f}x",
             f"(a) vs (b) on the first {s['agreement_images']} image(s), fp32: map {d['map']:.2e}, "
             f"class prob {d['class_prob']:.2e}, map score {d['map_score']:.2e} (must be < {AGREEMENT_TOLERANCE:g})"]
    if result.get("agreement_run_precision"):
        d = result["agreement_run_precision"]
        lines.append(f"(a) vs (b) at {s['precision']}: map {d['map']:.2e}, class prob {d['class_prob']:.2e}, "
                     f"map score {d['map_score']:.2e} (information only)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    return common.run_main(build_parser, run, report, argv)


if __name__ == "__main__":
    main()
