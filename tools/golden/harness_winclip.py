"""Record anomalib's WinCLIP (``anomalib.models.image.winclip.torch_model.WinClipModel``) on the
golden tiny CLIP: the reference arrays of tests/test_winclip.py.

    python tools/golden/harness_winclip.py --out tests/golden/winclip_anomalib.npz

Needs anomalib (tested with 2.7.0 from the package index, installed without its optional
extras) and open_clip; nothing of anomalib is copied here. Its model downloads its CLIP in
``__init__``; here ``open_clip.create_model_and_transforms`` is pointed at the golden CLIP (32 px,
its pretrained size, so no position-grid interpolation) for the duration of the build.

Two runs on the same three images of class "bottle", each zero-shot and few-shot (WinCLIP+,
two reference images from the same frozen stream):

* ``as_is``: anomalib as it runs on open_clip >= 2.21, whose transformers are batch-first:
  anomalib passes its windows sequence-first, so each window's tokens attend across the
  windows (and images) instead of within the window;
* ``seq_first``: anomalib with its windows given to the transformer as it expects (an adapter
  takes its sequence-first tensor to open_clip's batch-first call and back) — the paper's
  window encoding, which ``--window_attention window`` follows.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.golden.golden_clip import GOLDEN_MODEL, PRETRAINED_SIZE, register_golden_model, write_golden_clip  # noqa: E402

CLASS = "bottle"
IMAGES_SEED = 20261206


def golden_images() -> np.ndarray:
    """[5, 3, 32, 32] normalised-scale images from a frozen NumPy stream: three test images, then
    two few-shot references."""
    return np.random.RandomState(IMAGES_SEED).standard_normal((5, 3, PRETRAINED_SIZE, PRETRAINED_SIZE)).astype(
        np.float32)


def load_golden_clip(path: Path):
    import open_clip

    clip = open_clip.create_model(GOLDEN_MODEL)
    state = torch.load(path, weights_only=True)
    clip.load_state_dict({k: v.float() for k, v in state.items()
                          if k not in ("input_resolution", "context_length", "vocab_size")})
    return clip.eval()


class SequenceFirst(torch.nn.Module):
    """open_clip's batch-first transformer called with a sequence-first tensor, as older
    open_clip took it."""

    def __init__(self, transformer):
        super().__init__()
        self.inner = transformer

    def forward(self, x):
        return self.inner(x.permute(1, 0, 2)).permute(1, 0, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import anomalib
    import open_clip
    from anomalib.models.image.winclip import torch_model

    work = Path(tempfile.mkdtemp())
    register_golden_model(work)
    checksum = write_golden_clip(work / "golden_clip.pt")
    clip = load_golden_clip(work / "golden_clip.pt")
    original = open_clip.create_model_and_transforms
    open_clip.create_model_and_transforms = lambda *a, **k: (clip, None, None)
    try:
        model = torch_model.WinClipModel(class_name=CLASS, scales=(2, 3)).eval()
    finally:
        open_clip.create_model_and_transforms = original
    everything = torch.from_numpy(golden_images())
    images, references = everything[:3], everything[3:]
    out = {"images": images.numpy(), "references": references.numpy(), "text": model.text_embeddings.numpy()}
    for run in ("as_is", "seq_first"):
        visual = model.clip.visual
        if run == "seq_first":
            inner = visual.transformer
            window_features = model._get_window_embeddings

            def adapted(feature_map, masks, inner=inner, window_features=window_features):
                visual.transformer = SequenceFirst(inner)
                try:
                    return window_features(feature_map, masks)
                finally:
                    visual.transformer = inner

            model._get_window_embeddings = adapted
        with torch.no_grad():
            image_embeddings, windows, _ = model.encode_image(images)
            result = model(images)
        out[f"{run}/image_embeddings"] = image_embeddings.numpy()
        for scale, window in zip((2, 3), windows):
            out[f"{run}/windows/{scale}"] = window.numpy()
        out[f"{run}/image_score"] = result.pred_score.numpy()
        out[f"{run}/anomaly_map"] = result.anomaly_map.numpy()
        with torch.no_grad():
            model.setup(reference_images=references)  # WinCLIP+: the references' memory
            few = model(images)
        model.k_shot = 0  # back to zero-shot for the next run
        out[f"{run}/fewshot/image_score"] = few.pred_score.numpy()
        out[f"{run}/fewshot/anomaly_map"] = few.anomaly_map.numpy()
    np.savez_compressed(args.out, **out)
    provenance = {"reference": f"anomalib {anomalib.__version__} WinClipModel (package index)",
                  "open_clip": open_clip.__version__, "torch": torch.__version__, "class_name": CLASS,
                  "images_seed": IMAGES_SEED, "test_images": 3, "references": 2, "clip_checksum": checksum,
                  "scales": [2, 3],
                  "image_size": PRETRAINED_SIZE}
    Path(args.out).with_suffix(".json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance, indent=2))


if __name__ == "__main__":
    main()
