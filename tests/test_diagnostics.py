"""Attack-failure diagnostics (bench.evaluation.diagnostics) against planted models that fake
robustness (tests/planted.py) and honest ones: every planted model gets its flags, no honest
model any."""

from __future__ import annotations

import functools
import json
import math

import planted as P
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.evaluation import diagnostics as D

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.02  # the mini evaluation's budget: PGD leaves about 25% of the honest models' points
STEPS = 100


# --------------------------------------------------------------- a mini evaluation


def _robust(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
) -> torch.Tensor:
    with torch.no_grad():
        return (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)


def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    g = D.input_gradients(model, x, y)
    return x.clone() if g is None else (x + eps * g.sign()).clamp(0, 1)


def _pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return D.pgd_with_trace(
        model, x, y, eps, STEPS, alpha, generator=torch.Generator().manual_seed(0)
    )


def _square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    import torchattacks

    atk = torchattacks.Square(model, eps=eps, n_queries=300, n_restarts=1, p_init=0.8, seed=0)
    atk.set_model_training_mode(model_training=False)
    return atk(x, y)


@functools.lru_cache(maxsize=None)
def _transfer_examples() -> torch.Tensor:
    """PGD-100 examples crafted on a surrogate: an honest CNN of another seed."""
    x, y = P.test_points()
    return _pgd(P.honest(2), x, y, EPS, 2.5 * EPS / STEPS)[0]


def _models() -> dict[str, tuple[nn.Module, frozenset[str], frozenset[str]]]:
    probe = {"black-box-probe"}  # the pipeline's always-on probe: tests/test_audit.py
    out = {p.name: (p.model, p.must - probe, p.may - probe) for p in P.planted()}
    out.update({name: (m, frozenset(), frozenset()) for name, m in P.honest_models()})
    return out


@functools.lru_cache(maxsize=None)
def findings(name: str) -> dict[str, D.Finding]:
    """Every check on model ``name``: cheap ones, large budget, and the comparisons on a mini
    evaluation (FGSM, PGD-100 with its loss trace, Square, transfer) at eps 0.02."""
    model = _models()[name][0]
    x, y = P.test_points()
    torch.manual_seed(0)  # the randomized models
    out = {f.check: f for f in D.run_cheap(model, x, y)}
    out["large-budget"] = D.check_large_budget(model, x, y)
    fgsm = _robust(model, x, y, _fgsm(model, x, y, EPS))
    x_pgd, losses = _pgd(model, x, y, EPS, 2.5 * EPS / STEPS)
    pgd = _robust(model, x, y, x_pgd)
    whitebox = fgsm & pgd
    square = _robust(model, x, y, _square(model, x, y, EPS))
    out["iterative-vs-single-step"] = D.compare_attacks(
        "iterative-vs-single-step", "fgsm", fgsm, "pgd", pgd
    )
    out["square-vs-whitebox"] = D.compare_attacks(
        "square-vs-whitebox", "square", square, "white-box", whitebox
    )
    out["loss-trace"] = D.check_loss_trace(losses, robust=pgd)
    out["transfer"] = D.check_transfer(model, x, y, _transfer_examples(), whitebox, eps=EPS)
    out["walk-inference"] = _inference(model, x, y, whitebox)
    return out


def _inference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor
) -> D.Finding:
    """As bench.evaluation.audit.inference on a walk down from EPS: the points robust at EPS,
    attacked by PGD directly at EPS / 2."""
    idx = robust.nonzero().flatten()
    x_half = _pgd(model, x[idx], y[idx], EPS / 2, 2.5 * EPS / 2 / STEPS)[0]
    return D.check_inference(EPS / 2, EPS, _robust(model, x[idx], y[idx], x_half))


PLANTED = [p.name for p in P.planted()]
HONEST = [name for name, _ in P.honest_models()]


def _flags(name: str) -> set[str]:
    """The checks that catch model ``name``: flagged, or (walk-inference) significant, which the
    pipeline's remedy turns into corrections (tests/test_remedies.py)."""
    return {
        c
        for c, f in findings(name).items()
        if f.flagged or (c == "walk-inference" and f.details["significant"])
    }


# --------------------------------------------------------- planted and honest models


