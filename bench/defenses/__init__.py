"""The defense registry: name -> defense class (a dataclass of hyperparameters with a ``loss``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from bench.defenses.adversarial import ALPHA_RULE, FGSMAT, FGSMRS, PGDAT, TRADES
from bench.defenses.base import Defense
from bench.defenses.batchout import BatchOut
from bench.defenses.standard import Mixup, Standard
from bench.params import build_dataclass, dataclass_defaults
from bench.registry import Registry

DEFENSES: Registry[Defense] = Registry("defense")
_RULES = {
    (PGDAT, "alpha"): ALPHA_RULE,
    (TRADES, "alpha"): ALPHA_RULE,
    (FGSMRS, "alpha"): "1.25*eps",
}

for _name, _cls, _summary in [
    ("standard", Standard, "cross-entropy on clean images (the undefended baseline)"),
    (
        "batchout",
        BatchOut,
        "BatchOut feature-space augmentation (Algorithm 1 and the report's variants)",
    ),
    ("mixup", Mixup, "mixup of images and labels, lambda ~ Beta(alpha, alpha) (Zhang et al. 2018)"),
    ("fgsm-at", FGSMAT, "a*J(x) + (1-a)*J(FGSM(x)) (Goodfellow et al. 2015)"),
    ("fgsm-rs", FGSMRS, "FGSM from a random start, step 1.25*eps (Wong et al. 2020)"),
    ("pgd-at", PGDAT, "PGD adversarial training, random start (Madry et al. 2018)"),
    ("trades", TRADES, "CE + beta*KL on a KL-maximising example (Zhang et al. 2019)"),
]:
    # A default of None that stands for a rule of eps is listed as its rule (bench list).
    _defaults = {k: _RULES.get((_cls, k), v) for k, v in dataclass_defaults(_cls).items()}
    DEFENSES.add(_name, _cls, _summary, _defaults, adversarial=_cls.adversarial)


def build_defense(name: str, values: dict[str, str] | None = None) -> Defense:
    """The defense ``name`` with its parameters set from strings (``--set`` / named flags)."""
    return build_dataclass(DEFENSES[name].factory, dict(values or {}), f"defense {name}")


def defense_params(defense: Defense) -> dict[str, Any]:
    """A defense's fully resolved hyperparameters, for the checkpoint's configuration."""
    return {f.name: getattr(defense, f.name) for f in dataclasses.fields(defense) if f.init}  # type: ignore[arg-type]


def all_param_names() -> list[str]:
    """Every hyperparameter name of every defense (the command line offers each as a flag)."""
    names: set[str] = set()
    for entry in DEFENSES:
        names.update(f.name for f in dataclasses.fields(entry.factory) if f.init)  # type: ignore[arg-type]
    return sorted(names)


__all__ = ["DEFENSES", "Defense", "build_defense", "defense_params", "all_param_names"]
