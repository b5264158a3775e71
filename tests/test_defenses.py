"""Every defense: adversarial inputs inside the eps-ball and [0, 1]; a few steps lower the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.defenses import DEFENSES, build_defense
from bench.defenses.adversarial import FGSMAT, FGSMRS, PGDAT, TRADES
from bench.errors import UsageError

ADVERSARIAL = ["pgd-at", "fgsm-at", "fgsm-rs", "trades"]


def _perturb(defense, model, x, y):
    return (
        defense.perturb(model, x) if isinstance(defense, TRADES) else defense.perturb(model, x, y)
    )


@pytest.mark.parametrize("name", ADVERSARIAL)
@pytest.mark.parametrize("eps", ["2/255", "8/255", "0.3"])
def test_adversarial_inputs_stay_in_ball_and_range(name, eps, tiny_model, tiny_data):
    x, y = tiny_data
    x = x.clone()
    x[:4] = 1.0  # saturated pixels: the step must be clipped at 1
    x[4:8] = 0.0
    defense = build_defense(name, {"eps": eps})
    x_adv = _perturb(defense, tiny_model, x, y)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= defense.eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (x_adv - x).abs().max() > 0  # it moved


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_examples_raise_the_loss(name, tiny_model, tiny_data):
    """The inner maximisation does its job: the loss at x_adv exceeds the clean loss."""
    x, y = tiny_data
    tiny_model.eval()
    defense = build_defense(name, {"eps": "16/255"})
    x_adv = _perturb(defense, tiny_model, x, y)
    with torch.no_grad():
        clean = F.cross_entropy(tiny_model(x), y)
        adv = F.cross_entropy(tiny_model(x_adv), y)
    assert adv > clean


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_inner_loop_leaves_weight_gradients_alone(name, tiny_model, tiny_data):
    """Inner attacks take gradients w.r.t. the input only; the loss never touches .grad."""
    x, y = tiny_data
    defense = build_defense(name, {})
    _perturb(defense, tiny_model, x, y)
    assert all(p.grad is None for p in tiny_model.parameters())
    defense.loss(tiny_model, x, y)
    assert all(p.grad is None for p in tiny_model.parameters())


@pytest.mark.parametrize("name", DEFENSES.names())
def test_a_few_steps_lower_the_loss(name, tiny_model, tiny_data):
    x, y = tiny_data
    torch.manual_seed(1)
    defense = build_defense(name, {})
    defense.attach(tiny_model)
    opt = torch.optim.SGD(tiny_model.parameters(), lr=0.1, momentum=0.9)

    def clean_loss() -> float:
        tiny_model.eval()
        with torch.no_grad():
            return float(F.cross_entropy(tiny_model(x), y))

    before = clean_loss()
    for _ in range(60):
        tiny_model.train()
        loss = defense.loss(tiny_model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    defense.detach()
    after = clean_loss()
    assert after < before - 0.2, (before, after)


def test_defaults_follow_the_sources():
    assert PGDAT() == PGDAT(eps=8 / 255, alpha=None, steps=10, random_start=True)
    assert PGDAT().step == 2 / 255  # eps/4 at 8/255: exactly the sources' 2/255
    assert FGSMAT().a == 0.5
    assert FGSMRS().step == pytest.approx(1.25 * 8 / 255)
    assert FGSMRS(eps=4 / 255).step == pytest.approx(5 / 255)  # the step scales with eps
    t = TRADES()
    assert (t.beta, t.steps, t.step, t.eps) == (6.0, 10, 2 / 255, 8 / 255)
    assert build_defense("mixup", {}).alpha == 1.0


def test_trades_starts_near_x_and_restores_training_mode(tiny_model, tiny_data):
    x, _ = tiny_data
    tiny_model.train()
    torch.nn.init.zeros_(tiny_model.head[2].weight)  # constant logits: a zero gradient, no step
    defense = TRADES(steps=1, alpha=8 / 255)  # so what is left is the start
    torch.manual_seed(0)
    x_adv = defense.perturb(tiny_model, x)
    assert tiny_model.training
    assert 0 < (x_adv - x).abs().max() < 0.01  # x + 0.001*N(0,1)


@pytest.mark.parametrize("name", ["pgd-at", "trades"])
@pytest.mark.parametrize("eps", [2 / 255, 8 / 255, 0.1, 0.3])
def test_multi_step_alpha_is_eps_over_4_by_default(name, eps):
    defense = build_defense(name, {"eps": repr(eps)})
    assert defense.alpha is None and defense.step == eps / 4
    assert defense.resolved() == {"alpha": eps / 4, "alpha_rule": "eps/4"}
    explicit = build_defense(name, {"eps": repr(eps), "alpha": repr(eps)})
    assert explicit.step == eps and explicit.resolved() == {"alpha": eps, "alpha_rule": "explicit"}


def test_the_step_rule_reaches_the_attack(tiny_model, tiny_data):
    """PGD-AT with eps 0.3 and one step moves pixels by eps/4 = 0.075 (not 2/255)."""
    x, y = tiny_data
    x = x.clamp(0.3, 0.7)  # room to move both ways
    defense = build_defense("pgd-at", {"eps": "0.3", "steps": "1", "random_start": "false"})
    moved = (defense.perturb(tiny_model, x, y) - x).abs()
    assert moved.max() == pytest.approx(0.075, abs=1e-6)


@pytest.mark.parametrize("name", ["pgd-at", "trades"])
@pytest.mark.parametrize(
    "values",
    [
        {"eps": "0.1", "alpha": "2/255"},
        {"eps": "8/255", "alpha": "0.5/255"},
        {"eps": "8/255", "alpha": "2/255", "steps": "3"},
    ],
)
def test_an_alpha_that_cannot_reach_eps_is_refused(name, values):
    with pytest.raises(UsageError) as info:
        build_defense(name, values)
    message = str(info.value)
    assert (
        "\n" not in message
        and "can't reach the edge of the ball" in message
        and "steps*alpha" in message
    )


def test_bench_list_shows_the_step_rules():
    assert DEFENSES["pgd-at"].defaults["alpha"] == "eps/4" == DEFENSES["trades"].defaults["alpha"]
    assert DEFENSES["fgsm-rs"].defaults["alpha"] == "1.25*eps"


def test_alpha_exactly_reaching_eps_is_accepted():
    assert build_defense("pgd-at", {"eps": "8/255", "alpha": "2/255", "steps": "4"}).step == 2 / 255
    assert (
        build_defense("trades", {"eps": "0.1", "alpha": "0.025"}).step == 0.025
    )  # the README's example


def test_mixup_mixes_labels_with_the_same_lambda(tiny_model, tiny_data, monkeypatch):
    x, y = tiny_data
    torch.manual_seed(0)
    defense = build_defense("mixup", {})
    lam = 0.3
    monkeypatch.setattr(torch.distributions.Beta, "sample", lambda self: torch.tensor(lam))
    torch.manual_seed(5)
    loss = defense.loss(tiny_model, x, y)
    torch.manual_seed(5)
    perm = torch.randperm(x.shape[0])
    logits = tiny_model(lam * x + (1 - lam) * x[perm])
    soft = lam * F.one_hot(y, 10) + (1 - lam) * F.one_hot(y[perm], 10)
    expected = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    "name,values,needle",
    [
        ("pgd-at", {"foo": "1"}, "no parameter 'foo'"),
        ("pgd-at", {"eps": "8/0"}, "divides by zero"),
        ("pgd-at", {"eps": "abc"}, "not a number"),
        ("pgd-at", {"eps": "-1"}, "eps must be in [0, 1]"),
        ("trades", {"steps": "1.5"}, "not a whole number"),
        ("mixup", {"alpha": "0"}, "alpha must be positive"),
    ],
)
def test_bad_parameters_are_usage_errors(name, values, needle):
    with pytest.raises(UsageError, match=None) as info:
        build_defense(name, values)
    assert needle in str(info.value)


def test_unknown_defense_lists_the_valid_ones():
    with pytest.raises(UsageError) as info:
        build_defense("nope")
    assert all(n in str(info.value) for n in DEFENSES.names())
