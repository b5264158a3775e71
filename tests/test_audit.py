"""Planted models through the whole evaluation: every fake is flagged and marked unreliable (so
the report keeps it out of the ranking), every honest model passes; AutoAttack's warnings are
classified; a randomized model is evaluated with AutoAttack rand and EOT-PGD by itself."""

from __future__ import annotations

from typing import Any

import planted
import pytest
import torch
from conftest import tiny_target
from torch import nn

from bench.attacks import make_attack
from bench.evaluation.audit import adapt_for_randomized, classify_aa_warning
from bench.evaluation.local import evaluate_target
from bench.evaluation.plan import Settings
from bench.evaluation.targets import Target

EPS = [0.0, 0.01, 0.02]  # two attacked eps: the walk infers at 0.01 (walk-inference)


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Tiny models: one intra-op thread."""


def _target(model: nn.Module, name: str) -> Target:
    config = {"model": "planted", "defense": name}
    return tiny_target(model, *planted.test_points(), name, config)


def _evaluate(model: nn.Module, name: str) -> Any:
    attacks = [
        make_attack("fgsm"),
        make_attack("pgd", {"steps": "20"}),
        make_attack("square", {"n_queries": "300"}),
    ]
    s = Settings(
        attacks,
        EPS,
        100,
        0,
        progress=False,
        diagnose=True,
        transfer_from=planted.honest(1) if name != "seed-1" else planted.honest(0),
    )
    return evaluate_target(_target(model, name), s)


@pytest.mark.parametrize("case", planted.planted(), ids=lambda c: c.name)
def test_every_planted_model_is_flagged_and_unreliable(case: planted.Planted) -> None:
    ev = _evaluate(case.model, case.name)
    raised = {f.check for f in ev.findings if f.flagged}
    caught = {f.check for f in ev.findings if f.status != "passed"}  # flagged or corrected
    assert ev.unreliable, (case.name, [f.summary for f in ev.findings])
    assert caught & case.must, (case.name, caught)
    assert raised <= case.must | case.may, (case.name, raised - case.must - case.may)


@pytest.mark.parametrize("name", [n for n, _ in planted.honest_models()])
def test_no_honest_model_is_flagged(name: str) -> None:
    model = dict(planted.honest_models())[name]
    ev = _evaluate(model, name)
    assert not ev.unreliable, [f.summary for f in ev.findings if f.flagged]
    assert {f.check for f in ev.findings} >= {
        "randomized",
        "probabilities",
        "gradients",
        "iterative-vs-single-step",
        "square-vs-whitebox",
        "large-budget",
        "loss-trace",
        "transfer",
        "walk-inference",
    }


def test_randomized_model_gets_rand_and_eot() -> None:
    noisy = next(c for c in planted.planted() if c.name == "input-noise").model
    x, y = planted.test_points()
    attacks = [make_attack("fgsm"), make_attack("autoattack", {"version": "standard"})]
    adapted, note = adapt_for_randomized(attacks)
    assert [a.display for a in adapted] == [
        "fgsm",
        "autoattack[version=rand,attacks=apgd-ce+apgd-dlr]",
        "eotpgd[eot_iter=10]",
    ]
    assert "rand" in note
    s = Settings([make_attack("fgsm")], EPS, 100, 0, progress=False)
    ev = evaluate_target(_target(noisy, "noisy"), s)
    assert [r.attack.name for r in ev.results] == ["fgsm", "eotpgd"] and "eotpgd" in ev.note


def test_autoattack_square_warning_needs_a_real_difference() -> None:
    msg = "Square Attack has decreased the robust accuracy of {}%. This might indicate"
    assert classify_aa_warning(msg.format("1.20"), 500)[0] is False  # 6 points: p = 0.031
    assert classify_aa_warning(msg.format("2.00"), 500)[0] is False  # 10: p = 0.002 > 0.001
    assert classify_aa_warning(msg.format("2.20"), 500)[0] is True  # 11 points: p = 0.00098
    assert classify_aa_warning("it seems to be a dynamic defense! The", 5)[0] is True
    assert classify_aa_warning("there are 3 points with zero gradient!", 5)[0] is False


def test_confident_honest_model_gradients_not_flagged() -> None:
    """float32 softmax rounds a very confident point's gradient to 0; the check must not call
    that masking (the loss is evaluated in float64), while logits x 1e4 stay flagged."""
    from bench.evaluation.diagnostics import check_gradients

    base = planted.honest(0)
    x, y = planted.test_points()
    confident = nn.Sequential(base, _Scale(6.0)).eval()  # margins of tens of logits
    with torch.no_grad():
        z = confident(x)
    p32 = torch.softmax(z, 1).gather(1, z.argmax(1, keepdim=True))
    assert int((p32 == 1.0).sum()) > 10  # float32 saturates on many points
    assert not check_gradients(confident, x, y).flagged
    assert check_gradients(nn.Sequential(base, _Scale(1e4)).eval(), x, y).flagged


class _Scale(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.k * z
