"""Parsing of the numbers and settings users type: ``8/255``, eps grids, ``--set key=value``.

Epsilon is always on the pixel scale of images in [0, 1], as in RobustBench and AutoAttack.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from fractions import Fraction
from typing import Any, Collection, Sequence

from bench.errors import UsageError
from bench.norms import LINF

MAX_LP_EPS = 1e7  # L2/L1 budgets above this are refused when typed (an image bounds them sooner)
MAX_GRID_POINTS = 1000  # an eps grid longer than this is refused (each point is a full attack)
MAX_EXPONENT = 400  # |exponent| of a typed number: beyond float's range, and 10**huge would hang
INT_MAX = 2**63 - 1  # whole numbers must fit a signed 64-bit integer (torch, SQLite)
_EXPONENT = re.compile(r"[eE]\s*([+-]?\d+)")


@dataclasses.dataclass(frozen=True)
class Names:
    """How an error names a setting the user gave: the command line's flag (``--batch-size``)
    or the Python API's keyword (``batch_size``), so that each reader sees their own spelling."""

    cli: bool = True

    def __call__(self, key: str) -> str:
        """``--batch-size`` or ``batch_size``."""
        return "--" + key.replace("_", "-") if self.cli else key

    def given(self, key: str, value: object, quoted: bool = False) -> str:
        """A setting with its value: ``--n 41`` (``quoted``: ``--device 'tpu'``) or, in
        Python, ``n=41``, ``device='tpu'``."""
        if not self.cli:
            return f"{key}={value!r}"
        return f"{self(key)} {value!r}" if quoted else f"{self(key)} {value}"


CLI, API = Names(cli=True), Names(cli=False)


def shown(text: object, limit: int = 60) -> str:
    """``repr`` of a typed value, cut to ``limit`` characters (error lines stay short)."""
    r = repr(str(text))
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _fraction(part: str, text: str, what: str) -> Fraction:
    """One side of ``a/b`` (or a plain number) exactly; an exponent beyond :data:`MAX_EXPONENT`
    is refused before ``Fraction`` would compute ``10**exponent``."""
    m = _EXPONENT.search(part)
    if m and abs(int(m.group(1))) > MAX_EXPONENT:
        raise UsageError(
            f"{what} {shown(text)} is out of range (exponents beyond +-{MAX_EXPONENT} are refused)"
        )
    return Fraction(part.strip())


def parse_number(text: str, what: str = "number") -> float:
    """A float written as ``0.03``, ``8/255`` or ``1e-3``; anything else is a UsageError
    (so are ``a/0``, nan, inf and values beyond float's range)."""
    s = str(text).strip()
    try:
        if "/" in s:
            parts = s.split("/")
            if len(parts) != 2:
                raise ValueError(s)
            value = float(_fraction(parts[0], text, what) / _fraction(parts[1], text, what))
        else:
            value = float(s)
    except ZeroDivisionError:
        raise UsageError(f"{what} {shown(text)} divides by zero") from None
    except ValueError:
        raise UsageError(
            f"{what} {shown(text)} is not a number (write e.g. 0.03 or 8/255)"
        ) from None
    except OverflowError:
        raise UsageError(f"{what} {shown(text)} is not a finite number") from None
    if not math.isfinite(value):
        raise UsageError(f"{what} {shown(text)} is not a finite number")
    return value


def parse_int(text: str, what: str = "number") -> int:
    """A whole number that fits a signed 64-bit integer; anything else is a UsageError."""
    try:
        value = int(str(text).strip())
    except ValueError:  # also more digits than Python converts
        raise UsageError(f"{what} {shown(text)} is not a whole number") from None
    if not -INT_MAX - 1 <= value <= INT_MAX:
        raise UsageError(f"{what} {shown(text)} is out of range (at most {INT_MAX} in magnitude)")
    return value


