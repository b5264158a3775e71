"""Numbers derived from stored flags: intervals and the worst case over attacks.

Pure functions of result rows (no store, no torch), shared by ``bench eval``'s table, the report
and the JSON, so that every place shows the same number for the same rows.

Worst case ("any"): on one evaluation (one model's weights, the same n points), at each eps a
point is robust only if every attack evaluated at that eps left it robust, and only if it was
robust at every smaller eps of the union grid (the L-infinity balls are nested, so an adversarial
example found at a smaller eps is also one at every larger eps). Attacks of the evaluation that
were not run at an eps are listed as missing there, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from bench.evaluation import stats
from bench.params import parse_number
from bench.store import ResultRow, canonical, eps_key


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials, as fractions (scipy's
    ``binomtest(k, n).proportion_ci(method="wilson")``; Wilson 1927, preferred over the normal
    approximation near 0 and 1, Brown, Cai and DasGupta 2001). n = 0 gives (0, 1)."""
    return stats.wilson(k, n)


@dataclass(frozen=True)
class Estimate:
    """An accuracy with its count, n and 95% Wilson interval."""

    k: int
    n: int

    @property
    def acc(self) -> float:
        return self.k / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def overlaps(self, other: "Estimate") -> bool:
        """True when the two 95% intervals overlap (the two are not separated)."""
        a, b = self.interval, other.interval
        return a[0] <= b[1] and b[0] <= a[1]

    def text(self, unit: str = "", dash: str = "–") -> str:
        """``66.0 (59.2–72.2)``: accuracy and its 95% Wilson interval, in %; the terminal's
        ``72.0% (63.1-79.6)`` is ``unit="%", dash="-"``."""
        lo, hi = self.interval
        return f"{100 * self.acc:.1f}{unit} ({100 * lo:.1f}{dash}{100 * hi:.1f})"

    def as_dict(self) -> dict[str, float | int]:
        lo, hi = self.interval
        return {
            "acc": round(100 * self.acc, 2),
            "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
            "k": self.k,
            "n": self.n,
        }


def estimate(flags: str) -> Estimate:
    """The estimate of a '0'/'1' flag string."""
    return Estimate(flags.count("1"), len(flags))


def attack_id(row: ResultRow) -> str:
    """An attack with its parameters, e.g. ``pgd{"steps":10,...}``: the unit a worst case covers."""
    return f"{row.attack}{canonical(row.params)}"


@dataclass
class WorstPoint:
    """The worst case at one eps: flags, the attacks it covers there and those missing; where
    remedies or probes broke more points (:func:`corrected`), the checks that did and the flags
    before they did."""

    eps: float
    flags: str
    covered: list[str]
    missing: list[str] = field(default_factory=list)
    corrected_by: list[str] = field(default_factory=list)
    before: str = ""

    @property
    def estimate(self) -> Estimate:
        return estimate(self.flags)

    @property
    def overstated(self) -> int:
        """Points the attacks counted robust that a remedy or probe broke (0 if uncorrected)."""
        return self.before.count("1") - self.flags.count("1") if self.before else 0


#: A correction: (the check whose attack broke the points, eps, indices of the points broken).
Correction = tuple[str, float, Sequence[int]]


PASSED, CORRECTED, FLAGGED = "passed", "corrected", "flagged"  # a finding's status


def status(flagged: bool, details: dict[str, Any]) -> str:
    """A finding's status: ``flagged`` (the number may be false: the evaluation is unreliable),
    ``corrected`` (its remedy or probe broke points the attacks had left: the worst case is
    lowered, ``details['corrections']``) or ``passed``."""
    if flagged:
        return FLAGGED
    return CORRECTED if any((details.get("corrections") or {}).values()) else PASSED


def corrections(findings: Iterable[Any]) -> list[Correction]:
    """The corrections that findings (or their stored rows) carry: ``details['corrections']``,
    eps as text -> indices of the points broken there. None for a model found randomized: a
    single misclassified pass of a random model proves nothing (its evaluation is flagged)."""
    findings = list(findings)
    if any(f.check == "randomized" and f.flagged for f in findings):
        return []
    return [
        (f.check, parse_number(e, "correction"), idx)  # any norm's eps: no Linf bound
        for f in findings
        for e, idx in (f.details.get("corrections") or {}).items()
        if idx
    ]


def corrected(worst: Sequence[WorstPoint], fixes: Iterable[Correction]) -> list[WorstPoint]:
    """The worst case with ``fixes`` applied: a point broken at eps e is broken at every eps of
    the grid >= e (the balls are nested). A point is never counted robust again."""
    fixes = list(fixes)
    out = []
    for w in worst:
        # eps comes back from text (6 significant digits): compare with a relative tolerance
        here = [(c, idx) for c, e, idx in fixes if 0 < e <= w.eps * (1 + 1e-5)]
        drop = {int(i) for _, idx in here for i in idx}
        flags = "".join("0" if i in drop else f for i, f in enumerate(w.flags))
        if flags == w.flags:
            out.append(w)
            continue
        by = sorted({c for c, idx in here if any(w.flags[int(i)] == "1" for i in idx)})
        out.append(WorstPoint(w.eps, flags, w.covered, w.missing, by, w.before or w.flags))
    return out


def _and(a: str, b: str) -> str:
    return "".join("1" if x == "1" and y == "1" else "0" for x, y in zip(a, b))


def worst_case(rows: Sequence[ResultRow], clean_flags: str | None = None) -> list[WorstPoint]:
    """The worst case per eps over ``rows`` (all of one evaluation: same weights and n).

    ``clean_flags``: the clean-correct flags (eps 0), when known; else the rows' flags at eps 0
    or, failing those, the first eps. Eps are visited upwards; each point carries forward."""
    if not rows:
        return []
    n = rows[0].n
    if any(r.n != n or len(r.flags) != n for r in rows):
        raise ValueError("worst_case needs rows of one evaluation (one n)")
    every = sorted({attack_id(r) for r in rows})
    by_eps: dict[int, list[ResultRow]] = {}
    for r in rows:
        by_eps.setdefault(eps_key(r.eps), []).append(r)
    carry = clean_flags if clean_flags is not None else "1" * n
    out = []
    for key in sorted(by_eps):
        here = by_eps[key]
        flags = carry
        for r in here:
            flags = _and(flags, r.flags)
        covered = sorted({attack_id(r) for r in here})
        missing = [a for a in every if a not in covered] if key > 0 else []
        out.append(WorstPoint(here[0].eps, flags, covered, missing))
        carry = flags
    return out


def group_rows(rows: Iterable[ResultRow]) -> dict[tuple[str, str, int], list[ResultRow]]:
    """Rows grouped by evaluation: (run id, fingerprint, n)."""
    out: dict[tuple[str, str, int], list[ResultRow]] = {}
    for r in rows:
        out.setdefault((r.run_id, r.fingerprint, r.n), []).append(r)
    return out


__all__ = [
    "Correction",
    "Estimate",
    "WorstPoint",
    "corrected",
    "corrections",
    "attack_id",
    "estimate",
    "group_rows",
    "wilson",
    "worst_case",
]
