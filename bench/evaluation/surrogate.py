"""The transfer probe's default surrogate: a standard (undefended) model of the data set, trained
by bench's own loop once and kept beside the data (``<data dir>/surrogates/<data set>``).

Transfer from a standard model is the surrogate Carlini et al. 2019 and Tramèr et al. 2020 name
first: its adversarial examples owe nothing to the evaluated model's gradients, so a model whose
gradients mislead cannot hide from them. Small on purpose (bench's ``cnn``, one epoch on at most
10,000 training points): a weak surrogate only makes the probe weaker, never a false alarm, since
every break it finds is a proof.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from torch import nn

from bench import checkpoint
from bench.data import load_dataset
from bench.errors import UsageError
from bench.sources import from_checkpoint
from bench.train import TrainConfig, train

EPOCHS = 1
TRAIN_LIMIT = 10_000  # training points, at most (Fashion-MNIST on 2 cores: about 3 s)


def _say(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr)


def config(dataset: str, data_dir: Path, out_dir: Path) -> TrainConfig:
    """The surrogate's training run into ``out_dir`` (seed 0, no download: data that is not
    there means none; a UsageError)."""
    size = len(load_dataset(dataset, "train", data_dir, download=False))
    return TrainConfig(
        dataset=dataset,
        model="cnn",
        defense="standard",
        epochs=EPOCHS,
        train_limit=min(TRAIN_LIMIT, size),
        seed=0,
        data_dir=str(data_dir),
        download=False,
        out_dir=str(out_dir),
        run_id=f"{dataset}-standard-cnn",
    )


def standard(dataset: str, data_dir: Path, say: Callable[[str], None] = _say) -> nn.Module | None:
    """The data set's standard surrogate: read, else trained now; None (said why) when its
    training data is not in ``data_dir``."""
    run_dir = data_dir / "surrogates" / f"{dataset}-standard-cnn"
    if not checkpoint.is_complete(run_dir):
        try:
            _train(dataset, data_dir, run_dir, say)
        except (UsageError, OSError) as exc:  # no training split; a read-only data directory
            say(f"no transfer probe: no standard surrogate of {dataset} ({exc})")
            return None
    return from_checkpoint(run_dir).model.eval()


def _train(dataset: str, data_dir: Path, run_dir: Path, say: Callable[[str], None]) -> None:
    """Train into a fresh temporary folder beside ``run_dir``, then move it into place: two
    evaluations starting at once never see each other's half-written run."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".training-", dir=run_dir.parent))
    try:
        cfg = config(dataset, data_dir, tmp)
        say(f"training the transfer probe's surrogate (standard cnn, 1 epoch) into {run_dir}")
        trained = train(cfg, progress=False, log=lambda *_: None)
        if not checkpoint.is_complete(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)  # a run killed half way by an old bench
            os.replace(trained, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
