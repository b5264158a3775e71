"""Adversarial training: PGD-AT, FGSM-AT, FGSM with random start, TRADES.

Each trains under one threat model, its ``norm`` parameter (:mod:`bench.norms`: Linf, L2, L1).
Linf runs :func:`pgd_linf`'s in-place path; L2 and L1 run the one generic :func:`pgd_lp`.
Every inner maximisation takes gradients with respect to the input only
(:func:`~bench.defenses.base.input_grad`), so the weights' gradients hold only the outer loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench import norms
from bench.defenses.base import Defense, input_grad, project_linf
from bench.errors import UsageError
from bench.norms import LINF
from bench.params import MAX_LP_EPS, format_eps

#: A loss of the perturbed input that an inner attack ascends.
Objective = Callable[[torch.Tensor], torch.Tensor]


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


def pgd_lp(
    objective: Objective,
    x: torch.Tensor,
    start: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    norm: str,
) -> torch.Tensor:
    """PGD in any norm of :mod:`bench.norms` (bench uses it for L2 and L1): from ``start``,
    projected onto the ``norm`` eps-ball around ``x`` and [0, 1], ``steps`` steps of ``alpha``
    along :func:`bench.norms.ascent` of the objective's input gradient, each projected again.

    The one inner attack of PGD-AT, TRADES, FGSM-RS and FGSM-AT under L2 and L1, and of the
    catastrophic-overfitting monitor."""
    x = x.detach()
    x_adv = norms.project(x, start.detach(), eps, norm)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad = input_grad(objective(x_adv), x_adv)
        x_adv = norms.step(x, x_adv, grad, alpha, eps, norm)
    return x_adv.detach()


def cross_entropy_of(model: nn.Module, y: torch.Tensor) -> Objective:
    """The batch-mean cross-entropy of ``model`` on a perturbed input, labels ``y``."""
    return lambda x_adv: F.cross_entropy(model(x_adv), y)


def ball_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` plus one :func:`bench.norms.random_in_ball` draw per point, clipped to [0, 1].

    The draws come from ``generator``, else from a CPU generator seeded off torch's global CPU
    stream, so the run's seed (and a resumed run's saved generator state) fixes them."""
    if generator is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        generator = torch.Generator().manual_seed(seed)
    if len(x) == 0:
        return x.detach().clone()
    deltas = norms.random_in_balls(x, eps, norm, generator)
    return (x.detach() + deltas.to(x.device)).clamp(0.0, 1.0)


#: The default step of the multi-step inner attacks (PGD-AT, TRADES) under Linf: eps/4, which is
#: the sources' 2/255 at their eps of 8/255 (Madry et al. 2018; Zhang et al. 2019), scaled with eps.
ALPHA_RULE = "eps/4"
#: ... and under L2 and L1: 2.5*eps/steps, Madry et al. 2018's rule (also torchattacks' PGD
#: default, 2/255 = 2.5 * (8/255) / 10), so that the steps can cross the ball and come back.
LP_ALPHA_RULE = "2.5*eps/steps"
#: FGSM-RS's step in every norm (Wong et al. 2020).
FGSM_RS_RULE = "1.25*eps"


def check_norm(norm: str) -> str:
    """The canonical spelling of ``norm``; an unknown one is a ValueError listing the valid ones
    (the registry turns it into a UsageError, as for any bad parameter)."""
    try:
        return norms.check_norm(norm)
    except UsageError as exc:
        raise ValueError(str(exc)) from None


def _check_eps(eps: float, norm: str = LINF) -> None:
    """Linf budgets lie in [0, 1] (pixel scale); L2 and L1 budgets are finite and >= 0."""
    if norm == LINF:
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1] (pixel scale, e.g. 8/255), got {eps}")
    elif not (math.isfinite(eps) and 0.0 <= eps <= MAX_LP_EPS):
        raise ValueError(f"eps must be in [0, {MAX_LP_EPS:g}] under {norm}, got {eps}")


