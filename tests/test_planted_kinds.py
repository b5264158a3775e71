"""bench's public API, PGD alone, on models that fake robustness in ways only an adaptive attack
exposes (tests/planted.py, ``adaptive_kinds``: Athalye et al. 2018, Tramer et al. 2020), and on
honest models. An evaluation of a fake must either say it is unreliable or report (close to) the
robust accuracy the adaptive attack finds; an honest model's must do neither harm: no flag, and
its number near the truth.

The planted models take 1x8x8 images; ``bench.evaluate_model`` first checks the model on a zero
batch of its data set's shape (Fashion-MNIST, 1x28x28), so each model is given an adaptive
average pool to 8x8 in front, the identity on the 8x8 points evaluated here.
"""

from __future__ import annotations

import planted as P
import pytest
import torch
from torch import nn

import bench
from bench.attacks import make_attack
from bench.evaluation.outcome import Evaluation

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.02
TOLERANCE = 0.03  # a corrected worst case within 3 points of the adaptive attack's


HONEST = ("plain", "normalized", "seed-1")  # tests/planted.py honest_models(), by name


def _case(name: str) -> P.AdaptiveCase:
    """The catalogue's entry (built on first use, in a test, not at collection)."""
    return {c.name: c for c in P.adaptive_kinds()}[name]


def _any_size(model: nn.Module) -> nn.Module:
    """``model`` behind an adaptive average pool to 8x8 (the identity on 8x8 inputs)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(8), model)


def _evaluate(model: nn.Module, name: str, eps: float) -> Evaluation:
    x, y = P.test_points()
    torch.manual_seed(0)  # the randomized model's draws
    return bench.evaluate_model(
        _any_size(model),
        x=x,
        y=y,
        attacks="pgd",
        eps=[0.0, eps],
        name=name,
        n=len(y),
        batch_size=100,
        seed=0,
        transfer_from=_any_size(P.honest(2)),
    )


def _flags(ev: Evaluation) -> dict[str, str]:
    return {f.check: f.summary for f in ev.findings if f.flagged}


def test_the_catalogue() -> None:
    """Five kinds at least, at the budget where PGD leaves 20-40% of the honest base."""
    cases = P.adaptive_kinds()
    assert len(cases) >= 5 and [c.name for c in cases] == list(P.ADAPTIVE_NAMES)
    assert all(c.eps == EPS for c in cases)
    assert 0.2 <= P.honest_truth(P.honest(0), EPS) <= 0.4
    assert [name for name, _ in P.honest_models()] == list(HONEST)


@pytest.mark.parametrize("name", P.ADAPTIVE_NAMES)
def test_pgd_alone_overstates_each_kind(name: str) -> None:
    """What makes each a fake: bench's PGD alone, attacking the model directly, leaves at least
    10 more points of 100 standing than the adaptive attack."""
    case = _case(name)
    x, y = P.test_points()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x_adv = make_attack("pgd").run(case.model, x, y, case.eps, seed=0)
        with torch.no_grad():
            right = (case.model(x).argmax(1) == y) & (case.model(x_adv).argmax(1) == y)
    assert float(right.float().mean()) - case.truth(case.eps) > 0.10


@pytest.mark.parametrize("name", P.ADAPTIVE_NAMES)
def test_fake_is_flagged_or_corrected(name: str) -> None:
    case = _case(name)
    ev = _evaluate(case.model, name, case.eps)
    top = ev.worst[-1]
    assert top.eps == case.eps
    truth = case.truth(case.eps)
    reported = top.estimate.acc
    assert ev.unreliable or abs(reported - truth) <= TOLERANCE, (
        f"{name}: PGD reports {reported:.2f} robust accuracy, the adaptive attack "
        f"({case.attack}) {truth:.2f}, and nothing is flagged"
    )


@pytest.mark.parametrize("name", HONEST)
def test_honest_model_is_reliable(name: str) -> None:
    model = dict(P.honest_models())[name]
    ev = _evaluate(model, name, EPS)
    assert not ev.unreliable, _flags(ev)
    lo, hi = ev.worst[-1].estimate.interval
    truth = P.honest_truth(model, EPS)
    assert lo <= truth <= hi, (name, ev.worst[-1].estimate.acc, truth)
