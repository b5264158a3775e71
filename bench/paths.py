"""Where bench reads and writes by default. Never relative to the working directory.

``$BENCH_HOME`` if set; else the checkout that holds this package (``pip install -e .``);
else ``~/.cache/bench``. Checkpoints go to ``<home>/checkpoints``, reports to ``<home>/reports``.
Data sets: ``--data-dir``, else ``$BENCH_DATA_DIR``, else ``<home>/data``.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The root under which checkpoints/, reports/ and data/ live by default."""
    env = os.environ.get("BENCH_HOME")
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "bench").is_dir():
        return checkout
    return Path.home() / ".cache" / "bench"


def checkpoints_dir() -> Path:
    """Default output of ``bench train``."""
    return home() / "checkpoints"


def reports_dir() -> Path:
    """Default output of ``bench report``; also holds the results store."""
    return home() / "reports"


def default_db() -> Path:
    """The SQLite results store, ``reports/results.sqlite``."""
    return reports_dir() / "results.sqlite"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the flag, else ``$BENCH_DATA_DIR``, else ``<home>/data``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("BENCH_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return home() / "data"
