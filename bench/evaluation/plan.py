"""The plan of one evaluation, as plain data: which model and points, which attacks at which eps,
in which fixed batches, how the grid is walked, which checks run, and how the batches are cut
into shards. Every entry point (``bench eval``, ``bench.evaluate_model``, ``bench quick``,
``bench sweep``) builds one and hands it to :mod:`bench.evaluation.pipeline`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from bench import norms
from bench.attacks import Attack
from bench.errors import UsageError
from bench.evaluation.targets import Target
from bench.evaluation.walk import DEFAULT_WALK, check_walk
from bench.norms import LINF
from bench.params import CLI, MAX_GRID_POINTS, Names
from bench.store import canonical

SEED_MAX = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer
MAX_BATCH = 1_000_000  # points per attacked batch: far above any memory, below overflow


@dataclass
class Settings:
    """What an evaluation runs: attacks, grid, batch size, seed, walk; ``fresh`` recomputes
    stored steps."""

    attacks: list[Attack]
    eps_grid: list[float]
    batch_size: int = 500
    seed: int = 0
    fresh: bool = False
    progress: bool = True
    diagnose: bool = False  # the costly checks too (large budget, loss trace and its remedy)
    transfer_from: Any = None  # the transfer probe's surrogate (an nn.Module), or None
    walk: str = DEFAULT_WALK  # how each attack walks the grid: up, down or bisect
    norm: str = LINF  # the threat model (bench.norms); every attack is made for it


@dataclass
class Plan:
    """One evaluation: the model with its points (:class:`Target`), the settings, and how many
    shards the fixed batches are cut into (1: one worker walks them all)."""

    target: Target
    settings: Settings
    shards: int = 1

    @property
    def n(self) -> int:
        return len(self.target.y)

    def batches(self) -> int:
        """Fixed batches of the evaluated points (batch k holds points k*B .. (k+1)*B-1)."""
        return math.ceil(self.n / self.settings.batch_size)

    def shard_ranges(self) -> list[tuple[int, int]]:
        """``[k0, k1)`` batch ranges of the shards."""
        return shard_ranges(self.batches(), self.shards)


def shard_ranges(total: int, count: int) -> list[tuple[int, int]]:
    """``total`` batches cut into at most ``count`` ``[k0, k1)`` ranges, as even as they allow."""
    edges = [round(i * total / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1]) for i in range(count) if edges[i + 1] > edges[i]]


def check_settings(
    attacks: Sequence[Attack],
    eps_grid: Sequence[float],
    batch_size: int,
    seed: int,
    names: Names = CLI,
) -> None:
    """Attacks listed once, eps in [0, 1], batch size >= 1, seed in range (UsageError naming
    each setting as ``names`` spells it: a flag, or the Python API's keyword)."""
    if not attacks:
        raise UsageError("no attack given")
    seen: set[tuple[str, str]] = set()
    for a in attacks:
        key = (a.label, canonical(a.params))
        if key in seen:
            raise UsageError(f"attack {a.display} is listed twice")
        seen.add(key)
    norm = attacks[0].norm  # the image size bounds L2 and L1 budgets: checked by check_plan
    _check_grid(eps_grid, norm, 1.0 if norm == LINF else math.inf)
    if not _whole_in(batch_size, 1, MAX_BATCH):
        raise UsageError(
            f"{names('batch_size')} must be a whole number in 1..{MAX_BATCH}, got {batch_size!r}"
        )
    if not _whole_in(seed, 0, SEED_MAX):
        raise UsageError(f"{names('seed')} must be a whole number in 0..2**63-1, got {seed!r}")


def _whole_in(value: object, low: int, high: int) -> bool:
    """``value`` is an int (not a bool) in ``low..high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_grid(eps_grid: Sequence[float], norm: str = LINF, reach: float = 1.0) -> None:
    """A grid of 1..MAX_GRID_POINTS eps on the pixel scale, each in [0, ``reach``]: 1 under
    Linf, under L2 and L1 the budget that already reaches every image (UsageError)."""
    if not eps_grid:
        raise UsageError("the eps grid is empty")
    if len(eps_grid) > MAX_GRID_POINTS:  # the API takes lists that never went through the parser
        raise UsageError(f"the eps grid has {len(eps_grid)} values; at most {MAX_GRID_POINTS}")
    for e in eps_grid:
        if not (isinstance(e, (int, float)) and math.isfinite(e) and 0.0 <= e <= reach):
            if norm == LINF:
                raise UsageError(f"eps {e!r} is outside [0, 1] (pixel scale; write e.g. 8/255)")
            raise UsageError(
                f"{norm} eps {e!r} is outside [0, {reach:g}] ({reach:g} already reaches every "
                "image of this size; eps is on the [0, 1] pixel scale)"
            )


def _check_norm(plan: Plan) -> None:
    """The plan's norm is known, every attack is made for it, and its grid fits the images."""
    s = plan.settings
    s.norm = norms.check_norm(s.norm)
    for a in s.attacks:
        if a.norm != s.norm:
            raise UsageError(
                f"attack {a.display} is made for {a.norm}, the evaluation for {s.norm}"
            )
    x = plan.target.x  # a sweep's driver holds no images: its workers check their points
    reach = norms.reach(s.norm, tuple(x.shape[1:])) if x.dim() > 1 else math.inf
    _check_grid(s.eps_grid, s.norm, reach)


def check_plan(plan: Plan) -> None:
    """Everything about a plan that can be wrong before it runs (UsageError); sorts the grid."""
    s = plan.settings
    check_settings(s.attacks, s.eps_grid, s.batch_size, s.seed)
    check_walk(s.walk)
    _check_norm(plan)
    s.eps_grid = sorted(float(e) for e in s.eps_grid)
