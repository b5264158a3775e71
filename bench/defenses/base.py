"""The defense contract: a small class whose ``loss(model, x, y)`` returns the training loss.

A defense never touches the optimizer (no ``zero_grad``, no ``step``): the one training loop in
:mod:`bench.train` owns it. Its hyperparameters are dataclass fields, so ``bench list`` shows
their defaults and ``--set key=value`` is checked against them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class Defense:
    """Base class. Subclasses are dataclasses whose fields are the hyperparameters."""

    #: True when the loss trains on adversarial inputs; the loop then logs training robust accuracy.
    adversarial: ClassVar[bool] = False
    #: True for single-step adversarial training (FGSM-AT, FGSM-RS): the loop then watches for
    #: catastrophic overfitting (:mod:`bench.defenses.overfitting`).
    single_step: ClassVar[bool] = False

    def resolved(self) -> dict[str, Any]:
        """Values derived from the parameters by a rule (a step size of eps/4): what the run
        actually uses, with the rule's name; recorded in config.json as ``defense_resolved``."""
        return {}

    def attach(self, model: nn.Module) -> None:
        """Called once before training (feature-space defenses register their hooks here)."""

    def detach(self) -> None:
        """Called once after training: undo :meth:`attach`."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean training loss on a batch of pixels ``x`` in [0, 1] with labels ``y``."""
        raise NotImplementedError

    # Training robust accuracy: counts of adversarial training inputs still classified right.
    def reset_stats(self) -> None:
        """Start a new epoch's counts."""
        self._adv_correct, self._adv_seen = 0, 0

    def record_adversarial(self, logits_adv: torch.Tensor, y: torch.Tensor) -> None:
        """Count the adversarial training inputs the model still gets right. The count stays a
        tensor on the device (no wait for the device per step); it is read once an epoch."""
        self._adv_correct = (
            getattr(self, "_adv_correct", 0) + (logits_adv.detach().argmax(1) == y).sum()
        )
        self._adv_seen = getattr(self, "_adv_seen", 0) + int(y.numel())

    def robust_accuracy(self) -> float | None:
        """Fraction of this epoch's adversarial training inputs classified right, or None."""
        seen = getattr(self, "_adv_seen", 0)
        return int(getattr(self, "_adv_correct", 0)) / seen if seen else None


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``x_adv`` onto the L-infinity ball of radius ``eps`` around ``x``, then into
    [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def input_grad(loss: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Gradient of ``loss`` with respect to the input only: the weights' .grad stay untouched."""
    (grad,) = torch.autograd.grad(loss, x_adv)
    return grad


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the model's logits on ``x``."""
    return F.cross_entropy(model(x), y)
