"""Atomic file writes, library versions and device choice, shared by training and evaluation."""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.errors import UsageError
from bench.params import CLI, Names


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part.

    The file gets the permissions of a plainly created one (0666 less the umask), not the
    0600 that ``mkstemp`` gives its temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON, indented, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` into memory, then :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries whose behaviour shapes the numbers."""
    out = {"python": platform.python_version()}
    for dist in ("bench", "torch", "torchvision", "torchattacks", "pyautoattack", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    out["cuda"] = torch.version.cuda or "none"
    return out


def pick_device(name: str | None = None, names: Names = CLI) -> torch.device:
    """``--device`` if given, else CUDA when present, else the CPU. Called at run time only.

    A device that can't be used here (a typo, CUDA without a GPU) is a UsageError naming the
    setting as ``names`` spells it (``--device``, or the Python API's ``device=``)."""
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"{names.given('device', name, quoted=True)}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{names.given('device', name)}: CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"{names.given('device', name)}: bench runs on cpu or cuda")
    return device


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` lives: its first parameter's device, else its first buffer's, else the
    CPU."""
    p = next(model.parameters(), None)
    if p is not None:
        return p.device
    b = next(model.buffers(), None)
    return b.device if b is not None else torch.device("cpu")


def device_label(device: torch.device) -> str:
    """A readable device name for logs and result rows, e.g. ``cuda:NVIDIA H100`` or ``cpu``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.get_num_threads()}threads"
