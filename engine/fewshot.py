"""Few-shot normal references: one memory bank per category, nearest-neighbour scoring.

The rules (README "Few-shot") follow APRIL-GAN's few-shot protocol (CVPR 2023 VAND challenge;
the official FAPrompt, Bayes-PFL and AnomalyCLIP code has no few-shot mode):

* references: K normal images per category, from the ``train`` split of ``meta.json``
  (a ``--shot_seed`` permutation of the sorted paths, first K, so K = 1 ⊂ 4 ⊂ 16) or from
  ``--reference_path``;
* bank: for every entry of ``model.fewshot_tokens`` (one per layer the method's pixel head
  reads; WinCLIP+: its patch tokens and each scale's windows) the L2-normalised tokens of all
  references, [K·T, D];
* few-shot map: per test token and entry, 1 − the largest cosine similarity to the bank
  (nearest neighbour), mapped onto the patch grid by ``model.fewshot_grid`` (patches as they
  are; WinCLIP's windows by its harmonic aggregation); the mean over entries, upsampled
  bilinearly as the method upsamples its zero-shot map;
* fusion: map = zero-shot map + w · few-shot map before the test-time Gaussian blur (the
  blur is linear, so this equals blurring both), and image score = zero-shot image score +
  w · the few-shot map's maximum over the grid (w = ``--shot_weight``).

This is the score rule ``fewshot="add"`` (models.scoring.ScoreRule), where w does not depend
on the number of layers. APRIL-GAN's own rule (``fewshot="final_max"``, its preset) sums the
entries' maps instead of averaging them and scores images by 0.5·(p_cls + min-max over the
category of each image's final-map maximum), as its test.py does.

Cost: the bank of a category is built once, when its first test batch arrives, and dropped
when the next category starts (at 518 px on ViT-L, K = 16: 21 904 rows per entry, 342 MiB
for four 1024-wide layers). The test patches of each image are compared with the bank in row
chunks whose similarity block holds at most :data:`SIMILARITY_ELEMENTS` values (one image
against that bank: 1369 × 21 904, one chunk); each image is scored on its own, so results do
not depend on the batch size. ``predict`` and ``fewshot_tokens`` read the same
``encode_images`` features, so a test batch runs the image tower once.
"""
from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from datasets.meta import ImageList, MetaDataset, load_meta
from datasets.scan import list_images
from datasets.transforms import image_to_tensor, load_image
from utils.errors import UserError

log = logging.getLogger("zsad.fewshot")

SIMILARITY_ELEMENTS = 1 << 25  # values of one similarity block: 128 MiB in fp32
ASPECT_TOLERANCE = 0.05  # relative; images are resized to a square, so only the framing matters


@dataclass
class References:
    """The chosen reference images per category (in selection order) and where they came from."""

    by_category: Dict[str, List[Path]]
    source: str

    def as_json(self, root: Optional[Path] = None) -> Dict[str, List[str]]:
        """Paths per category, relative to ``root`` where they lie below it."""
        def show(path: Path) -> str:
            if root is not None:
                with contextlib.suppress(ValueError):
                    return str(path.resolve().relative_to(root.resolve()))
            return str(path)

        return {cat: [show(p) for p in paths] for cat, paths in self.by_category.items()}


def draw(paths: Sequence[Path], k: int, seed: int, category: str) -> List[Path]:
    """The first k of a (seed, category)-seeded permutation of the sorted paths."""
    order = sorted(paths)
    random.Random(f"{seed}:{category}").shuffle(order)
    return order[:k]


def train_references(dataset: MetaDataset, k: int, seed: int) -> References:
    """K normal images per category of ``dataset`` from the train split of its meta.json."""
    train = load_meta(dataset.root).get("train") or {}
    chosen: Dict[str, List[Path]] = {}
    for cat in dataset.classes:
        try:
            normal = [Path(dataset.abs_path(r["img_path"])) for r in train.get(cat) or [] if int(r["anomaly"]) == 0]
        except (TypeError, KeyError, ValueError, AttributeError):
            raise UserError(f"{dataset.meta_path}: the train records of '{cat}' are malformed; regenerate meta.json")
        if not normal:
            raise UserError(f"--k_shot {k}: category '{cat}' has no normal images in the train split of "
                            f"{dataset.meta_path}; pass --reference_path DIR (normal images in DIR/{cat}/)")
        if len(normal) < k:
            raise UserError(f"--k_shot {k}: category '{cat}' has only {len(normal)} normal train images in "
                            f"{dataset.meta_path}; lower --k_shot or pass --reference_path")
        chosen[cat] = draw(normal, k, seed, cat)
    return References(chosen, f"train split of {dataset.meta_path}")