def test_planted_catalogue_covers_the_cheap_checks() -> None:
    must = set().union(*(p.must for p in P.planted()))
    assert {
        "randomized",
        "probabilities",
        "gradients",
        "large-budget",
        "transfer",
        "square-vs-whitebox",
    } <= must
    assert all(p.must <= set(D.CHECKS) and p.may <= set(D.CHECKS) for p in P.planted())


@pytest.mark.parametrize("name", PLANTED)
def test_planted_model_gets_its_flags(name: str) -> None:
    _, must, may = _models()[name]
    got = _flags(name)
    assert must <= got, {c: findings(name)[c].summary for c in must - got}
    assert got <= must | may, {c: findings(name)[c].summary for c in got - must - may}


@pytest.mark.parametrize("name", HONEST)
def test_honest_model_gets_no_flag(name: str) -> None:
    fs = findings(name)
    assert set(fs) == set(D.CHECKS) - {"black-box-probe"}  # the pipeline's probe: test_audit.py
    assert _flags(name) == set(), {c: f.summary for c, f in fs.items() if f.flagged}
    with torch.no_grad():
        x, y = P.test_points()
        clean = float((_models()[name][0](x).argmax(1) == y).float().mean())
    assert 0.75 <= clean < 1.0  # an ordinary model: good, not perfect
    assert fs["large-budget"].details["acc"] == 0.0
    assert fs["iterative-vs-single-step"].details["strong_acc"] < clean  # the attacks do bite


@pytest.mark.parametrize("name", PLANTED + HONEST)
def test_findings_are_json_with_source_and_numbers(name: str) -> None:
    for check, f in findings(name).items():
        d = json.loads(json.dumps(f.as_dict()))
        assert (
            d["check"] == check and d["source"] == D.SOURCES[check] and d["summary"] and d["advice"]
        )
        assert isinstance(d["details"], dict) and d["details"]
        assert any(ch.isdigit() for ch in d["summary"])


def test_gradient_shares_recorded() -> None:
    sat = findings("saturate")["gradients"].details
    assert sat["share_zero"] > 0.5 and sat["graph_interrupted"] is False
    assert findings("quantize")["gradients"].details["share_zero"] == 1.0
    assert findings("numpy-preprocess")["gradients"].details["graph_interrupted"] is True
    assert findings("plain")["gradients"].details["share_unavailable"] == 0.0


# ----------------------------------------------------------------------- cheap checks


