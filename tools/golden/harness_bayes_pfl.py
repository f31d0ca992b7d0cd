"""Run the official Bayes-PFL test and one training step on the golden data; record every stage.

Runs in its own process with the official checkout first on ``sys.path`` (its packages
``models`` and ``datasets`` would clash with ours). Called by ``make_golden.py``:

    python harness_bayes_pfl.py --official PATH --work DIR --clip FILE --data ROOT --config JSON --out FILE.npz
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
from golden_checkpoints import BAYES_PFL_SEED, checksum, seeded_parameters  # noqa: E402
from harness_common import TrainingStep, harness_args, manifest, pillow_masks, seeded  # noqa: E402
from recorder import Recorder, patched  # noqa: E402

FEATURES = [6, 12, 18, 24]
PROMPT_NUM, CONTEXT_LEN, STATE_LEN, NUM_FLOWS = 3, 5, 5, 10
TEST_SAMPLES, VAL_SAMPLES = 2, 2
NOISE_SEED = 111  # the official test's default --seed
TRAIN_SEED = 333
DETAILED_IMAGES = 1  # per-layer RCA outputs and maps are kept for the first image only (size)


def model_args(args, sample_num: int) -> argparse.Namespace:
    return argparse.Namespace(
        dataset="mvtec", model="ViT-L-14-336", image_size=args.image_size, pretrained="openai",
        features_list=FEATURES, data_path=args.data, train_data_path=args.data, val_data_path=args.data,
        config_path=args.config, pretrained_path=args.clip, num_flows=NUM_FLOWS, prompt_context_len=CONTEXT_LEN,
        prompt_num=PROMPT_NUM, prompt_state_len=STATE_LEN, sample_num=sample_num, device_id=0, seed=NOISE_SEED)


def full_size_manifest(vpb) -> dict:
    """Keys, shapes and dtypes of the official ``MyModel`` at ViT-L-14-336 size."""
    full = argparse.Namespace(vision_width=1024, text_width=768, embed_dim=768, prompt_num=3, prompt_context_len=5,
                              prompt_state_len=5, features_list=FEATURES, num_flows=10, sample_num=10, image_size=518)
    return manifest(vpb.Context_Prompting(full))


def main() -> None:
    args, official, work = harness_args("--config")
    official_stubs.install_bayes_pfl()
    rec = Recorder()
    out: dict = {}
    with official_stubs.working_directory(str(official)), official_stubs.cuda_to_cpu():
        import datasets as dataset_module
        import models.model_CLIP as clip_module
        import models.PFL as pfl_module
        import models.VPB as vpb
        import models.metric_and_visualization as metric_module
        test_module = official_stubs.load_module("official_bayes_pfl_test", str(official / "test.py"))
        train_module = official_stubs.load_module("official_bayes_pfl_train", str(official / "train.py"))
    pillow_masks(dataset_module)
    config = json.loads(Path(args.config).read_text())

    # --- the seeded official checkpoint --------------------------------------------------------
    build_args = model_args(args, TEST_SAMPLES)
    build_args.vision_width, build_args.text_width = config["vision_cfg"]["width"], config["text_cfg"]["width"]
    build_args.embed_dim = config["embed_dim"]
    tiny_manifest = manifest(vpb.Context_Prompting(build_args))
    values = seeded_parameters(tiny_manifest, "bayes_pfl", BAYES_PFL_SEED)
    out["checkpoint_checksum"] = np.array(checksum(values))
    SeededModel = seeded(vpb.Context_Prompting, values)

    checkpoint = work / "bayes_pfl_official.pth"
    torch.save({"MyModel": SeededModel(build_args).state_dict()}, checkpoint)

    # --- the official test -----------------------------------------------------------------------
    test_args = model_args(args, TEST_SAMPLES)
    # its results table goes to "./{save_path}": run from the work folder with a relative one
    test_args.save_path, test_args.checkpoint_path = "bayes_pfl_test", str(checkpoint)
    with official_stubs.working_directory(str(work)), official_stubs.cuda_to_cpu(), seeded_first_batch(NOISE_SEED), \
            patched(test_module, "Context_Prompting", SeededModel), \
            patched(torch, "randn_like", rec.wrap("randn_like", torch.randn_like)), \
            patched(clip_module.CLIP, "encode_image", rec.wrap("encode_image", clip_module.CLIP.encode_image)), \
            patched(vpb.TextEncoder, "forward", rec.wrap("text_encoder", vpb.TextEncoder.forward, keep_args=True)), \
            patched(vpb.Context_Prompting, "forward_ensemble",
                    rec.wrap("forward_ensemble", vpb.Context_Prompting.forward_ensemble)), \
            patched(vpb.Context_Prompting, "forward", rec.wrap("heads", vpb.Context_Prompting.forward)), \
            patched(vpb.Zero_Parameter, "forward", rec.wrap("rca", vpb.Zero_Parameter.forward)), \
            patched(pfl_module.PlanarPFL, "forward", rec.wrap("context_flow", pfl_module.PlanarPFL.forward)), \
            patched(pfl_module.PlanarPFL_state, "forward",
                    rec.wrap("state_flow", pfl_module.PlanarPFL_state.forward)), \
            patched(test_module, "calcuate_metric_pixel",
                    rec.wrap("metric_pixel", test_module.calcuate_metric_pixel, keep_args=True)), \
            patched(metric_module, "gaussian_filter", rec.wrap("gaussian_filter", metric_module.gaussian_filter)), \
            patched(metric_module, "roc_auc_score",
                    rec.wrap("roc_auc_score", metric_module.roc_auc_score, keep_args=True)), \
            patched(metric_module, "average_precision_score",
                    rec.wrap("average_precision_score", metric_module.average_precision_score, keep_args=True)):
        test_module.test(test_args)
    collect_test(rec, out)
    rec.calls.clear()

    # --- one official training step --------------------------------------------------------------
    out.update(train_step(train_module, SeededModel, args, work, rec))
    out["full_manifest"] = np.array(json.dumps(full_size_manifest(vpb)))
    out["tiny_manifest"] = np.array(json.dumps(tiny_manifest))
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({len(out)} arrays)")


class seeded_first_batch:
    """Seed torch's global generator when the first batch is drawn: the official code draws
    its flow noise from the global generator, which model building consumes before that."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        loader = torch.utils.data.DataLoader
        seed = self.seed
        order = self.order = []

        class SeededLoader(loader):
            def __iter__(self):
                for index, items in enumerate(super().__iter__()):
                    if index == 0:
                        torch.manual_seed(seed)
                    order.extend(items["img_path"])
                    yield items

        self.saved = loader
        torch.utils.data.DataLoader = SeededLoader
        return self

    def __exit__(self, *exc):
        torch.utils.data.DataLoader = self.saved


