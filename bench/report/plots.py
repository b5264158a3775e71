"""Plots: robust accuracy against eps, one line per model with its 95% interval as a band; one
figure per section (data set and threat model) and attack. Under Linf eps are in units of 1/255,
under L2 and L1 the budget itself."""

from __future__ import annotations

import io

from bench.norms import LINF
from bench.report.model import AUTOATTACK, WORST, Model, Variant, norm_of
from bench.report.text import base_label, joined, slug, variant_labels
from bench.store import ANY

Line = tuple[str, list[float], list[float], list[float], list[float]]  # label, x, y, lo, hi


def x_label(norm: str) -> str:
    """The x axis: eps in units of 1/255 under Linf, the budget itself under L2 and L1."""
    return "eps (units of 1/255, L-infinity)" if norm == LINF else f"eps ({norm})"


def x_value(key: int, norm: str) -> float:
    """An eps key where the x axis puts it (see :func:`x_label`)."""
    return key / 1e9 * 255 if norm == LINF else key / 1e9


def plot_png(title: str, lines: list[Line], norm: str = LINF) -> bytes:
    """A PNG (Agg) of accuracy (%) against eps (:func:`x_label`), bands for the intervals."""
    # here: matplotlib is slow to import; only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for i, (label, xs, ys, lo, hi) in enumerate(lines):
        (line,) = ax.plot(
            xs,
            ys,
            marker=markers[i % len(markers)],
            markersize=4,
            linewidth=1.5,
            linestyle=["-", "--", "-.", ":"][(i // 10) % 4],
            label=label,
        )
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12, linewidth=0)
    xmax = max((max(xs) for _, xs, *_ in lines if xs), default=8.0 if norm == LINF else 1.0)
    pad = 0.2 if norm == LINF else 0.025 * (xmax or 1.0)  # 0.2 of 1/255 units; L2, L1: 2.5%
    ax.set_xlim(-pad, xmax + pad)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(x_label(norm))
    ax.set_ylabel("accuracy (%), band: 95% interval")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _line(label: str, m: Model, v: Variant) -> Line:
    keys = m.eps_keys if v == WORST else sorted(m.curves[v])
    est = [m.at(v, k) for k in keys]
    pts = [(k, e) for k, e in zip(keys, est) if e is not None]
    return (
        label,
        [x_value(k, m.norm) for k, _ in pts],
        [100 * e.acc for _, e in pts],
        [100 * e.interval[0] for _, e in pts],
        [100 * e.interval[1] for _, e in pts],
    )


def _label(m: Model, models: list[Model], extra: str) -> str:
    same = sum(1 for o in models if o.run.defense == m.run.defense) > 1
    return m.run.defense + (f" ({m.run_id})" if same else "") + extra


def plots(sets: dict[str, tuple[int, list[Model]]]) -> dict[str, bytes]:
    """File name -> PNG, one per (section, attack name), and the worst case."""
    out: dict[str, bytes] = {}
    for name, (_, models) in sets.items():
        norm = norm_of(models)
        variants = {v for m in models for v in m.curves}
        labels = variant_labels(variants)
        for attack in sorted({v.attack for v in variants}, key=lambda a: (a == AUTOATTACK, a)):
            mine = sorted((v for v in variants if v.attack == attack), key=lambda v: v.sort_key)
            lines = [
                _line(_label(m, models, f" {labels[v]}" if len(mine) > 1 else ""), m, v)
                for m in models
                for v in mine
                if v in m.curves
            ]
            title = (
                f"{'AutoAttack' if len(mine) > 1 else base_label(mine[0])} on {name} "
                f"(n = {joined(m.n for m in models if any(v in m.curves for v in mine))})"
            )
            out[f"plot-{slug(name)}-{slug(attack)}.png"] = plot_png(title, lines, norm)
        lines = [_line(_label(m, models, ""), m, WORST) for m in models]
        title = f"Worst case over attacks on {name} (n = {joined(m.n for m in models)})"
        out[f"plot-{slug(name)}-{ANY}.png"] = plot_png(title, lines, norm)
    return out
