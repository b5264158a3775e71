"""Formatting shared by the report's outputs: labels, numbers with intervals, names."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Collection, Iterable

from bench.evaluation.results import Estimate
from bench.norms import LINF
from bench.params import DASH, format_eps
from bench.report.model import AUTOATTACK, Variant, mean, span, spread
from bench.store import ANY, canonical

DISPLAY = {
    "fgsm": "FGSM",
    "pgd": "PGD",
    "apgd": "APGD",
    "cw": "CW",
    "fab": "FAB",
    "square": "Square",
    "mifgsm": "MI-FGSM",
    "eotpgd": "EOT-PGD",
    "deepfool": "DeepFool",
    ANY: "worst case",
}
AA_ATTACKS = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "plus": ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
    "rand": ["apgd-ce", "apgd-dlr"],
}


def eps_label(norm: str) -> str:
    """How text names a budget: ``eps`` under Linf (the default threat model, worded as
    before), else e.g. ``L2 eps``."""
    return "eps" if norm == LINF else f"{norm} eps"


def ci(e: Estimate | None) -> str:
    """``66.0 (59.2–72.2)``: accuracy and 95% Wilson interval, in %."""
    return DASH if e is None else e.text()


def ci_many(vals: list[Estimate] | None) -> str:
    """One estimate with its interval, or seeds as ``mean ± std [hull of intervals]``."""
    if not vals:
        return DASH
    if len(vals) == 1:
        return ci(vals[0])
    lo, hi = span(vals)
    return f"{100 * mean(vals):.1f} ± {100 * spread(vals):.1f} [{100 * lo:.1f}–{100 * hi:.1f}]"


def format_value(value: Any) -> str:
    """A parameter value for a label: floats on the 1/255 grid as ``k/255``."""
    if isinstance(value, float):
        on_grid = 0 < value <= 1 and abs(value * 255 - round(value * 255)) < 1e-6
        return format_eps(value) if on_grid else f"{value:.4g}"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return "+".join(str(v) for v in value) or "[]"
    if isinstance(value, (dict, list)):
        return canonical(value)
    return str(value)


def format_seconds(seconds: float | None) -> str:
    """``45.2 s``, ``12 min 05 s`` or ``3 h 07 min``."""
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def slug(text: str) -> str:
    """A file-name part: lower case, runs of other characters as ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def cell(text: str) -> str:
    """Markdown table cell text."""
    return text.replace("|", "\\|").replace("\n", " ")


def table(
    head: list[str], body: list[list[str]], right_from: int = 0, text: Collection[str] = ()
) -> list[str]:
    """A markdown table: numbers right-aligned (``---:``), text left (``:---``). Columns from
    ``right_from`` on hold numbers, except those whose head is in ``text``."""
    align = ["---:" if i >= right_from and h not in text else ":---" for i, h in enumerate(head)]
    return [
        "| " + " | ".join(cell(h) for h in head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in body),
    ]


def base_label(variant: Variant) -> str:
    """``FGSM``, ``AutoAttack (standard)``, ``worst case``."""
    if variant.attack == AUTOATTACK:
        version = variant.aa_version
        return f"AutoAttack ({version})" if version else "AutoAttack"
    return DISPLAY.get(variant.attack, variant.attack)


def variant_labels(variants: Iterable[Variant]) -> dict[Variant, str]:
    """Unique labels; variants of one attack that differ in parameters show the difference."""
    groups: dict[str, list[Variant]] = {}
    for v in sorted(set(variants), key=lambda v: v.sort_key):
        groups.setdefault(v.attack, []).append(v)
    out: dict[Variant, str] = {}
    for name, members in groups.items():
        dicts = [m.params_dict for m in members]
        keys = sorted({k for d in dicts for k in d})
        differ = [k for k in keys if len({canonical(d.get(k)) for d in dicts}) > 1]
        if name == AUTOATTACK:
            differ = [k for k in differ if k != "version"]
        for v in members:
            shown = [f"{k}={format_value(v.params_dict[k])}" for k in differ if k in v.params_dict]
            out[v] = (
                f"{base_label(v)} [{', '.join(shown)}]"
                if shown and len(members) > 1
                else base_label(v)
            )
    counts: dict[str, int] = {}
    for lab in out.values():
        counts[lab] = counts.get(lab, 0) + 1
    return {v: (f"{lab} {v.params}" if counts[lab] > 1 else lab) for v, lab in out.items()}


def joined(values: Iterable[Any]) -> str:
    """Distinct values, sorted, comma-separated (``–`` if none)."""
    vals = {v for v in values if v is not None}
    ordered = sorted(
        vals, key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))
    )
    return ", ".join(str(v) for v in ordered) if ordered else DASH


def aa_attack_list(params: dict[str, Any]) -> list[str]:
    """The components an AutoAttack row ran: from its params, else the version's list."""
    if params.get("attacks"):
        return [str(a) for a in params["attacks"]]
    return AA_ATTACKS.get(str(params.get("version", "standard")), [])


def safe_name(text: str) -> str:
    """A run id as a file name; distinct run ids give distinct names (escapes are reversible)."""

    def esc(m: re.Match[str]) -> str:
        return "".join(f"%{b:02X}" for b in m.group(0).encode("utf-8", "surrogatepass"))

    name = re.sub(r"[^A-Za-z0-9._-]", esc, text)
    if name.startswith("."):
        name = "%2E" + name[1:]
    return name[:200] if len(name) <= 200 else name[:180] + "~" + _digest(text)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
