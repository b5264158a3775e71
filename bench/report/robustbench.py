"""RobustBench, out and in: whether a model's numbers could be submitted to RobustBench's
Linf leaderboard, and the published numbers of zoo models (``bench eval --robustbench``) shown
beside ours.

What RobustBench ranks (https://robustbench.github.io, its README and model-info files):
CIFAR-10, CIFAR-100 and ImageNet, in the Linf, L2 and corruptions threat models; bench evaluates
Linf only. A Linf entry is standard AutoAttack (``rand`` for a randomized defense) at the data
set's budget -- 8/255 for CIFAR-10 and CIFAR-100, 4/255 for ImageNet -- on the full test set
(10,000 CIFAR points; 5,000 ImageNet validation points).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.errors import UsageError
from bench.params import format_eps, parse_eps
from bench.report.model import Model
from bench.store import eps_key

THREAT_MODEL = "Linf"  # the only threat model bench evaluates


@dataclass(frozen=True)
class Benchmark:
    """RobustBench's Linf setting of one data set: the budget and the points evaluated."""

    eps: float
    n: int


#: bench data-set name -> RobustBench's Linf benchmark.
RANKED: dict[str, Benchmark] = {
    "cifar10": Benchmark(8 / 255, 10_000),
    "cifar100": Benchmark(8 / 255, 10_000),
    "imagenet": Benchmark(4 / 255, 5_000),
}


def submission(m: Model, key: int) -> dict[str, Any]:
    """``{"submittable": bool, "reasons": [...]}`` for the numbers of ``m`` at eps ``key``
    (nano-units), as the model-info JSON reports them. Every reason that applies is listed."""
    reasons: list[str] = []
    bench = RANKED.get(m.run.dataset)
    if bench is None:
        reasons.append(
            f"RobustBench does not rank {m.run.dataset}; its Linf leaderboards are "
            f"{', '.join(RANKED)}"
        )
    else:
        if key != eps_key(bench.eps):
            reasons.append(
                f"eps {format_eps(key / 1e9)} is not RobustBench's {THREAT_MODEL} budget "
                f"for {m.run.dataset} ({format_eps(bench.eps)})"
            )
        if m.n < bench.n:
            reasons.append(
                f"n = {m.n} points, below the full test set RobustBench evaluates ({bench.n:,})"
            )
    if m.basis_variant(key) is None:
        version = "rand" if m.randomized else "standard"
        reasons.append(
            f"no {version} AutoAttack at eps {format_eps(key / 1e9)} (RobustBench's ranking attack)"
        )
    if m.unreliable:
        reasons.append(
            "unreliable evaluation: flagged by bench's checks (" + ", ".join(m.flags) + ")"
        )
    return {"submittable": not reasons, "reasons": reasons}


def published(m: Model) -> dict[str, Any] | None:
    """The numbers a zoo model's authors published (from ``--model-info``), if recorded."""
    value = (m.run.run or {}).get("published")
    return value if isinstance(value, dict) else None


def published_note(m: Model) -> str | None:
    """Why a zoo model has no published numbers (e.g. no ``--model-info`` given)."""
    note = (m.run.run or {}).get("published_note")
    return str(note) if note else None


def published_key(m: Model, default: int) -> int:
    """The eps (nano-units) the published numbers are at; ``default`` if not readable."""
    pub = published(m) or {}
    try:
        return eps_key(parse_eps(str(pub.get("eps")), "published eps"))
    except UsageError:  # absent or malformed in the model-info file: compare at the ranking eps
        return default
