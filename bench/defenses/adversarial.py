"""Adversarial training: PGD-AT, FGSM-AT, FGSM with random start, TRADES.

Every inner maximisation takes gradients with respect to the input only
(:func:`~bench.defenses.base.input_grad`), so the weights' gradients hold only the outer loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.defenses.base import Defense, input_grad, project_linf
from bench.params import format_eps


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """L-infinity PGD on the cross-entropy: optional uniform start in the eps-ball (or the given
    ``start``, projected), then ``steps`` signed-gradient steps of ``alpha``, each projected
    onto the ball and [0, 1]."""
    # The ball and [0, 1] as one pair of bounds, made once: clamp(v, lo, hi) is exactly
    # project_linf(v, x, eps) for x in [0, 1]. Each step then runs three in-place kernels (sign,
    # add, clamp) and allocates nothing.
    lo, hi = (x - eps).clamp_(min=0.0).detach(), (x + eps).clamp_(max=1.0).detach()
    x_adv = x.detach().clone() if start is None else start.detach().clone().clamp_(lo, hi)
    if random_start:
        x_adv = x_adv.add_(torch.empty_like(x).uniform_(-eps, eps)).clamp_(lo, hi)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad = input_grad(F.cross_entropy(model(x_adv), y), x_adv)  # the graph is freed here
        x_adv = x_adv.detach().add_(grad.sign_(), alpha=alpha).clamp_(lo, hi)
    return x_adv.detach()


#: The default step size of the multi-step inner attacks (PGD-AT, TRADES): eps/4, which is the
#: sources' 2/255 at their eps of 8/255 (Madry et al. 2018; Zhang et al. 2019) and scales with eps.
ALPHA_RULE = "eps/4"


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1] (pixel scale, e.g. 8/255), got {eps}")


def multi_step_alpha(eps: float, alpha: float | None) -> float:
    """The step size used: ``alpha`` when given, else :data:`ALPHA_RULE` (eps/4)."""
    return eps / 4 if alpha is None else alpha


def _check_multi_step(eps: float, alpha: float | None, steps: int) -> None:
    """``steps >= 1``; an explicit ``alpha`` must be positive and let ``steps`` steps reach the
    edge of the eps-ball (``steps * alpha >= eps``), else the attack is weaker than it says."""
    _check_eps(eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if alpha is None:
        return
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if steps * alpha < eps * (1 - 1e-9):  # relative slack: 4 * (2/255) is exactly 8/255
        raise ValueError(
            f"steps*alpha = {steps}*{format_eps(alpha)} = {format_eps(steps * alpha)} is below "
            f"eps {format_eps(eps)}: the attack can't reach the edge of the ball; raise alpha or "
            f"steps, or leave alpha unset for {ALPHA_RULE}"
        )


def _alpha_record(alpha: float | None, used: float, rule: str) -> dict[str, Any]:
    """What :meth:`Defense.resolved` reports for a step size: its value and where it came from."""
    return {"alpha": used, "alpha_rule": rule if alpha is None else "explicit"}


class _TrainOnPerturbed(Defense):
    """Cross-entropy on ``self.perturb(model, x, y)`` alone (PGD-AT, FGSM-RS)."""

    adversarial = True

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(self.perturb(model, x, y))
        self.record_adversarial(logits, y)
        return F.cross_entropy(logits, y)


@dataclass
class PGDAT(_TrainOnPerturbed):
    """PGD adversarial training (Madry et al. 2018): train on PGD examples with random start.

    Source defaults for CIFAR-10: eps 8/255, 10 steps of 2/255, uniform random start. The step
    is eps/4 unless ``alpha`` is set (2/255 at 8/255), so it scales with eps. The attack runs
    with the model in training mode, as the reference implementations do.
    """

    eps: float = 8 / 255
    alpha: float | None = None  # None: eps/4 (ALPHA_RULE)
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        _check_multi_step(self.eps, self.alpha, self.steps)

    @property
    def step(self) -> float:
        """The step size actually used."""
        return multi_step_alpha(self.eps, self.alpha)

    def resolved(self) -> dict[str, Any]:
        return _alpha_record(self.alpha, self.step, ALPHA_RULE)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The PGD example: ``steps`` signed-gradient ascents on the cross-entropy, projected."""
        return pgd_linf(model, x, y, self.eps, self.step, self.steps, self.random_start)


