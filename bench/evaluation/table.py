"""The terminal table of one evaluation: robust accuracy in % with its 95% Wilson interval, one
row per eps and one column per attack (the worst case ``any`` last), the n every cell counts,
then every flag. Eps are written in the evaluation's threat model: in units of 1/255 under Linf,
as the budget itself under L2 and L1. Every line fits :data:`WIDTH` columns for the default grid
(nine eps) and attacks; prose is wrapped to it."""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING

from bench.evaluation import audit
from bench.evaluation.results import Estimate
from bench.norms import LINF
from bench.params import aligned, eps_in_255, format_eps, plural
from bench.store import ANY
from bench.vocab import Walk

if TYPE_CHECKING:  # the table reads an Evaluation; outcome imports this module
    from bench.evaluation.outcome import Evaluation

WIDTH = 100  # a normal terminal's columns


def ci_cell(e: Estimate, n: int | None = None) -> str:
    """``72.0% (63.1-79.6)``: accuracy and its 95% Wilson interval, in %; `` n=K`` follows when
    the estimate counts other than the ``n`` points the table states once."""
    cell = e.text(unit="%", dash="-")
    return cell if n is None or e.n == n else f"{cell} n={e.n}"


def norm_of(ev: Evaluation) -> str:
    """The evaluation's threat model (Linf for settings made before bench knew others)."""
    return str(getattr(ev.settings, "norm", LINF))


def wrap(line: str) -> list[str]:
    """A prose line cut to :data:`WIDTH` columns, continuations indented."""
    return textwrap.wrap(
        line, WIDTH, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
    ) or [""]


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


def _model_line(ev: Evaluation, device: str) -> str:
    """The model, its weights and the device (one line: runs on other devices differ only here)."""
    src = ev.target.source
    about = [src.config.get("model", "?"), src.config.get("defense", "?")]
    if not ev.target.given:  # the caller's tensors belong to no data set
        about.insert(0, src.dataset)
    return (
        f"{ev.target.run_id} ({', '.join(map(str, about))}), "
        f"weights {str(src.fingerprint)[7:19]}, device {device or ev.device or 'unknown'}"
    )


def points_text(ev: Evaluation) -> str:
    """Which points were evaluated: the first n of a test split, or the caller's tensors."""
    t = ev.target
    n = len(t.y)
    if t.given:
        return f"the caller's x, y (n={n}; not a data set's test points)"
    return f"the first {n} test points of {t.source.dataset}"


def _head(ev: Evaluation, device: str) -> list[str]:
    """The model, the points and settings, the clean accuracy, what the cells hold."""
    s, n = ev.settings, len(ev.target.y)
    unit = "Linf eps (x/255)" if norm_of(ev) == LINF else f"{norm_of(ev)} eps"
    return [_model_line(ev, device)] + [
        part
        for line in (
            f"points: {points_text(ev)}; seed={s.seed}, batch={s.batch_size}, walk={s.walk}",
            f"clean accuracy {ci_cell(ev.clean_estimate)}, n={n}",
            f"robust accuracy % (95% Wilson interval), n={n} per cell; rows: {unit}, "
            "columns: attacks",
        )
        for part in wrap(line)
    ]


def _tokens(name: str) -> list[str]:
    """An attack's name cut after each ``[`` and ``,``: where its column head may break."""
    return re.split(r"(?<=[\[,])", name)


def _head_lines(name: str, width: int) -> list[str]:
    """An attack's column head in lines of at most ``width`` where its tokens allow
    (``autoattack[`` / ``version=custom,`` / ``attacks=apgd-ce]``)."""
    lines: list[str] = []
    for token in _tokens(name):
        if lines and len(lines[-1]) + len(token) <= width:
            lines[-1] += token
        else:
            lines.append(token)
    return lines


def _columns(ev: Evaluation) -> list[tuple[list[str], list[str]]]:
    """Per attack (the worst case last): its head lines and its cells, one per eps."""
    n, grid = len(ev.target.y), ev.settings.eps_grid
    out = []
    for name, by_eps in ev.estimates().items():
        cells = [ci_cell(by_eps[e], n) if e in by_eps else "-" for e in grid]
        width = max(len(x) for x in cells + _tokens(name))
        out.append((_head_lines(name, width), cells))
    return out


def _side(ev: Evaluation) -> tuple[list[str], list[str]]:
    """The eps column: its head and one label per eps, in the norm's units."""
    norm = norm_of(ev)
    head = "eps/255" if norm == LINF else f"{norm} eps"
    return [head], [eps_in_255(e, digits=3, norm=norm) for e in ev.settings.eps_grid]


def _grid(ev: Evaluation) -> list[str]:
    """Eps down the side, attacks across; heads bottom-aligned over a rule, cells right-aligned."""
    blocks = [_side(ev)] + _columns(ev)
    depth = max(len(heads) for heads, _ in blocks)
    widths = [max(map(len, heads + cells)) for heads, cells in blocks]
    heads = [[""] * (depth - len(h)) + h for h, _ in blocks]
    rows = [*zip(*heads), ["-" * w for w in widths], *zip(*(cells for _, cells in blocks))]
    return aligned(rows, right=range(len(blocks)))


def _notes(ev: Evaluation) -> list[str]:
    """What ``any`` and the walk mean, how the attacks were adapted, corrections, flags."""
    s = ev.settings
    notes = [
        f"{ANY} = per point: robust only if every attack failed at that eps and at every "
        "smaller one"
    ]
    if s.walk != Walk.UP:
        notes.append(
            f"walk {s.walk}: the largest eps is a single run; a point robust there (or at a larger "
            "eps) is counted robust below it (inferred); broken is always proved"
        )
    if ev.note:
        notes.append(f"note: {ev.note}")
    return notes + corrected_lines(ev) + _flag_lines(ev)


def format_table(ev: Evaluation, device: str) -> str:
    """Robust accuracy in % with 95% intervals, one row per eps (in 1/255 under Linf, the budget
    under L2 and L1) and one column per attack, the n once above; then notes and flags, every
    line within :data:`WIDTH` columns for the default grid and attacks."""
    notes = [part for line in _notes(ev) for part in wrap(line)]
    return "\n".join(_head(ev, device) + _grid(ev) + notes)


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
        else f"checks passed: {', '.join(dict.fromkeys(f.check for f in ev.findings))}"
    )
    return lines
