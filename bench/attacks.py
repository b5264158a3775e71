"""Attacks: a registry of name -> factory, each returning an :class:`Attack` with one interface.

``make_attack(name, {"steps": "20"})`` checks the string parameters against the attack's own
dataclass (an unknown key is a UsageError listing the valid ones) and returns an
:class:`Attack` whose ``run(model, x, y, eps, seed)`` gives adversarial images in [0, 1].

Every attack is made for one threat model (``make_attack(name, params, norm="L2")``; see
:mod:`bench.norms`): its registry entry lists the norms it has (``entry.extra["norms"]``), one
implementation each, and any other norm is refused with one line naming the attacks that have
it.

Two kinds (``entry.extra["kind"]``):

* ``bounded``: the attack itself keeps ``||x_adv - x||_p <= eps`` in its norm. Nothing is
  projected; the evaluator checks every output against the norm's ball and [0, 1], and a
  violation is an error, never a result.
* ``minimum-norm``: the attack looks for the smallest L2 perturbation and ignores eps
  (CW, DeepFool). Under L2 its output is projected onto the L2 eps-ball, its own norm; under
  Linf onto the L-infinity eps-ball (an L2 attack scored at an Linf budget, as bench did before
  it knew norms). Either way it is then clamped to [0, 1] -- the honest way to score it at a
  given budget.

Epsilon is on the [0, 1] pixel scale. Inputs are images in [0, 1]; the model holds its own
normalization, so no attack is given a mean/std. ``autoattack`` is the OFFICIAL AutoAttack
(``pyautoattack``), never torchattacks' re-implementation.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyautoattack
import torch
from torch import nn
from tqdm import tqdm

from bench import norms
from bench.errors import UsageError
from bench.io import model_device
from bench.norms import L1, L2, LINF
from bench.params import build_dataclass
from bench.registry import Registry
from bench.vocab import AttackKind

KINDS: tuple[str, ...] = tuple(k.value for k in AttackKind)  # the values, as stored
# The components of the official AutoAttack, as pyautoattack names them.
AA_COMPONENTS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
# What pyautoattack's ``_set_version`` runs for each named version (checked by the tests). The
# components are the same under every norm; their settings differ (under L1 standard APGD runs
# 5 restarts with AutoAttack's larger-step schedule and APGD-T 5 target classes).
AA_VERSION_ATTACKS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}

#: ``perturb(model, x, y, concrete_params, seed, index) -> x_adv``: the attack proper. ``index``
#: holds each point's position in the evaluated set, for attacks that seed every point on its own.
Perturb = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, dict[str, Any], int, torch.Tensor], torch.Tensor
]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (e.g. the run's seed, an eps key, a batch or point index):
    stable across processes and machines, unlike Python's ``hash``."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class Attack:
    """A configured attack. ``params`` is its fully resolved parameter dict (the store's
    identity of the attack; eps-dependent values appear as their rule, e.g. "2.5*eps/steps")."""

    name: str
    kind: str
    params: dict[str, Any]
    concrete: Callable[[float], dict[str, Any]]  # eps -> the values actually passed at that eps
    perturb: Perturb
    defaults: dict[str, Any] = field(default_factory=dict)
    norm: str = LINF  # the threat model (bench.norms) whose ball the outputs lie in

    @property
    def label(self) -> str:
        """The name stored in the results' ``attack`` column, e.g. ``pgd``."""
        return self.name

    @property
    def display(self) -> str:
        """The name plus any parameter that differs from its default, e.g. ``pgd[steps=20]``."""
        changed = [f"{k}={_show(v)}" for k, v in self.params.items() if self.defaults.get(k) != v]
        return f"{self.name}[{','.join(changed)}]" if changed else self.name

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        seed: int,
        index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Adversarial images for ``x`` (in [0, 1]) at budget ``eps`` in the attack's norm, on the
        model's device. Seeds torch first, so a run is reproducible; minimum-norm outputs are
        projected.
        ``index``: each point's position in the evaluated set (default 0..len(x)-1)."""
        if self.kind not in KINDS:
            raise ValueError(f"attack {self.name}: kind {self.kind!r} is not one of {KINDS}")
        device = model_device(model)
        x = x.detach().to(device)
        y = y.detach().to(device)
        if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise ValueError(f"attack {self.name}: inputs must be images in [0, 1]")
        if eps <= 0.0:  # the 0-ball holds only x itself
            return x.clone()
        if index is None:
            index = torch.arange(len(x))
        torch.manual_seed(seed)  # seeds every CUDA device too
        with _frozen(model):
            x_adv = self.perturb(model, x, y, self.concrete(eps), seed, index.cpu()).detach()
        if self.kind == AttackKind.MINIMUM_NORM:
            x_adv = norms.project(x, x_adv, eps, self.norm)
        return x_adv


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No gradients for the weights while attacking (CW and DeepFool call ``backward``, which
    would otherwise fill every parameter's ``.grad``); restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _plain(atk: Any) -> Any:
    """A torchattacks attack with no normalization of its own: the model holds it (torchattacks
    sets one for models named ``RobModel``)."""
    atk.normalization_used = None
    atk._normalization_applied = None
    atk.set_model_training_mode(model_training=False)  # eval mode while attacking
    return atk


def _n_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[-1])


