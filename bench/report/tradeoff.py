"""The trade-off plot: clean accuracy against worst-case robust accuracy at the ranking eps, one
point per entry (seeds as one point: their mean, the bar the hull of their intervals), error
bars from the 95% Wilson intervals, the Pareto front drawn; one figure per section, a data set
under one threat model (Tsipras et al. 2019, "Robustness may be at odds with accuracy")."""

from __future__ import annotations

import io
from dataclasses import dataclass

from bench.params import format_eps
from bench.report.model import WORST, Model, entries, mean, norm_of, rank, span
from bench.report.text import eps_label, slug


@dataclass
class Point:
    """One entry: its label, clean and robust mean (%) and 95% spans (%), ranked or not."""

    label: str
    clean: float
    robust: float
    clean_span: tuple[float, float]
    robust_span: tuple[float, float]
    ranked: bool


def points(models: list[Model], key: int, rank_by: str) -> tuple[list[Point], list[str]]:
    """Every entry with a worst case at ``key``; the labels of those without one."""
    out, missing = [], []
    for r in rank(entries(models), key, rank_by):
        e = r.entry
        robust = e.values(WORST, key)
        label = e.first.run.defense + (f" ({e.label})" if _shared(e.first, models) else "")
        if robust is None:
            missing.append(label)
            continue
        clean = e.clean()
        out.append(
            Point(
                label,
                100 * mean(clean),
                100 * mean(robust),
                _pct(span(clean)),
                _pct(span(robust)),
                r.place is not None,
            )
        )
    return out, missing


def _shared(m: Model, models: list[Model]) -> bool:
    return sum(1 for o in models if o.run.defense == m.run.defense) > 1


def _pct(s: tuple[float, float]) -> tuple[float, float]:
    return (100 * s[0], 100 * s[1])


def pareto(pts: list[Point]) -> list[Point]:
    """The points no other point beats in both clean and robust accuracy, by clean accuracy."""
    front = []
    for p in pts:
        beaten = any(
            q.clean >= p.clean
            and q.robust >= p.robust
            and (q.clean, q.robust) != (p.clean, p.robust)
            for q in pts
        )
        if not beaten:
            front.append(p)
    return sorted(front, key=lambda p: (p.clean, -p.robust))


def png(title: str, pts: list[Point]) -> bytes:
    """The figure (Agg): error bars in both directions, hollow markers for unranked entries."""
    # here: matplotlib is slow to import; only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    front = pareto(pts)
    if front:
        ax.plot(
            [p.clean for p in front],
            [p.robust for p in front],
            "--o",
            color="0.45",
            linewidth=1.2,
            markersize=15,
            markerfacecolor="none",
            label="Pareto front",
            zorder=1,
        )
    for i, p in enumerate(pts):  # one colour and marker per entry
        _draw(ax, p, ["o", "s", "^", "D", "v", "P", "X", "*"][i % 8], f"C{i % 10}")
    ax.set_xlabel("clean accuracy (%), bar: 95% interval")
    ax.set_ylabel("worst-case robust accuracy (%), bar: 95% interval")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if pts:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _draw(ax: object, p: Point, marker: str, color: str) -> None:
    """One point with its bars; hollow if the entry is not ranked."""
    xerr = [
        [max(0.0, p.clean - p.clean_span[0])],
        [max(0.0, p.clean_span[1] - p.clean)],
    ]  # float rounding at 0 and 1
    yerr = [[max(0.0, p.robust - p.robust_span[0])], [max(0.0, p.robust_span[1] - p.robust)]]
    face = color if p.ranked else "white"
    label = p.label + ("" if p.ranked else " (not ranked)")
    ax.errorbar(
        [p.clean],
        [p.robust],
        xerr=xerr,
        yerr=yerr,
        fmt=marker,
        color=color,  # type: ignore[attr-defined]
        markerfacecolor=face,
        markersize=7,
        capsize=3,
        linewidth=1,
        label=label,
        zorder=2,
    )


def plots(sets: dict[str, tuple[int, list[Model]]], rank_by: str) -> dict[str, bytes]:
    """``tradeoff-<section>.png`` for each section with a ranking eps (``tradeoff-cifar10.png``,
    ``tradeoff-cifar10-l2.png``)."""
    out = {}
    for name, (key, models) in sets.items():
        if key is None:
            continue
        pts, missing = points(models, key, rank_by)
        n = ", ".join(sorted({str(m.n) for m in models}))
        norm = norm_of(models)
        eps = f"{eps_label(norm)} {format_eps(key / 1e9, norm)}"
        title = f"Clean vs worst-case accuracy at {eps} on {name} (n = {n})"
        if missing:
            title += f"\nno worst case there: {', '.join(missing)}"
        out[f"tradeoff-{slug(name)}.png"] = png(title, pts)
    return out
