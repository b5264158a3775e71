"""The attack registry: one interface, parameters checked, budgets respected, eps-scaled steps."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_problem
from torch import nn

from bench import norms
from bench.attacks import (
    AA_COMPONENTS,
    AA_VERSION_ATTACKS,
    ATTACKS,
    KINDS,
    attack_kind,
    make_attack,
)
from bench.errors import UsageError
from bench.evaluation.walk import check_budget

EPS = 8 / 255

# Cheap settings so that every attack runs in well under a second on the tiny model.
CHEAP: dict[str, dict[str, str]] = {
    "fgsm": {},
    "pgd": {"steps": "5"},
    "cw": {"steps": "20", "c": "10"},
    "deepfool": {"steps": "10"},
    "mifgsm": {"steps": "5"},
    "apgd": {"steps": "10"},
    "square": {"n_queries": "50"},
    "fab": {"steps": "10"},
    "eotpgd": {"steps": "3", "eot_iter": "2"},
    "autoattack": {"version": "custom", "attacks": "apgd-ce"},
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Every test here runs with one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return tiny_problem()


def test_registry_shape() -> None:
    required = {
        "fgsm",
        "pgd",
        "cw",
        "deepfool",
        "mifgsm",
        "apgd",
        "square",
        "fab",
        "eotpgd",
        "autoattack",
    }
    assert required <= set(ATTACKS.names())
    assert set(CHEAP) == set(ATTACKS.names())  # a new attack must be added to the run-all test
    for entry in ATTACKS:
        assert entry.summary
        assert entry.extra["kind"] in KINDS
        attack = make_attack(entry.name)
        assert attack.label == entry.name
        assert attack.params == dict(entry.defaults)  # bench list shows what a default run stores
    assert attack_kind("cw") == attack_kind("deepfool") == "minimum-norm"
    for name in ("fgsm", "pgd", "mifgsm", "apgd", "square", "fab", "eotpgd", "autoattack"):
        assert attack_kind(name) == "bounded"
    assert "projected" in ATTACKS["cw"].summary and "projected" in ATTACKS["deepfool"].summary


def test_autoattack_is_the_official_one(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry runs pyautoattack.AutoAttack (seed, eps, norm passed), and its version table
    is pyautoattack's own."""
    import pyautoattack

    calls: list[dict[str, object]] = []
    official = pyautoattack.AutoAttack

    class Spy(official):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            calls.append(kwargs)
            super().__init__(*args, **kwargs)

    model, x, y = problem
    monkeypatch.setattr(pyautoattack, "AutoAttack", Spy)
    make_attack("autoattack", CHEAP["autoattack"]).run(model, x[:5], y[:5], EPS, seed=7)
    assert len(calls) == 1
    assert calls[0]["norm"] == "Linf" and calls[0]["eps"] == EPS and calls[0]["seed"] == 7
    assert calls[0]["version"] == "custom" and calls[0]["attacks"] == ["apgd-ce"]
    monkeypatch.undo()
    assert "official" in ATTACKS["autoattack"].summary
    for version, expected in AA_VERSION_ATTACKS.items():
        aa = pyautoattack.AutoAttack(
            model, norm="Linf", eps=EPS, version=version, seed=0, device="cpu"
        )
        assert tuple(aa.attacks_to_run) == expected
    assert make_attack("autoattack").params == {
        "version": "standard",
        "attacks": list(AA_VERSION_ATTACKS["standard"]),
    }


