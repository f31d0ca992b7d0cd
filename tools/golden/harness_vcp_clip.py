"""Record the official VCP-CLIP code (xiaozhen228/VCP-CLIP) on the golden tiny CLIP: the
reference arrays of tests/test_vcp_clip.py.

    python tools/golden/harness_vcp_clip.py --official /path/to/VCP-CLIP \
        --out tests/golden/vcp_clip_official.npz

The checkout is copied to a temporary folder and one line of its ``models/transformer.py`` is
changed there: ``VisionTransformer.forward`` sums block 12's attention into an unused tensor made
with ``.to('cuda')``, which fails without a GPU; it is made ``.to(x.device)``. Everything else
runs as shipped, in this process: ``Load_CLIP`` (its CLIP with exact GELU, the bicubic position
grid, the extra ``<|class|>`` word), its tokenizer, ``Context_Prompting`` (Pre-VCP),
``Zero_Parameter`` (Post-VCP), ``Prompt_Ensemble`` and the losses. ``Load_CLIP`` reads an OpenAI
TorchScript file; here ``torch.jit.load`` hands it the golden CLIP's state dict instead.

The trained parts get their official initialisation under ``torch.manual_seed`` and are stored
in the official checkpoint layout (``ckpt/...``), which the test loads through our converter.
test.py's and train.py's inline steps (both branches' maps, their means, the image score, the
loss sum) and its ``LinearLayer`` (defined in its scripts, which import albumentations) are not
importable; they are spelled out below with their line numbers. The training step runs with the
CLIP in eval mode, so the prompt dropout (0.1, random) is off.
"""
from __future__ import annotations

import json
import re
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

IMAGES_SEED = 20261210
TORCH_SEED = 20261211
FEATURES = (6, 12, 18, 24)
PROMPT_LEN, DEEP_PROMPT_LEN = 2, 1
TOPK = 2000


def golden_images(size: int):
    """[3, 3, S, S] images and [3, S, S] masks (the last image normal) from a frozen stream."""
    rng = np.random.RandomState(IMAGES_SEED)
    images = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    masks = np.zeros((3, size, size), np.float32)
    masks[0, 6:22, 8:30] = 1
    masks[1, 28:44, 4:16] = 1
    return images, masks


def patched_checkout(official: Path) -> Path:
    from harness_common import copy_checkout, rewrite

    work = copy_checkout(official, "vcp_clip", "figures", "dataset")
    rewrite(work / "models" / "transformer.py", re.escape(".to('cuda')"), ".to(x.device)", 1,
            "unused .to('cuda') to patch")
    for package in ("models", "utils"):  # regular packages, so that ours (also models/, utils/) never win
        (work / package / "__init__.py").touch()
    return work