def parse_eps(text: str | float, what: str = "eps", norm: str = LINF) -> float:
    """A budget on the pixel scale: under Linf a number in [0, 1], e.g. ``8/255``; under L2 and
    L1 any number >= 0 (e.g. ``0.5``, ``128/255``; the image size bounds it later, see
    :func:`bench.norms.reach`)."""
    value = parse_number(str(text), what) if isinstance(text, str) else float(text)
    if norm != LINF:
        if not 0.0 <= value <= MAX_LP_EPS:
            raise UsageError(f"{what} {shown(text)} is outside [0, {MAX_LP_EPS:g}] ({norm} budget)")
        return value
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{what} {shown(text)} is outside [0, 1] (pixel scale; write e.g. 8/255)")
    return value


def parse_eps_grid(text: str, norm: str = LINF) -> list[float]:
    """``start:stop:step`` (inclusive of stop) or a comma list; returns sorted unique eps values.

    ``0:8/255:1/255`` gives the nine values 0, 1/255, ..., 8/255.
    """
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise UsageError(f"eps grid {shown(text)}: write start:stop:step, e.g. 0:8/255:1/255")
        start, stop, step = (parse_eps(p, "eps grid value", norm) for p in parts)
        if step <= 0:
            raise UsageError(f"eps grid {shown(text)}: the step must be positive")
        if stop < start:
            raise UsageError(f"eps grid {shown(text)}: stop is below start")
        ratio = (stop - start) / step  # counted before any list is built (1e-9 steps: 1e9 points)
        count = (
            int(math.floor(ratio + 1e-9)) + 1
            if ratio < 2 * MAX_GRID_POINTS
            else MAX_GRID_POINTS + 1
        )
        if count > MAX_GRID_POINTS:
            raise UsageError(
                f"eps grid {shown(text)} has more than {MAX_GRID_POINTS} points; use a larger step"
            )
        values = [start + i * step for i in range(count)]
        # Land exactly on stop when the step divides the range (floating error otherwise).
        if abs(values[-1] - stop) < 1e-9:
            values[-1] = stop
    else:
        values = [parse_eps(p, "eps grid value", norm) for p in text.split(",") if p.strip()]
        if not values:
            raise UsageError("eps grid is empty")
        if len(values) > MAX_GRID_POINTS:
            raise UsageError(f"eps grid has {len(values)} values; at most {MAX_GRID_POINTS}")
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
        raise UsageError(f"{what} {shown(text)} is not a boolean (true/false)")
    if annotation is int:
        return parse_int(text, what)
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


def format_eps(eps: float, norm: str = LINF) -> str:
    """Under Linf ``8/255`` when eps is a whole number of 1/255 steps, else (and under L2 and
    L1, whose budgets are written as decimals: 0.5, 12) the decimal."""
    if norm != LINF:
        return f"{eps:.6g}"
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return "0" if round(k) == 0 else f"{round(k)}/255"
    return f"{eps:.6g}"


def eps_words(eps: float, norm: str = LINF) -> str:
    """``eps 8/255`` under Linf (as bench wrote it before norms), ``L2 eps 0.5`` otherwise."""
    return f"eps {format_eps(eps)}" if norm == LINF else f"{norm} eps {format_eps(eps, norm)}"


def eps_in_255(eps: float, digits: int = 4, norm: str = LINF) -> str:
    """Eps in units of 1/255 for axes and column heads: ``"8"``, or e.g. ``"25.5"`` off the
    grid; under L2 and L1 the budget itself (``"0.5"``), as their leaderboards write it."""
    if norm != LINF:
        return f"{eps:.{digits}g}"
    k = eps * 255
    return str(int(round(k))) if abs(k - round(k)) < 1e-6 else f"{k:.{digits}g}"


def plural(count: int, word: str) -> str:
    """``1 point``, ``2 points``: a count with its noun (plural with an s)."""
    return f"{count} {word}{'' if count == 1 else 's'}"


DASH = "–"  # a table cell with nothing to say (terminal, list, report)


def fmt_default(key: str, value: Any) -> str:
    """Budgets and step sizes on the pixel scale read best as k/255; everything else plainly."""
    if isinstance(value, float):
        if key in ("eps", "alpha", "step") and 0 < value < 1:
            eps = format_eps(value)
            if "/" in eps:
                return eps
        return f"{value:g}"
    return str(value)


def aligned(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> list[str]:
    """Rows as columns two spaces apart, each as wide as its widest cell; columns ``right``
    right-aligned (numbers), the others left-aligned (the terminal's tables)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]
