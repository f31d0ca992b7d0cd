"""Record the official AdaCLIP code (caoyunkang/AdaCLIP) on the golden tiny CLIP: the reference
arrays of tests/test_adaclip.py.

    python tools/golden/harness_adaclip.py --official /path/to/AdaCLIP --out tests/golden/adaclip_official.npz

The checkout is copied to a temporary folder, where ``method/__init__.py`` is emptied: it imports
the training glue (OpenCV, tensorboard loggers), which this harness does not use, and its four
in-place normalisations ``x /= x.norm(...)`` become ``x = x / x.norm(...)``: under CUDA autocast,
where it runs, ``norm`` reads an fp32 copy of ``x``; in fp32 on a CPU the in-place division would
overwrite what the backward pass needs. The values and gradients are those of the same formula. Where the
checkout's BPE vocabulary is a Git LFS pointer, open_clip's copy is put in its place after its
SHA-256 is checked against the pointer's object id. Everything else
runs as shipped, in this process: its ``CLIP`` (``method/clip_model.py``, built as its factory
builds a resized OpenAI model: exact GELU, the position grid resized bicubically without
antialias), ``AdaCLIP`` (prompt layers, dynamic prompt generators, projections, HSF with
scikit-learn's k-means, the text ensemble and tokenizer) and the losses of ``loss.py``.

The learned parts get seeded values (:func:`learned_state`, by official parameter name; their
shapes are in the provenance file), which the test rebuilds in the official checkpoint layout and
loads through our converter. Its text prompts only broadcast over a batch of one image, so every image runs alone,
as its batch-1 scripts run them; k-means draws from NumPy's global generator, seeded before each
test image by its position (:func:`kmeans_seed`, as ours seeds it at test time) and once before
the training step. The training step (train_one_batch's losses,
spelled out below as they are inline there) runs on the first image.
"""
from __future__ import annotations

import json
import shutil
import sys
import zlib
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent

CLASS = "metal_nut"
IMAGES_SEED = 20261212
TORCH_SEED = 20261213
KMEANS_SEED = 20261214
WEIGHTS_SEED = 20261215
FEATURES = (6, 12, 18, 24)
DEPTH, LENGTH, K_CLUSTERS = 3, 2, 3  # the golden text tower has 4 blocks; 5k = 15 of 36 patches
LEARNED = ("text_prompter", "visual_prompter", "patch_token_layer", "cls_token_layer",
           "dynamic_visual_prompt_generator", "dynamic_text_prompt_generator")  # its trainer's list


def kmeans_seed(seed: int, position: int) -> int:
    """NumPy's global seed before test image ``position`` (our models.adaclip.kmeans_seed)."""
    return (seed * 1_000_003 + position) % 2 ** 32


