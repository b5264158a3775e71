"""``bench list``: every registry, one line per entry with its defaults."""

from __future__ import annotations

import argparse
from typing import Any

from bench.attacks import ATTACKS
from bench.data import DATASETS
from bench.defenses import DEFENSES
from bench.models import MODELS
from bench.params import format_eps
from bench.registry import Registry


def _fmt(key: str, value: Any) -> str:
    """Budgets and step sizes on the pixel scale read best as k/255; everything else plainly."""
    if isinstance(value, float):
        if key in ("eps", "alpha", "step") and 0 < value < 1:
            eps = format_eps(value)
            if "/" in eps:
                return eps
        return f"{value:g}"
    return str(value)


def registries() -> list[tuple[str, Registry[Any]]]:
    """The registries shown, in order."""
    return [
        ("data sets", DATASETS),
        ("models", MODELS),
        ("defenses", DEFENSES),
        ("attacks", ATTACKS),
    ]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench list``."""
    what = "list data sets, models, defenses and attacks with their defaults"
    p = sub.add_parser(
        "list",
        help=what,
        description=what + " (attacks: with the threat models each has)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print each registry."""
    for title, reg in registries():
        print(f"{title}:")
        width = max(len(e.name) for e in reg)
        for e in reg:
            defaults = " ".join(f"{k}={_fmt(k, v)}" for k, v in e.defaults.items())
            line = f"  {e.name:<{width}}  {e.summary}"
            print(line + (f"  [{defaults}]" if defaults else ""))
    return 0