@dataclass
class FGSMAT(Defense):
    """FGSM adversarial training (Goodfellow et al. 2015).

    Loss ``a*J(x) + (1-a)*J(x + eps*sign(grad_x J(x)))`` with a = 0.5 as in the paper. The paper's
    eps is data-set specific (0.25 on MNIST); the default here is the benchmark's 8/255.
    """

    adversarial = True
    single_step = True
    eps: float = 8 / 255
    a: float = 0.5

    def __post_init__(self) -> None:
        _check_eps(self.eps)
        if not 0.0 <= self.a <= 1.0:
            raise ValueError(f"a must be in [0, 1], got {self.a}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One signed-gradient step of size eps from the clean point, clipped to [0, 1]."""
        x_req = x.detach().clone().requires_grad_(True)
        grad = input_grad(F.cross_entropy(model(x_req), y), x_req)
        return (x + self.eps * grad.sign()).clamp(0.0, 1.0).detach()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.perturb(model, x, y)
        logits_adv = model(x_adv)
        self.record_adversarial(logits_adv, y)
        return self.a * F.cross_entropy(model(x), y) + (1 - self.a) * F.cross_entropy(logits_adv, y)


@dataclass
class FGSMRS(_TrainOnPerturbed):
    """FGSM with a random start (Wong et al. 2020, "Fast is better than free").

    delta ~ U(-eps, eps), one signed-gradient step of ``alpha`` (1.25*eps unless set), projected
    back onto the eps-ball and [0, 1]; the loss is cross-entropy on that point.
    """

    single_step = True
    eps: float = 8 / 255
    alpha: float | None = None  # None: 1.25 * eps, the paper's choice

    def __post_init__(self) -> None:
        _check_eps(self.eps)
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")

    @property
    def step(self) -> float:
        """The step size actually used."""
        return 1.25 * self.eps if self.alpha is None else self.alpha

    def resolved(self) -> dict[str, Any]:
        return _alpha_record(self.alpha, self.step, "1.25*eps")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Random start in the ball, one step, projection: PGD with a single step."""
        return pgd_linf(model, x, y, self.eps, self.step, 1, random_start=True)


@dataclass
class TRADES(Defense):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``.

    Inner maximisation of the KL term from ``x + 0.001*N(0, 1)``, 10 signed steps of 2/255 within
    eps 8/255 (the step is eps/4 unless ``alpha`` is set), with the model in eval mode as in the
    authors' code; beta 6. Unlike the authors' function this never calls
    ``optimizer.zero_grad()``: the training loop owns the optimizer.
    """

    adversarial = True
    eps: float = 8 / 255
    alpha: float | None = None  # None: eps/4 (ALPHA_RULE)
    steps: int = 10
    beta: float = 6.0

    def __post_init__(self) -> None:
        _check_multi_step(self.eps, self.alpha, self.steps)
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    @property
    def step(self) -> float:
        """The step size actually used."""
        return multi_step_alpha(self.eps, self.alpha)

    def resolved(self) -> dict[str, Any]:
        return _alpha_record(self.alpha, self.step, ALPHA_RULE)

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Maximise KL(f(x) || f(x_adv)) over the eps-ball (labels are not used)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            x_adv = (x.detach() + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
                grad = input_grad(kl, x_adv)
                x_adv = project_linf(x_adv.detach() + self.step * grad.sign(), x, self.eps)
        finally:
            model.train(was_training)
        return x_adv.detach()

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.perturb(model, x)
        logits_clean, logits_adv = model(x), model(x_adv)
        self.record_adversarial(logits_adv, y)
        natural = F.cross_entropy(logits_clean, y)
        # KL summed over the batch then divided by its size: the authors' "batchmean".
        robust = F.kl_div(
            F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean"
        )
        return natural + self.beta * robust
