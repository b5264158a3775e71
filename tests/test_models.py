"""Model registry and architectures: shapes, normalization, feature layers, determinism."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bench.errors import UnknownNameError, UsageError
from bench.models import MODELS, Normalize, create_model

# (channels, image_size, num_classes): Fashion-MNIST-like and CIFAR-100-like.
SHAPES = [(1, 28, 10), (3, 32, 100)]
SHAPE_IDS = ["1x28x28-10", "3x32x32-100"]


# Tiny batches keep the file fast on 2 CPU cores: 2 (the least train-mode batch norm accepts),
# and 1 for wrn-34-10 in eval mode (46M parameters, ~6 GMAC per 32x32 image).
BATCH = 2


def _eval_batch(name: str) -> int:
    return 1 if name == "wrn-34-10" else BATCH


def _make(name: str, channels: int, image_size: int, num_classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(
        name,
        channels=channels,
        num_classes=num_classes,
        image_size=image_size,
        mean=[0.5] * channels,
        std=[0.25] * channels,
    )


def _input(n: int, channels: int, image_size: int) -> Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, image_size, image_size, generator=g)


# Module-scoped: each (name, shape) model is built once and its eval logits computed once
# (pytest groups the tests by parameter and frees a model when its group is done), because
# building and running wrn-34-10 dominates the file's time.
@pytest.fixture(scope="module", params=MODELS.names())
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=SHAPES, ids=SHAPE_IDS)
def shape(request: pytest.FixtureRequest) -> tuple[int, int, int]:
    return tuple(request.param)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def model(name: str, shape: tuple[int, int, int]) -> nn.Module:
    return _make(name, *shape).eval()


@pytest.fixture(scope="module")
def ref(name: str, shape: tuple[int, int, int], model: nn.Module) -> tuple[Tensor, Tensor]:
    """An input batch and the model's eval-mode logits for it."""
    x = _input(_eval_batch(name), shape[0], shape[1])
    with torch.no_grad():
        return x, model(x)


def test_registry_entries_have_metadata() -> None:
    assert MODELS.names() == ["cnn", "vgg19", "preact-resnet18", "resnet18", "wrn-34-10"]
    for entry in MODELS:
        assert isinstance(entry.extra["min_image_size"], int)
        assert entry.summary and "\n" not in entry.summary
        assert entry.defaults


def test_output_shape(name: str, shape: tuple[int, int, int], ref: tuple[Tensor, Tensor]) -> None:
    x, out = ref
    assert out.shape == (x.shape[0], shape[2])
    assert torch.isfinite(out).all()


def test_normalize_is_first_and_applied(
    shape: tuple[int, int, int], model: nn.Module, ref: tuple[Tensor, Tensor]
) -> None:
    channels = shape[0]
    first_name, first = next(iter(model.named_children()))
    assert first_name == "normalize" and isinstance(first, Normalize)
    assert model.normalize.mean.shape == (1, channels, 1, 1)
    keys = model.state_dict().keys()
    assert "normalize.mean" in keys and "normalize.std" in keys
    x, before = ref
    saved = model.normalize.mean.clone()
    try:
        with torch.no_grad():
            model.normalize.mean.fill_(0.1)
            after = model(x)
    finally:
        model.normalize.mean.copy_(saved)  # the model is shared with the other tests
    assert not torch.allclose(before, after)


