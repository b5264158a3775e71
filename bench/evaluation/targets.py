"""Targets: a model ready to evaluate (where it came from, a :class:`bench.sources.Source`) with
its points, and the store's record of it (:func:`run_row`). Reading a checkpoint and its data is
checked here; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.data import load_dataset
from bench.errors import UsageError
from bench.params import CLI, Names
from bench.sources import from_checkpoint
from bench.store import RunRow

MAX_N = 100_000_000  # evaluated points


@dataclass
class Target:
    """A model ready to evaluate: where it came from (a :class:`bench.sources.Source`) and its
    first n test points (float images in [0, 1], CPU)."""

    source: Any
    x: torch.Tensor
    y: torch.Tensor
    test_size: int
    given: bool = False  # x, y are the caller's own tensors (bench.evaluate_model), not test points

    @property
    def model(self) -> nn.Module:
        return self.source.model

    @property
    def run_id(self) -> str:
        return str(self.source.run_id)


def check_n(n: int, names: Names = CLI) -> None:
    """``n`` must be a whole number >= 1 (the error names it as ``names`` spells it)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise UsageError(f"{names('n')} must be a whole number in 1..{MAX_N}, got {n!r}")


def attach_points(
    source: Any,
    n: int,
    data_dir: str | Path | None = None,
    download: bool = True,
    names: Names = CLI,
) -> Target:
    """The first ``n`` test points of the source's data set (UsageError if there are fewer)."""
    check_n(n, names)
    test = load_dataset(source.dataset, "test", data_dir, download=download)
    if n > len(test):
        raise UsageError(
            f"{names.given('n', n)} is larger than the {source.dataset} test split "
            f"({len(test)} points)"
        )
    return Target(source, test.images(slice(0, n)).contiguous(), test.y[:n].clone(), len(test))


def prepare_target(
    ckpt_path: str | Path,
    n: int,
    data_dir: str | Path | None = None,
    dataset: str | None = None,
    download: bool = True,
) -> Target:
    """Read and check a checkpoint and its data: readable, of ``dataset`` if given, with at
    least ``n`` test points. Everything is a UsageError; nothing is written."""
    check_n(n)
    source = from_checkpoint(ckpt_path)
    if dataset is not None and dataset != source.dataset:
        raise UsageError(
            f"checkpoint {source.run_id} was trained on {source.dataset}, "
            f"not on --dataset {dataset}"
        )
    return attach_points(source, n, data_dir, download)


def run_row(source: Any) -> RunRow:
    """The store's record of a model, from its source's configuration and run record."""
    cfg, run = dict(source.config or {}), dict(source.run or {})
    return RunRow(
        run_id=source.run_id,
        path=str(source.path),
        dataset=source.dataset,
        model=str(cfg.get("model", "unknown")),
        defense=str(cfg.get("defense", "external")),
        defense_params=dict(cfg.get("defense_params") or {}),
        epochs=cfg.get("epochs"),
        train_limit=cfg.get("train_limit"),
        train_seconds=run.get("train_seconds"),
        config=cfg,
        run=run,
        fingerprint=source.fingerprint,
        kind=source.kind,
    )
