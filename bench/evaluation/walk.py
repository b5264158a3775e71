"""The grid walk: each attack walks an L-infinity eps grid over fixed, seeded batches of points.

The grid walk for one attack on the first n test points. A point misclassified when clean is
broken at every eps (eps 0 needs no attack). The L-infinity balls are nested, so an adversarial
example found at eps e is proof that the point is broken at every larger eps: every walk carries
"broken" upwards as a fact. Each walk attacks each eps of the grid at most once, in a fixed order,
and only the points whose outcome there is not yet known; each point's flags are monotone
(robust up to its breaking eps, broken from there).

* ``up`` (the walk of layout-2 stores): eps ascending; at each eps the points still robust are
  attacked. Every robust flag is a measurement at that eps; the flag at an eps is the attack's
  raw outcome there AND the carry from smaller eps, so the number at the largest eps can be
  lower than a single run there (a point broken at 2/255 may survive a run at 8/255). Cost: a
  robust point is attacked at every eps (about as many single runs as the grid has eps > 0 on
  a robust model).
* ``down``: the largest eps first, on every clean-correct point (exactly a single run there);
  a point robust there is counted robust at every smaller eps (an INFERENCE, not a
  measurement); a broken point is attacked at the next smaller eps, and so on until it
  survives one. Each point is measured robust at most once: cheap when most points are robust,
  costly when most break early.
* ``bisect`` (default): the largest eps first, as ``down``; then each broken point's breaking
  eps is found by bisection over the smaller eps, on a fixed binary-search tree of grid indices
  (at most 1 + ceil(log2(#eps > 0)) attacks per point: 4 on a 9-point grid). Robust flags below
  a measured robust eps are inferences; broken flags are proofs.

For ``down`` and ``bisect`` the number at the largest eps is a single run of the attack there,
bit for bit; at smaller eps it counts as robust the points measured robust at a larger eps
(``bench perf`` reports how far that is from a direct run at two smaller eps). Whatever the
walk, every eps is tested in exactly one step, so:

* Batches are fixed by point index: batch k holds points k*B .. (k+1)*B-1 of the evaluated set
  (B = ``--batch-size``, recorded). Within batch k only the points the walk tests at that eps are
  attacked, with torch seeded from (seed, eps, k) (:func:`batch_seed`); bench's own PGD seeds each
  point's random start from (seed, eps, point index). So a batch's outcome depends only on the
  weights, its points, the grid, the walk, B and the seed: a sharded or resumed run gives the
  same flags.
* Every output is checked against the eps-ball and [0, 1] (:func:`check_budget`); a violation is
  an error, never a result.
* Each finished batch is kept in the store and each finished (attack, eps) step becomes a result
  row at once, so a killed evaluation rerun with the same arguments continues where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from bench import (
    norms,
    vocab,  # its Walk, not this module's (the settings of one walk)
)
from bench.attacks import Attack, derive_seed
from bench.errors import BudgetViolation, UsageError
from bench.io import model_device
from bench.norms import LINF
from bench.params import eps_words, format_eps
from bench.store import WALKS, eps_key

PREDICT_BATCH = 1000  # points per forward pass for clean predictions
DEFAULT_WALK = vocab.Walk.BISECT  # see the module docstring; up is the walk of layout-2 stores


def check_budget(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    eps: float,
    tol: float = 1e-6,
    attack: str = "attack",
    norm: str = LINF,
) -> None:
    """Raise BudgetViolation unless ``x_adv`` has x's shape, no NaN, lies in [0, 1] and within
    ``eps`` of ``x`` in ``norm`` (each up to ``tol``, for float rounding; under L2 and L1, whose
    float32 sums over thousands of pixels round more, up to ``tol + 1e-5 * eps``)."""
    if tuple(x_adv.shape) != tuple(x.shape):
        raise BudgetViolation(
            f"attack {attack} at {eps_words(eps, norm)}: returned shape {tuple(x_adv.shape)}, "
            f"expected {tuple(x.shape)}"
        )
    if x_adv.numel() == 0:
        return
    xa = x_adv.detach().to(device=x.device, dtype=torch.float64)
    if not bool(torch.isfinite(xa).all()):
        raise BudgetViolation(f"attack {attack} at {eps_words(eps, norm)}: returned NaN or inf")
    delta = float(norms.distance(x, xa, norm).max())
    lo, hi = float(xa.min()), float(xa.max())
    slack = tol if norm == LINF else tol + 1e-5 * eps
    if delta > eps + slack or lo < -tol or hi > 1.0 + tol:
        raise BudgetViolation(
            f"attack {attack} left the budget at {eps_words(eps, norm)} "
            f"(= {eps:.6g}): {_distance_name(norm)} = {delta:.6g}, "
            f"x_adv in [{lo:.6g}, {hi:.6g}] "
            "(allowed [0, 1])"
        )


def _distance_name(norm: str) -> str:
    """How a violation's size is written: ``max|x_adv - x|`` (Linf), ``max ||x_adv - x||_2``."""
    return "max|x_adv - x|" if norm == LINF else f"max ||x_adv - x||_{norm[1:]}"