# ------------------------------------------------------------------------- registration

ATTACKS: Registry[Attack] = Registry("attack")


def _register(
    name: str,
    cls: type,
    kind: str,
    summary: str,
    resolve: Callable[[Any], dict[str, Any]],
    concrete: Callable[[Any, float], dict[str, Any]],
    perturbs: dict[str, Perturb],
) -> None:
    """Register attack ``name`` whose parameters are dataclass ``cls``.

    ``resolve(cfg)`` gives the stored parameter dict; ``concrete(cfg, eps)`` the values used at
    ``eps``; ``perturbs`` maps each norm the attack has to the function that runs it.
    """
    if kind == AttackKind.MINIMUM_NORM:
        summary += "; minimum-norm: output projected onto the eps-ball of the norm and [0, 1]"
    summary += f"; norms {', '.join(perturbs)}"
    defaults = resolve(cls())

    def factory(values: dict[str, str] | None = None, norm: str = LINF) -> Attack:
        cfg = build_dataclass(cls, dict(values or {}), f"attack {name}")
        return Attack(
            name, kind, resolve(cfg), lambda eps: concrete(cfg, eps), perturbs[norm], defaults, norm
        )

    ATTACKS.add(name, factory, summary, defaults, kind=kind, norms=tuple(perturbs))


def attack_norms(name: str) -> tuple[str, ...]:
    """The norms attack ``name`` has (unknown name -> UsageError); an attack registered
    without any (by code written before bench knew norms) has Linf."""
    return tuple(ATTACKS[name].extra.get("norms", (LINF,)))


def with_norm(norm: str) -> list[str]:
    """The attacks that have a version for ``norm``."""
    return [n for n in ATTACKS.names() if norm in ATTACKS[n].extra["norms"]]


def check_attack_norm(name: str, norm: str) -> str:
    """``norm`` canonical, if attack ``name`` has it; else one line naming the attacks that do."""
    norm = norms.check_norm(norm)
    if norm not in attack_norms(name):
        raise UsageError(
            f"attack {name} has no {norm} version (it has {', '.join(attack_norms(name))}); "
            f"attacks with {norm}: {', '.join(with_norm(norm))}"
        )
    return norm


def make_attack(name: str, params: dict[str, str] | None = None, norm: str = LINF) -> Attack:
    """The attack ``name`` with string ``params`` for threat model ``norm`` (unknown name or
    key, or a norm the attack lacks -> UsageError)."""
    norm = check_attack_norm(name, norm)
    entry = ATTACKS[name]
    if "norms" not in entry.extra:  # registered before norms: a factory of the params alone
        return entry.factory(dict(params or {}))
    return entry.factory(dict(params or {}), norm)


def attack_names(items: list[str], label: str) -> list[str]:
    """The attacks that ``items`` name (each may be comma-separated), in order, each known and
    named once; ``label`` is how errors name the setting (``--attack`` or ``attacks``)."""
    order: list[str] = []
    for name in (s.strip() for item in items for s in str(item).split(",")):
        if not name:
            continue
        ATTACKS[name]  # unknown name -> UsageError listing the valid ones
        if name in order:
            raise UsageError(f"attack {name} is listed twice in {label}")
        order.append(name)
    if not order:
        raise UsageError(f"{label} names no attack")
    return order