def alpha_rule(norm: str) -> str:
    """The multi-step default rule of ``norm``: :data:`ALPHA_RULE` or :data:`LP_ALPHA_RULE`."""
    return ALPHA_RULE if norm == LINF else LP_ALPHA_RULE


def multi_step_alpha(eps: float, alpha: float | None, steps: int = 10, norm: str = LINF) -> float:
    """The step size used: ``alpha`` when given, else the norm's :func:`alpha_rule`."""
    if alpha is not None:
        return alpha
    return eps / 4 if norm == LINF else 2.5 * eps / steps


def _check_multi_step(eps: float, alpha: float | None, steps: int, norm: str = LINF) -> None:
    """``steps >= 1``; an explicit ``alpha`` must be positive and let ``steps`` steps reach the
    edge of the eps-ball (``steps * alpha >= eps``), else the attack is weaker than it says."""
    _check_eps(eps, norm)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if alpha is None:
        return
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if steps * alpha < eps * (1 - 1e-9):  # relative slack: 4 * (2/255) is exactly 8/255
        a, reach, e = (format_eps(v, norm) for v in (alpha, steps * alpha, eps))
        raise ValueError(
            f"steps*alpha = {steps}*{a} = {reach} is below eps {e}: the attack can't reach the "
            f"edge of the ball; raise alpha or steps, or leave alpha unset for {alpha_rule(norm)}"
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


def _ce_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool,
    norm: str,
) -> torch.Tensor:
    """Cross-entropy PGD in ``norm``: :func:`pgd_linf` under Linf (its fast in-place path),
    else :func:`pgd_lp` from :func:`ball_start` (or from ``x``)."""
    if norm == LINF:
        return pgd_linf(model, x, y, eps, alpha, steps, random_start)
    start = ball_start(x, eps, norm) if random_start else x
    return pgd_lp(cross_entropy_of(model, y), x, start, eps, alpha, steps, norm)


