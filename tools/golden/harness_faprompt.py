"""Run the official FAPrompt test and one training step on the golden data; record every stage.

Runs in its own process with the official checkout first on ``sys.path`` (its module names
``dataset``, ``loss``, ``utils`` would clash with ours). Called by ``make_golden.py``:

    python harness_faprompt.py --official PATH --work DIR --clip FILE --data ROOT --out FILE.npz
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE.parents[1]]

import torch  # noqa: E402

import official_stubs  # noqa: E402
from golden_checkpoints import FAPROMPT_SEED  # noqa: E402
from harness_common import (TrainingStep, full_size_learner_manifest, harness_args, official_modules,  # noqa: E402
                            seeded, seeded_learner_checkpoint)
from recorder import Recorder, patched  # noqa: E402

DEPTH, T_N_CTX = 3, 4  # deep prompts at text layers 2..3 of the 4-layer tiny text tower


def main() -> None:
    args, official, work = harness_args()
    official_stubs.install_common()
    rec = Recorder()
    out: dict = {}
    m = official_modules(official, "faprompt", args.data, "FAPrompt")
    design = {"Prompt_length": 12, "learnabel_text_embedding_depth": DEPTH, "learnabel_text_embedding_length": T_N_CTX}

    # --- the seeded official checkpoint ------------------------------------------------------
    checkpoint = work / "faprompt_official.pth"
    values, tiny_manifest, recorded = seeded_learner_checkpoint(m.lib.load, m.FAPrompt.FAPrompt, design,
                                                                args.clip, "faprompt", FAPROMPT_SEED, checkpoint)
    out.update(recorded)

    class SeededFAPrompt(seeded(m.FAPrompt.FAPrompt, values)):
        """The official prompt learner with the seeded parameters, its calls recorded."""

        def forward(self, selected_tokens=None):
            result = super().forward(selected_tokens)
            rec.calls["prompt_learner"].append({"selected": None if selected_tokens is None
                                                 else selected_tokens.detach().numpy().copy(),
                                                 "bias": result[-1].detach().numpy().copy()
                                                 if torch.is_tensor(result[-1]) else None})
            return result

    def clip_path_load(name, *a, **k):
        return original_load(args.clip, *a, **k)

    original_load = m.lib.load
    wrapped = {name: rec.wrap(name, getattr(m.lib, name))
               for name in ("compute_similarity_ori", "compute_similarity", "get_similarity_map")}

    # --- the official test -------------------------------------------------------------------
    test_args = argparse.Namespace(image_size=args.image_size, features_list=[6, 12, 18, 24], data_path=args.data,
                                   save_path=str(work / "faprompt_test"), dataset="mvtecad",
                                   checkpoint_path=str(checkpoint), depth=DEPTH, n_ctx=12, t_n_ctx=T_N_CTX,
                                   metrics="image-pixel-level", seed=111, sigma=10)
    with patched(m.lib, "load", clip_path_load), \
            patched(m.test, "FAPrompt", SeededFAPrompt), \
            patched(m.clip.AnomalyCLIP, "encode_image", rec.wrap("encode_image", m.clip.AnomalyCLIP.encode_image)), \
            patched(m.clip.AnomalyCLIP, "encode_text_learn",
                    rec.wrap("encode_text_learn", m.clip.AnomalyCLIP.encode_text_learn)), \
            patched(m.test, "gaussian_filter", rec.wrap("gaussian_filter", m.test.gaussian_filter)), \
            patched(m.test, "image_level_metrics",
                    rec.wrap("image_level_metrics", m.test.image_level_metrics, keep_args=True)), \
            patched(m.test, "pixel_level_metrics", rec.wrap("pixel_level_metrics", m.test.pixel_level_metrics)):
        for name, fn in wrapped.items():
            setattr(m.lib, name, fn)
        m.test.setup_seed(111)
        m.test.test(test_args)
        for name in wrapped:
            setattr(m.lib, name, getattr(m.lib.model_load, name))
    collect_test(rec, out, m.classes)
    rec.calls.clear()

    # --- one official training step ------------------------------------------------------------
    out.update(train_step(m.train, SeededFAPrompt, clip_path_load, original_load, args, work, rec))
    out["full_manifest"] = np.array(json.dumps(full_size_learner_manifest(m.FAPrompt.FAPrompt)))
    out["tiny_manifest"] = np.array(json.dumps(tiny_manifest))
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({len(out)} arrays)")


def collect_test(rec: Recorder, out: dict, classes) -> None:
    """Per-image arrays (in dataset order) from the recorded calls of the official test."""
    text = rec.outputs("encode_text_learn")  # per image: static pos, static neg, DAP pos, DAP neg
    n = len(rec.outputs("encode_image"))
    image_feature = np.stack([o[0] for o in rec.outputs("encode_image")])  # [N, 1, D] CLS @ proj
    patches = np.stack([o[1] for o in rec.outputs("encode_image")])  # [N, 1+P, 1, D] V-V tokens
    out["image/cls_raw"] = image_feature[:, 0]
    out["image/vv_proj"] = patches[:2, 1:, 0]  # two images suffice for the backbone
    out["text/static_normal"] = np.stack([text[4 * i][0] for i in range(n)])
    out["text/static_abnormal"] = np.stack([text[4 * i + 1] for i in range(n)])  # [N, K, D]
    assert all(np.array_equal(out["text/static_abnormal"][0], t) for t in out["text/static_abnormal"])
    out["text/static_abnormal"] = out["text/static_abnormal"][:1]  # the same for every image
    out["text/dap_normal"] = np.stack([text[4 * i + 2][0] for i in range(n)])
    out["text/dap_abnormal"] = np.stack([text[4 * i + 3] for i in range(n)])
    sim1 = rec.outputs("compute_similarity_ori")
    sim2 = rec.outputs("compute_similarity")
    out["grid1"] = np.stack([s[0][1:, 0] for s in sim1])  # [N, P, 2]
    out["grid2"] = np.stack([s[0][1:, 0] for s in sim2])
    maps = rec.outputs("get_similarity_map")
    out["map1"] = np.stack([maps[2 * i][0] for i in range(n)])  # [N, 2, S, S]
    out["map2"] = np.stack([maps[2 * i + 1][0] for i in range(n)])
    learner_calls = rec.calls["prompt_learner"]
    dap = [c for c in learner_calls if c["selected"] is not None]
    out["dap/selected_tokens"] = np.stack([c["selected"] for c in dap])  # [N, k, D]
    out["dap/prior"] = np.stack([c["bias"][0] for c in dap])  # [N, W]
    out["map_blurred"] = np.stack([g[0, 0] for g in rec.outputs("gaussian_filter")])
    results = rec.calls["image_level_metrics"][0]["args"][0]
    scores, labels = [], []
    for obj in classes:
        scores += [float(s) for s in results[obj]["pr_sp"]]
        labels += [int(v) for v in results[obj]["gt_sp"]]
    out["image_score"] = np.array(scores, dtype=np.float32)
    out["labels"] = np.array(labels)
    image_metrics = rec.outputs("image_level_metrics")  # per class: auroc, ap
    pixel_metrics = rec.outputs("pixel_level_metrics")  # per class: auroc, aupro (legacy PRO)
    out["metrics/image_auroc"] = np.array(image_metrics[0::2])
    out["metrics/image_ap"] = np.array(image_metrics[1::2])
    out["metrics/pixel_auroc"] = np.array(pixel_metrics[0::2])
    out["metrics/pixel_pro_legacy"] = np.array(pixel_metrics[1::2])
    out["metrics/classes"] = np.array(list(classes))
    # the 200-step legacy PRO of np.arange over float32 maps can have 201 thresholds
    steps = []
    for obj_index, obj in enumerate(classes):
        maps = np.stack([m for m, c in zip(out["map_blurred"], _image_classes(results, classes)) if c == obj])
        low, high = maps.min(), maps.max()
        steps.append(len(np.arange(low, high, (high - low) / 200)))
    out["metrics/pro_thresholds"] = np.array(steps)


def _image_classes(results, classes):
    return [obj for obj in classes for _ in results[obj]["pr_sp"]]


def train_step(train_module, learner_class, clip_path_load, original_load, args, work: Path, rec: Recorder) -> dict:
    """The official training loop for one epoch of one batch (all images); records the batch
    order, every loss term, the total and the prompt learner's gradients before the step."""
    import AnomalyCLIP_lib
    import loss as loss_module

    step = TrainingStep(lambda: dict(learner_class.instance.named_parameters()))
    train_args = argparse.Namespace(train_data_path=args.data, save_path=str(work / "faprompt_train"),
                                    dataset="mvtecad",
                                    depth=DEPTH, n_ctx=12, t_n_ctx=T_N_CTX, feature_map_layer=[0, 1, 2, 3],
                                    features_list=[6, 12, 18, 24], epoch=1, learning_rate=0.001, batch_size=8,
                                    image_size=args.image_size, print_freq=1, save_freq=1, seed=111)
    Path(train_args.save_path).mkdir(parents=True, exist_ok=True)
    losses = {"FocalLoss": (loss_module.FocalLoss, "focal"), "BinaryDiceLoss": (loss_module.BinaryDiceLoss, "dice"),
              "BinaryFocalLoss": (loss_module.BinaryFocalLoss, "binary_focal")}
    with patched(AnomalyCLIP_lib, "load", clip_path_load), \
            patched(train_module, "FAPrompt", learner_class), \
            patched(torch.nn, "MSELoss", step.loss(torch.nn.MSELoss, "mse")), \
            step.recording_loop(train_module, losses):
        train_module.setup_seed(111)
        train_module.train(train_args)
    return step.arrays(args.data)


if __name__ == "__main__":
    main()
