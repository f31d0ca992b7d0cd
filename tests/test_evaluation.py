"""The category buffer the evaluation fills: maps exist once, in dataset order."""
from __future__ import annotations

import torch

from engine.evaluation import CategoryOutputs
from engine.results import evaluate_category
from utils.metrics import evaluate_pixels


def _batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, 16, 16, generator=g) > 0.8).float()
    return torch.rand(n, 16, 16, generator=g) + masks, masks


def test_batches_fill_one_buffer_in_order():
    cat = CategoryOutputs("x", expected=5)
    batches = [_batch(2, 0), _batch(3, 1)]
    cat.add(*batches[0], [True] * 2, [0, 1], [0.1, 0.2], [0.3, 0.4], ["a", "b"])
    first = cat.maps.data_ptr()
    cat.add(*batches[1], [True] * 3, [1, 0, 1], [0.5] * 3, [0.6] * 3, ["c", "d", "e"])
    assert cat.maps.data_ptr() == first  # filled in place, never copied
    assert torch.equal(cat.maps, torch.cat([b[0] for b in batches]))
    assert cat.masks.dtype == torch.bool and torch.equal(cat.masks, torch.cat([b[1] for b in batches]) > 0.5)
    assert cat.paths == list("abcde") and cat.labels == [0, 1, 1, 0, 1] and cat.count == 5


def test_more_images_than_expected_keep_the_earlier_ones():
    cat = CategoryOutputs("x", expected=1)
    maps, masks = _batch(4, 2)
    for i in range(4):
        cat.add(maps[i:i + 1], masks[i:i + 1], [True], [i % 2], [0.0], [0.0], [str(i)])
    assert torch.equal(cat.maps, maps) and torch.equal(cat.masks, masks > 0.5)


def test_pixel_metrics_leave_out_images_without_masks():
    maps, masks = _batch(4, 3)
    cat = CategoryOutputs("x", expected=4)
    cat.add(maps, masks, [True, False, True, True], [1, 1, 0, 1], [0.0] * 4, [0.0] * 4, list("abcd"))
    result = evaluate_category(cat, torch.zeros(4, dtype=torch.float64), ("pixel",))
    keep = torch.tensor([0, 2, 3])
    assert result.metrics == {f"pixel_{k}": v for k, v in evaluate_pixels(masks[keep], maps[keep]).metrics.items()}
