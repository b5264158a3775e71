"""The flags several commands share, each defined once: ``add_shared(parser, "db", "device")``."""

from __future__ import annotations

import argparse
from typing import Any

from bench import paths


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
