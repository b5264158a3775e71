"""BatchOut: the perturbation, the draws, placement, parsing, hooks and a short training run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.defenses import build_defense
from bench.defenses.batchout import (
    BatchOut,
    batchout,
    draw_magnitude,
    draw_partners,
    k_count,
    parse_magnitude,
    select_layers,
)
from bench.errors import UsageError
from bench.models import create_model


class TinyNet(nn.Module):
    """``blocks`` conv blocks (each output [N, C, H, W]) then a linear head; exposes
    feature_layers."""

    def __init__(
        self,
        blocks: int = 4,
        channels: int = 4,
        in_channels: int = 1,
        num_classes: int = 3,
        norm: bool = False,
    ) -> None:
        super().__init__()
        layers = []
        for i in range(blocks):
            conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
            layers.append(
                nn.Sequential(conv, nn.BatchNorm2d(channels) if norm else nn.Identity(), nn.ReLU())
            )
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)
        self.feature_layers = [f"blocks.{i}" for i in range(blocks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean(dim=(2, 3)))


def _model(blocks: int = 4) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(blocks)


def _capture(module: nn.Module, store: dict[str, torch.Tensor], key: str) -> Any:
    """A forward hook that records the output it sees (hooks see earlier hooks' replacements)."""

    def hook(mod: nn.Module, args: Any, output: torch.Tensor) -> None:
        if output.requires_grad:  # so tests can read dLoss/dOutput of a non-leaf tensor
            output.retain_grad()
        store[key] = output

    return module.register_forward_hook(hook)


def _all_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


# --- the perturbation itself ------------------------------------------------------------------


@pytest.mark.parametrize("count", [None, 3])
@pytest.mark.parametrize("eta", [0.3, -0.2, 0.0])
def test_perturbation_formula_and_identity_gradient(count: int | None, eta: float) -> None:
    torch.manual_seed(1)
    x = torch.randn(6, 2, 3, 3, requires_grad=True)
    r = torch.tensor([1, 0, 0, 5, 3, 5])
    out = batchout(x, r, eta, count)
    expected = x + eta * (x[r] - x)
    n = 6 if count is None else count
    assert torch.equal(out[:n], expected[:n])
    assert torch.equal(out[n:], x[n:])
    # d is detached: the gradient of sum(X') w.r.t. X is ones whatever eta and the partners.
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.ones_like(x))


def test_k_count_rounds_half_up() -> None:
    assert k_count(0.5, 8) == 4
    assert k_count(0.5, 3) == 2
    assert k_count(0.25, 6) == 2  # 1.5 -> 2
    assert k_count(0.1, 4) == 0
    assert k_count(1.0, 7) == 7


# --- eval mode: untouched ---------------------------------------------------------------------


@pytest.mark.parametrize("pairing", ["random", "mutual"])
def test_eval_mode_is_bitwise_unchanged_and_draws_nothing(pairing: str) -> None:
    model = _model().eval()
    x = torch.randn(8, 1, 6, 6)
    clean = model(x)
    defense = build_defense("batchout", {"pairing": pairing, "layers": "all", "magnitude": "0.3"})
    defense.attach(model)
    rng = torch.get_rng_state()
    out = model(x)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(out, clean)
    assert defense.last_eta is None and defense.last_partners == {} and defense.last_mask is None
    defense.detach()


# --- which samples are perturbed ---------------------------------------------------------------


def _hooked_outputs(
    defense: BatchOut, layer: str, m: int = 8
) -> tuple[torch.Tensor, torch.Tensor, TinyNet]:
    """Clean and perturbed outputs of ``layer`` in one training-mode pass (batch of ``m``)."""
    model = _model().train()
    store: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    before = _capture(module, store, "clean")  # registered first: sees the module's own output
    defense.attach(model)
    after = _capture(module, store, "out")  # registered after BatchOut: sees its replacement
    x = torch.randn(m, 1, 6, 6, requires_grad=True)
    defense.loss(model, x, torch.arange(m) % 3).backward()
    before.remove(), after.remove()
    return store["clean"], store["out"], model


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a != b).flatten(1).any(1)


@pytest.mark.parametrize("k,m", [(0.5, 8), (0.25, 8), (0.5, 6), (1.0, 8)])
def test_first_k_perturbs_exactly_k_count(k: float, m: int) -> None:
    torch.manual_seed(2)
    # Mutual pairing with an even batch: nobody is its own partner, so every selected row moves.
    defense = build_defense(
        "batchout",
        {"k": str(k), "pairing": "mutual", "magnitude": "0.3", "layers": "names:blocks.2"},
    )
    clean, out, _ = _hooked_outputs(defense, "blocks.2", m)
    changed = _changed(out, clean)
    expected = torch.zeros(m, dtype=torch.bool)
    expected[: k_count(k, m)] = True
    assert torch.equal(changed, expected)
    assert torch.equal(defense.last_mask, expected)


