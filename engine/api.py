"""Score images from Python: load a model once, then score files, PIL images or numpy arrays in
batches (docs/api.md).

    from engine.api import Detector
    detector = Detector.load("checkpoints/visa_faprompt/final.pth", class_name="bottle",
                             thresholds="results/mvtec_faprompt/results.json")
    result = detector.score(["a.png", "b.png"])
    result.scores, result.maps, result.decisions
    detector = Detector.load(exported="exported/faprompt", runtime="openvino", class_name="bottle")

The settings are test.py's flags (``Detector.load(..., image_size=336, device="cpu")`` is
``test.py --image_size 336 --device cpu``), read by the same parser and checked by the same rules,
and the scores are those of ``test.py --image``: the same prediction, smoothing and fusion. With
Bayes-PFL's min-max fusion, an image score depends on the other images of the same call, as it
does for ``test.py --image``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from datasets.transforms import image_to_tensor, load_image
from engine import cli, configure
from engine.evaluation import category_scores, iterate_categories
from engine.official import apply_official_flags
from engine.test_flags import build_parser
from engine.runtimes import exported_thresholds, load_exported
from engine.testing import load_test_model
from engine.thresholds import Decision, load_thresholds
from utils.errors import UserError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass
class Scores:
    """One :meth:`Detector.score` call: per image (N images, maps S x S at the model's size)."""

    names: List[str]                  # the file path, or "image <i>" for an in-memory image
    scores: np.ndarray                # (N,) fused image scores
    maps: np.ndarray                  # (N, S, S) smoothed anomaly maps
    class_prob: np.ndarray            # (N,) the text-side anomaly probability
    decisions: Optional[np.ndarray]   # (N,) bool: score >= the image threshold (None without one)
    masks: Optional[np.ndarray]       # (N, S, S) bool: map >= the pixel threshold (None without one)


class _Inputs(Dataset):
    """In-memory images as the evaluation loop reads them (no masks, label -1)."""

    def __init__(self, images: Sequence[ImageInput], class_name: str, image_size: int):
        self.images, self.names = [], []
        for i, item in enumerate(images):
            self.images.append(_as_pil(item, i))
            self.names.append(str(item) if isinstance(item, (str, os.PathLike)) else f"image {i}")
        self.class_name, self.image_size = class_name, int(image_size)

    def item_classes(self) -> List[str]:
        return [self.class_name] * len(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return {"image": image_to_tensor(self.images[index], self.image_size),
                "mask": torch.zeros(self.image_size, self.image_size), "label": -1, "cls_name": self.class_name,
                "img_path": self.names[index], "has_mask": False}


def _as_pil(item: ImageInput, index: int) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        array = item
        shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))
        if array.dtype != np.uint8 or not shape_ok:
            raise UserError(f"image {index}: a numpy image must be uint8 of shape (H, W), (H, W, 1), (H, W, 3) or "
                            f"(H, W, 4), got {array.dtype} {array.shape}")
        return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    if isinstance(item, (str, os.PathLike)):
        return load_image(item)
    raise UserError(f"image {index}: expected a file path, a PIL image or a uint8 numpy array, "
                    f"got {type(item).__name__}")


class Detector:
    """A loaded model with its test settings; :meth:`score` scores images with it."""

    def __init__(self, model, method: str, image_size: int, sigma: float, batch_size: Optional[int],
                 class_name: str, device: torch.device, decision: Decision):
        self.model, self.method, self.image_size, self.sigma = model, method, int(image_size), sigma
        self.batch_size, self.class_name, self.device, self.decision = batch_size, class_name, device, decision

    @classmethod
    def load(cls, checkpoint: Optional[Union[str, os.PathLike]] = None, *, method: Optional[str] = None,
             class_name: str = "object", thresholds: Optional[Union[str, os.PathLike]] = None,
             threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
             **flags: Any) -> "Detector":
        """A checkpoint of train.py or an official one (or a training-free ``method`` of the registry), with
        test.py's ``flags`` as keyword arguments (``image_size=336``, ``device="cpu"``,
        ``batch_size=4``, ...); ``exported="exported/faprompt"`` (with ``runtime`` and
        ``precision``, as test.py's flags) loads an export of export.py instead of a checkpoint.
        ``thresholds``: a results.json whose ``class_name`` thresholds decide (for every call,
        whatever class it names; an export's stored ones by default); ``threshold`` /
        ``pixel_threshold`` override them."""
        argv = ["--image", "."]
        for flag, value in (("checkpoint_path", checkpoint), ("method", method), ("class_name", class_name),
                            *flags.items()):
            if value is None or value is False:
                continue
            argv.append(f"--{flag}")
            if value is not True:
                argv += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        try:
            args = build_parser().parse_args(argv)
        except UserError as err:  # an unknown setting or a bad value, worded for the command line
            raise UserError(f"Detector.load: {str(err).split(' (see ')[0]}; it takes test.py's flags "
                            "(python test.py --help)") from None
        apply_official_flags(args, "test")
        if args.exported:  # an export folder (export.py) on onnxruntime or OpenVINO
            method_name, config, backbone_cfg, manifest, _ = configure.configure_exported(args)
            device, model = torch.device("cpu"), load_exported(args, config, manifest)
            stored = exported_thresholds(manifest, class_name)
        else:
            method_name, config, backbone_cfg, ckpt, _ = configure.configure_test(args)
            device = cli.resolve_device(args.device)
            model, stored = load_test_model(method_name, config, backbone_cfg, ckpt, args.seed, device), Decision()
        decision = load_thresholds(str(thresholds), class_name) if thresholds else stored
        if threshold is not None:
            decision.image = threshold
        if pixel_threshold is not None:
            decision.pixel = pixel_threshold
        return cls(model, method_name, backbone_cfg.image_size, config.sigma, args.batch_size, class_name, device,
                   decision)

    @torch.no_grad()
    def score(self, images: Union[ImageInput, Sequence[ImageInput]], class_name: Optional[str] = None) -> Scores:
        """Score ``images`` (one, or a list or tuple of paths, PIL images, uint8 arrays) as one batch
        of ``class_name`` (default: the one given to :meth:`load`). Each call restarts the
        model's seeded test-time noise, so it scores as a fresh ``test.py --image`` run would."""
        if not isinstance(images, (list, tuple)):  # one image (anything else is refused per item)
            images = [images]
        if len(images) == 0:
            raise UserError("no images to score")
        inputs = _Inputs(images, class_name or self.class_name, self.image_size)
        batch = self.batch_size or len(inputs)
        cat = next(iterate_categories(self.model, inputs, self.device, batch, 0, self.sigma, desc="score"))
        scores = category_scores(cat, self.model.score_rule).numpy()
        maps = cat.maps.numpy().astype(np.float32)
        decisions = None if self.decision.image is None else scores >= self.decision.image
        masks = None if self.decision.pixel is None else maps >= np.float64(self.decision.pixel)
        return Scores(list(cat.paths), scores, maps, np.asarray(cat.class_prob), decisions, masks)
