"""The statistics of bench's checks: each check is a test of the null hypothesis "the attacks are
not failing", with a false-alarm rate (its significance level) fixed in advance.

Family-wise false alarms (Bonferroni): one evaluation runs at most the checks in :data:`ALPHAS`;
their levels sum to :data:`FAMILY_ALPHA` (1%), so on an honest model the probability that any
of them fires is at most 1%, whichever of them run. A check that makes several tests in one
evaluation (a comparison at several eps or between several pairs of attacks) splits its level
evenly between them (:func:`split`). Checks whose evidence is a proof, not a count (a model whose
outputs change between identical passes, probabilities for logits, a NaN gradient, an input cut
off from the graph) cannot fire on a deterministic, differentiable model and spend no level.

The tests are scipy's: :func:`scipy.stats.binomtest` for the exact binomial test and for
McNemar's exact test (the discordant pairs of two attacks on the same points, Binomial(b + c,
1/2) under the null), and its Wilson interval.
"""

from __future__ import annotations

from scipy.stats import binomtest

from bench.vocab import Check

FAMILY_ALPHA = 0.01  # one evaluation's family-wise false-alarm rate, at most

#: Each statistical check's false-alarm rate (summing to FAMILY_ALPHA): Bonferroni's split.
ALPHAS: dict[str, float] = {
    Check.GRADIENTS: 0.001,  # zero gradients on more points than float rounding explains
    Check.LARGE_BUDGET: 0.001,  # points left standing at eps 1
    Check.SQUARE_VS_WHITEBOX: 0.001,  # the user's Square beats the white-box attacks
    Check.ITERATIVE_VS_SINGLE_STEP: 0.001,  # FGSM beats an iterative attack
    Check.WALK_INFERENCE: 0.001,  # points inferred robust broken by a direct attack
    Check.BLACK_BOX_PROBE: 0.002,  # the always-on Square probe beats the white-box attacks
    Check.TRANSFER: 0.001,  # a surrogate's examples beat the white-box attacks
    Check.AUTOATTACK_CHECKS: 0.001,  # AutoAttack's Square gain (checks.py) in McNemar's test
    Check.LOSS_TRACE: 0.001,  # the remedy breaks significantly many points (a correction)
}
assert abs(sum(ALPHAS.values()) - FAMILY_ALPHA) < 1e-12


def split(alpha: float, tests: int) -> float:
    """The level of each of ``tests`` tests sharing ``alpha`` (Bonferroni)."""
    return alpha / max(1, tests)


def binomial_p(k: int, n: int, p0: float) -> float:
    """One-sided exact binomial p-value: P(K >= k) for K ~ Binomial(n, p0); 1 when n = 0."""
    if n <= 0:
        return 1.0
    return float(binomtest(int(k), int(n), p0, alternative="greater").pvalue)


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of ``b`` pairs discordant one way and ``c`` the other:
    the binomial test of b successes in b + c trials at 1/2 (scipy); 1 when b + c = 0."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    if b + c == 0:
        return 1.0
    return float(binomtest(int(b), int(b + c), 0.5).pvalue)


def min_count(n: int, p0: float, alpha: float) -> int | None:
    """The smallest k with :func:`binomial_p` (k, n, p0) < alpha: below it the check cannot
    fire; None when even k = n cannot."""
    for k in range(n + 1):
        if binomial_p(k, n, p0) < alpha:
            return k
    return None


def mcnemar_min(alpha: float) -> int:
    """The smallest b with :func:`mcnemar` (b, 0) < alpha: how many points one attack must break
    that the other did not, with none the other way, before a comparison can fire."""
    b = 1
    while mcnemar(b, 0) >= alpha:
        b += 1
    return b


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of k in n (scipy's); (0, 1) when n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


def level(check: str, tests: int = 1) -> float:
    """The level of one of ``tests`` tests that ``check`` makes in one evaluation."""
    return split(ALPHAS[check], tests)
