"""Planted models for the diagnostics' tests: small CNNs that fake robustness in the well-known
ways, each with the checks that must flag it, and honest models that no check may flag.

Every model starts from an honest CNN trained in about a second on 500 synthetic 1x8x8 images
(like ``tiny_problem`` in conftest.py: images near 0.5 whose class is a faint +-0.03 pattern,
here under noise of std 0.08, so that clean accuracy on the 100 held-out points is about 87%
and PGD at eps 0.02 leaves about 25%). The diagnostics run on those held-out points.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_TRAIN, N_TEST = 500, 100


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images 1x8x8: 0.5 + 0.03 * class prototype (fixed) + 0.08 * noise (from ``seed``)."""
    protos = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0)).sign()
    g = torch.Generator().manual_seed(1000 + seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (0.5 + 0.03 * protos[y] + 0.08 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


@functools.lru_cache(maxsize=None)
def test_points() -> tuple[torch.Tensor, torch.Tensor]:
    """The 100 held-out points every check runs on."""
    return make_data(N_TEST, seed=99)


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _cnn(normalize: bool) -> nn.Sequential:
    layers: list[nn.Module] = [Normalize(0.5, 0.1)] if normalize else []
    layers += [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


@functools.lru_cache(maxsize=None)
def _trained(seed: int, normalize: bool) -> nn.Sequential:
    x, y = make_data(N_TRAIN, seed=seed)
    torch.manual_seed(seed)
    model = _cnn(normalize)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2 if not normalize else 3e-3)
    for _ in range(80):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)  # as an attack would see it; input gradients still flow
    return model.eval()


def honest(seed: int = 0, normalize: bool = False) -> nn.Sequential:
    """An ordinary trained CNN (cached: callers must not modify it)."""
    return _trained(seed, normalize)


# ------------------------------------------------------------------------ the wrappers


class Wrapped(nn.Module):
    """Base class: ``self.base`` is the honest CNN."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base


class Quantize(Wrapped):
    """Bit-depth reduction of the input (8 bits): torch.round has a zero derivative, so every
    input gradient is exactly 0 (feature squeezing, Xu et al. 2018)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * 255) / 255)


class Saturate(Wrapped):
    """Logits multiplied by 1e4: softmax saturates, the CE gradient underflows to exactly 0 on
    every confidently classified point (as in defensive distillation at high temperature)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * 1e4


class InputNoise(Wrapped):
    """Small Gaussian noise (std 1e-3) added to the input at inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x + 1e-3 * torch.randn_like(x))


class DropoutOn(Wrapped):
    """Dropout (p = 0.05) on the hidden features, left on at inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        h = F.dropout(b[1](b[0](x)), p=0.05, training=True)
        return b[3](b[2](h))


class Probabilities(Wrapped):
    """A softmax at the end: probabilities instead of logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.base(x), dim=1)


class NumpyPreprocess(Wrapped):
    """Preprocessing done in numpy (here a clip to [0, 1]): the input leaves the autograd
    graph, so there is no input gradient at all."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.clip(x.detach().cpu().numpy(), 0.0, 1.0)
        return self.base(torch.from_numpy(arr).to(x.device))


class Shattered(Wrapped):
    """A tiny, high-frequency input transform x + a*sin(w*x) (a = 0.004, w = 2000): the output
    barely changes but the input gradient is dominated by a*w*cos(w*x), noise that flips sign
    from pixel to pixel (shattered gradients, Athalye et al. 2018)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x + 0.004 * torch.sin(2000.0 * x))


class LargeBudgetTrap(Wrapped):
    """Robust only to large perturbations: it knows the test points, and an input farther than
    ``limit`` (L-infinity) from the nearest of them gets that point's label (a lookup, no
    gradient); anything closer goes to the honest CNN. Small budgets break it, large ones seem
    not to: attack success falls as eps grows, which a walk that infers small-eps flags from a
    large eps would miss (bench.evaluation.diagnostics.check_inference)."""

    def __init__(self, base: nn.Module, x: torch.Tensor, y: torch.Tensor, limit: float) -> None:
        super().__init__(base)
        self.register_buffer("points", x.clone())
        self.register_buffer("labels", y.clone())
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = (x[:, None] - self.points[None]).abs().flatten(2).amax(dim=2)  # [batch, points]
        near, which = dist.min(dim=1)
        far = near > self.limit
        looked_up = 100.0 * torch.nn.functional.one_hot(self.labels[which], 10).float()
        return torch.where(far[:, None], looked_up, self.base(x))


# ---------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Planted:
    name: str
    model: nn.Module
    must: frozenset[str]  # checks that must flag it
    may: frozenset[str] = frozenset()  # checks that may also flag it (side effects)


def planted() -> list[Planted]:
    """Models that fake robustness, with the flags each must raise (and may raise) when
    evaluated as tests/test_diagnostics.py does: cheap checks, large budget, FGSM and PGD-100
    at eps 0.02 with the loss trace, Square (300 queries), transfer from another honest CNN."""
    base = honest(0)
    blind = frozenset({"gradients", "large-budget", "square-vs-whitebox", "transfer"})
    # randomness makes attack outcomes non-monotone in eps too (walk-inference)
    noisy = frozenset(
        {
            "loss-trace",
            "iterative-vs-single-step",
            "square-vs-whitebox",
            "transfer",
            "walk-inference",
        }
    )
    return [
        # zero gradients everywhere: PGD never moves, Square and transfer break ~40% more
        Planted("quantize", Quantize(base).eval(), blind),
        # CE gradients 0 on confident points; the margin loss still breaks it at eps 1
        Planted(
            "saturate", Saturate(base).eval(), blind - {"large-budget"}, frozenset({"large-budget"})
        ),
        Planted("input-noise", InputNoise(base).eval(), frozenset({"randomized"}), noisy),
        Planted("dropout-on", DropoutOn(base).eval(), frozenset({"randomized"}), noisy),
        # CE on probabilities is flatter but not blind here: only the range check must fire
        Planted(
            "probabilities",
            Probabilities(base).eval(),
            frozenset({"probabilities"}),
            blind | frozenset({"loss-trace"}),
        ),
        Planted("numpy-preprocess", NumpyPreprocess(base).eval(), blind),
        # gradients exist but point nowhere: only comparisons with gradient-free attacks catch
        # it (an eps-1 random walk still breaks ~96%, so large-budget may or may not fire)
        Planted(
            "shattered",
            Shattered(base).eval(),
            frozenset({"square-vs-whitebox", "transfer"}),
            frozenset({"large-budget", "loss-trace", "iterative-vs-single-step", "walk-inference"}),
        ),
        # a walk down from eps = 0.02 would count it robust at 0.01, where PGD breaks it
        Planted(
            "large-budget-trap",
            LargeBudgetTrap(base, *test_points(), limit=0.015).eval(),
            frozenset({"walk-inference"}),
            blind | noisy | frozenset({"large-budget"}),
        ),
    ]


def honest_models() -> list[tuple[str, nn.Module]]:
    """Genuinely ordinary models: no check may flag them."""
    return [
        ("plain", honest(0)),
        ("normalized", honest(0, normalize=True)),
        ("seed-1", honest(1)),
    ]