@pytest.mark.parametrize("samples", ["first-k", "all"])
@pytest.mark.parametrize("pairing", ["random", "mutual"])
def test_hooked_output_is_exact_formula_with_identity_gradient(samples: str, pairing: str) -> None:
    torch.manual_seed(3)
    defense = build_defense(
        "batchout",
        {"samples": samples, "pairing": pairing, "magnitude": "0.3", "layers": "names:blocks.1"},
    )
    clean, out, _ = _hooked_outputs(defense, "blocks.1", 9)
    r = defense.last_partners["blocks.1"]
    n = 9 if samples == "all" else k_count(0.5, 9)
    assert torch.equal(out[:n], (clean + 0.3 * (clean[r] - clean))[:n])
    assert torch.equal(out[n:], clean[n:])
    # Rows perturbed: exactly the selected ones whose partner is another sample.
    assert torch.equal(_changed(out, clean), (r != torch.arange(9)) & (torch.arange(9) < n))
    # Backward through the hook: d is detached, so dLoss/dX == dLoss/dX' (identity Jacobian).
    assert clean.grad is not None and torch.equal(clean.grad, out.grad)


def test_all_perturbs_every_sample_with_another_partner() -> None:
    torch.manual_seed(4)
    defense = build_defense(
        "batchout", {"samples": "all", "magnitude": "0.3", "layers": "names:blocks.3"}
    )
    clean, out, _ = _hooked_outputs(defense, "blocks.3", 16)
    r = defense.last_partners["blocks.3"]
    assert (r != torch.arange(16)).sum() >= 8  # the seeded draw has plenty of non-self partners
    assert torch.equal(_changed(out, clean), r != torch.arange(16))
    assert bool(defense.last_mask.all())


# --- pairings ----------------------------------------------------------------------------------


def test_random_pairing_is_with_replacement() -> None:
    torch.manual_seed(5)
    repeat = self_partner = False
    for _ in range(50):
        r = draw_partners(16, "random")
        assert r.dtype == torch.long and r.min() >= 0 and r.max() < 16
        repeat |= r.unique().numel() < 16
        self_partner |= bool((r == torch.arange(16)).any())
    assert repeat and self_partner


@pytest.mark.parametrize("m", [1, 2, 7, 16])
def test_mutual_pairing_is_an_involution(m: int) -> None:
    torch.manual_seed(6)
    for _ in range(20):
        r = draw_partners(m, "mutual")
        assert torch.equal(r[r], torch.arange(m))
        assert int((r == torch.arange(m)).sum()) == m % 2  # odd: exactly one self partner


def test_random_pairing_redrawn_at_each_layer() -> None:
    torch.manual_seed(7)
    model = _model().train()
    defense = build_defense("batchout", {"layers": "all"})
    defense.attach(model)
    model(torch.randn(16, 1, 6, 6))
    r = list(defense.last_partners.values())
    assert len(r) == 4 and not all(torch.equal(r[0], other) for other in r[1:])


def test_mutual_pairing_shared_within_a_pass_and_redrawn_across() -> None:
    torch.manual_seed(8)
    model = _model().train()
    defense = build_defense("batchout", {"pairing": "mutual", "layers": "all"})
    defense.attach(model)
    x = torch.randn(16, 1, 6, 6)
    model(x)
    first = dict(defense.last_partners)
    assert list(first) == model.feature_layers
    assert all(torch.equal(first["blocks.0"], r) for r in first.values())
    assert torch.equal(first["blocks.0"][first["blocks.0"]], torch.arange(16))
    model(x)
    assert not torch.equal(defense.last_partners["blocks.0"], first["blocks.0"])


@pytest.mark.parametrize("pairing", ["random", "mutual"])
def test_same_class_partners_share_the_label(pairing: str) -> None:
    torch.manual_seed(9)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 1, 0, 3, 2])  # class 3 has a single member
    for _ in range(30):
        r = draw_partners(10, pairing, y)
        assert torch.equal(y[r], y)
        assert r[8] == 8  # the singleton is its own partner (d = 0)
        if pairing == "mutual":
            assert torch.equal(r[r], torch.arange(10))


