"""A finished checkpoint as bytes, for machines that share no disk: Ray workers send a trained
checkpoint's files back to the driver (:func:`checkpoint_files`), the driver installs them in its
own checkpoints directory (:func:`install`), and evaluation workers rebuild the model from them
in a temporary directory (:func:`source_of`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import checkpoint
from bench.io import atomic_write_bytes
from bench.sources import from_checkpoint

#: A finished checkpoint's files, in the order the driver installs them: the weights last, since
#: a run directory with weights and no training state counts as complete
#: (:func:`bench.checkpoint.is_complete`); a leftover training state is removed after them.
CHECKPOINT_FILES = (checkpoint.CONFIG, checkpoint.LOG, checkpoint.RUN, checkpoint.WEIGHTS)


def checkpoint_files(run_dir: Path) -> dict[str, bytes]:
    """The bytes of a finished checkpoint's files (those present)."""
    return {
        name: (run_dir / name).read_bytes()
        for name in CHECKPOINT_FILES
        if (run_dir / name).is_file()
    }


def install(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write a checkpoint's files into ``run_dir`` (each atomically, only those that differ),
    then remove a leftover training state: the run is complete only once all are in place."""
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


def source_of(files: dict[str, bytes]) -> Any:
    """A :class:`bench.sources.Source` rebuilt from a checkpoint's files."""
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        run_dir = Path(tmp) / "run"
        install(run_dir, files)
        return from_checkpoint(run_dir)
