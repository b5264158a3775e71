"""Sharded grid walks: shards aligned to the fixed batches, concatenated, equal one unsharded walk
bit for bit (the per-batch and per-point seeds use whole-set indices)."""

import pytest
import torch
from torch import nn

from bench.attacks import make_attack
from bench.evaluate import grid_walk

GRID = [0.0, 2 / 255, 4 / 255, 8 / 255, 0.1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


@pytest.mark.parametrize("name", ["pgd", "fgsm"])
def test_shards_equal_unsharded_walk(name: str) -> None:
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 3, 8, 8, generator=g)
    y = model(x).argmax(1)  # all clean-correct, so every point is attacked
    attack = make_attack(name)
    whole = grid_walk(model, attack, x, y, GRID, batch_size=8, seed=5)
    parts = [grid_walk(model, attack, x[lo:lo + 16], y[lo:lo + 16], GRID, batch_size=8, seed=5,
                       first_batch=lo // 8) for lo in (0, 16, 32)]
    for i, eps in enumerate(GRID):
        merged = torch.cat([p.flags[i] for p in parts])
        assert torch.equal(merged, whole.flags[i]), eps