@pytest.mark.parametrize("pairing", ["random", "mutual"])
def test_same_class_through_loss_uses_the_labels(pairing: str) -> None:
    torch.manual_seed(10)
    model = _model().train()
    defense = build_defense(
        "batchout", {"pairing": pairing, "partners": "same-class", "layers": "all"}
    )
    defense.attach(model)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 1, 0, 2, 2, 1])
    defense.loss(model, torch.randn(11, 1, 6, 6), y)
    assert len(defense.last_partners) == 4
    for r in defense.last_partners.values():
        assert torch.equal(y[r], y)
    with pytest.raises(RuntimeError, match="labels"):  # labels are not kept after loss()
        model(torch.randn(11, 1, 6, 6))


# --- magnitudes --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [("0.3", 0.3), ("-0.2", -0.2), ("3/10", 0.3)])
def test_fixed_magnitude(text: str, value: float) -> None:
    spec = parse_magnitude(text)
    assert all(draw_magnitude(spec) == value for _ in range(10))


@pytest.mark.parametrize(
    "text,lo,hi", [("uniform:0:0.15", 0.0, 0.15), ("uniform:-1/5:3/10", -0.2, 0.3)]
)
def test_uniform_magnitude(text: str, lo: float, hi: float) -> None:
    torch.manual_seed(11)
    draws = torch.tensor(
        [draw_magnitude(parse_magnitude(text)) for _ in range(500)], dtype=torch.float64
    )
    assert draws.min() >= lo and draws.max() <= hi
    mid = (lo + hi) / 2
    assert (draws < mid).any() and (draws > mid).any()


def test_choice_magnitude() -> None:
    torch.manual_seed(12)
    spec = parse_magnitude("choice:-0.2,0,3/10")
    seen = {draw_magnitude(spec) for _ in range(300)}
    assert seen == {-0.2, 0.0, 0.3}


def test_magnitude_drawn_once_per_pass_and_shared() -> None:
    torch.manual_seed(13)
    model = _model().train()
    defense = build_defense(
        "batchout",
        {"samples": "all", "magnitude": "choice:-0.2,0.3", "layers": "names:blocks.1,blocks.3"},
    )
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [_capture(modules[n], store, f"clean{n}") for n in ("blocks.1", "blocks.3")]
    defense.attach(model)
    hooks += [_capture(modules[n], store, f"out{n}") for n in ("blocks.1", "blocks.3")]
    etas = set()
    for _ in range(20):
        model(torch.randn(8, 1, 6, 6))
        eta = defense.last_eta
        etas.add(eta)
        for n in ("blocks.1", "blocks.3"):
            clean, r = store[f"clean{n}"], defense.last_partners[n]
            assert torch.equal(store[f"out{n}"], clean + eta * (clean[r] - clean))
    assert etas == {-0.2, 0.3}
    for h in hooks:
        h.remove()


# --- placement ---------------------------------------------------------------------------------

SIX = ["a", "b", "c", "d", "e", "f"]


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("all", SIX),
        ("after:0", SIX),
        ("after:1", SIX[1:]),
        ("after:5", ["f"]),
        ("alternate:0", ["a", "c", "e"]),
        ("alternate:1", ["b", "d", "f"]),
        ("alternate:2", ["c", "e"]),
        ("names:e,b", ["b", "e"]),  # depth order whatever the order written
        ("names:c", ["c"]),
    ],
)
def test_select_layers(spec: str, expected: list[str]) -> None:
    assert select_layers(spec, SIX) == expected


@pytest.mark.parametrize(
    "spec,needle", [("after:6", "depth 6"), ("alternate:9", "depth 9"), ("names:a,zz", "'zz'")]
)
def test_select_layers_rejects_with_the_valid_list(spec: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle) as info:
        select_layers(spec, SIX)
    assert "0:a" in str(info.value) and "5:f" in str(info.value)


def test_attach_hooks_the_selected_layers() -> None:
    model = _model(6)
    defense = build_defense("batchout", {"layers": "alternate:1"})
    defense.attach(model)
    assert defense.hooked_layers == ["blocks.1", "blocks.3", "blocks.5"]
    hooked = [n for n, m in model.named_modules() if m._forward_hooks]
    assert hooked == defense.hooked_layers
    assert len(model._forward_pre_hooks) == 1
    model.train()(torch.randn(4, 1, 6, 6))
    assert list(defense.last_partners) == defense.hooked_layers
    defense.detach()


# --- parameter validation ----------------------------------------------------------------------


def test_defaults_are_algorithm_1() -> None:
    d = build_defense("batchout")
    assert (d.samples, d.k, d.pairing, d.partners, d.magnitude, d.layers) == (
        "first-k",
        0.5,
        "random",
        "any",
        "uniform:0:0.15",
        "after:1",
    )


