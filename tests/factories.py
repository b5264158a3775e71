"""Model factories for ``bench.sources.from_factory`` tests (and for trying ``--model-factory``).

``tests`` is not a package (pytest imports its files by folder, and robustbench's wheel
installs an unrelated top-level ``tests`` package that would shadow one), so name these by
path, ``--model-factory tests/factories.py:tiny_fmnist`` from the repository root, or put
``tests/`` on the path: ``PYTHONPATH=tests bench eval --model-factory factories:tiny_fmnist``.
Every factory builds the same weights each call (a fixed seed, without touching the global
random state).
"""

from __future__ import annotations

import torch
from torch import nn

NOT_CALLABLE = 42


def _seeded(build: type[nn.Module] | object, *args: object) -> nn.Module:
    """``build(*args)`` under seed 0, the caller's random state left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build(*args)  # type: ignore[operator]


class TinyCNN(nn.Module):
    """conv8-conv8-pool-linear: any image size, ``channels`` in, ``num_classes`` out."""

    def __init__(self, channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def tiny_fmnist() -> nn.Module:
    """A small CNN for 1x28x28 images, 10 classes (Fashion-MNIST, MNIST)."""
    return _seeded(TinyCNN, 1, 10)


def sized(num_classes: int, dataset: str) -> nn.Module:
    """Built for the data set it is given (bench passes ``num_classes`` and ``dataset``)."""
    channels = 1 if dataset in ("fashion-mnist", "mnist") else 3
    return _seeded(TinyCNN, channels, num_classes)


class Builders:
    """A dotted attribute: ``factories:Builders.tiny``."""

    @staticmethod
    def tiny() -> nn.Module:
        return tiny_fmnist()


def not_a_module() -> object:
    """Returns a dict, not a model."""
    return {"conv": "not a model"}


def wrong_shape() -> nn.Module:
    """7 logits where Fashion-MNIST has 10 classes."""
    return _seeded(TinyCNN, 1, 7)


def raises() -> nn.Module:
    """The factory itself fails."""
    raise ValueError("boom: no such configuration")


class _Pair(TinyCNN):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = super().forward(x)
        return logits, logits


def tuple_output() -> nn.Module:
    """Returns (logits, features), as some research code does."""
    return _seeded(_Pair, 1, 10)


class _NaN(TinyCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


def nan_logits() -> nn.Module:
    """Logits that are NaN."""
    return _seeded(_NaN, 1, 10)
