"""Where bench reads and writes by default. Never relative to the working directory.

``$BENCH_HOME`` if set; else the checkout that holds this package (``pip install -e .``);
else ``~/.cache/bench``. Checkpoints go to ``<home>/checkpoints``, reports to ``<home>/reports``.
Data sets: ``--data-dir``, else ``$BENCH_DATA_DIR``, else ``<home>/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.errors import UsageError

NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096  # bytes in a whole path (Linux)


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
    """The data directory: the flag, else ``$BENCH_DATA_DIR``, else ``<home>/data``.

    One that exists but is not a directory (or can't be resolved) is a UsageError."""
    for given, what in (
        (explicit, "--data-dir"),
        (os.environ.get("BENCH_DATA_DIR"), "$BENCH_DATA_DIR"),
    ):
        if given:
            path = resolve(given, what)
            if path.exists() and not path.is_dir():
                raise UsageError(f"{what} {path} exists and is not a directory")
            return path
    return home() / "data"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` made absolute (``~`` expanded, links followed). A component longer than
    :data:`NAME_MAX` bytes, a path longer than :data:`PATH_MAX`, or a symlink loop is a
    UsageError naming ``what`` (e.g. ``--db``)."""
    p = Path(path).expanduser()
    for part in p.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UsageError(f"{what}: the name {_short(part)!r} is longer than {NAME_MAX} bytes")
    if len(os.fsencode(str(p))) > PATH_MAX:
        raise UsageError(f"{what}: the path is longer than {PATH_MAX} bytes")
    try:
        return p.resolve()
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        raise UsageError(f"{what} {_short(str(path))} is a symlink loop") from None
    except OSError as exc:  # ELOOP from 3.13 on, or another failure of the system call
        raise UsageError(
            f"{what} {_short(str(path))} can't be resolved: {exc.strerror or exc}"
        ) from None


def writable(path: Path) -> bool:
    """This process may write ``path``, and its permission bits allow someone to: root can
    write anything, so a file or folder marked read-only (``chmod a-w``) is refused for it too."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & 0o222)


def check_creatable(path: Path, what: str, *, directory: bool) -> None:
    """``path`` (absolute) can be written or created: if it exists it is a directory (or a file,
    with ``directory=False``) and writable; else its nearest existing ancestor is a writable
    directory. UsageError otherwise; nothing is created."""
    kind = "directory" if directory else "file"
    if path.exists():
        if path.is_dir() != directory:
            raise UsageError(f"{what} {path} exists and is not a {kind}")
        if not writable(path):
            raise UsageError(f"{what} {path} is read-only")
        if not directory and not writable(path.parent):
            raise UsageError(f"{what} {path}: its directory {path.parent} is read-only")
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {path}: {parent} is not a directory")
            if not writable(parent):
                raise UsageError(f"{what} {path}: {parent} is read-only")
            return
