"""The work of an evaluation that needs the model and its points, as plain requests and the
functions that do them. The pipeline (:mod:`bench.evaluation.pipeline`) asks for this work; an
executor does it: in this process (:mod:`bench.evaluation.local`) or in Ray tasks
(:mod:`bench.evaluation.ray_executor`), with the same functions, so both give the same flags.

* :class:`Cheap`: the always-on checks before the attacks.
* :class:`Clean`: the clean predictions, when no walk made them now.
* :class:`Shard`: the grid walk of some attacks over batches ``k0..k1-1`` of the points.
* :class:`Inference`: the walk-inference check on the merged walks.
* :class:`Probes`: the always-on black-box and transfer probes.
* :class:`Costly`: the ``--diagnose`` checks (large budget, loss trace and its remedy).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn

from bench.attacks import Attack, collect_warnings
from bench.evaluation import audit, probes
from bench.evaluation.walk import GridResult, Recorder, flag_text, grid_walk, predict
from bench.io import model_device


@dataclass
class Cheap:
    """The cheap checks (randomized outputs, probabilities, gradients) on at most 200 points."""

    kind = "audit"


@dataclass
class Clean:
    """The clean predictions: which points the model classifies correctly (bool [n])."""

    kind = "clean"


@dataclass
class Shard:
    """Walk the grid with attacks ``which`` (indices into ``attacks``) over batches k0..k1-1."""

    attacks: list[Attack]
    which: list[int]
    k0: int
    k1: int
    eps: list[float]
    batch_size: int
    seed: int
    walk: str
    kind = "shard"


@dataclass
class Inference:
    """The walk-inference check of merged walks (``no_grad``: the attack where gradients are
    unavailable)."""

    results: list[GridResult]
    seed: int
    no_grad: Attack | None = None
    kind = "inference"


@dataclass
class Costly:
    """The costly checks at the grid's largest eps, given the worst-case flags there."""

    eps: float
    worst: torch.Tensor
    seed: int
    norm: str = "Linf"
    kind = "costly"


@dataclass
class Probes:
    """The always-on probes (:mod:`bench.evaluation.probes`)."""

    probe: probes.Probe
    kind = "probes"


@dataclass
class Stats:
    """One attack's walk over one shard: points attacked and seconds at each grid index, and
    the steps taken from the store instead of being run."""

    attacked: list[int]
    seconds: list[float]
    reused: int = 0


@dataclass
class ShardResult:
    """One shard's walk: per attack (by index), eps -> batch -> (flags, seconds) of what the
    recorder captured; the clean flags by batch; each attack's :class:`Stats`; AutoAttack's
    warnings; the device it ran on."""

    k0: int
    k1: int
    clean: dict[int, str]
    steps: dict[int, dict[float, dict[int, tuple[str, float]]]] = field(default_factory=dict)
    stats: dict[int, Stats] = field(default_factory=dict)
    warnings: list[tuple[str, float, int]] = field(default_factory=list)
    device: str = "cpu"


class Capture(Recorder):
    """A grid walk's per-batch flags, kept in memory to be sent back to the driver."""

    def __init__(self) -> None:
        self.steps: dict[float, dict[int, tuple[str, float]]] = {}

    def batch(self, eps: float, k: int, flags: torch.Tensor, seconds: float) -> None:
        self.steps.setdefault(eps, {})[k] = (flag_text(flags), seconds)


def by_batch(flags: torch.Tensor, batch_size: int, k0: int) -> dict[int, str]:
    """Flags of consecutive points from batch ``k0`` on, split into the fixed batches."""
    return {
        k0 + i: flag_text(flags[lo : lo + batch_size])
        for i, lo in enumerate(range(0, len(flags), batch_size))
    }


@dataclass
class Live:
    """How an in-process walk reports as it goes: a recorder per attack (given the clean
    accuracy), a progress bar and a per-batch callback. Ray workers use none of these."""

    recorder: Callable[[int, float], Recorder] | None = None
    bar: Any = None
    on_batch: Callable[[Attack, float, int, float], None] | None = None


def walk_shard(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    s: Shard,
    device: str,
    live: Live | None = None,
) -> ShardResult:
    """Walk the grid with each attack of ``s.which`` on batches k0..k1-1 of the points ``x``,
    ``y`` (the whole evaluated set) with ``first_batch=k0``: the flags equal an unsharded walk's."""
    live = live or Live()
    B = s.batch_size
    xs, ys = x[s.k0 * B : s.k1 * B], y[s.k0 * B : s.k1 * B]
    clean = predict(model, xs) == ys
    result = ShardResult(s.k0, s.k1, by_batch(clean, B, s.k0), device=device)
    with collect_warnings() as warned:
        for i in s.which:
            rec = (
                live.recorder(i, int(clean.sum()) / max(len(clean), 1))
                if live.recorder
                else Capture()
            )
            r = grid_walk(
                model,
                s.attacks[i],
                xs,
                ys,
                s.eps,
                batch_size=B,
                seed=s.seed,
                clean=clean,
                bar=live.bar,
                recorder=rec,
                on_batch=live.on_batch,
                first_batch=s.k0,
                walk=s.walk,
            )
            result.steps[i] = rec.steps if isinstance(rec, Capture) else {}
            result.stats[i] = Stats(r.attacked, r.seconds, r.reused)
    result.warnings = list(dict.fromkeys(warned))
    return result


def cheap(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Any]:
    """:func:`bench.evaluation.audit.cheap` on the points."""
    return audit.cheap(model, x, y)


def inference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: Inference) -> list[Any]:
    """:func:`bench.evaluation.audit.inference` on the merged walks."""
    return audit.inference(model, x, y, w.results, w.seed, w.no_grad)


def costly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: Costly) -> list[Any]:
    """:func:`bench.evaluation.audit.costly`."""
    return audit.costly(model, x, y, audit.Costly(w.eps, w.worst, w.seed, w.norm))


def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: Probes) -> list[Any]:
    """:func:`bench.evaluation.probes.run`; the surrogate moves to the model's device."""
    p = w.probe
    if p.surrogate is not None:
        p = replace(p, surrogate=p.surrogate.to(model_device(model)).eval())
    return probes.run(model, x, y, p)


def execute(
    item: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: str,
    live: Live | None = None,
) -> Any:
    """Do one work item on a model already on its device (``device``: its label for the rows)."""
    model.eval()
    if isinstance(item, Shard):
        return walk_shard(model, x, y, item, device, live)
    if isinstance(item, Cheap):
        return cheap(model, x, y)
    if isinstance(item, Clean):
        return predict(model, x) == y
    if isinstance(item, Inference):
        return inference(model, x, y, item)
    if isinstance(item, Costly):
        return costly(model, x, y, item)
    if isinstance(item, Probes):
        return probe(model, x, y, item)
    raise TypeError(f"unknown work item {type(item).__name__}")


def describe(item: Any) -> str:
    """A work item on one line (task logs, progress)."""
    if isinstance(item, Shard):
        return f"shard {item.k0}-{item.k1}"
    return str(getattr(item, "kind", type(item).__name__))


__all__: Sequence[str] = [
    "Capture",
    "Cheap",
    "Clean",
    "Costly",
    "Inference",
    "Live",
    "Probes",
    "Shard",
    "ShardResult",
    "Stats",
    "execute",
    "walk_shard",
]