def make_attacks(names: list[str], params: dict[str, dict[str, str]], norm: str) -> list[Attack]:
    """Each attack of ``names`` with its ``params``, for ``norm``; every norm refusal comes
    before any parameter is built."""
    for name in names:
        check_attack_norm(name, norm)
    return [make_attack(name, params.get(name, {}), norm) for name in names]


def attack_kind(name: str) -> str:
    """``bounded`` or ``minimum-norm``."""
    return str(ATTACKS[name].extra["kind"])


def _positive(**values: float) -> None:
    for key, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{key} must be positive, got {value}")


def _nonnegative(**values: float) -> None:
    for key, value in values.items():
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")


def _alpha_rule(alpha: float | None, rule: str) -> float | str:
    return rule if alpha is None else alpha


# ------------------------------------------------------------------------------- fgsm


@dataclass(frozen=True)
class FGSMParams:
    """FGSM has no parameters: one signed-gradient step of size eps."""


def _fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    import torchattacks  # here: slow to import (about 0.7 s); only when the attack runs

    return _plain(torchattacks.FGSM(model, **kw))(x, y)


def _fgm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    """The fast gradient method, L2's FGSM (Goodfellow et al. 2015's step with the gradient
    scaled to L2 norm eps, as cleverhans' ``fast_gradient_method``): one step, then [0, 1]
    (clamping only shortens the step, so it stays in the ball). torchattacks has no L2 FGSM."""
    x_in = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(x_in), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_in)
    return (x + kw["eps"] * norms.ascent(grad, L2)).clamp(0.0, 1.0)


_register(
    "fgsm",
    FGSMParams,
    AttackKind.BOUNDED,
    "FGSM (torchattacks); under L2 the fast gradient method (bench's): one step of size eps",
    lambda c: {},
    lambda c, eps: {"eps": eps},
    {LINF: _fgsm, L2: _fgm},
)

# -------------------------------------------------------------------------------- pgd


@dataclass(frozen=True)
class PGDParams:
    """PGD with CE loss (Madry et al. 2018); ``alpha`` None means 2.5*eps/steps (scales with
    eps)."""

    steps: int = 10
    alpha: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        _positive(steps=self.steps, alpha=self.alpha)


def point_uniform(
    like: torch.Tensor, eps: float, seed: int, index: torch.Tensor, norm: str = LINF
) -> torch.Tensor:
    """A random start in the ``norm`` eps-ball shaped like ``like`` (Linf: U(-eps, eps); L2 and
    L1: :func:`bench.norms.random_in_ball`), each point's row drawn from its own generator
    seeded by (seed, eps, the point's index): a point's start never depends on its batch."""
    rows = []
    for i in index.tolist():  # one small CPU generator per point: microseconds each
        g = torch.Generator().manual_seed(derive_seed(seed, round(eps * 1e9), i))
        if norm == LINF:  # kept as it was before norms: the same starts, the same numbers
            rows.append((2 * torch.rand(like.shape[1:], generator=g, dtype=like.dtype) - 1) * eps)
        else:
            rows.append(norms.random_in_ball(like[0].cpu(), eps, norm, g))
    noise = torch.stack(rows) if rows else torch.empty_like(like.cpu())
    return noise.to(like.device)


def pgd_step(
    x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float, norm: str
) -> torch.Tensor:
    """One PGD step: ``alpha`` along the norm's steepest ascent, back onto the ball and [0, 1]."""
    if norm == LINF:  # the arithmetic bench used before norms (bit-identical results)
        x_adv = x_adv.detach() + alpha * grad.sign()
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return norms.step(x, x_adv, grad, alpha, eps, norm)


