"""Record the official APRIL-GAN code (ByChelsea/VAND-APRIL-GAN) on the golden tiny CLIP: the
reference arrays of tests/test_april_gan.py (zero-shot, a training step, and the few-shot mode
with two references).

    python tools/golden/harness_april_gan.py --official /path/to/VAND-APRIL-GAN \
        --out tests/golden/april_gan_official.npz

The checkout is copied to a temporary folder and one line of its vendored open_clip is changed
there: ``VisionTransformer.forward`` builds an unused attention sum with ``.to('cuda')``, which
fails without a GPU; it is made ``.to(x.device)``. Everything else runs as shipped, in this
process: its open_clip 2.16 (imported in place of the installed one), ``LinearLayer``,
``encode_text_with_prompt_ensemble`` and the losses of ``loss.py``.

Its open_clip builds ViT-L-14-336 at 518 px from OpenAI weights as a fresh ``CLIP`` without
QuickGELU and resizes the position grid bicubically with antialias (``resize_pos_embed``); here
the golden CLIP is built the same way at 48 px (its pretrained grid is 32 px). The linear maps
get seeded weights from a frozen NumPy stream. test.py's and train.py's inline steps (the
per-layer map, the layer sum, the image probability, the loss sum) are not importable; they are
spelled out below with their line numbers.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

CLASS = "bottle"
IMAGES_SEED = 20261207
LINEAR_SEED = 20261208
REFERENCE_SEED = 20261209
FEATURES = (6, 12, 18, 24)


def golden_images(size: int) -> np.ndarray:
    """[3, 3, S, S] images and [3, S, S] masks (the last image normal) from a frozen stream."""
    rng = np.random.RandomState(IMAGES_SEED)
    images = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    masks = np.zeros((3, size, size), np.float32)
    masks[0, 4:20, 10:30] = 1
    masks[1, 30:44, 2:12] = 1
    return images, masks


def reference_images(size: int) -> np.ndarray:
    """[2, 3, S, S] few-shot reference images from a frozen stream."""
    return np.random.RandomState(REFERENCE_SEED).standard_normal((2, 3, size, size)).astype(np.float32)


def linear_weights(width: int, embed: int, layers: int):
    """Per layer (weight [embed, width], bias [embed]) from a frozen stream (PyTorch's default
    init range, U(±1/√width))."""
    rng = np.random.RandomState(LINEAR_SEED)
    bound = 1 / np.sqrt(width)
    return [(rng.uniform(-bound, bound, (embed, width)).astype(np.float32),
             rng.uniform(-bound, bound, embed).astype(np.float32)) for _ in range(layers)]


def patched_checkout(official: Path) -> Path:
    from harness_common import copy_checkout, rewrite

    work = copy_checkout(official, "april_gan", "exps", "illustration")
    rewrite(work / "open_clip" / "transformer.py", re.escape(".to('cuda')"), ".to(x.device)", 1,
            "unused .to('cuda') to patch")
    return work


def few_shot(model, images, out, torch, F) -> None:
    """Its few-shot mode with the layers of test_few_shot.sh (--few_shot_features 6 12 18 24):
    few_shot.py:19-27 (the bank: each reference's raw tokens, concatenated per layer) and
    test.py:187-201 and 232-249 (per image and layer 1 − the nearest reference's cosine,
    scikit-learn's, upsampled with align_corners True; the layers summed and added to the
    zero-shot map; image score 0.5·(p + min-max of the final maps' maxima))."""
    from sklearn.metrics import pairwise

    references = torch.from_numpy(reference_images(images.shape[-1]))
    out["references"] = references.numpy()
    with torch.no_grad():
        features = [model.encode_image(r[None], list(FEATURES))[1] for r in references]
        bank = [torch.cat([f[i][0, 1:, :] for f in features], dim=0) for i in range(len(FEATURES))]
        final = []
        for i, image in enumerate(images):
            tokens = model.encode_image(image[None], list(FEATURES))[1]
            maps = []
            for index, p in enumerate(tokens):
                cos = pairwise.cosine_similarity(bank[index].cpu(), p[0, 1:, :].cpu())
                side = int(np.sqrt(cos.shape[1]))
                grid = torch.tensor(np.min(1 - cos, 0).reshape(1, 1, side, side))
                maps.append(F.interpolate(grid, size=images.shape[-1], mode="bilinear",
                                          align_corners=True)[0].numpy())
            few = np.sum(maps, axis=0)
            out.setdefault("fewshot_map", []).append(few[0])
            final.append(out["anomaly_map"][i] + few[0])
    out["fewshot_map"] = np.stack(out["fewshot_map"])
    out["fewshot_final_map"] = np.stack(final)
    maxima = np.array([np.max(m) for m in final])
    maxima = (maxima - maxima.min()) / (maxima.max() - maxima.min())
    out["fewshot_image_score"] = 0.5 * (out["class_prob"] + maxima)


def main() -> None:
    from harness_common import command_line, commit_of

    official, target, commit = command_line(__doc__, "ByChelsea/VAND-APRIL-GAN")
    work = patched_checkout(official)
    sys.path.insert(0, str(work))  # its open_clip, model.py, prompt_ensemble.py, loss.py
    sys.path.insert(1, str(ROOT))
    import torch
    import torch.nn.functional as F

    import open_clip  # the vendored 2.16
    from loss import BinaryDiceLoss, FocalLoss
    from model import LinearLayer
    from open_clip.model import CLIP, resize_pos_embed
    from prompt_ensemble import encode_text_with_prompt_ensemble
    from tools.golden.golden_clip import IMAGE_SIZE, OPEN_CLIP_CONFIG, golden_clip_state

    assert Path(open_clip.__file__).is_relative_to(work), open_clip.__file__
    config = json.loads(json.dumps(OPEN_CLIP_CONFIG))
    config.pop("quick_gelu")  # as its factory builds OpenAI weights at another size: exact GELU
    config["vision_cfg"]["image_size"] = IMAGE_SIZE
    model = CLIP(**config)
    state = {k: torch.from_numpy(np.array(v)).float() for k, v in golden_clip_state().items()}
    resize_pos_embed(state, model)
    model.load_state_dict(state)
    model.eval()
    torch.manual_seed(0)
    linear = LinearLayer(config["vision_cfg"]["width"], config["embed_dim"], len(FEATURES), "ViT")
    with torch.no_grad():
        for fc, (weight, bias) in zip(linear.fc, linear_weights(config["vision_cfg"]["width"], config["embed_dim"],
                                                                 len(FEATURES))):
            fc.weight.copy_(torch.from_numpy(weight))
            fc.bias.copy_(torch.from_numpy(bias))
    images, masks = golden_images(IMAGE_SIZE)
    images, masks = torch.from_numpy(images), torch.from_numpy(masks)
    with torch.no_grad():
        text = encode_text_with_prompt_ensemble(model, [CLASS], open_clip.get_tokenizer("ViT-L-14-336"), "cpu")[CLASS]
        image_features, patch_tokens = model.encode_image(images, list(FEATURES))
    out = {"images": images.numpy(), "masks": masks.numpy(), "text": text.numpy(),
           "image_features": image_features.numpy()}
    for layer, tokens in zip(FEATURES, patch_tokens):
        out[f"tokens/{layer}"] = tokens[:, 1:].numpy()
    # test.py:168-169: the image probability at the fixed scale 100
    normalised = image_features / image_features.norm(dim=-1, keepdim=True)
    out["class_prob"] = (100.0 * normalised @ text).softmax(dim=-1)[:, 1].numpy()
    # train.py:110-137 / test.py:172-183: per layer the upsampled logits' softmax; the map is the
    # sum of the abnormal channels; the loss sums focal and dice over the layers
    mapped = linear([t.clone() for t in patch_tokens])
    side = int(np.sqrt(mapped[0].shape[1]))
    probs = []
    for layer, tokens in zip(FEATURES, mapped):
        tokens = tokens / tokens.norm(dim=-1, keepdim=True)
        logits = (100.0 * tokens @ text).permute(0, 2, 1).reshape(len(images), 2, side, side)
        probs.append(torch.softmax(F.interpolate(logits, size=IMAGE_SIZE, mode="bilinear", align_corners=True),
                                   dim=1))
        out[f"probs/{layer}"] = probs[-1].detach().numpy()
    out["anomaly_map"] = sum(p[:, 1] for p in probs).detach().numpy()
    few_shot(model, images, out, torch, F)
    focal, dice = FocalLoss(), BinaryDiceLoss()
    loss = sum(focal(p, masks) + dice(p[:, 1, :, :], masks) for p in probs)
    loss.backward()
    out["loss"] = np.array(loss.item())
    for i, fc in enumerate(linear.fc):  # the first 32 output rows of each weight gradient keep the file small
        out[f"grad/{i}/weight"] = fc.weight.grad[:32].numpy()
        out[f"grad/{i}/bias"] = fc.bias.grad.numpy()
    np.savez_compressed(target, **out)
    commit = commit_of(official, commit)
    provenance = {"reference": "ByChelsea/VAND-APRIL-GAN", "commit": commit, "open_clip": "vendored 2.16 (its copy)",
                  "torch": torch.__version__, "class_name": CLASS, "images_seed": IMAGES_SEED,
                  "linear_seed": LINEAR_SEED, "reference_seed": REFERENCE_SEED,
                  "features_list": list(FEATURES), "image_size": IMAGE_SIZE,
                  "patched": "open_clip/transformer.py: .to('cuda') -> .to(x.device) (an unused attention sum)"}
    target.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))


if __name__ == "__main__":
    main()
