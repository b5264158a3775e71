"""What a sweep's workers do, as plain functions (no Ray here: :mod:`bench.sweep_ray` wraps them
in tasks): train or resume a checkpoint and hand its files back; run the cheap checks; walk the
eps grid on one shard of the points.

Workers need not share a disk with the driver: a finished checkpoint travels back as its files'
bytes (:func:`checkpoint_files`), the driver installs them in its own checkpoints directory
(:func:`install`), and evaluation workers rebuild it in a temporary directory.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from bench import checkpoint
from bench.errors import UsageError
from bench.evaluate import Recorder, flag_text
from bench.sweep import train_identity

#: A finished checkpoint's files, in the order the driver installs them: the weights last, since
#: a run directory with weights and no training state counts as complete
#: (:func:`bench.checkpoint.is_complete`); a leftover training state is removed after them.
CHECKPOINT_FILES = (checkpoint.CONFIG, checkpoint.LOG, checkpoint.RUN, checkpoint.WEIGHTS)


def _quiet(line: str) -> None:
    """Training's per-epoch lines are not shown: the sweep has one progress display."""


def checkpoint_files(run_dir: Path) -> dict[str, bytes]:
    """The bytes of a finished checkpoint's files (those present)."""
    return {name: (run_dir / name).read_bytes() for name in CHECKPOINT_FILES if (run_dir / name).is_file()}


def install(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write a checkpoint's files into ``run_dir`` (each atomically, only those that differ),
    then remove a leftover training state: the run is complete only once all are in place."""
    from bench.io import atomic_write_bytes

    run_dir.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_FILES:
        if name in files and not _same(run_dir / name, files[name]):
            atomic_write_bytes(run_dir / name, files[name])
    (run_dir / checkpoint.STATE).unlink(missing_ok=True)


def _same(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def saved_identity(run_dir: Path) -> dict[str, Any]:
    """The identity (see :func:`bench.sweep.train_identity`) of the config.json in ``run_dir``."""
    return train_identity(checkpoint.read_config(run_dir))


def check_identity(run_dir: Path, identity: dict[str, Any]) -> None:
    """``run_dir`` holds the run of this job, not another configuration."""
    saved = saved_identity(run_dir)
    if saved != identity:
        differ = sorted(k for k in identity if saved.get(k) != identity.get(k))
        raise UsageError(f"{run_dir} holds another configuration (differs in {', '.join(differ)}); "
                         "move it away to train this job")


def train_job(cfg: Any, identity: dict[str, Any], threads: int) -> dict[str, bytes]:
    """Train ``cfg`` (a TrainConfig) into ``out_dir/run_id``; resume it if an earlier session
    was interrupted; a finished one is only read. Returns the checkpoint's files."""
    from bench.train import resume, train

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


def source_of(files: dict[str, bytes]) -> Any:
    """A :class:`bench.sources.Source` rebuilt from a checkpoint's files."""
    from bench.sources import from_checkpoint

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        run_dir = Path(tmp) / "run"
        install(run_dir, files)
        return from_checkpoint(run_dir)


def audit_job(files: dict[str, bytes], n: int, data_dir: str | None, download: bool, threads: int) -> list[Any]:
    """The cheap checks (:func:`bench.audit.cheap`) on the first ``n`` test points."""
    from bench import audit
    from bench.evaluate import attach_points
    from bench.io import pick_device

    torch.set_num_threads(threads)
    target = attach_points(source_of(files), n, data_dir, download)
    model = target.model.to(pick_device(None)).eval()
    return audit.cheap(model, target.x, target.y)


def inference_job(files: dict[str, bytes], n: int, data_dir: str | None, download: bool, threads: int,
                  results: Sequence[Any], seed: int, no_grad: Any = None) -> list[Any]:
    """The walk-inference check (:func:`bench.audit.inference`) on the merged walks of one
    evaluation (``no_grad``: the attack to use where gradients are unavailable)."""
    from bench import audit
    from bench.evaluate import attach_points
    from bench.io import pick_device

    torch.set_num_threads(threads)
    target = attach_points(source_of(files), n, data_dir, download)
    model = target.model.to(pick_device(None)).eval()
    return audit.inference(model, target.x, target.y, results, seed, no_grad)


# ------------------------------------------------------------------------------ shards


@dataclass
class ShardResult:
    """One shard's walk: per attack (by index), eps -> batch -> (flags, seconds); the clean
    flags by batch; AutoAttack's warnings; the device it ran on."""

    k0: int
    k1: int
    clean: dict[int, str]
    steps: dict[int, dict[float, dict[int, tuple[str, float]]]] = field(default_factory=dict)
    warnings: list[tuple[str, float, int]] = field(default_factory=list)
    device: str = "cpu"


class Capture(Recorder):
    """A grid walk's per-batch flags, kept in memory to be sent back to the driver."""

    def __init__(self) -> None:
        self.steps: dict[float, dict[int, tuple[str, float]]] = {}

    def batch(self, eps: float, k: int, flags: torch.Tensor, seconds: float) -> None:
        self.steps.setdefault(eps, {})[k] = (flag_text(flags), seconds)


def by_batch(flags: torch.Tensor, batch_size: int, k0: int) -> dict[int, str]:
    """Flags of consecutive points from batch ``k0`` on, split into the fixed batches."""
    return {k0 + i: flag_text(flags[lo:lo + batch_size]) for i, lo in enumerate(range(0, len(flags), batch_size))}


@dataclass
class ShardSpec:
    """What a shard task runs: the eval block, its (adapted) attacks and which of them."""

    spec: Any  # bench.sweep.EvalSpec
    attacks: list[Any]
    which: list[int]
    k0: int
    k1: int


def shard_job(files: dict[str, bytes], s: ShardSpec, data_dir: str | None, download: bool, threads: int) -> ShardResult:
    """Walk the grid with each attack of ``s.which`` on batches ``k0..k1-1`` of the first n test
    points, with ``first_batch=k0``: the flags equal those of an unsharded walk."""
    from bench.attacks import collect_warnings
    from bench.evaluate import attach_points, grid_walk, predict
    from bench.io import device_label, pick_device

    torch.set_num_threads(threads)
    spec, B = s.spec, s.spec.batch_size
    target = attach_points(source_of(files), spec.n, data_dir, download)
    device = pick_device(None)
    model = target.model.to(device).eval()
    x, y = target.x[s.k0 * B:s.k1 * B], target.y[s.k0 * B:s.k1 * B]
    clean = predict(model, x) == y
    result = ShardResult(s.k0, s.k1, by_batch(clean, B, s.k0), device=device_label(device))
    with collect_warnings() as warned:
        for i in s.which:
            capture = Capture()
            grid_walk(model, s.attacks[i], x, y, spec.eps, batch_size=B, seed=spec.seed, clean=clean,
                      recorder=capture, first_batch=s.k0, walk=spec.walk)
            result.steps[i] = capture.steps
    result.warnings = list(dict.fromkeys(warned))
    return result
