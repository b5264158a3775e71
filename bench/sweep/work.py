"""What a sweep's training workers do, as plain functions (no Ray here: :mod:`bench.sweep.driver`
wraps them in tasks): train or resume a checkpoint and hand its files back
(:mod:`bench.checkpoint_files`). Evaluation work is the pipeline's (:mod:`bench.evaluation.work`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from bench import checkpoint
from bench.checkpoint_files import checkpoint_files
from bench.errors import UsageError
from bench.sweep.spec import train_identity
from bench.train import resume, train


def _quiet(line: str) -> None:
    """Training's per-epoch lines are not shown: the sweep has one progress display."""


def saved_identity(run_dir: Path) -> dict[str, Any]:
    """The identity (see :func:`bench.sweep.spec.train_identity`) of the config.json in
    ``run_dir``."""
    return train_identity(checkpoint.read_config(run_dir))


def check_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    """``run_dir`` holds the run of this job, not another configuration."""
    saved = saved_identity(run_dir)
    if saved != identity:
        differ = sorted(k for k in identity if saved.get(k) != identity.get(k))
        raise UsageError(
            f"{run_dir} holds another configuration (differs in {', '.join(differ)}); "
            "move it away to train this job"
        )


def train_job(cfg: Any, identity: dict[str, Any], threads: int) -> dict[str, bytes]:
    """Train ``cfg`` (a TrainConfig) into ``out_dir/run_id``; resume it if an earlier session
    was interrupted; a finished one is only read. Returns the checkpoint's files."""
    torch.set_num_threads(threads)
    run_dir = Path(cfg.out_dir) / str(cfg.run_id)
    if checkpoint.is_complete(run_dir):
        check_identity(run_dir, identity)
    elif (run_dir / checkpoint.CONFIG).is_file():
        check_identity(run_dir, identity)
        resume(run_dir, data_dir=cfg.data_dir, download=cfg.download, progress=False, log=_quiet)
    else:
        if run_dir.exists():  # stopped before config.json was written: nothing worth keeping
            shutil.rmtree(run_dir)  # (a directory of this sweep, named by this job's hash)
        train(cfg, progress=False, log=_quiet)
    return checkpoint_files(run_dir)
