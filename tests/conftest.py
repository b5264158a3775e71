"""Shared fixtures: tiny models and data on the CPU, and small Fashion-MNIST files in IDX format."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from bench.evaluation.targets import Target
from bench.weights import fingerprint_model


class TinyNet(nn.Module):
    """A small CNN on 1x8x8 inputs with named feature blocks (like the models/ registry's)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes))
        self.feature_layers = ["block1", "block2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x)))


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    """64 learnable points: the class is written into the image as a bright row."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 10
    x = torch.rand(64, 1, 8, 8, generator=g) * 0.3
    for i, c in enumerate(y.tolist()):
        x[i, 0, c % 8, :] = 0.9 if c < 8 else 0.6
    return x, y


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: with 2 busy cores, intra-op threads cost far more than they save."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_problem(
    n: int = 40, seed: int = 0, flip: tuple[int, ...] = ()
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained (fixed seed) on 1x8x8 images near 0.5 whose class is a faint +-0.03
    pattern: correct when clean, broken between about 3/255 and 8/255. The labels at ``flip``
    are then moved to the next class, so that those points are wrong when clean."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(10, 1, 8, 8, generator=g).sign()
    y = torch.arange(n) % 10
    x = (0.5 + 0.03 * protos[y] + 0.04 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    y = y.clone()
    idx = list(flip)
    y[idx] = (y[idx] + 1) % 10
    return model.eval(), x, y


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file: magic, dims, big-endian, then the bytes."""
    magic = 0x0800 + array.ndim  # 0x08 = unsigned byte
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def write_small_fmnist(root: Path, n_test: int = 128) -> Path:
    """Write a small Fashion-MNIST (256 train, ``n_test`` test) in the real format under
    ``root/fashion-mnist``; returns ``root``, the data directory."""
    rng = np.random.default_rng(0)
    d = root / "fashion-mnist"
    d.mkdir(parents=True)
    for split, n in (("train", 256), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):  # a learnable pattern: a bright band per class
            images[i, 2 * c : 2 * c + 3, :] = 220
        write_idx(d / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    """A data directory holding conftest's small Fashion-MNIST (:func:`write_small_fmnist`)."""
    return write_small_fmnist(tmp_path / "data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped where CUDA is absent (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_target(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    run_id: str = "m",
    config: dict[str, str] | None = None,
) -> Target:
    """``model`` with the points ``x``, ``y`` as an evaluation target: a stand-in source of the
    fashion-mnist data set (no checkpoint, no data files); ``config``: its recorded one."""
    src = SimpleNamespace(
        model=model,
        run_id=run_id,
        dataset="fashion-mnist",
        kind="module",
        fingerprint=fingerprint_model(model),
        path=run_id,
        config=config or {"model": "tiny", "defense": "standard"},
        run={},
    )
    return Target(src, x, y, len(y))


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as the module ``name`` (scripts are not a package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
