"""Catastrophic overfitting of single-step adversarial training (FGSM-AT, FGSM-RS).

Wong, Rice and Kolter 2020 ("Fast is better than free: revisiting adversarial training",
Section 5) describe the collapse: within an epoch, the model's PGD accuracy falls to near zero
while its FGSM accuracy on the training data rises; the model has learned to defeat the one
step it is trained against, not the threat model.

The loop watches for it on a fixed **held-out batch** (:func:`heldout_size`): the last
``min(256, S // 4)`` images of the official training split (S points), which are excluded from
training (a ``--train-limit`` that reaches into them is cut short of them). After every epoch,
with the model in eval mode, it measures on that batch, at the defense's eps and in its norm
(the threat model it trains for: Linf, L2 or L1):

- FGSM accuracy: one step of eps from the clean point along the norm's steepest ascent (the
  sign under Linf; :func:`bench.norms.ascent`), clipped to [0, 1];
- PGD-10 accuracy: 10 steps of eps/4 (Linf; 2.5*eps/10, the same size, under L2 and L1) from
  a random start in the ball, projected. The start is drawn once from a generator seeded with
  :data:`HELDOUT_SEED`, so every epoch faces the same start and the training's own random
  streams are untouched.

The rule is :data:`COLLAPSE_RULE` (:func:`collapsed`); the first epoch that meets it is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.defenses.adversarial import (
    ball_start,
    cross_entropy_of,
    multi_step_alpha,
    pgd_linf,
    pgd_lp,
)
from bench.defenses.base import input_grad
from bench.norms import LINF

HELDOUT_MAX = 256  # images in the held-out batch (fewer when the split is small)
HELDOUT_SHARE = 4  # ... but at most a quarter of the training split
HELDOUT_SEED = 0  # the PGD start on the held-out batch
PGD_STEPS = 10
PGD_DROP = 0.5  # PGD accuracy below this fraction of its best earlier value ...
MIN_DROP = 0.05  # ... and at least this far below it (5 points: about 1.5 standard errors at 256)
FGSM_KEEP = 0.8  # ... while FGSM accuracy keeps at least this fraction of its best so far
COLLAPSE_RULE = (
    f"held-out PGD-{PGD_STEPS} accuracy below {PGD_DROP} x its best earlier value and at least "
    f"{MIN_DROP} below it, while held-out FGSM accuracy stays at least {FGSM_KEEP} x its best "
    "so far (Wong et al. 2020: PGD accuracy collapses while FGSM accuracy holds or rises)"
)


def heldout_size(split_size: int) -> int:
    """Images held out of a training split of ``split_size``: ``min(256, split_size // 4)``."""
    return min(HELDOUT_MAX, split_size // HELDOUT_SHARE)


def collapsed(pgd: list[float], fgsm: list[float]) -> bool:
    """Whether the last epoch of these per-epoch histories meets :data:`COLLAPSE_RULE`.

    The FGSM condition tells a collapse from a model that merely got worse (both accuracies
    falling together); the absolute drop keeps noise at low accuracy from counting. The first
    epoch has nothing to fall from."""
    if len(pgd) < 2 or len(pgd) != len(fgsm):
        return False
    best_pgd, best_fgsm = max(pgd[:-1]), max(fgsm)
    now_pgd, now_fgsm = pgd[-1], fgsm[-1]
    return (
        now_pgd < PGD_DROP * best_pgd
        and best_pgd - now_pgd >= MIN_DROP
        and now_fgsm >= FGSM_KEEP * best_fgsm
    )


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def fgsm_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = LINF
) -> float:
    """Accuracy under one step of ``eps`` from the clean point (no random start) along the
    norm's steepest ascent: the sign under Linf, :func:`pgd_lp` with one step otherwise."""
    if norm != LINF:
        return _accuracy(model, pgd_lp(cross_entropy_of(model, y), x, x, eps, eps, 1, norm), y)
    x_req = x.detach().clone().requires_grad_(True)
    grad = input_grad(F.cross_entropy(model(x_req), y), x_req)
    return _accuracy(model, (x + eps * grad.sign()).clamp(0.0, 1.0), y)


@dataclass
class Monitor:
    """Per-epoch held-out FGSM and PGD-10 accuracy of one run, and the collapse verdict."""

    eps: float
    x: torch.Tensor  # the held-out images, float in [0, 1], on the training device
    y: torch.Tensor
    norm: str = LINF  # the defense's threat model
    pgd: list[float] = field(default_factory=list)
    fgsm: list[float] = field(default_factory=list)
    epoch: int | None = None  # the first epoch that met the rule

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(HELDOUT_SEED)  # CPU: the same start on every device
        if self.norm != LINF:
            self.start = ball_start(self.x, self.eps, self.norm, g)
            return
        delta = (torch.rand(self.x.shape, generator=g) * 2 - 1) * self.eps
        self.start = (self.x + delta.to(self.x.device)).clamp(0.0, 1.0)

    def measure(self, model: nn.Module) -> tuple[float, float]:
        """(FGSM accuracy, PGD-10 accuracy) on the held-out batch, the model in eval mode."""
        was_training = model.training
        model.eval()
        try:
            fgsm = fgsm_accuracy(model, self.x, self.y, self.eps, self.norm)
            pgd = _accuracy(model, self._pgd(model), self.y)
        finally:
            model.train(was_training)
        return fgsm, pgd

    def _pgd(self, model: nn.Module) -> torch.Tensor:
        """PGD-10 examples of the held-out batch from the fixed start, in the monitor's norm."""
        alpha = multi_step_alpha(self.eps, None, PGD_STEPS, self.norm)
        if self.norm == LINF:
            return pgd_linf(
                model,
                self.x,
                self.y,
                self.eps,
                alpha,
                PGD_STEPS,
                random_start=False,
                start=self.start,
            )
        objective = cross_entropy_of(model, self.y)
        return pgd_lp(objective, self.x, self.start, self.eps, alpha, PGD_STEPS, self.norm)

    def update(self, epoch: int, model: nn.Module) -> bool:
        """Measure after ``epoch``; True when this epoch meets the rule (each one that does)."""
        fgsm, pgd = self.measure(model)
        self.fgsm.append(fgsm)
        self.pgd.append(pgd)
        hit = collapsed(self.pgd, self.fgsm)
        if hit and self.epoch is None:
            self.epoch = epoch
        return hit

    def warning(self, epoch: int) -> str:
        """The log line for a collapse at ``epoch``."""
        return (
            f"warning: catastrophic overfitting at epoch {epoch}: held-out PGD-{PGD_STEPS} acc "
            f"{self.pgd[-1]:.1%} (best earlier {max(self.pgd[:-1]):.1%}), FGSM acc "
            f"{self.fgsm[-1]:.1%}; rule: {COLLAPSE_RULE}"
        )

    def record(self) -> dict[str, Any]:
        """run.json's ``catastrophic_overfitting``."""
        return {
            "detected": self.epoch is not None,
            "epoch": self.epoch,
            "rule": COLLAPSE_RULE,
            "heldout_n": int(self.y.numel()),
            "pgd_acc": list(self.pgd),
            "fgsm_acc": list(self.fgsm),
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from a :meth:`record` saved in the training state."""
        self.pgd = [float(v) for v in saved["pgd_acc"]]
        self.fgsm = [float(v) for v in saved["fgsm_acc"]]
        self.epoch = saved["epoch"]
