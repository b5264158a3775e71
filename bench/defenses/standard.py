"""Defenses without adversarial inputs: standard training and mixup."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.defenses.base import Defense


@dataclass
class Standard(Defense):
    """Plain cross-entropy: the undefended baseline."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y)


@dataclass
class Mixup(Defense):
    """Mixup (Zhang et al. 2018): train on convex combinations of image pairs and of their labels.

    One lambda ~ Beta(alpha, alpha) per batch and a random pairing of the batch, as in the
    authors' CIFAR-10 code; the label mix is written as the same convex combination of the two
    cross-entropies, which equals cross-entropy against the mixed one-hot target.
    """

    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        beta = torch.distributions.Beta(self.alpha, self.alpha)
        lam = float(beta.sample())
        perm = torch.randperm(x.shape[0], device=x.device)
        logits = model(lam * x + (1.0 - lam) * x[perm])
        return lam * F.cross_entropy(logits, y) + (1.0 - lam) * F.cross_entropy(logits, y[perm])