def batch_seed(seed: int, eps: float, batch: int) -> int:
    """The torch seed of batch ``batch`` at ``eps``: depends on nothing else."""
    return derive_seed(seed, eps_key(eps), batch)


def flag_text(flags: torch.Tensor) -> str:
    """Bool flags as '0'/'1' text."""
    return "".join("1" if f else "0" for f in flags.tolist())


def text_flags(text: str) -> torch.Tensor:
    """'0'/'1' text as bool flags."""
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


@dataclass
class GridResult:
    """One attack's walk over the eps grid: per-eps robust flags (bool [n], CPU) and seconds."""

    attack: Attack
    eps: list[float]
    flags: list[torch.Tensor]
    seconds: list[float]
    reused: int = 0  # steps taken from the store instead of being run (resumed)
    walk: str = DEFAULT_WALK  # how the grid was walked: up, down or bisect
    attacked: list[int] = field(default_factory=list)  # points attacked at each eps (0: none)

    def robust_acc(self) -> list[float]:
        """Robust accuracy (fraction) at each eps."""
        return [int(f.sum()) / len(f) if len(f) else 0.0 for f in self.flags]


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """Predicted labels (CPU) of images ``x``, in eval mode and without gradients."""
    model.eval()
    device = model_device(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


class Recorder:
    """Where a grid walk keeps its progress: nowhere (plain walk) or a store (resumable).

    ``done(eps)`` gives the flags of a finished step or None; ``batches(eps)`` the finished batches
    of a step in progress; ``batch(...)`` and ``finish(...)`` record them."""

    def done(self, eps: float) -> torch.Tensor | None:
        return None

    def batches(self, eps: float) -> dict[int, torch.Tensor]:
        return {}

    def batch(self, eps: float, k: int, flags: torch.Tensor, seconds: float) -> None:
        pass

    def finish(self, eps: float, flags: torch.Tensor, seconds: float) -> None:
        pass


def attack_points(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    eps: float,
    seed: int,
    offset: int = 0,
) -> torch.Tensor:
    """Still-robust flags (CPU) of the points ``idx`` after ``attack`` at ``eps``; ``offset``: the
    whole set's index of x[0] (a shard), so that per-point seeds match an unsharded run."""
    device = model_device(model)
    xb, yb = x[idx].to(device), y[idx].to(device)
    x_adv = attack.run(model, xb, yb, eps, seed, index=idx + offset)
    check_budget(xb, x_adv, eps, attack=attack.display, norm=attack.norm)
    model.eval()  # whatever the attack did to the mode
    with torch.no_grad():
        return (model(x_adv.to(device)).argmax(dim=1) == yb).cpu()


@dataclass
class Walk:
    """The settings of one grid walk."""

    eps: list[float]
    batch_size: int
    seed: int
    bar: Any = None
    recorder: Recorder = field(default_factory=Recorder)
    on_batch: Callable[[Attack, float, int, float], None] | None = None  # (attack, eps, k, s)
    first_batch: int = 0  # a shard: x[0] is point first_batch * batch_size of the whole set
    walk: str = DEFAULT_WALK  # up | down | bisect (see the module docstring)


def check_walk(walk: str) -> None:
    """``walk`` must be one of :data:`WALKS` (UsageError)."""
    if walk not in WALKS:
        raise UsageError(f"--walk must be one of {', '.join(WALKS)}, got {walk!r}")


def first_attacked(grid: Sequence[float]) -> int:
    """The index of the first eps > 0 of the sorted ``grid`` (len(grid) when there is none)."""
    return next((j for j, e in enumerate(grid) if e > 0), len(grid))


def _tree_levels(lo: int, hi: int, depth: int, out: dict[int, int]) -> None:
    """The binary-search tree over a point's breaking index in lo..hi (broken at hi): the node
    (lo, hi) tests (lo + hi) // 2; its children are (lo, mid) and (mid + 1, hi)."""
    if lo >= hi:
        return
    mid = (lo + hi) // 2
    out[mid] = depth
    _tree_levels(lo, mid, depth + 1, out)
    _tree_levels(mid + 1, hi, depth + 1, out)


def walk_order(walk: str, grid: Sequence[float]) -> list[int]:
    """The grid indices of the attacked eps (> 0) in the order ``walk`` tests them; each once.

    up: ascending. down: descending. bisect: the largest eps first (a single run there), then
    the fixed binary-search tree over the smaller ones, level by level."""
    check_walk(walk)
    m, a0 = len(grid), first_attacked(grid)
    indices = list(range(a0, m))
    if walk == vocab.Walk.UP or not indices:
        return indices
    if walk == vocab.Walk.DOWN:
        return indices[::-1]
    levels = {m - 1: 0}
    _tree_levels(a0, m - 1, 1, levels)
    return sorted(levels, key=lambda j: (levels[j], j))


def max_tests(walk: str, grid: Sequence[float]) -> int:
    """The most eps at which one point can be attacked by ``walk`` on ``grid``."""
    attacked = len(grid) - first_attacked(grid)
    if walk != vocab.Walk.BISECT or attacked == 0:
        return attacked
    return 1 + math.ceil(math.log2(attacked))


@dataclass
class _State:
    """Each point's breaking index b over the sorted grid (robust at index j exactly when j < b),
    as far as it is known: lo <= b <= hi. A point is robust at every index below lo (measured,
    or inferred from a measurement at a larger eps) and broken at every index from hi (proved by
    an adversarial example at index hi; hi = len(grid): none found). Settled when lo == hi."""

    lo: torch.Tensor  # int64 [n]
    hi: torch.Tensor  # int64 [n]
    m: int  # grid size

    @classmethod
    def start(cls, clean: torch.Tensor, grid: Sequence[float]) -> "_State":
        """Clean-correct points: b anywhere in first_attacked..m; the others: broken at eps 0."""
        m, a0 = len(grid), first_attacked(grid)
        lo = torch.where(clean, a0, 0).long()
        return cls(lo, torch.where(clean, m, 0).long(), m)

    def flags_at(self, j: int) -> torch.Tensor:
        """Robust at grid index j (final once j is decided for every point)."""
        return self.lo > j

    def due(self, walk: str, j: int) -> torch.Tensor:
        """The points that ``walk`` attacks at grid index j now."""
        if walk == vocab.Walk.UP:
            nxt = self.lo
        elif walk == vocab.Walk.DOWN:
            nxt = self.hi - 1
        else:  # bisect: the largest eps first, then the middle of what is left
            nxt = torch.where(self.hi == self.m, self.m - 1, (self.lo + self.hi) // 2)
        return (self.lo < self.hi) & (nxt == j)

    def settle(self, idx: torch.Tensor, j: int, robust: torch.Tensor) -> None:
        """Points ``idx`` found robust (``robust``) or broken at index j; points already decided
        at j keep what they have."""
        lo, hi = self.lo[idx], self.hi[idx]
        open_ = (lo <= j) & (j < hi)
        self.lo[idx] = torch.where(open_ & robust, j + 1, lo)
        self.hi[idx] = torch.where(open_ & ~robust, j, hi)


def _walk_eps(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    state: _State,
    j: int,
    w: Walk,
) -> int:
    """Attack, batch by fixed batch, the points the walk tests at grid index j; updates
    ``state`` and returns how many points were attacked."""
    eps, n, B, k0 = w.eps[j], len(state.lo), w.batch_size, w.first_batch
    kept = w.recorder.batches(eps)
    due = state.due(w.walk, j)
    n_batches, attacked = math.ceil(n / B), 0
    for k in range(n_batches):
        lo, hi = k * B, min((k + 1) * B, n)
        if k + k0 in kept:  # finished before an interruption: same seed, same result
            state.settle(torch.arange(lo, hi), j, kept[k + k0])
            continue
        started = time.perf_counter()
        idx = due[lo:hi].nonzero().flatten() + lo  # only the points this eps decides
        if w.bar is not None:
            w.bar.set_postfix_str(
                f"{attack.display} eps={format_eps(eps, attack.norm)} batch {k + 1}/{n_batches} "
                f"attacking {len(idx)}",
                refresh=True,
            )
        if len(idx):
            state.settle(
                idx,
                j,
                attack_points(
                    model, attack, x, y, idx, eps, batch_seed(w.seed, eps, k + k0), offset=k0 * B
                ),
            )
        seconds = time.perf_counter() - started
        w.recorder.batch(eps, k + k0, state.flags_at(j)[lo:hi].clone(), seconds)
        if w.on_batch is not None and len(idx):
            w.on_batch(attack, eps, k + k0, seconds)
        attacked += len(idx)
    return attacked


def _run_steps(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    state: _State,
    w: Walk,
    result: GridResult,
) -> None:
    """Every attacked eps in the walk's order: taken from the recorder when finished before,
    else attacked; each finished step is recorded at once (eps 0 with the first of them)."""
    zeros = [j for j, e in enumerate(w.eps) if e == 0]
    for j in walk_order(w.walk, w.eps):
        started = time.perf_counter()
        stored = w.recorder.done(w.eps[j])
        if stored is not None:  # this step finished in an earlier, interrupted run
            state.settle(torch.arange(len(stored)), j, stored)
            result.reused += 1
        else:
            result.attacked[j] = _walk_eps(model, attack, x, y, state, j, w)
            result.seconds[j] = time.perf_counter() - started
            for (
                z
            ) in zeros:  # the eps-0 rows, stored with the first attacked step (not before an error)
                w.recorder.finish(w.eps[z], state.flags_at(z), 0.0)
            zeros = []
            w.recorder.finish(w.eps[j], state.flags_at(j), result.seconds[j])
        if w.bar is not None:
            w.bar.update(1)
    for z in zeros:  # a grid of eps 0 alone, or every step taken from the store
        w.recorder.finish(w.eps[z], state.flags_at(z), 0.0)


def grid_walk(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_grid: Sequence[float],
    *,
    batch_size: int,
    seed: int,
    clean: torch.Tensor | None = None,
    bar: Any = None,
    recorder: Recorder | None = None,
    on_batch: Callable[[Attack, float, int, float], None] | None = None,
    first_batch: int = 0,
    walk: str = DEFAULT_WALK,
) -> GridResult:
    """Walk ``eps_grid`` (sorted here) with ``attack`` on images ``x`` in [0, 1] (any device;
    batches go to the model's device). ``clean``: the clean-correct flags if already known.
    ``bar``: a tqdm bar ticked once per eps > 0; ``recorder``: where progress is kept.
    ``first_batch``: x is a shard that starts at batch ``first_batch`` of the whole set (its
    first point is point first_batch * batch_size); the shards' flags, concatenated in order,
    equal the unsharded walk's, since batch seeds and per-point seeds use whole-set indices and
    every walk decides a point from its own batch's outcomes only.
    ``walk``: up, down or bisect (the default; see the module docstring)."""
    check_walk(walk)
    model.eval()
    y_cpu = y.detach().cpu()
    if clean is None:
        clean = predict(model, x) == y_cpu
    w = Walk(
        sorted(float(e) for e in eps_grid),
        batch_size,
        seed,
        bar,
        recorder or Recorder(),
        on_batch,
        first_batch,
        walk,
    )
    m = len(w.eps)
    state = _State.start(clean.detach().cpu().bool(), w.eps)
    result = GridResult(attack, w.eps, [], [0.0] * m, walk=walk, attacked=[0] * m)
    _run_steps(model, attack, x, y_cpu, state, w, result)
    result.flags = [state.flags_at(j).clone() for j in range(m)]
    return result
