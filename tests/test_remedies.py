"""Remedies and probes through the whole pipeline: where the attacks stop short, bench breaks
the points itself and reports the corrected worst case (within 3 points of what a strong attack
finds); a model whose gradients mislead is caught by the always-on probes under ``pgd`` alone;
honest models keep their numbers and no flag."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import planted
import pytest
import torch
from conftest import tiny_target
from torch import nn

from bench.attacks import make_attack
from bench.evaluation import probes, stats
from bench.evaluation.local import evaluate_target
from bench.evaluation.plan import Settings
from bench.evaluation.results import corrected, worst_case
from bench.store import ResultRow
from bench.vocab import Walk

EPS = 0.02


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Tiny models: one intra-op thread."""


def _evaluate(model: nn.Module, attacks: list[Any], eps: list[float], **kw: Any) -> Any:
    x, y = planted.test_points()
    s = Settings(attacks, eps, 100, 0, progress=False, **kw)
    return evaluate_target(tiny_target(model, x, y, "m"), s)


def _strong(model: nn.Module, eps: float, judge: nn.Module | None = None) -> float:
    """Robust accuracy under APGD-CE then APGD-DLR (100 steps each) and PGD-100: the truth the
    corrected numbers are held to (crafted on ``model``, judged on ``judge``, default the same)."""
    judge = model if judge is None else judge
    x, y = planted.test_points()
    ok = torch.ones(len(y), dtype=torch.bool)
    for name, params in (
        ("apgd", {"loss": "ce"}),
        ("apgd", {"loss": "dlr"}),
        ("pgd", {"steps": "100"}),
    ):
        x_adv = make_attack(name, params).run(model, x, y, eps, seed=1)
        with torch.no_grad():
            ok &= (judge(x).argmax(1) == y) & (judge(x_adv).argmax(1) == y)
    return int(ok.sum()) / len(y)


def test_a_short_attack_is_corrected_by_the_loss_trace_remedy() -> None:
    """PGD stopped after 2 tiny steps leaves most points standing; with --diagnose the loss
    trace's PGD-100 and the APGD remedy break them: the worst case is corrected, not flagged."""
    model = planted.honest(0)
    weak = make_attack("pgd", {"steps": "2", "alpha": str(EPS / 20), "random_start": "false"})
    ev = _evaluate(model, [weak], [0.0, EPS], diagnose=True)
    top = ev.worst[-1]
    truth = _strong(model, EPS)
    assert top.overstated >= 20 and "loss-trace" in top.corrected_by
    assert abs(top.estimate.acc - truth) <= 0.03, (top.estimate.acc, truth)
    trace = next(f for f in ev.findings if f.check == "loss-trace")
    assert trace.status == "corrected" and trace.details["overstated"]
    assert not ev.unreliable, [f.summary for f in ev.findings if f.flagged]
    assert "CORRECTED at eps 0.02" in ev.table()


def test_walk_inference_is_corrected_at_every_inferred_eps() -> None:
    """The large-budget trap looks robust at 0.02 and is broken below: the bisect walk infers
    its small-eps flags from 0.02; the remedy attacks them directly and corrects every eps."""
    x, y = planted.test_points()
    trap = planted.LargeBudgetTrap(planted.honest(0), x, y, limit=0.015).eval()
    grid = [0.0, 0.005, 0.01, 0.02]
    ev = _evaluate(trap, [make_attack("pgd")], grid, walk=Walk.BISECT)
    f = next(f for f in ev.findings if f.check == "walk-inference")
    assert f.status == "corrected" and not f.flagged and f.details["significant"]
    truth = _strong(planted.honest(0), 0.01)  # below the limit the trap is the honest CNN
    by_eps = {w.eps: w for w in ev.worst}
    assert abs(by_eps[0.01].estimate.acc - truth) <= 0.03, (by_eps[0.01].estimate.acc, truth)
    assert by_eps[0.02].estimate.acc <= by_eps[0.01].estimate.acc  # nested balls
    assert by_eps[0.005].overstated > 0


@pytest.mark.parametrize("kind", ["decoy-gradient", "quantize"])
def test_probes_catch_a_fake_under_pgd_alone(kind: str) -> None:
    """Gradients that point the wrong way (decoy) or vanish (quantized input): with only PGD
    named, the always-on Square probe beats every white-box attack, APGD and smoothed PGD
    included: flagged, and its breaks lower the number."""
    base = planted.honest(0)
    model = {"decoy-gradient": planted.DecoyGradient, "quantize": planted.Quantize}[kind](base)
    ev = _evaluate(model.eval(), [make_attack("pgd")], [0.0, EPS])
    probe = next(f for f in ev.findings if f.check == "black-box-probe")
    assert probe.flagged and ev.unreliable
    assert probe.details["p_value"] < stats.ALPHAS["black-box-probe"]
    assert ev.worst[-1].overstated >= 20


