"""Importing robustbench 1.1.1 alongside the official AutoAttack as published on PyPI.

robustbench does ``from autoattack import AutoAttack`` (the authors' GitHub package name); on
PyPI the same code is ``pyautoattack``. :func:`import_robustbench` registers ``autoattack`` as
an alias of ``pyautoattack`` when no ``autoattack`` module exists, then imports robustbench.
robustbench also needs ``pkg_resources`` (setuptools < 81, pinned in pyproject.toml).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType


def alias_autoattack() -> None:
    """Make ``import autoattack`` give ``pyautoattack`` unless a real ``autoattack`` exists."""
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return
    sys.modules["autoattack"] = importlib.import_module("pyautoattack")


def import_robustbench() -> ModuleType:
    """``import robustbench``, with the alias above in place."""
    alias_autoattack()
    return importlib.import_module("robustbench")