@pytest.mark.parametrize(
    "values",
    [
        {"magnitude": "uniform:1"},
        {"magnitude": "uniform:0.3:0.1"},
        {"magnitude": "uniform:a:b"},
        {"magnitude": "choice:"},
        {"magnitude": "choice:1,x"},
        {"magnitude": "foo"},
        {"magnitude": "gauss:0:1"},
        {"k": "0"},
        {"k": "1.5"},
        {"k": "-0.1"},
        {"samples": "some"},
        {"pairing": "foo"},
        {"partners": "other-class"},
        {"layers": "foo"},
        {"layers": "after:x"},
        {"layers": "after:-1"},
        {"layers": "names:"},
        {"layers": "all:2"},
        {"eta": "0.3"},
    ],
)
def test_bad_strings_are_usage_errors(values: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        build_defense("batchout", values)


def test_direct_construction_raises_value_error() -> None:
    with pytest.raises(ValueError):
        BatchOut(magnitude="uniform:x:1")


@pytest.mark.parametrize(
    "layers,needle", [("after:99", "99"), ("alternate:4", "4"), ("names:blocks.9", "blocks.9")]
)
def test_bad_placement_fails_at_attach(layers: str, needle: str) -> None:
    model = _model(4)
    defense = build_defense("batchout", {"layers": layers})
    with pytest.raises(UsageError, match=needle) as info:
        defense.attach(model)
    assert "blocks.0" in str(info.value) and "blocks.3" in str(info.value)
    assert _all_hooks(model) == 0


def test_attach_needs_feature_layers() -> None:
    with pytest.raises(UsageError, match="feature_layers"):
        build_defense("batchout").attach(nn.Linear(2, 2))


# --- hooks lifecycle ---------------------------------------------------------------------------


def test_detach_removes_every_hook() -> None:
    model = _model(6)
    defense = build_defense("batchout", {"layers": "all", "pairing": "mutual"})
    defense.attach(model)
    defense.attach(model)  # re-attaching replaces rather than stacks
    assert _all_hooks(model) == 7
    defense.detach()
    assert _all_hooks(model) == 0
    assert all(not m._forward_pre_hooks_with_kwargs for m in model.modules())
    x = torch.randn(4, 1, 6, 6)
    model.train()
    torch.manual_seed(0)
    assert torch.equal(model(x), model(x))  # no perturbation left


# --- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "samples": "all",
            "pairing": "mutual",
            "magnitude": "choice:-0.2,0,0.3",
            "layers": "alternate:1",
        },
        {"partners": "same-class", "magnitude": "0.3", "layers": "all"},
    ],
)
def test_sgd_steps_lower_the_clean_loss(values: dict[str, str]) -> None:
    torch.manual_seed(14)
    y = torch.arange(64) % 2
    # Easy: class 1 images are bright, class 0 dark, plus a little noise.
    x = 0.2 * torch.rand(64, 1, 6, 6) + 0.6 * y.view(-1, 1, 1, 1)
    model = TinyNet(
        4, channels=8, num_classes=2, norm=True
    )  # BatchNorm: trains reliably in 30 steps
    defense = build_defense("batchout", values)
    defense.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def clean_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    before = clean_loss()
    losses = []
    for step in range(30):
        model.train()
        idx = torch.arange(16) + 16 * (step % 4)
        opt.zero_grad()
        loss = defense.loss(model, x[idx], y[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    after = clean_loss()
    defense.detach()
    assert after < 0.5 * before
    assert sum(losses[-5:]) < sum(losses[:5])


# --- the project's models ----------------------------------------------------------------------


def _build_registered(name: str) -> nn.Module:
    """A model of ``bench.models`` for 1x28x28 inputs and 10 classes."""
    return create_model(name, channels=1, num_classes=10, image_size=28, mean=[0.5], std=[0.5])


@pytest.mark.parametrize("name", ["cnn", "resnet18", "preact-resnet18"])
@pytest.mark.parametrize("layers", ["after:1", "all"])
def test_registered_models_hook_and_train(name: str, layers: str) -> None:
    torch.manual_seed(15)
    model = _build_registered(name)
    defense = build_defense("batchout", {"pairing": "mutual", "layers": layers})
    defense.attach(model)
    modules = dict(model.named_modules())
    assert all(modules[n]._forward_hooks for n in defense.hooked_layers)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    model.train()
    loss = defense.loss(model, x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert list(defense.last_partners) == defense.hooked_layers  # every hook ran
    model.eval()
    with torch.no_grad():
        attached = model(x)
    defense.detach()
    assert _all_hooks(model) == 0
    with torch.no_grad():
        assert torch.equal(model(x), attached)