@pytest.mark.parametrize("name", sorted(CHEAP))
def test_every_attack_respects_the_budget(
    name: str, problem: tuple[nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    model, x, y = problem
    attack = make_attack(name, CHEAP[name])
    x_adv = attack.run(model, x, y, EPS, seed=0)
    check_budget(x, x_adv, EPS, attack=name)  # raises BudgetViolation otherwise
    assert x_adv.shape == x.shape and x_adv.device == x.device
    assert not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_attacks_break_points(problem: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    """Not a no-op: at 8/255 the gradient attacks break most of the tiny model's points."""
    model, x, y = problem
    for name in ("fgsm", "pgd", "apgd", "autoattack"):
        x_adv = make_attack(name, CHEAP[name]).run(model, x, y, EPS, seed=0)
        with torch.no_grad():
            acc = (model(x_adv).argmax(1) == y).float().mean().item()
        assert acc < 0.5, name


def test_minimum_norm_output_is_projected(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """CW's raw L2 output leaves a tiny Linf ball; the harness projects it back in."""
    model, x, y = problem
    eps = 1 / 255
    cw = make_attack("cw", CHEAP["cw"])
    torch.manual_seed(0)
    raw = cw.perturb(model, x, y, cw.concrete(eps), 0, torch.arange(len(x)))
    assert float((raw - x).abs().max()) > eps  # unprojected, it would be a budget violation
    out = cw.run(model, x, y, eps, seed=0)
    check_budget(x, out, eps)
    assert torch.equal(out, norms.project(x, raw, eps, norms.LINF))


def test_eps_zero_returns_the_input(problem: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = problem
    assert torch.equal(make_attack("pgd").run(model, x, y, 0.0, seed=0), x)


def test_seeded_runs_are_reproducible(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = problem
    pgd = make_attack("pgd", {"steps": "2"})
    a = pgd.run(model, x, y, EPS, seed=3)
    b = pgd.run(model, x, y, EPS, seed=3)
    c = pgd.run(model, x, y, EPS, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the random start depends on the seed


def test_step_sizes_scale_with_eps() -> None:
    for name, rule in (("pgd", 2.5 / 10), ("eotpgd", 2.5 / 10), ("mifgsm", 1 / 10)):
        attack = make_attack(name)
        for eps in (1 / 255, 4 / 255, 8 / 255):
            assert attack.concrete(eps)["alpha"] == pytest.approx(rule * eps)
            assert attack.concrete(eps)["eps"] == eps
        fixed = make_attack(name, {"alpha": "1/255"})
        assert (
            fixed.concrete(2 / 255)["alpha"]
            == fixed.concrete(8 / 255)["alpha"]
            == pytest.approx(1 / 255)
        )
        assert fixed.params["alpha"] == pytest.approx(1 / 255)
    assert make_attack("pgd", {"steps": "20"}).concrete(8 / 255)["alpha"] == pytest.approx(
        2.5 * 8 / 255 / 20
    )
    assert make_attack("pgd").params["alpha"] == "2.5*eps/steps"
    assert make_attack("fgsm").concrete(3 / 255) == {"eps": 3 / 255}


def test_single_step_mifgsm_moves_exactly_eps(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """With one step the step size is eps itself: the perturbation scales with the budget."""
    model, x, y = problem
    attack = make_attack("mifgsm", {"steps": "1"})
    for eps in (2 / 255, 8 / 255):
        delta = (attack.run(model, x, y, eps, seed=0) - x).abs().amax(dim=(1, 2, 3))
        assert torch.allclose(delta, torch.full_like(delta, eps), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("pgd", {"foo": "1"}, "valid: alpha, random_start, steps"),
        ("fgsm", {"steps": "3"}, "valid: \\(none\\)"),
        ("pgd", {"steps": "0"}, "steps must be positive"),
        ("pgd", {"steps": "ten"}, "not a whole number"),
        ("pgd", {"alpha": "-1/255"}, "alpha must be positive"),
        ("apgd", {"loss": "hinge"}, "ce or dlr"),
        ("square", {"p_init": "2"}, "p_init"),
        ("autoattack", {"version": "fast"}, "standard, plus, rand, custom"),
        ("autoattack", {"attacks": "apgd-ce"}, "only .* with version custom"),
        ("autoattack", {"version": "custom"}, "needs attacks"),
        (
            "autoattack",
            {"version": "custom", "attacks": "apgd-ce,pgd"},
            "unknown AutoAttack component 'pgd'",
        ),
        ("autoattack", {"version": "custom", "attacks": "fab,fab"}, "twice"),
    ],
)
def test_bad_parameters_are_usage_errors(name: str, params: dict[str, str], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        make_attack(name, params)


def test_unknown_attack_lists_valid_names() -> None:
    with pytest.raises(UsageError, match="valid: .*pgd.*autoattack"):
        make_attack("pgdd")


def test_custom_autoattack_components_are_checked() -> None:
    every = ",".join(AA_COMPONENTS)
    attack = make_attack("autoattack", {"version": "custom", "attacks": every})
    assert attack.params == {"version": "custom", "attacks": list(AA_COMPONENTS)}
    assert attack.display == f"autoattack[version=custom,attacks={'+'.join(AA_COMPONENTS)}]"


def test_autoattack_warnings_are_reported_every_call(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """pyautoattack's own flags (here: a model that outputs probabilities) reach stderr and the
    collector on every call, not once per process (the evaluator stores them per model)."""
    from bench.attacks import collect_warnings

    model, x, y = problem
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    aa = make_attack("autoattack", CHEAP["autoattack"])
    with collect_warnings() as got:
        for _ in range(2):
            aa.run(probs, x[:4], y[:4], 1 / 255, seed=0)
    err = capsys.readouterr().err
    assert err.count("probability distribution") == 2 and "autoattack warning" in err
    assert [p for _, _, p in got] == [4, 4] and all("probability" in m for m, _, _ in got)
