"""The terminal table of one evaluation: robust accuracy (%) with 95% intervals per attack and
eps, the worst case, and every flag. Eps are written in the evaluation's threat model: in units
of 1/255 under Linf, as the budget itself under L2 and L1."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.evaluation import audit
from bench.evaluation.results import Estimate
from bench.norms import LINF
from bench.params import eps_in_255, format_eps, plural
from bench.store import ANY
from bench.vocab import Walk

if TYPE_CHECKING:  # the table reads an Evaluation; outcome imports this module
    from bench.evaluation.outcome import Evaluation


def ci_cell(e: Estimate) -> str:
    """``72.0 (63.1-79.6)``: accuracy and 95% Wilson interval in %."""
    lo, hi = e.interval
    return f"{100 * e.acc:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"


def norm_of(ev: Evaluation) -> str:
    """The evaluation's threat model (Linf for settings made before bench knew others)."""
    return str(getattr(ev.settings, "norm", LINF))


def corrected_lines(ev: Evaluation) -> list[str]:
    """One line per eps where remedies or probes broke points every attack had left: the worst
    case shown is the corrected one; by how much the attacks had overstated it."""
    out = []
    norm = norm_of(ev)
    for w in ev.worst:
        if w.overstated:
            before = Estimate(w.before.count("1"), len(w.before))
            out.append(
                f"CORRECTED at eps {format_eps(w.eps, norm)}: {', '.join(w.corrected_by)} broke "
                f"{plural(w.overstated, 'point')} the attacks left: {ANY} {ci_cell(before)} -> "
                f"{ci_cell(w.estimate)} (overstated by {100 * w.overstated / len(w.flags):.1f} "
                "points)"
            )
    return out


def _head(ev: Evaluation, device: str, width: int) -> list[str]:
    """The run, the settings, the clean accuracy and the column heads (eps in the norm's units)."""
    t, s, norm = ev.target, ev.settings, norm_of(ev)
    src = t.source
    unit = "Linf eps (x/255)" if norm == LINF else f"{norm} eps"
    head = f"{'attack':<{width}}" + "".join(
        f"{eps_in_255(e, digits=3, norm=norm):>19}" for e in s.eps_grid
    )
    return [
        f"{t.run_id} ({src.dataset}, {src.config.get('model', '?')}, "
        f"{src.config.get('defense', '?')}, "
        f"weights {str(src.fingerprint)[7:19]}): n={len(t.y)} (first n test points), "
        f"seed={s.seed}, batch={s.batch_size}, walk={s.walk}, {device}",
        f"clean accuracy {ci_cell(ev.clean_estimate)}%; robust accuracy % (95% Wilson interval) "
        f"by {unit}",
        head,
        "-" * len(head),
    ]


def format_table(ev: Evaluation, device: str) -> str:
    """Robust accuracy (%) with 95% intervals per attack (rows) and eps (columns: in 1/255 under
    Linf, the budget under L2 and L1)."""
    s = ev.settings
    est = ev.estimates()
    names = list(est)
    width = max(len(x) for x in names + ["attack"])
    lines = _head(ev, device, width)
    for name in names:
        cells = "".join(
            f"{ci_cell(est[name][e]) if e in est[name] else '-':>19}" for e in s.eps_grid
        )
        lines.append(f"{name:<{width}}{cells}")
    lines.append(
        f"{ANY} = per point, robust only if every attack above failed at that eps and at "
        "every smaller one"
    )
    if s.walk != Walk.UP:
        lines.append(
            f"walk {s.walk}: the largest eps is a single run; a point robust there (or at a larger "
            "eps) is counted robust below it (inferred); broken is always proved"
        )
    if ev.note:
        lines.append(f"note: {ev.note}")
    return "\n".join(lines + corrected_lines(ev) + _flag_lines(ev))


def _flag_lines(ev: Evaluation) -> list[str]:
    """Every flag and AutoAttack warning, then whether the evaluation is reliable."""
    lines = []
    for f in ev.findings:
        if f.flagged:
            lines.append(f"FLAG {f.check}: {f.summary} -> {f.advice}")
    for msg, eps, points in ev.aa_warnings:
        flag, why = audit.classify_aa_warning(msg, points, ev.aa_calls)
        lines.append(
            f"{'FLAG' if flag else 'note'} autoattack-checks at {format_eps(eps, norm_of(ev))}: "
            f"{msg} ({why})"
        )
    lines.append(
        "UNRELIABLE: a check flagged this evaluation; it is kept out of the ranking"
        if ev.unreliable
        else f"checks passed: {', '.join(f.check for f in ev.findings)}"
    )
    return lines