def _pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    """bench's PGD: per-point seeded start in the ball, ``steps`` steps of ``alpha`` along the
    norm's steepest ascent of the summed cross-entropy (sign under Linf, the normalised gradient
    under L2, a sparse step under L1), each projected onto the ball and [0, 1]. Returns, per
    point, the first iterate that the model misclassified, else the last one (an adversarial
    example found on the way is kept, as AutoAttack's APGD does)."""
    eps, alpha, norm = kw["eps"], kw["alpha"], kw["norm"]
    x_adv = x.clone()
    if kw["random_start"]:
        x_adv = (x + point_uniform(x, eps, seed, index, norm)).clamp(0.0, 1.0)
    best = x_adv.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(kw["steps"]):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        (grad,) = torch.autograd.grad(
            nn.functional.cross_entropy(logits, y, reduction="sum"), x_adv
        )
        wrong = (logits.detach().argmax(1) != y) & ~found  # adversarial before this step
        best[wrong] = x_adv.detach()[wrong]
        found |= wrong
        x_adv = pgd_step(x, x_adv, grad, alpha, eps, norm)
    return torch.where(found[:, None, None, None], best, x_adv)


def _in_norm(perturb: Perturb, norm: str) -> Perturb:
    """``perturb`` with ``norm`` added to the values it is given."""

    def run(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, kw: dict[str, Any], *rest: Any
    ) -> torch.Tensor:
        return perturb(model, x, y, {**kw, "norm": norm}, *rest)

    return run


_register(
    "pgd",
    PGDParams,
    AttackKind.BOUNDED,
    "PGD, CE loss (bench's own in every norm: per-point seeded start, so a point's numbers "
    "never depend on its batch or shard)",
    lambda c: {
        "steps": c.steps,
        "alpha": _alpha_rule(c.alpha, "2.5*eps/steps"),
        "random_start": c.random_start,
    },
    lambda c, eps: {
        "eps": eps,
        "steps": c.steps,
        "random_start": c.random_start,
        "alpha": 2.5 * eps / c.steps if c.alpha is None else c.alpha,
    },
    {norm: _in_norm(_pgd, norm) for norm in (LINF, L2, L1)},
)

# -------------------------------------------------------------------------------- cw


@dataclass(frozen=True)
class CWParams:
    """Carlini-Wagner L2 (no binary search over c in torchattacks)."""

    c: float = 1.0
    kappa: float = 0.0
    steps: int = 50
    lr: float = 0.01

    def __post_init__(self) -> None:
        _positive(c=self.c, steps=self.steps, lr=self.lr)
        _nonnegative(kappa=self.kappa)


