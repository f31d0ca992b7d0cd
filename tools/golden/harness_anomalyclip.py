"""Run the official AnomalyCLIP test and one training step on the golden data; record every stage.

Runs in its own process with the official checkout first on ``sys.path``. Called by
``make_golden.py``:

    python harness_anomalyclip.py --official PATH --work DIR --clip FILE --data ROOT --out FILE.npz

The test uses layers 4, 12 and 24: its current code computes each listed layer's tokens (the V-V
path's from block 6 on, the original path's before), and sums the layers' maps.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE.parents[1]]

import official_stubs  # noqa: E402
from golden_checkpoints import ANOMALYCLIP_SEED  # noqa: E402
from harness_common import (TrainingStep, full_size_learner_manifest, harness_args, official_modules,  # noqa: E402
                            seeded, seeded_learner_checkpoint)
from recorder import Recorder, patched  # noqa: E402

DEPTH, N_CTX, T_N_CTX = 3, 12, 4
FEATURES = [4, 12, 24]


def main() -> None:
    args, official, work = harness_args()
    official_stubs.install_common()
    official_stubs.rewind_before_torch_load()
    rec = Recorder()
    out: dict = {}
    m = official_modules(official, "anomalyclip", args.data, "prompt_ensemble")
    design = {"Prompt_length": N_CTX, "learnabel_text_embedding_depth": DEPTH,
              "learnabel_text_embedding_length": T_N_CTX}
    original_load = m.lib.load

    def clip_path_load(name, *a, **k):
        return original_load(args.clip, *a, **k)

    # --- the seeded official checkpoint ------------------------------------------------------
    checkpoint = work / "anomalyclip_official.pth"
    values, tiny_manifest, recorded = seeded_learner_checkpoint(
        original_load, m.prompt_ensemble.AnomalyCLIP_PromptLearner, design, args.clip, "anomalyclip", ANOMALYCLIP_SEED,
        checkpoint)
    out.update(recorded)

    SeededLearner = seeded(m.prompt_ensemble.AnomalyCLIP_PromptLearner, values)

    # --- the official test -------------------------------------------------------------------
    test_args = argparse.Namespace(data_path=args.data, save_path=str(work / "anomalyclip_test"),
                                   checkpoint_path=str(checkpoint), dataset="mvtec", features_list=FEATURES,
                                   image_size=args.image_size, depth=DEPTH, n_ctx=N_CTX, t_n_ctx=T_N_CTX,
                                   feature_map_layer=[0, 1, 2], metrics="image-pixel-level", seed=111, sigma=4)
    wrapped = {name: rec.wrap(name, getattr(m.lib, name)) for name in ("compute_similarity",
                                                                                  "get_similarity_map")}
    with patched(m.lib, "load", clip_path_load), \
            patched(m.test, "AnomalyCLIP_PromptLearner", SeededLearner), \
            patched(m.lib, "compute_similarity", wrapped["compute_similarity"]), \
            patched(m.lib, "get_similarity_map", wrapped["get_similarity_map"]), \
            patched(m.clip.AnomalyCLIP, "encode_image", rec.wrap("encode_image", m.clip.AnomalyCLIP.encode_image)), \
            patched(m.clip.AnomalyCLIP, "encode_text_learn",
                    rec.wrap("encode_text_learn", m.clip.AnomalyCLIP.encode_text_learn)), \
            patched(m.test, "gaussian_filter", rec.wrap("gaussian_filter", m.test.gaussian_filter)), \
            patched(m.test, "image_level_metrics",
                    rec.wrap("image_level_metrics", m.test.image_level_metrics, keep_args=True)), \
            patched(m.test, "pixel_level_metrics", rec.wrap("pixel_level_metrics", m.test.pixel_level_metrics)):
        m.test.setup_seed(111)
        m.test.test(test_args)
    collect_test(rec, out, [c for c in m.dataset.generate_class_info("mvtec")[0]])
    rec.calls.clear()

    # --- one official training step ------------------------------------------------------------
    out.update(train_step(m.train, SeededLearner, clip_path_load, args, work))
    out["full_manifest"] = np.array(json.dumps(full_size_learner_manifest(m.prompt_ensemble.AnomalyCLIP_PromptLearner)))
    out["tiny_manifest"] = np.array(json.dumps(tiny_manifest))
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({len(out)} arrays)")


def collect_test(rec: Recorder, out: dict, classes) -> None:
    """Per-image arrays (in dataset order) from the recorded calls of the official test."""
    text = rec.outputs("encode_text_learn")[0]  # [2, D]: normal, abnormal (once for all images)
    out["text/normal"], out["text/abnormal"] = text[0], text[1]
    encoded = rec.outputs("encode_image")
    n, layers = len(encoded), len(FEATURES)
    out["image/cls_raw"] = np.stack([e[0][0] for e in encoded])
    for i, layer in enumerate(FEATURES):
        out[f"image/layer/{layer}"] = np.stack([e[1][i][0, 1:] for e in encoded[:2]])  # [2, P, D], first images
    similarity = rec.outputs("compute_similarity")  # per image and layer: [1, 1 + P, 2]
    maps = rec.outputs("get_similarity_map")  # per image and layer: [1, S, S, 2]
    for i, layer in enumerate(FEATURES):
        out[f"grid/{layer}"] = np.stack([similarity[layers * j + i][0][0, 1:] for j in range(n)])  # [N, P, 2]
        out[f"map/{layer}"] = np.stack([maps[layers * j + i][0] for j in range(n)])  # [N, S, S, 2]
    out["map_blurred"] = np.stack(rec.outputs("gaussian_filter"))  # one [S, S] call per image
    results = rec.calls["image_level_metrics"][0]["args"][0]
    scores, labels = [], []
    for obj in classes:
        scores += [float(s) for s in results[obj]["pr_sp"]]
        labels += [int(v) for v in results[obj]["gt_sp"]]
    out["image_score"] = np.array(scores, dtype=np.float32)
    out["labels"] = np.array(labels)
    image_metrics, pixel_metrics = rec.outputs("image_level_metrics"), rec.outputs("pixel_level_metrics")
    out["metrics/image_auroc"], out["metrics/image_ap"] = np.array(image_metrics[0::2]), np.array(image_metrics[1::2])
    out["metrics/pixel_auroc"] = np.array(pixel_metrics[0::2])
    out["metrics/pixel_pro_legacy"] = np.array(pixel_metrics[1::2])
    out["metrics/classes"] = np.array(list(classes))
    blurred, owners = out["map_blurred"], [obj for obj in classes for _ in results[obj]["pr_sp"]]
    steps = []
    for obj in classes:
        maps_of = np.stack([m for m, c in zip(blurred, owners) if c == obj])
        low, high = maps_of.min(), maps_of.max()
        steps.append(len(np.arange(low, high, (high - low) / 200)))
    out["metrics/pro_thresholds"] = np.array(steps)


def train_step(train_module, learner_class, clip_path_load, args, work: Path) -> dict:
    """One epoch of one batch (all images) of the official loop: the batch order, every loss
    call, the total and the gradients before the step."""
    import AnomalyCLIP_lib
    import loss as loss_module

    step = TrainingStep(lambda: dict(learner_class.instance.named_parameters()))
    train_args = argparse.Namespace(train_data_path=args.data, save_path=str(work / "anomalyclip_train"),
                                    dataset="mvtec", depth=DEPTH, n_ctx=N_CTX, t_n_ctx=T_N_CTX,
                                    feature_map_layer=[0, 1, 2], features_list=FEATURES, epoch=1, learning_rate=0.001,
                                    batch_size=8, image_size=args.image_size, print_freq=1, save_freq=1, seed=111)
    Path(train_args.save_path).mkdir(parents=True, exist_ok=True)
    losses = {"FocalLoss": (loss_module.FocalLoss, "focal"), "BinaryDiceLoss": (loss_module.BinaryDiceLoss, "dice")}
    with official_stubs.cuda_to_cpu(), \
            patched(AnomalyCLIP_lib, "load", clip_path_load), \
            patched(train_module, "AnomalyCLIP_PromptLearner", learner_class), \
            step.recording_loop(train_module, losses):
        train_module.setup_seed(111)
        train_module.train(train_args)
    return step.arrays(args.data)


if __name__ == "__main__":
    main()