def learned_state(shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
    """Seeded values for the learned parameters, by official name: static prompts N(0, 0.02) (its
    initialisation), linear weights and biases U(±1/√fan_in) (PyTorch's default range); one frozen
    NumPy stream per name, so the file holds no weights and the test rebuilds them."""
    out = {}
    for name, shape in shapes.items():
        rng = np.random.RandomState((WEIGHTS_SEED * 1_000_003 + zlib.crc32(name.encode())) % 2 ** 32)
        if "static_prompts" in name:
            out[name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        else:
            fan_in = shapes[name.rsplit(".", 1)[0] + ".weight"][1]
            out[name] = rng.uniform(-fan_in ** -0.5, fan_in ** -0.5, shape).astype(np.float32)
    return out


def golden_images(size: int):
    """[3, 3, S, S] images, [3, S, S] masks and labels (the last image normal) from a frozen stream."""
    rng = np.random.RandomState(IMAGES_SEED)
    images = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    masks = np.zeros((3, size, size), np.float32)
    masks[0, 8:24, 6:28] = 1
    masks[1, 26:42, 20:40] = 1
    return images, masks, np.array([1, 1, 0])


def patched_checkout(official: Path) -> Path:
    from harness_common import copy_checkout, rewrite

    work = copy_checkout(official, "adaclip", "asset", "data_preprocess")
    (work / "method" / "__init__.py").write_text("")  # its training glue is not imported
    rewrite(work / "method" / "adaclip.py", r"([\w\[\]]+) /= \1\.norm\(", r"\1 = \1 / \1.norm(", 4,
            "in-place normalisations to rewrite")
    vocab = work / "method" / "bpe_simple_vocab_16e6.txt.gz"
    if vocab.read_bytes().startswith(b"version https://git-lfs"):  # a snapshot without LFS objects
        import hashlib

        import open_clip

        oid = vocab.read_text().split("sha256:")[1].split()[0]
        installed = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
        if hashlib.sha256(installed.read_bytes()).hexdigest() != oid:
            raise SystemExit(f"{vocab} is a Git LFS pointer and open_clip's vocabulary is another file")
        shutil.copy(installed, vocab)  # the same bytes (its LFS object id is their SHA-256)
    return work


def main() -> None:
    from harness_common import command_line, commit_of

    official, target, commit = command_line(__doc__, "caoyunkang/AdaCLIP")
    work = patched_checkout(official)
    sys.path.insert(0, str(work))  # its method/ and loss.py
    sys.path.insert(1, str(HERE))  # golden_clip (NumPy only)
    import torch

    import method.adaclip as adaclip_module
    from golden_clip import IMAGE_SIZE, OPEN_CLIP_CONFIG, golden_clip_state
    from loss import BinaryDiceLoss, FocalLoss
    from method.adaclip import AdaCLIP
    from method.clip_model import CLIP, resize_pos_embed

    assert Path(adaclip_module.__file__).is_relative_to(work), adaclip_module.__file__
    config = json.loads(json.dumps(OPEN_CLIP_CONFIG))
    config.pop("quick_gelu")  # its model configs set none: exact GELU
    config["vision_cfg"]["image_size"] = IMAGE_SIZE
    clip = CLIP(**config)
    state = {k: torch.from_numpy(np.array(v)).float() for k, v in golden_clip_state().items()}
    resize_pos_embed(state, clip)
    clip.load_state_dict(state)
    clip.eval()
    torch.manual_seed(TORCH_SEED)
    model = AdaCLIP(freeze_clip=clip, text_channel=config["embed_dim"], visual_channel=config["vision_cfg"]["width"],
                    prompting_length=LENGTH, prompting_depth=DEPTH, prompting_branch="VL", prompting_type="SD",
                    use_hsf=True, k_clusters=K_CLUSTERS, output_layers=list(FEATURES), device="cpu",
                    image_size=IMAGE_SIZE)
    out = {}
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()
              if any(part in name for part in LEARNED)}  # its trainer's save(): the learned entries
    values = learned_state(shapes)
    model.load_state_dict({name: torch.from_numpy(v) for name, v in values.items()}, strict=False)

    images, masks, labels = (torch.from_numpy(a) for a in golden_images(IMAGE_SIZE))
    out["images"], out["masks"], out["labels"] = images.numpy(), masks.numpy(), labels.numpy()
    model.eval()
    rows = {}
    with torch.no_grad():
        for position, image in enumerate(images):
            np.random.seed(kmeans_seed(KMEANS_SEED, position))  # its k-means draws from the global stream
            image = image[None]
            model.generate_and_set_dynamic_promtps(image)
            plain, _ = model.visual.forward(image, model.output_layers)
            pooled, patch_tokens, _ = model.encode_image(image)
            text = model.text_embedding_layer(model, [CLASS], "cpu")
            cls, tokens = model.proj_visual_tokens(pooled, patch_tokens)
            anomaly_map, anomaly_score = model(image, [CLASS], aggregation=True)
            for key, value in (("plain_cls", plain), ("cls", pooled), ("text", text), ("proj_cls", cls),
                               ("map", anomaly_map), ("image_prob", anomaly_score),
                               *((f"tokens/{layer}", t[:, 1:]) for layer, t in zip(FEATURES, patch_tokens)),
                               ("proj_tokens/6", tokens[0])):
                rows.setdefault(key, []).append(value[0].numpy())
    out.update({key: np.stack(value) for key, value in rows.items()})
    # the forward above ran the dynamic prompts, the prompted image pass and the text again inside
    # model(): the recorded stages are those of the same weights; HSF drew its k-means there, once
    # per image, from the stream seeded for that image

    # train_one_batch on the first image: focal(image probabilities) + per block focal(map) +
    # dice(abnormal, mask) + dice(normal, 1 - mask)
    model.train()
    np.random.seed(KMEANS_SEED)
    focal, dice = FocalLoss(), BinaryDiceLoss()
    maps, score = model(images[:1], [CLASS], aggregation=False)
    gt = masks[:1].clone().squeeze()  # as its trainer: a batch of one loses its batch axis, so the
    # dice loss (its N = targets.size(0)) averages over the image's rows
    loss = focal(score, labels[:1].float().unsqueeze(1))
    for am in maps:
        loss = loss + focal(am, gt) + dice(am[:, 1, :, :], gt) + dice(am[:, 0, :, :], 1 - gt)
    loss.backward()
    out["loss"] = np.array(loss.item())
    for name, param in model.named_parameters():
        if param.grad is not None and name in shapes:
            grad = param.grad
            out[f"grad/{name}"] = (grad[:32] if grad.dim() > 1 and grad.shape[0] > 32 else grad).numpy()
    np.savez_compressed(target, **out)
    commit = commit_of(official, commit)
    provenance = {"reference": "caoyunkang/AdaCLIP", "commit": commit, "torch": torch.__version__,
                  "class_name": CLASS, "images_seed": IMAGES_SEED, "torch_seed": TORCH_SEED,
                  "kmeans_seed": KMEANS_SEED, "features_list": list(FEATURES), "prompting_depth": DEPTH,
                  "prompting_length": LENGTH, "k_clusters": K_CLUSTERS, "image_size": IMAGE_SIZE,
                  "weights_seed": WEIGHTS_SEED, "learned_shapes": {k: list(v) for k, v in sorted(shapes.items())},
                  "patched": "method/__init__.py emptied (it imports the training glue); x /= x.norm(...) as "
                             "x = x / x.norm(...) (4 lines); the LFS-pointer BPE vocabulary replaced by open_clip's "
                             "(same SHA-256)"}
    target.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))


if __name__ == "__main__":
    main()
