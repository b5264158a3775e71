"""Threat models: the Lp balls bench attacks, evaluates, trains and ranks under.

A threat model is a norm and a budget eps on the [0, 1] pixel scale: an adversarial example
``x_adv`` of ``x`` is allowed when ``||x_adv - x||_p <= eps`` and ``x_adv`` lies in [0, 1].
bench knows the three norms the leaderboards rank (RobustBench: Linf and L2; AutoAttack: Linf,
L2 and, since Croce and Hein's "Mind the box" (ICML 2021), L1), spelled as AutoAttack and
RobustBench spell them: ``Linf``, ``L2``, ``L1``.

The operations every attack, remedy, probe and trainer share live here once: the per-point
distance, the projection onto ball and box, the steepest-ascent step of each norm, a random
start inside the ball, and the budget that reaches every image (for the large-budget check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.errors import UsageError

LINF, L2, L1 = "Linf", "L2", "L1"
NORMS: tuple[str, ...] = (LINF, L2, L1)
#: The share of coordinates an L1 steepest-ascent step moves: the largest 1% of |gradient|
#: (a sparse step, as the L1 PGD of Tramèr and Boneh 2019, "SLIDE", moves a top percentile).
L1_TOP = 0.01


def check_norm(norm: str) -> str:
    """The canonical spelling of ``norm`` (``linf``, ``l2`` and ``l1`` are accepted as well),
    else a UsageError listing the valid ones."""
    for name in NORMS:
        if isinstance(norm, str) and norm.strip().lower() == name.lower():
            return name
    raise UsageError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(len(t), -1)


def distance(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per point ``||x_adv - x||_p`` in float64 (shape ``[N]``)."""
    delta = _flat(x_adv.detach().to(torch.float64) - x.detach().to(torch.float64))
    if norm == LINF:
        return delta.abs().amax(dim=1) if delta.shape[1] else delta.new_zeros(len(delta))
    return delta.norm(p=2 if norm == L2 else 1, dim=1)


def project(x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``x_adv`` moved into the ``norm`` eps-ball around ``x`` and into [0, 1].

    Linf and L2 are exact projections onto the ball followed by the box. L1 projects onto the
    L1 ball (Duchi et al. 2008, by sorting) and then clamps to the box; clamping only shrinks
    each coordinate of the perturbation (x is in [0, 1]), so the result stays in both."""
    delta = x_adv.to(x.dtype) - x
    if norm == LINF:
        delta = delta.clamp(-eps, eps)
    elif norm == L2:
        size = _flat(delta).norm(p=2, dim=1).clamp_min(1e-12)
        delta = delta * (eps / size).clamp(max=1.0).view(-1, *[1] * (x.dim() - 1))
    else:
        delta = _l1_ball(delta, eps)
    return (x + delta).clamp(0.0, 1.0)


def _l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean projection of each row onto the L1 ball of radius eps (Duchi et al. 2008)."""
    v = _flat(delta)
    inside = v.abs().sum(dim=1) <= eps
    mags, _ = v.abs().sort(dim=1, descending=True)
    cums = mags.cumsum(dim=1) - eps
    ranks = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    # the largest k with mags[k-1] > (cums[k-1]) / k gives the threshold theta
    k = ((mags * ranks) > cums).to(v.dtype).mul(ranks).argmax(dim=1, keepdim=True)
    theta = (cums.gather(1, k) / (k + 1).to(v.dtype)).clamp_min(0.0)
    shrunk = v.sign() * (v.abs() - theta).clamp_min(0.0)
    return torch.where(inside[:, None], v, shrunk).view_as(delta)


def ascent(grad: torch.Tensor, norm: str, at: torch.Tensor | None = None) -> torch.Tensor:
    """The steepest-ascent direction of unit ``norm`` for ``grad``, per point.

    Linf: the sign (FGSM's step). L2: the gradient over its L2 norm (the fast gradient method).
    L1: the signs of the largest :data:`L1_TOP` share of |gradient| entries, scaled so that the
    step's L1 norm is 1 (the L1 steepest ascent is one coordinate; a few spread it). With the
    current iterate ``at``, L1 skips the pixels already at 0 or 1 whose gradient points outside
    [0, 1] (the box would cancel their step and the attack would stall: Croce and Hein 2021)."""
    if norm == LINF:
        return grad.sign()
    if norm == L1 and at is not None:
        stuck = ((at <= 0) & (grad < 0)) | ((at >= 1) & (grad > 0))
        grad = grad.masked_fill(stuck, 0.0)
    g = _flat(grad)
    if norm == L2:
        return (g / g.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)).view_as(grad)
    k = max(1, math.ceil(L1_TOP * g.shape[1]))
    top = g.abs().topk(k, dim=1).indices
    step = torch.zeros_like(g).scatter_(1, top, g.gather(1, top).sign() / k)
    return step.view_as(grad)


