"""A small real store for the web report's tests (``test_transfer.py``, ``test_html.py``): three
tiny checkpoints trained by bench (standard, FGSM-AT, Mixup; one epoch on 256 images of a small
Fashion-MNIST in the real IDX format), evaluated by ``bench eval --transfer-matrix`` with FGSM and
PGD over eps 0, 0.05, 0.1 on the first 40 test points, and its report with the pictures.

Built once per test session (about 20 s on 2 CPU cores) and shared: tests that write copy the
store first. ``tests`` is not a package: import this as ``import visual_store``.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_small_fmnist

DEFENSES = ("standard", "fgsm-at", "mixup")
GRID = "0,0.05,0.1"
EPS = 0.1  # the largest eps of GRID: the transfer matrix's eps
N = 40
BATCH = 16
DATASET = "fashion-mnist"


@dataclass(frozen=True)
class Built:
    """Where the shared store lives: data, checkpoints, the store and its report (with pictures)."""

    root: Path
    data: Path
    ckpts: dict[str, Path]
    db: Path
    report: Path


_BUILT: dict[str, Built] = {}


def eval_argv(db: Path, data: Path, ckpts: list[Path], *extra: str) -> list[str]:
    """``bench eval`` of the shared settings on ``ckpts``."""
    return [
        "eval",
        "--attack",
        "fgsm,pgd",
        "--eps",
        GRID,
        "--n",
        str(N),
        "--batch-size",
        str(BATCH),
        "--db",
        str(db),
        "--data-dir",
        str(data),
        "--no-download",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
        "--checkpoint",
        *map(str, ckpts),
    ]


def _build(root: Path) -> Built:
    from bench.cli import main
    from bench.report import write_report
    from bench.train import TrainConfig, train

    data = write_small_fmnist(root / "data")
    ckpts = {}
    for defense in DEFENSES:
        cfg = TrainConfig(
            defense=defense,
            epochs=1,
            train_limit=256,
            eval_n=64,
            batch_size=32,
            data_dir=str(data),
            download=False,
            out_dir=str(root / "ckpt"),
            run_id=defense,
            device="cpu",
        )
        ckpts[defense] = train(cfg, progress=False, log=lambda _line: None)
    db = root / "results.sqlite"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(eval_argv(db, data, list(ckpts.values()), "--transfer-matrix"))
    assert rc == 0
    write_report(db, root / "report", data_dir=data)
    return Built(root, data, ckpts, db, root / "report")


def visual_store(factory: pytest.TempPathFactory) -> Built:
    """The shared store, built on first use."""
    if "store" not in _BUILT:
        _BUILT["store"] = _build(factory.mktemp("visual"))
    return _BUILT["store"]
