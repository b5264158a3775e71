"""The flags several commands share, each defined once: ``add_shared(parser, "db", "device")``."""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any

from bench import paths
from bench.errors import UsageError


def shared_flags() -> dict[str, dict[str, Any]]:
    """Each shared flag's ``add_argument`` keywords (built per parser: ``--db``'s default
    follows ``$BENCH_HOME``)."""
    return {
        "data-dir": {
            "metavar": "DIR",
            "help": "data directory (default $BENCH_DATA_DIR, else <home>/data)",
        },
        "device": {"metavar": "DEV", "help": "cpu, cuda, cuda:1 ... (default: cuda if present)"},
        "no-download": {"action": "store_true", "help": "never download a missing data set"},
        "db": {"metavar": "PATH", "help": f"results store (default {paths.default_db()})"},
        "no-progress": {"action": "store_true", "help": "no progress bar on stderr"},
    }


def add_shared(parser: argparse.ArgumentParser, *names: str, **overrides: dict[str, Any]) -> None:
    """Add the shared flags ``names`` (e.g. ``"data-dir"``) to ``parser``, in that order.
    ``overrides`` maps a flag's dest to keywords that replace its shared ones, e.g.
    ``db={"help": "results store (default <out>/results.sqlite)"}``."""
    flags = shared_flags()
    stray = set(overrides) - {name.replace("-", "_") for name in names}
    if stray:
        raise ValueError(f"overrides of flags not added: {', '.join(sorted(stray))}")
    for name in names:
        kwargs = {**flags[name], **overrides.get(name.replace("-", "_"), {})}
        parser.add_argument(f"--{name}", **kwargs)


def ray_module(name: str, needs: str) -> ModuleType:
    """A module of bench that imports Ray, imported only when Ray is asked for (it is optional
    and slow to import); without Ray, one line: ``{needs} Ray: pip install ...``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name not in ("ray", "ray._raylet") and not str(exc.name or "").startswith("ray."):
            raise
        raise UsageError(
            f"{needs} Ray: pip install -e '.[sweep]' (scripts/setup.sh does)"
        ) from None
