"""Parsing of the numbers and settings users type: ``8/255``, eps grids, ``--set key=value``.

Epsilon is always on the pixel scale of images in [0, 1], as in RobustBench and AutoAttack.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from fractions import Fraction
from typing import Any

from bench.errors import UsageError


def parse_number(text: str, what: str = "number") -> float:
    """A float written as ``0.03``, ``8/255`` or ``1e-3``; anything else is a UsageError."""
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(Fraction(num.strip())) / float(Fraction(den.strip()))
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{what} {text!r} is not a number (write e.g. 0.03 or 8/255)") from None
    if not math.isfinite(value):
        raise UsageError(f"{what} {text!r} is not a finite number")
    return value


def parse_eps(text: str | float, what: str = "eps") -> float:
    """An L-infinity budget on the pixel scale: a number in [0, 1], e.g. ``8/255``."""
    value = parse_number(str(text), what) if isinstance(text, str) else float(text)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{what} {text!r} is outside [0, 1] (pixel scale; write e.g. 8/255)")
    return value


def parse_eps_grid(text: str) -> list[float]:
    """``start:stop:step`` (inclusive of stop) or a comma list; returns sorted unique eps values.

    ``0:8/255:1/255`` gives the nine values 0, 1/255, ..., 8/255.
    """
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UsageError(f"eps grid {text!r}: write start:stop:step, e.g. 0:8/255:1/255")
        start, stop, step = (parse_eps(p, "eps grid value") for p in parts)
        if step <= 0:
            raise UsageError(f"eps grid {text!r}: the step must be positive")
        if stop < start:
            raise UsageError(f"eps grid {text!r}: stop is below start")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        values = [start + i * step for i in range(count)]
        # Land exactly on stop when the step divides the range (floating error otherwise).
        if abs(values[-1] - stop) < 1e-9:
            values[-1] = stop
    else:
        values = [parse_eps(p, "eps grid value") for p in text.split(",") if p.strip()]
        if not values:
            raise UsageError("eps grid is empty")
    unique: list[float] = []
    for v in sorted(values):  # drop duplicates that differ only by floating error
        if not unique or v - unique[-1] > 1e-12:
            unique.append(v)
    return unique


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` from repeated ``--set`` flags into a dict of strings."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: write key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise UsageError(f"--set {item!r}: the key is empty")
        out[key] = value.strip()
    return out


def _coerce(text: str, annotation: Any, what: str) -> Any:
    """Convert a command-line string to the type a dataclass field declares."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        return _coerce(text, args[0], what)
    if annotation is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{what} {text!r} is not a boolean (true/false)")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{what} {text!r} is not a whole number") from None
    if annotation is float:
        return parse_number(text, what)
    if origin is tuple:
        (item_type, *_rest) = typing.get_args(annotation)
        return tuple(_coerce(p, item_type, what) for p in text.split(",") if p.strip())
    if annotation is str:
        return text
    raise TypeError(f"cannot parse {what} of type {annotation!r}")


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """The default value of every field of a dataclass, for ``bench list`` and configs."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def build_dataclass(cls: type, values: dict[str, str], owner: str) -> Any:
    """Instantiate dataclass ``cls`` from string ``values``, each checked against its fields.

    An unknown key is a UsageError that lists the valid keys of ``owner`` (e.g. "defense pgd-at").
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, text in values.items():
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise UsageError(f"{owner} has no parameter {key!r}; valid: {valid}")
        kwargs[key] = _coerce(text, hints[key], f"{owner} parameter {key}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # __post_init__ validation
        raise UsageError(f"{owner}: {exc}") from None


def format_eps(eps: float) -> str:
    """``8/255`` when eps is a whole number of 1/255 steps, else the decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return "0" if round(k) == 0 else f"{round(k)}/255"
    return f"{eps:.6g}"


def eps_in_255(eps: float, digits: int = 4) -> str:
    """Eps in units of 1/255 for axes and column heads: ``"8"``, or e.g. ``"25.5"`` off the grid."""
    k = eps * 255
    return str(int(round(k))) if abs(k - round(k)) < 1e-6 else f"{k:.{digits}g}"