def test_shattered_gradients_are_corrected_by_smoothed_pgd() -> None:
    """A high-frequency input transform shatters the gradient; PGD alone reports about 85%.
    Square beats it, so the probes escalate: smoothed PGD on 64 noisy copies a step averages the
    shattering out and breaks as much as BPDA, the adaptive attack (Athalye et al. 2018)."""
    shattered = planted.Shattered(planted.honest(0)).eval()
    ev = _evaluate(shattered, [make_attack("pgd")], [0.0, EPS])
    top = ev.worst[-1]
    assert top.before.count("1") >= 80 and "black-box-probe" in top.corrected_by
    truth = _strong(BPDA(shattered), EPS, judge=shattered)
    assert abs(top.estimate.acc - truth) <= 0.03, (top.estimate.acc, truth)


class BPDA(nn.Module):
    """The shattered model with its transform's backward pass replaced by the identity
    (Athalye et al. 2018, BPDA): the adaptive attack on it."""

    def __init__(self, shattered: nn.Module) -> None:
        super().__init__()
        self.base = shattered.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x + (0.004 * torch.sin(2000.0 * x)).detach())


@pytest.mark.parametrize("name", [n for n, _ in planted.honest_models()])
def test_honest_models_pass_the_probes_unflagged(name: str) -> None:
    model = dict(planted.honest_models())[name]
    ev = _evaluate(model, [make_attack("pgd")], [0.0, EPS], transfer_from=planted.honest(2))
    assert not ev.unreliable, [f.summary for f in ev.findings if f.flagged]
    assert {f.check for f in ev.findings} >= {"black-box-probe", "transfer"}
    # PGD-10 alone may leave points APGD-DLR breaks: corrected to within 3 points of the truth
    truth = _strong(model, EPS)
    assert abs(ev.worst[-1].estimate.acc - truth) <= 0.03, (ev.worst[-1].estimate.acc, truth)


def test_corrections_apply_at_their_eps_and_above_only() -> None:
    rows = [
        ResultRow("m", "pgd", {}, e, 4, 1.0, f.count("1") / 4, 0.0, "cpu", {}, f, 0, 4, [], "f")
        for e, f in ((0.0, "1111"), (0.1, "1110"), (0.2, "1100"))
    ]
    worst = worst_case(rows, "1111")
    out = corrected(worst, [("black-box-probe", 0.1, [0]), ("loss-trace", 0.2, [1, 3])])
    assert [w.flags for w in out] == ["1111", "0110", "0000"]
    assert [w.overstated for w in out] == [0, 1, 2]
    assert out[2].corrected_by == ["black-box-probe", "loss-trace"]
    assert out[1].before == "1110"


def test_the_family_of_levels_is_at_most_one_percent() -> None:
    assert sum(stats.ALPHAS.values()) <= stats.FAMILY_ALPHA + 1e-12
    assert stats.mcnemar_min(0.001) == 11 and stats.mcnemar(11, 0) < 0.001 < stats.mcnemar(10, 0)
    assert stats.min_count(100, 0.01, 0.001) == 6


def test_significant_corrections_reach_the_points_not_probed() -> None:
    """300 points, a PGD stopped after 2 tiny steps, no --diagnose: the probes see 200 points
    drawn at random; their corrections are significant, so the same attacks run on the other
    100, and the whole number is corrected, not a sample of it."""
    x, y = planted.make_data(300, seed=7)
    model = planted.honest(0)
    weak = make_attack("pgd", {"steps": "2", "alpha": str(EPS / 20), "random_start": "false"})
    s = Settings([weak], [0.0, EPS], 100, 0, progress=False)
    ev = evaluate_target(tiny_target(model, x, y, "m"), s)
    probe = next(f for f in ev.findings if f.check == "black-box-probe")
    assert probe.details["points"] == 200 and probe.details["extended_to"] > 0
    broken = probe.corrections[next(iter(probe.corrections))]
    assert any(i not in set(probes.sample(300, 0).tolist()) for i in broken)
    ok = torch.ones(len(y), dtype=torch.bool)
    for name, params in (("apgd", {"loss": "ce"}), ("apgd", {"loss": "dlr"})):
        x_adv = make_attack(name, params).run(model, x, y, EPS, seed=1)
        with torch.no_grad():
            ok &= (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)
    truth = int(ok.sum()) / len(y)
    assert abs(ev.worst[-1].estimate.acc - truth) <= 0.03, (ev.worst[-1].estimate.acc, truth)
    assert not ev.unreliable


def test_the_report_applies_the_stored_corrections(tmp_path: Path) -> None:
    """`bench report` is a function of the store: the corrections stored with the findings
    lower the worst case there too, and the curves say by how much."""
    from bench.report import write_report
    from bench.store import Store

    weak = make_attack("pgd", {"steps": "2", "alpha": str(EPS / 20), "random_start": "false"})
    x, y = planted.test_points()
    s = Settings([weak], [0.0, EPS], 100, 0, progress=False)
    with Store(tmp_path / "r.sqlite") as store:
        ev = evaluate_target(tiny_target(planted.honest(0), x, y, "m"), s, store=store)
    top = ev.worst[-1]
    assert top.overstated > 0
    files = write_report(tmp_path / "r.sqlite", tmp_path / "out", images=False)
    text = Path(files.leaderboard).read_text()
    assert f"the attacks above counted {top.overstated} points robust" in text
    assert f"{100 * top.estimate.acc:.1f}" in text