def main() -> None:
    from harness_common import command_line, commit_of

    official, target, commit = command_line(__doc__, "xiaozhen228/VCP-CLIP")
    work = patched_checkout(official)
    os.chdir(work)  # its tokenizer opens ./models/bpe_simple_vocab_16e6.txt.gz
    sys.path.insert(0, str(work))  # its models/ and utils/ (named as ours: nothing of ours is imported)
    sys.path.insert(1, str(HERE))  # golden_clip (NumPy only)
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter
    from torch import nn

    from models.model_CLIP import Load_CLIP, tokenize
    from models.post_vcp import Zero_Parameter
    from models.pre_vcp import Context_Prompting
    from models.prompt_ensemble import Prompt_Ensemble
    from golden_clip import IMAGE_SIZE, OPEN_CLIP_CONFIG, TEXT_LAYERS, golden_clip_state
    from utils.loss import BinaryDiceLoss, FocalLoss

    import models.model_CLIP as model_clip
    assert Path(model_clip.__file__).is_relative_to(work), model_clip.__file__
    state = {k: torch.from_numpy(np.array(v)) for k, v in golden_clip_state().items()}

    class Scripted:  # what Load_CLIP reads from torch.jit.load
        def eval(self):
            return self

        def state_dict(self):
            return dict(state)

    torch.jit.load = lambda *a, **k: Scripted()
    Path("golden.pt").touch()  # opened, then read through the torch.jit.load above
    torch.manual_seed(TORCH_SEED)
    deep_layers = TEXT_LAYERS - 1  # its default 11 for a 12-block text tower: every block after the first
    model, _, _ = Load_CLIP(IMAGE_SIZE, "golden.pt", device="cpu", deep_prompt_len=DEEP_PROMPT_LEN,
                            total_d_layer_len=deep_layers)
    model.eval()
    configs = json.loads(json.dumps(OPEN_CLIP_CONFIG))
    width, embed = configs["vision_cfg"]["width"], configs["embed_dim"]
    # train.py:39-48: LinearLayer, one nn.Linear per listed block on the tokens without CLS
    linear = nn.ModuleList([nn.Linear(width, embed) for _ in FEATURES])
    pre_vcp = Context_Prompting(configs, cla_len=PROMPT_LEN)
    post_vcp = Zero_Parameter(dim_v=width, dim_t=configs["text_cfg"]["width"], dim_out=width)
    ensemble = Prompt_Ensemble(PROMPT_LEN, tokenize)
    prompt_names = [n for n, _ in model.named_parameters() if "prompt" in n]  # train.py's _freeze_stages
    checkpoint = {"trainable_linearlayer": {f"fc.{k}": v for k, v in linear.state_dict().items()},
                  "New_Lan_Embed": pre_vcp.state_dict(), "Zero_try": post_vcp.state_dict(),
                  **{n: p.detach() for n, p in model.named_parameters() if n in prompt_names}}
    out = {}
    for part in ("trainable_linearlayer", "New_Lan_Embed", "Zero_try"):
        for key, value in checkpoint[part].items():
            out[f"ckpt/{part}/{key}"] = value.numpy()
    for name in prompt_names:  # its unused prompt_text_projection (W×D) only by shape: the file stays small
        value = checkpoint[name].numpy()
        out[f"ckpt/{name}"] = value if name != "prompt_text_projection" else np.array(value.shape)

    images, masks = (torch.from_numpy(a) for a in golden_images(IMAGE_SIZE))
    out["images"], out["masks"] = images.numpy(), masks.numpy()

    def branches(image_features, patch_tokens):
        """test.py:141-184 / train.py:201-233: the class tokens, the text pair and, per block, both
        branches' two-channel maps."""
        class_token = pre_vcp.before_extract_feat(patch_tokens, image_features.clone(), use_global=True)
        text = ensemble.forward_ensemble(model, class_token, "cpu").permute(0, 2, 1)
        post, lin = [], []
        for tokens in patch_tokens:
            dense = tokens[:, 1:, :].clone()
            dense = dense / dense.norm(dim=-1, keepdim=True)
            _, attended = post_vcp(text.permute(0, 2, 1), dense)
            logits = post_vcp.prompt_temp_l1.exp() * dense @ attended.permute(0, 2, 1)
            side = int(np.sqrt(logits.shape[1]))
            post.append(torch.softmax(F.interpolate(logits.permute(0, 2, 1).view(-1, 2, side, side),
                                                    size=IMAGE_SIZE, mode="bilinear", align_corners=True), dim=1))
        for mapped in [fc(t[:, 1:, :]) for fc, t in zip(linear, patch_tokens)]:
            mapped = mapped / mapped.norm(dim=-1, keepdim=True)
            logits = pre_vcp.prompt_temp.exp() * mapped @ text
            side = int(np.sqrt(logits.shape[1]))
            lin.append(torch.softmax(F.interpolate(logits.permute(0, 2, 1).view(-1, 2, side, side),
                                                   size=IMAGE_SIZE, mode="bilinear", align_corners=True), dim=1))
        return class_token, text, lin, post

    with torch.no_grad():
        image_features, patch_tokens = model.encode_image(images, list(FEATURES))
        class_token, text, lin, post = branches(image_features, patch_tokens)
    out["image_features"] = image_features.numpy()
    for layer, tokens in zip(FEATURES, patch_tokens):
        out[f"tokens/{layer}"] = tokens[:, 1:].numpy()
    out["class_tokens"] = class_token.numpy()
    out["text"] = text.permute(0, 2, 1).numpy()  # [N, 2, D]
    for layer, a, b in zip(FEATURES, lin, post):
        out[f"linear/{layer}"], out[f"post/{layer}"] = a.numpy(), b.numpy()
    # test.py:179-182, 206-220: block means of the abnormal channel; map 0.2·linear + 0.8·post,
    # blurred with σ 8; image score min-max(top-2000 mean of each branch, summed)
    linear_map = np.mean([a[:, 1].numpy() for a in lin], axis=0)
    post_map = np.mean([b[:, 1].numpy() for b in post], axis=0)
    out["linear_map"], out["post_map"] = linear_map, post_map
    out["map"] = 0.2 * linear_map + 0.8 * post_map
    out["blurred_map"] = gaussian_filter(out["map"], sigma=8, axes=(1, 2))
    top = [np.partition(m.reshape(len(m), -1), kth=-TOPK)[:, -TOPK:].mean(1) for m in (linear_map, post_map)]
    score = top[0] + top[1]
    out["map_score"] = score
    out["image_score"] = (score - score.min()) / (score.max() - score.min())

    # train.py:195-249: one step's loss (focal + dice per block and branch) and gradients
    focal, dice = FocalLoss(), BinaryDiceLoss()
    with torch.no_grad():
        image_features, patch_tokens = model.encode_image(images, list(FEATURES))
    _, _, lin, post = branches(image_features, patch_tokens)
    loss = sum(focal(p, masks) + dice(p[:, 1], masks) for p in post) + \
        sum(focal(p, masks) + dice(p[:, 1], masks) for p in lin)
    loss.backward()
    out["loss"] = np.array(loss.item())
    grads = {**{f"linear/{i}/{k}": p.grad for i, fc in enumerate(linear) for k, p in fc.named_parameters()},
             **{f"New_Lan_Embed/{k}": p.grad for k, p in pre_vcp.named_parameters()},
             **{f"Zero_try/{k}": p.grad for k, p in post_vcp.named_parameters()},
             **{n: p.grad for n, p in model.named_parameters() if n in prompt_names and p.grad is not None}}
    for key, grad in grads.items():
        out[f"grad/{key}"] = grad[:32].numpy() if grad.dim() > 1 and grad.shape[0] > 32 else grad.numpy()
    np.savez_compressed(target, **out)
    commit = commit_of(official, commit)
    provenance = {"reference": "xiaozhen228/VCP-CLIP", "commit": commit, "torch": torch.__version__,
                  "images_seed": IMAGES_SEED, "torch_seed": TORCH_SEED, "features_list": list(FEATURES),
                  "prompt_len": PROMPT_LEN, "deep_prompt_len": DEEP_PROMPT_LEN, "total_d_layer_len": deep_layers,
                  "image_size": IMAGE_SIZE, "topk": TOPK,
                  "patched": "models/transformer.py: .to('cuda') -> .to(x.device) (an unused attention sum)",
                  "not_trained": sorted(n for n in prompt_names if n.replace(".", "/") not in
                                        {k.replace(".", "/") for k in grads})}
    target.with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))


if __name__ == "__main__":
    main()