def _cw(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    import torchattacks  # here: slow to import (about 0.7 s); only when the attack runs

    return _plain(torchattacks.CW(model, **kw))(x, y)


_register(
    "cw",
    CWParams,
    AttackKind.MINIMUM_NORM,
    "Carlini-Wagner L2 (torchattacks)",
    lambda c: {"c": c.c, "kappa": c.kappa, "steps": c.steps, "lr": c.lr},
    lambda c, eps: {"c": c.c, "kappa": c.kappa, "steps": c.steps, "lr": c.lr},
    {LINF: _cw, L2: _cw},
)

# ---------------------------------------------------------------------------- deepfool


@dataclass(frozen=True)
class DeepFoolParams:
    """DeepFool (L2): linearise, step to the nearest boundary, overshoot a little."""

    steps: int = 50
    overshoot: float = 0.02

    def __post_init__(self) -> None:
        _positive(steps=self.steps)
        _nonnegative(overshoot=self.overshoot)


def _deepfool(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    import torchattacks  # here: slow to import (about 0.7 s); only when the attack runs

    return _plain(torchattacks.DeepFool(model, **kw))(x, y)


_register(
    "deepfool",
    DeepFoolParams,
    AttackKind.MINIMUM_NORM,
    "DeepFool L2 (torchattacks)",
    lambda c: {"steps": c.steps, "overshoot": c.overshoot},
    lambda c, eps: {"steps": c.steps, "overshoot": c.overshoot},
    {LINF: _deepfool, L2: _deepfool},
)

# ------------------------------------------------------------------------------ mifgsm


@dataclass(frozen=True)
class MIFGSMParams:
    """Momentum iterative FGSM; ``alpha`` None means eps/steps (scales with eps)."""

    steps: int = 10
    decay: float = 1.0
    alpha: float | None = None

    def __post_init__(self) -> None:
        _positive(steps=self.steps, alpha=self.alpha)
        _nonnegative(decay=self.decay)


def _mifgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    import torchattacks  # here: slow to import (about 0.7 s); only when the attack runs

    return _plain(torchattacks.MIFGSM(model, **kw))(x, y)


_register(
    "mifgsm",
    MIFGSMParams,
    AttackKind.BOUNDED,
    "MI-FGSM, Linf (torchattacks)",
    lambda c: {"steps": c.steps, "decay": c.decay, "alpha": _alpha_rule(c.alpha, "eps/steps")},
    lambda c, eps: {
        "eps": eps,
        "steps": c.steps,
        "decay": c.decay,
        "alpha": eps / c.steps if c.alpha is None else c.alpha,
    },
    {LINF: _mifgsm},
)


def _torchattacks_in(name: str, norm: str) -> Perturb:
    """torchattacks' attack class ``name`` (one that takes ``norm`` and ``seed``) under ``norm``,
    run with the values it is given."""

    def perturb(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, kw: dict[str, Any], seed: int, _: Any
    ) -> torch.Tensor:
        import torchattacks  # here: slow to import (about 0.7 s); only when the attack runs

        return _plain(getattr(torchattacks, name)(model, norm=norm, seed=seed, **kw))(x, y)

    return perturb


def _official_l1(build: Callable[[nn.Module, dict[str, Any], int, Any], Any]) -> Perturb:
    """An attack of the official AutoAttack (``pyautoattack``) under L1, where torchattacks has
    none (APGD, Square) or fails (FAB: ``res`` is never set under L1). ``build(model, values,
    seed, device)`` makes it; its ``perturb`` returns, per point, the adversarial example found
    within eps, else x."""

    def perturb(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor, kw: dict[str, Any], seed: int, _: Any
    ) -> torch.Tensor:
        return build(model, kw, seed, x.device).perturb(x, y).to(x.device)

    return perturb


def _apgd_l1(model: nn.Module, kw: dict[str, Any], seed: int, device: Any) -> Any:
    """APGD-L1 (Croce and Hein 2021): pyautoattack's APGD with its L1 projection and sparse
    step. Standard AutoAttack under L1 (``autoattack``) also runs it with 5 restarts and its
    larger-step schedule; this one runs the ``steps`` and ``n_restarts`` given."""
    from pyautoattack.autopgd_base import APGDAttack

    return APGDAttack(
        model, n_iter=kw["steps"], norm=L1, n_restarts=kw["n_restarts"], eps=kw["eps"],
        seed=seed, loss=kw["loss"], device=device,
    )  # fmt: skip


def _square_l1(model: nn.Module, kw: dict[str, Any], seed: int, device: Any) -> Any:
    """Square under L1 (pyautoattack's), with the queries given."""
    from pyautoattack.square import SquareAttack

    return SquareAttack(
        model, norm=L1, n_queries=kw["n_queries"], eps=kw["eps"], p_init=kw["p_init"],
        n_restarts=kw["n_restarts"], seed=seed, device=device,
    )  # fmt: skip


def _fab_l1(model: nn.Module, kw: dict[str, Any], seed: int, device: Any) -> Any:
    """FAB under L1 (pyautoattack's), with the steps and restarts given."""
    from pyautoattack.fab_pt import FABAttack_PT

    return FABAttack_PT(
        model, norm=L1, n_restarts=kw["n_restarts"], n_iter=kw["steps"], eps=kw["eps"],
        seed=seed, targeted=kw["multi_targeted"], device=device,
    )  # fmt: skip


# -------------------------------------------------------------------------------- apgd


@dataclass(frozen=True)
class APGDParams:
    """Auto-PGD; step size adapts from 2*eps. Defaults as in AutoAttack (100 steps)."""

    loss: str = "ce"
    steps: int = 100
    n_restarts: int = 1

    def __post_init__(self) -> None:
        if self.loss not in ("ce", "dlr"):
            raise ValueError(f"loss must be ce or dlr, not {self.loss!r}")
        _positive(steps=self.steps, n_restarts=self.n_restarts)


_register(
    "apgd",
    APGDParams,
    AttackKind.BOUNDED,
    "Auto-PGD, CE or DLR loss (torchattacks; under L1 the official AutoAttack's APGD)",
    lambda c: {"loss": c.loss, "steps": c.steps, "n_restarts": c.n_restarts},
    lambda c, eps: {"eps": eps, "loss": c.loss, "steps": c.steps, "n_restarts": c.n_restarts},
    {
        LINF: _torchattacks_in("APGD", LINF),
        L2: _torchattacks_in("APGD", L2),
        L1: _official_l1(_apgd_l1),
    },
)

# ------------------------------------------------------------------------------ square


@dataclass(frozen=True)
class SquareParams:
    """Square Attack, margin loss; score-based (no gradients). Defaults as in AutoAttack."""

    n_queries: int = 5000
    n_restarts: int = 1
    p_init: float = 0.8

    def __post_init__(self) -> None:
        _positive(n_queries=self.n_queries, n_restarts=self.n_restarts, p_init=self.p_init)
        if self.p_init > 1:
            raise ValueError(f"p_init must be in (0, 1], got {self.p_init}")


_register(
    "square",
    SquareParams,
    AttackKind.BOUNDED,
    "Square Attack, black-box (torchattacks; under L1 the official AutoAttack's Square)",
    lambda c: {"n_queries": c.n_queries, "n_restarts": c.n_restarts, "p_init": c.p_init},
    lambda c, eps: {
        "eps": eps,
        "n_queries": c.n_queries,
        "n_restarts": c.n_restarts,
        "p_init": c.p_init,
    },
    {
        LINF: _torchattacks_in("Square", LINF),
        L2: _torchattacks_in("Square", L2),
        L1: _official_l1(_square_l1),
    },
)

# --------------------------------------------------------------------------------- fab


@dataclass(frozen=True)
class FABParams:
    """FAB in its norm. It searches for a minimal perturbation but keeps only those of norm <= eps
    (torchattacks' ``perturb`` treats a point as fooled only when ``res <= eps`` and returns x
    otherwise), so its output respects the budget: bounded, checked, never projected."""

    steps: int = 100
    n_restarts: int = 1
    multi_targeted: bool = False

    def __post_init__(self) -> None:
        _positive(steps=self.steps, n_restarts=self.n_restarts)


def _fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    import torchattacks  # here: slow to import (about 0.7 s); only when the attack runs

    kw = dict(kw)
    norm = kw.pop("norm")
    atk = torchattacks.FAB(model, norm=norm, seed=seed, n_classes=_n_classes(model, x), **kw)
    return _plain(atk)(x, y)


_register(
    "fab",
    FABParams,
    AttackKind.BOUNDED,
    "FAB, minimum-norm search that keeps only points within eps (torchattacks)",
    lambda c: {"steps": c.steps, "n_restarts": c.n_restarts, "multi_targeted": c.multi_targeted},
    lambda c, eps: {
        "eps": eps,
        "steps": c.steps,
        "n_restarts": c.n_restarts,
        "multi_targeted": c.multi_targeted,
    },
    {LINF: _in_norm(_fab, LINF), L2: _in_norm(_fab, L2), L1: _official_l1(_fab_l1)},
)

# ------------------------------------------------------------------------------ eotpgd


@dataclass(frozen=True)
class EOTPGDParams:
    """PGD on the gradient averaged over ``eot_iter`` forward passes (randomized defenses);
    ``alpha`` None means 2.5*eps/steps (scales with eps)."""

    eot_iter: int = 2
    steps: int = 10
    alpha: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        _positive(eot_iter=self.eot_iter, steps=self.steps, alpha=self.alpha)


def _eotpgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    import torchattacks  # here: slow to import (about 0.7 s); only when the attack runs

    return _plain(torchattacks.EOTPGD(model, **kw))(x, y)


_register(
    "eotpgd",
    EOTPGDParams,
    AttackKind.BOUNDED,
    "EOT-PGD, Linf, CE loss (torchattacks)",
    lambda c: {
        "eot_iter": c.eot_iter,
        "steps": c.steps,
        "alpha": _alpha_rule(c.alpha, "2.5*eps/steps"),
        "random_start": c.random_start,
    },
    lambda c, eps: {
        "eps": eps,
        "eot_iter": c.eot_iter,
        "steps": c.steps,
        "random_start": c.random_start,
        "alpha": 2.5 * eps / c.steps if c.alpha is None else c.alpha,
    },
    {LINF: _eotpgd},
)

# -------------------------------------------------------------------------- autoattack


@dataclass(frozen=True)
class AutoAttackParams:
    """The official AutoAttack (pyautoattack) in the attack's norm. ``attacks`` only with
    version custom."""

    version: str = "standard"
    attacks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.version not in AA_VERSIONS:
            raise ValueError(
                f"version must be one of {', '.join(AA_VERSIONS)}, not {self.version!r}"
            )
        if self.version == "custom":
            if not self.attacks:
                raise ValueError(
                    f"version custom needs attacks, a comma list of {', '.join(AA_COMPONENTS)}"
                )
            bad = [a for a in self.attacks if a not in AA_COMPONENTS]
            if bad:
                raise ValueError(
                    f"unknown AutoAttack component {bad[0]!r}; valid: {', '.join(AA_COMPONENTS)}"
                )
            if len(set(self.attacks)) != len(self.attacks):
                raise ValueError(f"attacks lists a component twice: {','.join(self.attacks)}")
        elif self.attacks:
            raise ValueError(
                f"attacks can only be chosen with version custom (version {self.version} runs "
                f"{','.join(AA_VERSION_ATTACKS[self.version])})"
            )

    def components(self) -> tuple[str, ...]:
        """The components this configuration runs, in order."""
        return self.attacks if self.version == "custom" else AA_VERSION_ATTACKS[self.version]


class _Collect(logging.Handler):
    """Keeps the warnings of pyautoattack's logger (its flags for gradient masking etc.)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


#: Where AutoAttack's warnings go while an evaluation collects them (see :func:`collect_warnings`):
#: (message, eps, points in that AutoAttack call).
_WARNINGS: contextvars.ContextVar[list[tuple[str, float, int]] | None] = contextvars.ContextVar(
    "bench_aa_warnings", default=None
)


@contextlib.contextmanager
def collect_warnings() -> Iterator[list[tuple[str, float, int]]]:
    """Collect the warnings of pyautoattack's ``checks.py`` raised inside the block, every time
    (not once per process), so the evaluator can store them with the model they concern."""
    bucket: list[tuple[str, float, int]] = []
    token = _WARNINGS.set(bucket)
    try:
        yield bucket
    finally:
        _WARNINGS.reset(token)


@contextlib.contextmanager
def _quiet_autoattack(eps: float, points: int) -> Iterator[None]:
    """Silence pyautoattack's per-batch logging; pass its warnings to the collector (if any) and
    to stderr."""
    logger = logging.getLogger("auto-attack")
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        bucket = _WARNINGS.get()
        for msg in dict.fromkeys(handler.messages):  # distinct, in order
            if bucket is not None:
                bucket.append((msg, eps, points))
            tqdm.write(f"bench: autoattack warning: {msg}", file=sys.stderr)  # keeps the bar intact


def _autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kw: dict[str, Any],
    seed: int,
    index: torch.Tensor,
) -> torch.Tensor:
    with _quiet_autoattack(kw["eps"], len(x)):
        aa = pyautoattack.AutoAttack(
            model,
            norm=kw["norm"],
            eps=kw["eps"],
            version=kw["version"],
            attacks=list(kw["attacks"]) if kw["version"] == "custom" else None,
            seed=seed,
            device=x.device,
        )
        aa.verbose = False
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=max(len(x), 1))
    return x_adv.to(x.device)


_register(
    "autoattack",
    AutoAttackParams,
    AttackKind.BOUNDED,
    "official AutoAttack (pyautoattack), its own attack list per norm; version "
    "standard|plus|rand|custom",
    lambda c: {"version": c.version, "attacks": list(c.components())},
    lambda c, eps: {"eps": eps, "version": c.version, "attacks": list(c.attacks)},
    {norm: _in_norm(_autoattack, norm) for norm in (LINF, L2, L1)},
)
