"""Sharded grid walks: shards aligned to the fixed batches, concatenated, equal one unsharded walk
bit for bit (the per-batch and per-point seeds use whole-set indices), for every walk."""

import pytest
import torch
from torch import nn

from bench.attacks import make_attack
from bench.evaluation.walk import WALKS, grid_walk

GRID = [0.0, 2 / 255, 4 / 255, 8 / 255, 0.1]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10)
    ).eval()


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("name", ["pgd", "fgsm"])
def test_shards_equal_unsharded_walk(name: str, walk: str) -> None:
    model = _model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 3, 8, 8, generator=g)
    y = model(x).argmax(1)  # all clean-correct, so every point is attacked
    attack = make_attack(name)
    whole = grid_walk(model, attack, x, y, GRID, batch_size=8, seed=5, walk=walk)
    parts = [
        grid_walk(
            model,
            attack,
            x[lo : lo + 16],
            y[lo : lo + 16],
            GRID,
            batch_size=8,
            seed=5,
            first_batch=lo // 8,
            walk=walk,
        )
        for lo in (0, 16, 32)
    ]
    for i, eps in enumerate(GRID):
        merged = torch.cat([p.flags[i] for p in parts])
        assert torch.equal(merged, whole.flags[i]), eps
    broken = [int((~f).sum()) for f in whole.flags]
    assert broken[0] == 0 < broken[1] < broken[-2] < broken[-1]  # points break at several eps
    for i in range(1, len(GRID)):
        assert sum(p.attacked[i] for p in parts) == whole.attacked[i]