def test_normalize_formula() -> None:
    norm = Normalize([0.5, 0.25], [0.5, 2.0])
    x = torch.rand(3, 2, 4, 4)
    mean = torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)
    std = torch.tensor([0.5, 2.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(norm(x), (x - mean) / std)


def test_feature_layers_resolve_fire_in_order_and_can_be_replaced(
    model: nn.Module, ref: tuple[Tensor, Tensor]
) -> None:
    layers: list[str] = model.feature_layers
    assert layers and len(set(layers)) == len(layers)
    modules = dict(model.named_modules())
    x, clean = ref
    fired: list[str] = []
    shapes: dict[str, torch.Size] = {}
    middle = layers[len(layers) // 2]

    def hook(layer: str):  # noqa: ANN202 - a forward hook factory
        def record(_m: nn.Module, _inp: Any, out: Any) -> Tensor | None:
            assert isinstance(out, Tensor), f"{layer} returns {type(out)}"
            fired.append(layer)
            shapes[layer] = out.shape
            # What BatchOut does: a hook that returns a tensor replaces the block's output.
            return out + 1.0 if layer == middle else None

        return record

    handles = [modules[layer].register_forward_hook(hook(layer)) for layer in layers]
    try:
        with torch.no_grad():
            perturbed = model(x)
    finally:
        for h in handles:
            h.remove()
    assert fired == layers  # each fires once, in depth order
    for layer in layers:
        assert len(shapes[layer]) == 4 and shapes[layer][0] == x.shape[0]
        assert min(shapes[layer][2:]) >= 1
    assert not torch.allclose(clean, perturbed)


def test_input_gradient(model: nn.Module, ref: tuple[Tensor, Tensor]) -> None:
    x = ref[0].clone().requires_grad_(True)
    try:
        model(x).sum().backward()
    finally:
        model.zero_grad(set_to_none=True)
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_eval_is_deterministic(model: nn.Module, ref: tuple[Tensor, Tensor]) -> None:
    x, out = ref
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, rtol=0, atol=0)


def test_state_dict_round_trip(
    name: str, shape: tuple[int, int, int], model: nn.Module, ref: tuple[Tensor, Tensor]
) -> None:
    x, out = ref
    fresh = _make(name, *shape, seed=123)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, rtol=0, atol=0)


_TRAIN_PARAMS = [
    pytest.param(n, marks=pytest.mark.slow) if n == "wrn-34-10" else n for n in MODELS.names()
]


@pytest.mark.parametrize("name", _TRAIN_PARAMS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_train_step_reaches_every_parameter(name: str, shape: tuple[int, int, int]) -> None:
    # A fresh model: train mode updates BN running stats, which the cached models must keep.
    channels, size, classes = shape
    model = _make(name, *shape).train()
    out = model(_input(BATCH, channels, size))
    nn.functional.cross_entropy(out, torch.arange(BATCH) % classes).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_vgg19_skips_pools_on_28() -> None:
    pools = lambda m: sum(isinstance(x, nn.MaxPool2d) for x in m.modules())  # noqa: E731
    assert pools(_make("vgg19", 1, 28, 10)) == 4  # 28 -> 14 -> 7 -> 3 -> 1: fifth skipped
    assert pools(_make("vgg19", 3, 32, 10)) == 5


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        _make("resnet-9000", 3, 32, 10)
    message = str(info.value)
    assert "resnet-9000" in message
    for valid in MODELS.names():
        assert valid in message


@pytest.mark.parametrize("name", MODELS.names())
def test_min_image_size(name: str) -> None:
    min_size = MODELS[name].extra["min_image_size"]
    small = _make(name, 1, min_size, 2)
    small.eval()
    with torch.no_grad():
        assert small(torch.rand(2, 1, min_size, min_size)).shape == (2, 2)
    with pytest.raises(UsageError, match=rf"{name}.*{min_size - 1}x{min_size - 1}"):
        _make(name, 1, min_size - 1, 2)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"channels": 0}, "channel"),
        ({"num_classes": 1}, "2 classes"),
        ({"mean": [0.5, 0.5]}, "mean and std"),
        ({"std": [0.0]}, "positive std"),
    ],
)
def test_bad_shapes_are_usage_errors(kwargs: dict[str, Any], fragment: str) -> None:
    args: dict[str, Any] = dict(channels=1, num_classes=10, image_size=28, mean=[0.5], std=[0.5])
    args.update(kwargs)
    with pytest.raises(UsageError, match=fragment) as info:
        create_model("cnn", **args)
    assert "\n" not in str(info.value) and "cnn" in str(info.value)