def random_in_ball(
    like: torch.Tensor, eps: float, norm: str, generator: torch.Generator
) -> torch.Tensor:
    """One random perturbation shaped like ``like`` (one point, no batch dimension) inside the
    ``norm`` eps-ball, on the CPU in ``like``'s dtype. Linf: uniform in the cube. L2 and L1: a
    Gaussian (L2) or Laplace (L1) direction scaled to a radius uniform in [0, eps], as
    torchattacks' PGDL2 starts."""
    if norm == LINF:
        noise = torch.rand(like.shape, generator=generator, dtype=like.dtype)
        return (2 * noise - 1) * eps
    direction = torch.randn(like.shape, generator=generator, dtype=like.dtype)
    if norm == L1:
        u = torch.rand(like.shape, generator=generator, dtype=like.dtype).clamp_min(1e-12)
        direction = -torch.log(u) * direction.sign()  # Laplace: exponential size, random sign
    size = direction.norm(p=2 if norm == L2 else 1).clamp_min(1e-12)
    radius = float(torch.rand((), generator=generator)) * eps
    return direction / size * radius


def random_in_balls(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator
) -> torch.Tensor:
    """One :func:`random_in_ball` draw per point of ``x``, in order from one ``generator``
    (shape of ``x``, on the CPU)."""
    return torch.stack([random_in_ball(p.cpu(), eps, norm, generator) for p in x])


def step(
    x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float, norm: str
) -> torch.Tensor:
    """One projected steepest-ascent step: ``alpha`` along :func:`ascent` (pixels stuck at the
    box skipped under L1), back onto the eps-ball around ``x`` and into [0, 1]."""
    direction = ascent(grad, norm, at=x_adv.detach())
    return project(x, x_adv.detach() + alpha * direction, eps, norm)


def reach(norm: str, shape: tuple[int, ...]) -> float:
    """The smallest budget whose ball around any image in [0, 1] holds every image of ``shape``
    (one point's shape): the diameter of the box in that norm (1, sqrt(d), d)."""
    d = math.prod(shape)
    return 1.0 if norm == LINF else math.sqrt(d) if norm == L2 else float(d)


@dataclass(frozen=True)
class Budget:
    """A data set's default budget under one norm: the ranking eps, the grid, the source."""

    eps: float
    grid: str
    source: str


#: Default budgets per data set and norm, each from the work that uses it. Linf keeps bench's
#: 0..8/255 grid on every data set (RobustBench's CIFAR-10 budget; MNIST-like sets are attacked
#: at 0.3 in Madry et al. 2018, and bench's quick benchmark uses 0.1 on Fashion-MNIST).
BUDGETS: dict[tuple[str, str], Budget] = {}
_CIFAR_L2 = Budget(0.5, "0:0.5:0.0625", "RobustBench's CIFAR-10 L2 leaderboard (Croce et al. 2021)")
_CIFAR_L1 = Budget(12.0, "0:12:1.5", "AutoAttack's L1 setting (Croce and Hein, ICML 2021)")
_MNIST_L2 = Budget(2.0, "0:2:0.25", "Tramèr and Boneh 2019; Maini et al. 2020 (MNIST)")
_MNIST_L1 = Budget(10.0, "0:10:1.25", "Tramèr and Boneh 2019; Maini et al. 2020 (MNIST)")
_LINF = Budget(8 / 255, "0:8/255:1/255", "RobustBench's CIFAR-10 Linf leaderboard")
for _name in ("cifar10", "cifar100", "svhn", "mnist", "fashion-mnist"):
    _small = _name in ("mnist", "fashion-mnist")
    BUDGETS[(_name, LINF)] = _LINF
    BUDGETS[(_name, L2)] = _MNIST_L2 if _small else _CIFAR_L2
    BUDGETS[(_name, L1)] = _MNIST_L1 if _small else _CIFAR_L1


def budget(dataset: str | None, norm: str) -> Budget:
    """The default budget of ``dataset`` under ``norm`` (CIFAR-10's for an unknown set)."""
    return BUDGETS.get((dataset or "cifar10", norm), BUDGETS[("cifar10", norm)])


def default_grid(dataset: str | None, norm: str) -> str:
    """The default eps grid of ``dataset`` under ``norm`` (CIFAR-10's for an unknown set)."""
    return budget(dataset, norm).grid