def collect_test(rec: Recorder, out: dict) -> None:
    n = len(rec.outputs("encode_image"))
    encoded = rec.outputs("encode_image")
    out["image/cls"] = np.stack([e[0][0] for e in encoded])  # ln_post(CLS) @ proj
    for i, layer in enumerate(FEATURES):
        out[f"image/patch_raw/{layer}"] = np.stack([e[2][i][0] for e in encoded[:2]])  # [2, P, C]
    out["noise"] = np.stack([np.concatenate(rec.outputs("randn_like")[3 * TEST_SAMPLES * i:3 * TEST_SAMPLES * (i + 1)])
                             for i in range(n)])  # [N, 3R, D]: context, normal, abnormal
    text_calls = rec.calls["text_encoder"]  # per image: normal then abnormal
    out["tokens"] = np.stack([text_calls[2 * i]["args"][1][0] for i in range(n)])
    out["flow/context"] = np.stack([rec.outputs("context_flow")[i][1] for i in range(n)])  # [N, R, D] (image-specific)
    states = rec.outputs("state_flow")
    out["flow/normal"] = states[0][1]  # [R, D], of the first image: kept for every image
    out["flow/abnormal"] = states[1][1]
    out["text"] = np.stack([e[0][0] for e in rec.outputs("forward_ensemble")])  # [N, 2BR, D]
    heads = rec.outputs("heads")
    out["image_logits"] = np.stack([h[0][0, :, 0] for h in heads])  # [N, 2BR]
    for i, layer in enumerate(FEATURES):
        out[f"pixel_logits/{layer}"] = np.stack([h[1][i][0] for h in heads[:DETAILED_IMAGES]])  # [n, 2BR, S, S]
    rca = rec.outputs("rca")
    for i, layer in enumerate(FEATURES):
        out[f"rca/text/{layer}"] = np.stack([rca[len(FEATURES) * j + i][0][0] for j in range(DETAILED_IMAGES)])
        out[f"rca/dense/{layer}"] = np.stack([rca[len(FEATURES) * j + i][1][0] for j in range(DETAILED_IMAGES)])
    results = rec.calls["metric_pixel"][0]["args"][0]
    out["class_prob"] = np.array([float(v) for v in results["pr_sp"]], dtype=np.float32)
    out["anomaly_map"] = np.stack(results["anomaly_maps"]).astype(np.float32)  # [N, S, S] unblurred
    out["labels"] = np.array(results["gt_sp"])
    classes = list(dict.fromkeys(results["cls_names"]))
    out["metrics/classes"] = np.array(classes)
    out["map_blurred"] = np.concatenate(rec.outputs("gaussian_filter")).astype(np.float32)
    roc = rec.calls["roc_auc_score"]
    ap = rec.calls["average_precision_score"]
    image_calls = [i for i, c in enumerate(roc) if len(c["args"][0]) == len(results["pr_sp"]) // len(classes)]
    out["image_score"] = np.concatenate([roc[i]["args"][1] for i in image_calls]).astype(np.float32)
    out["metrics/image_auroc"] = np.array([roc[i]["out"] for i in image_calls])
    out["metrics/image_ap"] = np.array([ap[i]["out"] for i in image_calls])
    pixel_calls = [i for i in range(len(roc)) if i not in image_calls]
    out["metrics/pixel_auroc"] = np.array([roc[i]["out"] for i in pixel_calls])
    out["metrics/pixel_ap"] = np.array([ap[i]["out"] for i in pixel_calls])


def train_step(train_module, model_class, args, work: Path, rec: Recorder) -> dict:
    """One epoch of one batch (all images) of the official loop, stage 1; records the batch
    order, the noise and bank index, the flows' KL inputs and outputs, every loss term and the
    gradients before the first optimiser step."""
    import loss as loss_module
    import models.VPB as vpb

    step = TrainingStep(lambda: dict(model_class.instance.named_parameters()))

    made = train_module.Makedataset

    class FixedData(made):
        """The official dataset class in its test mode (no augmentation) on the golden data,
        for the training and validation loaders alike."""

        def __init__(self, train_data_path, preprocess_test, mode, image_size=518):
            super().__init__(args.data, preprocess_test, "test", image_size)

        def mask_dataset(self, name, product_list, batchsize, shuf=True):
            return super().mask_dataset("mvtec", None, batchsize, shuf)

    train_args = model_args(args, VAL_SAMPLES)
    train_args.__dict__.update(save_path="bayes_pfl_train", learning_rate=0.0001, learning_rate_PFL=0.001,
                               learning_rate_prompt=0.001, learning_rate_linear=0.0001, batch_size=8, epochs=1,
                               alpha=0.6, print_freq=1, save_freq=1, seed=TRAIN_SEED)
    binary_loss = vpb.binary_loss_function
    with official_stubs.working_directory(str(work)), official_stubs.cuda_to_cpu(), \
            seeded_first_batch(TRAIN_SEED) as seeded, \
            patched(train_module, "Context_Prompting", model_class), \
            patched(train_module, "Makedataset", FixedData), \
            patched(train_module, "FocalLoss", step.loss(loss_module.FocalLoss, "focal")), \
            patched(train_module, "DiceLoss", step.loss(loss_module.DiceLoss, "dice")), \
            patched(train_module, "Orthogonal_Loss", step.loss(loss_module.Orthogonal_Loss, "orthogonal")), \
            patched(torch.nn, "CrossEntropyLoss", step.loss(torch.nn.CrossEntropyLoss, "cross_entropy")), \
            patched(torch.optim, "Adam", step.adam()), \
            patched(torch, "randn_like", rec.wrap("randn_like", torch.randn_like)), \
            patched(torch, "randint", rec.wrap("randint", torch.randint)), \
            patched(vpb, "binary_loss_function", rec.wrap("binary_loss", binary_loss, keep_args=True)), \
            patched(vpb.Context_Prompting, "forward_ensemble",
                    rec.wrap("forward_ensemble", vpb.Context_Prompting.forward_ensemble)), \
            patched(vpb.Context_Prompting, "forward", rec.wrap("heads", vpb.Context_Prompting.forward)), \
            patched(torch.Tensor, "backward", step.backward()):
        rec.enabled = True
        train_module.setup_seed(TRAIN_SEED)
        train_module.train(train_args)
    step.order = seeded.order[:8]  # the training batch (validation images follow)
    result = step.arrays(args.data)
    draws = rec.outputs("randn_like")[:3]  # the training step's: context [N, D], normal, abnormal [1, D]
    result.update({"train/noise/context": draws[0], "train/noise/normal": draws[1], "train/noise/abnormal": draws[2]})
    result["train/pair"] = np.array(int(np.asarray(rec.outputs("randint")[0]).ravel()[0]))
    kl_calls = rec.calls["binary_loss"][:3]
    for name, call in zip(("context", "normal", "abnormal"), kl_calls):
        result[f"train/kl/{name}"] = np.array(float(call["out"][2]))
        result[f"train/log_det/{name}"] = np.asarray(call["args"][6])
        result[f"train/z0/{name}"] = np.asarray(call["args"][4])
        result[f"train/zk/{name}"] = np.asarray(call["args"][5])
    ensemble = rec.outputs("forward_ensemble")[0]
    result["train/text"] = ensemble[0]  # [N, 2B, D]
    heads = rec.outputs("heads")[0]
    result["train/image_logits"] = heads[0][:, :, 0]  # [N, 2B]
    pair, b = int(result["train/pair"]), PROMPT_NUM
    result["train/pixel_logits_pair/24"] = heads[1][-1][:, [pair, pair + b]]  # [N, 2, S, S], last layer
    return result


if __name__ == "__main__":
    main()