def folder_references(folder: str, categories: Sequence[str], k: int, seed: int) -> References:
    """K images per category from ``folder``: ``folder/<category>/`` (searched recursively),
    or, for a single category without such a sub-folder, every image below ``folder``."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f"--reference_path {folder}: no such folder")
    chosen: Dict[str, List[Path]] = {}
    for cat in categories:
        where = root / cat
        if not where.is_dir():
            if len(categories) > 1:
                raise UserError(f"--reference_path {folder} has no sub-folder '{cat}/'; with several "
                                "categories each needs DIR/<category>/ of normal images")
            where = root
        files = list_images(where, recursive=True)
        if not files:
            raise UserError(f"--reference_path {where}: no image files (png, jpg, bmp, tif) for category '{cat}'")
        if len(files) < k:
            raise UserError(f"--k_shot {k}: --reference_path {where} holds only {len(files)} images for "
                            f"category '{cat}'; lower --k_shot or add references")
        chosen[cat] = draw(files, k, seed, cat)
    return References(chosen, f"--reference_path {root}")


def image_sizes(paths: Sequence[Path | str]) -> Set[Tuple[int, int]]:
    """Distinct (width, height) of image files, read from their headers."""
    sizes = set()
    for path in paths:
        with contextlib.suppress(UnidentifiedImageError, OSError, ValueError), Image.open(path) as img:
            sizes.add(img.size)
    return sizes


def check_references(refs: References, targets: Dict[str, Set[Tuple[int, int]]]) -> None:
    """Every reference must decode and have the aspect ratio of an image it is compared with
    (``targets``: the sizes of each category's test images). A different resolution is fine:
    every image is resized to the model's square input; a different framing is not."""
    for cat, paths in refs.by_category.items():
        for path in paths:
            try:
                with Image.open(path) as img:
                    img.load()
                    width, height = img.size
            except (UnidentifiedImageError, OSError, ValueError) as err:
                raise UserError(f"reference image {path} ({refs.source}, category '{cat}') cannot be read "
                                f"({err}); replace it or choose others") from None
            sizes = targets.get(cat) or set()
            ratio = width / height
            if sizes and not any(abs(ratio - w / h) <= ASPECT_TOLERANCE * w / h for w, h in sizes):
                shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
                raise UserError(f"reference image {path} is {width}x{height}, the '{cat}' images it is compared "
                                f"with are {shown}: references must be framed like them (same aspect ratio); "
                                "crop or choose others")


# ---------------------------------------------------------------------- bank and distances
@dataclass
class MemoryBank:
    """One category's bank: per entry of ``fewshot_tokens``, normalised tokens [K·P, D]."""

    entries: List[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(e.numel() * e.element_size() for e in self.entries)


def build_bank(model, paths: Sequence[Path], image_size: int, batch_size: int, device,
               desc: str = "references") -> MemoryBank:
    """The bank of the reference images ``paths`` (encoded ``batch_size`` at a time)."""
    def batches():
        with tqdm(total=len(paths), desc=desc, unit="img", leave=False, dynamic_ncols=True) as bar:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start:start + batch_size]
                yield torch.stack([image_to_tensor(load_image(p), image_size) for p in chunk]).to(device)
                bar.update(len(chunk))

    return bank_from_images(model, batches())


def bank_from_images(model, batches: Iterable[torch.Tensor]) -> MemoryBank:
    """The bank of reference image batches [n, 3, S, S] already decoded: per entry of
    ``model.fewshot_tokens``, the normalised tokens of every reference, [K·T, D]."""
    parts: List[List[torch.Tensor]] = []
    for images in batches:
        with torch.no_grad():
            entries = model.fewshot_tokens(images)  # per entry ([n, T, D], align_corners)
        for index, (tokens, _) in enumerate(entries):
            if index == len(parts):
                parts.append([])
            parts[index].append(F.normalize(tokens.float(), dim=-1).flatten(0, 1))
    return MemoryBank([torch.cat(p) for p in parts])


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor,
                     max_elements: int = SIMILARITY_ELEMENTS) -> torch.Tensor:
    """1 − the largest cosine similarity to the bank: queries [M, D], bank [B, D], both
    normalised → [M]. The bank is read in row chunks of at most ``max_elements`` similarities."""
    rows = max(1, max_elements // max(1, queries.shape[0]))
    best = torch.full((queries.shape[0],), -float("inf"), device=queries.device)
    for start in range(0, bank.shape[0], rows):
        best = torch.maximum(best, (queries @ bank[start:start + rows].T).amax(1))
    return 1 - best


@dataclass
class FewShotOutput:
    """map: [N, S, S] few-shot map (before the blur); score: [N] its maximum over the grid."""

    map: torch.Tensor
    score: torch.Tensor


# ---------------------------------------------------------------------- the scorer
class FewShotScorer:
    """Few-shot maps and scores of test batches against each category's reference bank."""

    def __init__(self, model, references: References, weight: float, image_size: int, batch_size: int,
                 device, max_elements: int = SIMILARITY_ELEMENTS):
        self.model, self.references, self.weight = model, references, float(weight)
        self.image_size, self.batch_size, self.device = image_size, batch_size, device
        self.max_elements = max_elements
        self._banks: Dict[str, MemoryBank] = {}

    def bank(self, category: str) -> MemoryBank:
        """The category's bank, built on its first use."""
        if category not in self._banks:
            if category not in self.references.by_category:
                raise UserError(f"no few-shot references for category '{category}' ({self.references.source})")
            bank = build_bank(self.model, self.references.by_category[category], self.image_size,
                              self.batch_size, self.device, desc=f"references of {category}")
            log.info("few-shot bank of %s: %d references, %s rows x %s dims (%.1f MiB)", category,
                     len(self.references.by_category[category]), "/".join(str(e.shape[0]) for e in bank.entries),
                     "/".join(str(e.shape[1]) for e in bank.entries), bank.nbytes / 2 ** 20)
            self._banks[category] = bank
        return self._banks[category]

    def use_bank(self, category: str, bank: MemoryBank) -> None:
        """Score ``category`` against a bank built elsewhere (``bank_from_images``)."""
        self._banks[category] = bank

    def banks(self, class_names: Sequence[str]) -> Dict[str, MemoryBank]:
        """The banks of a batch's categories. A dataset comes category by category, so the
        banks of the other categories are dropped."""
        wanted = list(dict.fromkeys(class_names))
        self._banks = {c: b for c, b in self._banks.items() if c in wanted}
        return {c: self.bank(c) for c in wanted}

    def score(self, images: Optional[torch.Tensor], class_names: Sequence[str], features=None) -> FewShotOutput:
        """Few-shot map [N, S, S] and score [N] of images [N, 3, S, S] (or of their
        ``features``, the model's ``encode_images`` output)."""
        banks = self.banks(class_names)
        with torch.no_grad():
            entries = self.model.fewshot_tokens(images, features=features)
        n = entries[0][0].shape[0]
        grids = []
        for index, (tokens, _) in enumerate(entries):
            distances = torch.empty(n, tokens.shape[1], device=tokens.device)
            for i, name in enumerate(class_names):  # normalised per image: no batch-sized copy
                queries = F.normalize(tokens[i].float(), dim=-1)
                distances[i] = nearest_distance(queries, banks[name].entries[index], self.max_elements)
            grids.append(self.model.fewshot_grid(index, distances))  # [N, P]: windows onto patches
        grids = torch.stack(grids)
        p = grids.shape[-1]
        side, size = int(round(p ** 0.5)), self.image_size
        flags = [align for _, align in entries]
        maps = 0
        for flag in sorted(set(flags)):  # one upsampling per head: it is linear
            group = grids[[i for i, f in enumerate(flags) if f == flag]]
            up = F.interpolate(group.sum(0).view(n, 1, side, side), size=(size, size), mode="bilinear",
                               align_corners=flag)
            maps = maps + up[:, 0]
        if self.model.score_rule.fewshot == "final_max":  # its test.py sums the layers' maps
            return FewShotOutput(maps, grids.sum(0).amax(1))
        return FewShotOutput(maps / len(entries), grids.mean(0).amax(1))

    def predict(self, images: Optional[torch.Tensor], class_names: Sequence[str], features=None):
        """(zero-shot Prediction, FewShotOutput) of one batch from one image-tower pass
        (``features``: precomputed ``encode_images`` output, e.g. of a feature cache)."""
        with torch.no_grad():
            feats = features if features is not None else self.model.encode_images(images)
            pred = self.model.predict(images, class_names, features=feats)
            extra = self.score(images, class_names, feats)
        return pred, extra


# ---------------------------------------------------------------------- command line
def select_references(k: int, seed: int, reference_path: Optional[str], weight: float,
                      dataset: MetaDataset | ImageList) -> Optional[References]:
    """The checked references of a test run (None for zero-shot): of the categories of a
    ``MetaDataset``, or of the class name of an ``ImageList`` (``--image``, which needs
    ``--reference_path``)."""
    if k < 0:
        raise UserError(f"--k_shot {k}: must be 0 (zero-shot) or more")
    if k == 0:
        if reference_path:
            raise UserError("--reference_path needs --k_shot K (the number of references per category)")
        return None
    if weight < 0:
        raise UserError(f"--shot_weight {weight}: must be 0 or more")
    if isinstance(dataset, ImageList):
        if not reference_path:
            raise UserError("--image with --k_shot needs --reference_path DIR (normal images of --class_name)")
        refs = folder_references(reference_path, [dataset.class_name], k, seed)
        targets = {dataset.class_name: image_sizes(dataset.paths)}
    else:
        refs = (folder_references(reference_path, dataset.classes, k, seed) if reference_path
                else train_references(dataset, k, seed))
        targets = {cat: image_sizes([dataset.abs_path(r["img_path"]) for r in dataset.records if r["cls_name"] == cat])
                   for cat in dataset.classes}
    check_references(refs, targets)
    log.info("few-shot: %d reference(s) per category from the %s", k, refs.source)
    for cat, paths in refs.by_category.items():
        log.info("references of %s: %s", cat, ", ".join(p.name for p in paths))
    return refs
