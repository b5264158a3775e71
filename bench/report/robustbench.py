"""RobustBench, out and in: whether a model's numbers could be submitted to one of RobustBench's
leaderboards, and the published numbers of zoo models (``bench eval --robustbench``) shown
beside ours.

What RobustBench ranks (https://robustbench.github.io, its README and model-info files):
CIFAR-10, CIFAR-100 and ImageNet in the Linf threat model, CIFAR-10 in the L2 one, and
corruptions (which bench does not evaluate); it has no L1 leaderboard. An entry is standard
AutoAttack (``rand`` for a randomized defense) at the leaderboard's budget -- Linf 8/255 for
CIFAR-10 and CIFAR-100, Linf 4/255 for ImageNet, L2 0.5 for CIFAR-10 -- on the full test set
(10,000 CIFAR points; 5,000 ImageNet validation points). bench evaluates Linf, L2 and L1
(:mod:`bench.norms`); each model's numbers are judged against the leaderboard of their norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.errors import UsageError
from bench.norms import L2, LINF
from bench.params import format_eps, parse_eps
from bench.report.model import Model
from bench.report.text import eps_label
from bench.store import eps_key

THREAT_MODELS = (LINF, L2)  # the threat models of bench's that RobustBench ranks


@dataclass(frozen=True)
class Benchmark:
    """One RobustBench leaderboard: the budget and the points evaluated."""

    eps: float
    n: int


#: (bench data-set name, norm) -> RobustBench's leaderboard of it.
RANKED: dict[tuple[str, str], Benchmark] = {
    ("cifar10", LINF): Benchmark(8 / 255, 10_000),
    ("cifar100", LINF): Benchmark(8 / 255, 10_000),
    ("imagenet", LINF): Benchmark(4 / 255, 5_000),
    ("cifar10", L2): Benchmark(0.5, 10_000),
}


def _unranked(dataset: str, norm: str) -> str:
    """Why RobustBench has no leaderboard for ``dataset`` under ``norm``."""
    if norm not in THREAT_MODELS:
        return f"RobustBench has no {norm} leaderboard; it ranks " + ", ".join(
            f"{t} ({', '.join(d for d, n in RANKED if n == t)})" for t in THREAT_MODELS
        )
    ranked = [d for d, n in RANKED if n == norm]
    if len(ranked) == 1:
        return f"RobustBench ranks {norm} only on {ranked[0]}"
    return f"RobustBench does not rank {dataset}; its {norm} leaderboards are {', '.join(ranked)}"


def _benchmark_reasons(m: Model, key: int) -> list[str]:
    """The budget and the points, against the leaderboard of the model's data set and norm."""
    bench = RANKED.get((m.run.dataset, m.norm))
    if bench is None:
        return [_unranked(m.run.dataset, m.norm)]
    reasons = []
    if key != eps_key(bench.eps):
        reasons.append(
            f"eps {format_eps(key / 1e9, m.norm)} is not RobustBench's {m.norm} budget "
            f"for {m.run.dataset} ({format_eps(bench.eps, m.norm)})"
        )
    if m.n < bench.n:
        reasons.append(
            f"n = {m.n} points, below the full test set RobustBench evaluates ({bench.n:,})"
        )
    return reasons


def submission(m: Model, key: int) -> dict[str, Any]:
    """``{"submittable": bool, "reasons": [...]}`` for the numbers of ``m`` at eps ``key``
    (nano-units), as the model-info JSON reports them. Every reason that applies is listed."""
    reasons = _benchmark_reasons(m, key)
    if m.basis_variant(key) is None:
        version = "rand" if m.randomized else "standard"
        reasons.append(
            f"no {version} AutoAttack at {eps_label(m.norm)} {format_eps(key / 1e9, m.norm)} "
            "(RobustBench's ranking attack)"
        )
    if m.unreliable:
        reasons.append(
            "unreliable evaluation: flagged by bench's checks (" + ", ".join(m.flags) + ")"
        )
    return {"submittable": not reasons, "reasons": reasons}


def _published_under(m: Model) -> str | None:
    """The zoo threat model the published numbers are of, where it is not this section's."""
    threat = (m.run.config or {}).get("threat_model")
    return str(threat) if threat and str(threat).lower() != m.norm.lower() else None


def published(m: Model) -> dict[str, Any] | None:
    """The numbers a zoo model's authors published (from ``--model-info``), if recorded and of
    this section's threat model (a Linf number is never shown beside an L2 one)."""
    value = (m.run.run or {}).get("published")
    return value if isinstance(value, dict) and _published_under(m) is None else None


def published_note(m: Model) -> str | None:
    """Why a zoo model has no published numbers here (e.g. no ``--model-info`` given, or they
    are of another threat model)."""
    other = _published_under(m)
    if other is not None:
        return f"published under {other}, not {m.norm}: not comparable"
    note = (m.run.run or {}).get("published_note")
    return str(note) if note else None


def published_key(m: Model, default: int) -> int:
    """The eps (nano-units) the published numbers are at; ``default`` if not readable."""
    pub = published(m) or {}
    try:
        return eps_key(parse_eps(str(pub.get("eps")), "published eps", m.norm))
    except UsageError:  # absent or malformed in the model-info file: compare at the ranking eps
        return default