def test_cheap_checks_cost_seven_forward_passes_on_at_most_200_points() -> None:
    calls: list[int] = []

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = P.honest(0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return self.base(x)

    x, y = P.make_data(300, seed=5)
    fs = D.run_cheap(Counting(), x, y)
    assert [f.check for f in fs] == ["randomized", "probabilities", "gradients"]
    assert calls == [200] * 7  # 5 (randomized) + 1 (range) + 1 with a backward (gradients)


@pytest.mark.parametrize("sigma", [1e-4, 1e-2])
def test_randomized_flags_small_noise(sigma: float) -> None:
    base = P.honest(0)
    x, _ = P.test_points()
    torch.manual_seed(0)
    f = D.check_randomized(lambda_model(lambda t: base(t + sigma * torch.randn_like(t))), x)
    assert f.flagged and f.details["share_differ"] > 0.5


def test_randomized_tolerates_float_noise_of_a_deterministic_model() -> None:
    base = P.honest(0)
    x, _ = P.test_points()
    # 1e-7 relative jitter, the size of float32 nondeterminism (e.g. cuDNN algorithms)
    f = D.check_randomized(lambda_model(lambda t: base(t) * (1 + 1e-7 * torch.randn(len(t), 1))), x)
    assert not f.flagged


def test_probabilities_and_log_probabilities() -> None:
    base = P.honest(0)
    x, _ = P.test_points()
    logp = D.check_probabilities(lambda_model(lambda t: F.log_softmax(base(t), dim=1)), x)
    assert not logp.flagged and logp.details["log_probabilities"] is True
    assert not D.check_probabilities(base, x).details["log_probabilities"]


def test_gradient_nan_is_flagged_and_model_state_untouched() -> None:
    base = P.honest(0)
    x, y = P.test_points()

    def nan_on_first(t: torch.Tensor) -> torch.Tensor:  # 0 * sqrt'(0) = 0 * inf = NaN, point 0 only
        extra = torch.zeros(len(t), 10)
        extra[0] = 0.0 * torch.sqrt((t[0] - t[0].detach()).sum())
        return base(t) + extra

    f = D.check_gradients(lambda_model(nan_on_first), x, y)
    assert f.flagged and f.details["share_nan"] == pytest.approx(0.01)
    model = P._cnn(False).train()
    D.check_gradients(model, x, y)
    D.check_randomized(model, x)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_zero_gradients_flag_only_beyond_what_rounding_explains() -> None:
    base = P.honest(0)
    x, y = P.test_points()

    def zero_first(k: int):
        def f(t: torch.Tensor) -> torch.Tensor:
            keep = torch.ones(len(t), 1, 1, 1)
            keep[:k] = 0  # the first k points' gradients are cut
            return base(t * keep + t.detach() * (1 - keep))

        return f

    k = D.stats.min_count(len(y), D.ZERO_GRADIENT_SHARE, D.stats.ALPHAS["gradients"])
    assert k == 6  # binomial test of k zero points in 100 against 1%, at level 0.001
    below = D.check_gradients(lambda_model(zero_first(k - 1)), x, y)
    at = D.check_gradients(lambda_model(zero_first(k)), x, y)
    assert not below.flagged and below.details["zero_points"] == k - 1
    assert at.flagged and at.details["zero_points"] == k
    assert at.details["p_value"] < at.details["alpha"] <= below.details["p_value"]


class lambda_model(nn.Module):  # noqa: N801 - used like a function
    """A module around a function (for one-off test models)."""

    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


# ------------------------------------------------------------------------ comparisons


@pytest.mark.parametrize(
    "b, c, p",
    [
        (0, 0, 1.0),
        (0, 1, 1.0),
        (5, 5, 1.0),
        (0, 5, 0.0625),
        (0, 7, 0.015625),
        (0, 8, 0.0078125),
        (0, 10, 2 / 1024),
        (1, 9, 22 / 1024),
        (2, 8, 112 / 1024),
        (10, 0, 2 / 1024),
    ],
)
def test_mcnemar_known_values(b: int, c: int, p: float) -> None:
    assert D.mcnemar(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_matches_binomial_test() -> None:
    stats = pytest.importorskip("scipy.stats")
    for b in range(0, 40, 3):
        for c in range(0, 60, 7):
            if b + c:
                ref = stats.binomtest(min(b, c), b + c, 0.5).pvalue
                assert D.mcnemar(b, c) == pytest.approx(min(1.0, ref), rel=1e-9, abs=1e-300)
    assert D.mcnemar(0, 2000) < 1e-300 and D.mcnemar(1000, 1000) == 1.0  # 2 / 2**2000 underflows
    with pytest.raises(ValueError):
        D.mcnemar(-1, 3)


def _flags_pair(
    n: int, weak_only: int, strong_only: int, both_broken: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    weak, strong = torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    weak[:both_broken] = strong[:both_broken] = False
    weak[both_broken : both_broken + weak_only] = False
    strong[both_broken + weak_only : both_broken + weak_only + strong_only] = False
    return weak, strong


@pytest.mark.parametrize("check", ["square-vs-whitebox", "iterative-vs-single-step"])
def test_compare_attacks_flags_a_real_difference_only(check: str) -> None:
    weak, strong = _flags_pair(100, weak_only=15, strong_only=1)
    f = D.compare_attacks(check, "weak", weak, "strong", strong)
    assert f.flagged and f.check == check and f.details["alpha"] == D.stats.ALPHAS[check]
    assert f.details["broken_only_by_weak"] == 15 and f.details["broken_only_by_strong"] == 1
    assert f.details["weak_acc"] == 0.65 and f.details["strong_acc"] == 0.79
    assert f.details["p_value"] == pytest.approx(D.mcnemar(15, 1))
    w, s = _flags_pair(100, weak_only=12, strong_only=1)  # p = 0.0034: not at level 0.001
    assert not D.compare_attacks(check, "weak", w, "strong", s).flagged
    w, s = _flags_pair(100, weak_only=4, strong_only=1)
    small = D.compare_attacks(check, "weak", w, "strong", s)
    assert not small.flagged and small.details["p_value"] == pytest.approx(0.375)
    w, s = _flags_pair(100, weak_only=1, strong_only=12)
    reverse = D.compare_attacks(check, "weak", w, "strong", s)
    assert not reverse.flagged  # the stronger attack ahead: as it should be


def test_compare_attacks_rejects_bad_input() -> None:
    weak, strong = _flags_pair(10, 1, 1, both_broken=2)
    with pytest.raises(ValueError):
        D.compare_attacks("transfer", "a", weak, "b", strong)
    with pytest.raises(ValueError):
        D.compare_attacks("square-vs-whitebox", "a", weak, "b", strong[:5])


def test_fgsm_beating_a_misconfigured_pgd_is_flagged() -> None:
    model = P.honest(0)
    x, y = P.test_points()
    fgsm = _robust(model, x, y, _fgsm(model, x, y, EPS))
    x_bad, losses = _pgd(model, x, y, EPS, EPS / 500)  # 100 steps of eps/500: at most eps/5 from x
    bad = _robust(model, x, y, x_bad)
    f = D.compare_attacks("iterative-vs-single-step", "fgsm", fgsm, "pgd", bad)
    assert f.flagged and f.details["broken_only_by_weak"] > 30
    trace = D.check_loss_trace(losses, robust=bad)
    assert trace.details["share_incomplete"] > 0.9 and not trace.flagged  # the remedy decides


def test_transfer_rejects_examples_outside_the_budget() -> None:
    model = P.honest(0)
    x, y = P.test_points()
    with pytest.raises(ValueError):
        D.check_transfer(
            model, x, y, (x + 0.1).clamp(0, 1), torch.ones(len(x), dtype=torch.bool), eps=EPS
        )


# ------------------------------------------------------------------------- loss trace


def _ioaf_reference(trace: list[float], window: int = 10, tol: float = 0.05) -> bool:
    """IoAF's rule written out plainly for a maximised loss: rescale to [0, 1], running best,
    rise over the last ``window`` values."""
    lo, hi = min(trace), max(trace)
    scaled = [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in trace]
    best, run = [], -math.inf
    for v in scaled:
        run = max(run, v)
        best.append(run)
    last = best[-min(window, len(best)) :]
    return max(last) - min(last) > tol


def test_incomplete_points_follow_ioaf() -> None:
    g = torch.Generator().manual_seed(0)
    steps = 40
    t = torch.arange(steps, dtype=torch.float64)[:, None]
    traces = torch.cat(
        [
            t * 1.0,  # still rising linearly
            torch.minimum(t, torch.tensor(20.0)),  # plateau after 20 steps
            torch.zeros(steps, 1) + 3.0,  # constant
            1 - torch.exp(-t / 3),  # converged exponentially
            torch.randn(steps, 16, generator=g, dtype=torch.float64).cumsum(0),  # random walks
        ],
        dim=1,
    )
    got = D.incomplete_points(traces).tolist()
    assert got == [_ioaf_reference(traces[:, i].tolist()) for i in range(traces.shape[1])]
    assert got[:4] == [True, False, False, False]


def test_check_loss_trace_hands_only_failed_incomplete_points_to_the_remedy() -> None:
    steps, n = 30, 20
    rising = torch.arange(steps, dtype=torch.float64)[:, None].repeat(1, n)
    robust = torch.zeros(n, dtype=torch.bool)
    robust[:2] = True
    assert D.check_loss_trace(rising).details["incomplete_points"] == list(range(n))
    f = D.check_loss_trace(rising, robust=robust)
    assert f.details["assessed"] == 2 and f.details["incomplete_points"] == [0, 1]
    assert not f.flagged  # never by itself: the remedy's breaks decide (test_remedies.py)
    flat = rising.clone()
    flat[10:, :] = 9.0
    assert D.check_loss_trace(flat).details["incomplete_points"] == []
    none = D.check_loss_trace(rising, robust=torch.zeros(n, dtype=torch.bool))
    assert none.details["incomplete_points"] == []


def test_pgd_with_trace_shape_and_budget() -> None:
    model = P.honest(0)
    x, y = P.test_points()
    x_adv, losses = D.pgd_with_trace(model, x[:10], y[:10], EPS, 7, EPS / 4)
    assert losses.shape == (7, 10)
    assert float((x_adv - x[:10]).abs().max()) <= EPS + 1e-6
    with torch.no_grad():
        last = F.cross_entropy(model(x_adv), y[:10], reduction="none")
    assert torch.allclose(losses[-1], last, atol=1e-5)