@dataclass
class PGDAT(_TrainOnPerturbed):
    """PGD adversarial training (Madry et al. 2018): train on PGD examples with random start.

    Source defaults for CIFAR-10: eps 8/255, 10 steps of 2/255, uniform random start. The step
    is eps/4 under Linf unless ``alpha`` is set (2/255 at 8/255), so it scales with eps; under
    L2 and L1 it is 2.5*eps/steps (Madry et al. 2018), from a random start in the ball
    (:func:`bench.norms.random_in_ball`). The attack runs with the model in training mode, as
    the reference implementations do.
    """

    eps: float = 8 / 255
    alpha: float | None = None  # None: eps/4 under Linf (ALPHA_RULE), else LP_ALPHA_RULE
    steps: int = 10
    random_start: bool = True
    norm: str = LINF

    def __post_init__(self) -> None:
        self.norm = check_norm(self.norm)
        _check_multi_step(self.eps, self.alpha, self.steps, self.norm)

    @property
    def step(self) -> float:
        """The step size actually used."""
        return multi_step_alpha(self.eps, self.alpha, self.steps, self.norm)

    def resolved(self) -> dict[str, Any]:
        return _alpha_record(self.alpha, self.step, alpha_rule(self.norm))

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The PGD example: ``steps`` steepest ascents on the cross-entropy, projected."""
        return _ce_pgd(model, x, y, self.eps, self.step, self.steps, self.random_start, self.norm)


@dataclass
class FGSMAT(Defense):
    """FGSM adversarial training (Goodfellow et al. 2015).

    Loss ``a*J(x) + (1-a)*J(x_adv)`` with a = 0.5 as in the paper, where ``x_adv`` is one step
    of eps from x along the norm's steepest ascent (:func:`bench.norms.ascent`: the sign under
    Linf, the fast gradient method's ``g/||g||_2`` under L2), clipped to [0, 1]. The paper's eps
    is data-set specific (0.25 on MNIST); the default here is the benchmark's 8/255.
    """

    adversarial = True
    single_step = True
    eps: float = 8 / 255
    a: float = 0.5
    norm: str = LINF

    def __post_init__(self) -> None:
        self.norm = check_norm(self.norm)
        _check_eps(self.eps, self.norm)
        if not 0.0 <= self.a <= 1.0:
            raise ValueError(f"a must be in [0, 1], got {self.a}")

    def resolved(self) -> dict[str, Any]:
        return {"alpha": self.eps, "alpha_rule": "eps"}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step of size eps from the clean point along the norm's ascent, in [0, 1]."""
        if self.norm != LINF:
            return pgd_lp(cross_entropy_of(model, y), x, x, self.eps, self.eps, 1, self.norm)
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

    A random start in the ball (uniform under Linf, :func:`bench.norms.random_in_ball` under L2
    and L1), one step of ``alpha`` (1.25*eps unless set, the paper's choice, in every norm)
    along the norm's steepest ascent, projected back onto the eps-ball and [0, 1]; the loss is
    cross-entropy on that point.
    """

    single_step = True
    eps: float = 8 / 255
    alpha: float | None = None  # None: 1.25 * eps, the paper's choice (FGSM_RS_RULE)
    norm: str = LINF

    def __post_init__(self) -> None:
        self.norm = check_norm(self.norm)
        _check_eps(self.eps, self.norm)
        if self.alpha is not None and self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")

    @property
    def step(self) -> float:
        """The step size actually used."""
        return 1.25 * self.eps if self.alpha is None else self.alpha

    def resolved(self) -> dict[str, Any]:
        return _alpha_record(self.alpha, self.step, FGSM_RS_RULE)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Random start in the ball, one step, projection: PGD with a single step."""
        return _ce_pgd(model, x, y, self.eps, self.step, 1, True, self.norm)


@dataclass
class TRADES(Defense):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))``.

    Inner maximisation of the KL term from ``x + 0.001*N(0, 1)``, 10 steps within the eps-ball
    (8/255 under Linf: signed steps of eps/4 = 2/255 unless ``alpha`` is set; under L2 and L1
    steps of 2.5*eps/steps along :func:`bench.norms.ascent`), with the model in eval mode as in
    the authors' code; beta 6. Unlike the authors' function this never calls
    ``optimizer.zero_grad()``: the training loop owns the optimizer.
    """

    adversarial = True
    eps: float = 8 / 255
    alpha: float | None = None  # None: eps/4 under Linf (ALPHA_RULE), else LP_ALPHA_RULE
    steps: int = 10
    beta: float = 6.0
    norm: str = LINF

    def __post_init__(self) -> None:
        self.norm = check_norm(self.norm)
        _check_multi_step(self.eps, self.alpha, self.steps, self.norm)
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    @property
    def step(self) -> float:
        """The step size actually used."""
        return multi_step_alpha(self.eps, self.alpha, self.steps, self.norm)

    def resolved(self) -> dict[str, Any]:
        return _alpha_record(self.alpha, self.step, alpha_rule(self.norm))

    def perturb(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Maximise KL(f(x) || f(x_adv)) over the eps-ball (labels are not used)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            start = (x.detach() + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)

            def kl(x_adv: torch.Tensor) -> torch.Tensor:
                return F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")

            return self._ascend(kl, x, start)
        finally:
            model.train(was_training)

    def _ascend(self, objective: Objective, x: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """``steps`` projected ascents of ``objective`` from ``start``: signed steps under Linf
        (the authors' loop, unchanged), :func:`pgd_lp` under L2 and L1."""
        if self.norm != LINF:
            return pgd_lp(objective, x, start, self.eps, self.step, self.steps, self.norm)
        x_adv = start
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            grad = input_grad(objective(x_adv), x_adv)
            x_adv = project_linf(x_adv.detach() + self.step * grad.sign(), x, self.eps)
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
