"""The transfer matrix in the report: a heatmap of accuracy (rows: crafted on, columns:
evaluated on) with n and 95% intervals, and the same as a markdown table. Read from the
diagnostics rows that ``bench eval --transfer-matrix`` stores (see
:mod:`bench.evaluation.transfer`); a cell is shown only while both its models' weights are the
ones the store holds now. A section's matrices are those of its threat model (the rows' norm)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from bench.evaluation.results import Estimate
from bench.norms import LINF
from bench.params import format_eps
from bench.report.model import TRANSFER_MATRIX, Model, norm_of
from bench.report.text import DASH, ci, eps_label, slug, table
from bench.store import DiagnosticRow, Store, eps_key


@dataclass
class Matrix:
    """One section's matrix at one eps on n points: run ids in order, cells by (source, target).
    ``dataset``: the section's name (the data set, with the norm outside Linf)."""

    dataset: str
    eps: float
    n: int
    params: dict[str, Any]
    max_points: int
    norm: str = LINF
    runs: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    cells: dict[tuple[str, str], Estimate] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The file name of its heatmap."""
        return f"transfer-{slug(self.dataset)}-{slug(format_eps(self.eps, self.norm))}.png"

    @property
    def at_eps(self) -> str:
        """``eps 8/255``, ``L2 eps 0.5``."""
        return f"{eps_label(self.norm)} {format_eps(self.eps, self.norm)}"

    @property
    def caption(self) -> str:
        """What the matrix is: attack, eps, points and the cap on them."""
        return (
            f"Transfer on {self.dataset}: bench's PGD ({self.params.get('steps', '?')} steps, "
            f"random start) at {self.at_eps}, crafted on each row's model, "
            "accuracy (%) of "
            f"each column's model; the first {self.n} test points (at most {self.max_points}); "
            "diagonal: white-box PGD on itself."
        )


def _label(m: Model, models: list[Model]) -> str:
    """The defense, with the run id when another model has the same defense."""
    same = sum(1 for o in models if o.run.defense == m.run.defense) > 1
    return m.run.defense + (f" ({m.run_id})" if same else "")


def _pair(d: DiagnosticRow, by_id: dict[str, Model]) -> tuple[Model, Model] | None:
    """The (source, target) models of a cell while both hold the weights it was made with."""
    target, source = by_id.get(d.run_id), by_id.get(d.details.get("source_run_id", ""))
    if target is None or source is None:
        return None  # a model left the store (or is of another data set)
    if target.run.fingerprint != d.fingerprint or source.run.fingerprint != d.details.get(
        "source_fingerprint"
    ):
        return None  # retrained since
    return source, target


def load(store: Store, sets: dict[str, tuple[int, list[Model]]]) -> dict[str, list[Matrix]]:
    """Section -> its matrices (one per eps and n), from the store's current weights and the
    section's norm only."""
    rows = [d for d in store.diagnostics() if d.check == TRANSFER_MATRIX]
    out: dict[str, list[Matrix]] = {}
    for name, (_, models) in sets.items():
        norm = norm_of(models)
        found = _matrices(name, norm, [d for d in rows if d.norm == norm], models)
        if found:
            out[name] = found
    return out


def _matrices(name: str, norm: str, rows: list[DiagnosticRow], models: list[Model]) -> list[Matrix]:
    """The matrices of one section's cells, by (eps, n)."""
    by_id = {m.run_id: m for m in models}
    found: dict[tuple[int, int], Matrix] = {}
    for d in rows:
        pair, det = _pair(d, by_id), d.details
        if pair is None:
            continue
        most = det.get("max_points", det["n"])
        mx = found.setdefault(
            (eps_key(det["eps"]), det["n"]),
            Matrix(name, det["eps"], det["n"], det.get("params", {}), most, norm),
        )
        mx.cells[(pair[0].run_id, pair[1].run_id)] = Estimate(det["robust"], det["n"])
    for mx in found.values():
        mx.runs = [m.run_id for m in models if any(m.run_id in k for k in mx.cells)]
        mx.labels = {m.run_id: _label(m, models) for m in models}
    return [found[k] for k in sorted(found)]


def png(mx: Matrix) -> bytes:
    """The heatmap (Agg): accuracy in each cell with its 95% interval."""
    # here: matplotlib is slow to import; only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(mx.runs)
    fig = Figure(figsize=(2.2 + 1.15 * k, 1.8 + 0.75 * k), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    grid = [
        [100 * mx.cells[(s, t)].acc if (s, t) in mx.cells else float("nan") for t in mx.runs]
        for s in mx.runs
    ]
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100)
    for i, s in enumerate(mx.runs):  # the numbers on the cells
        for j, t in enumerate(mx.runs):
            _annotate(ax, i, j, mx.cells.get((s, t)))
    names = [mx.labels.get(r, r) for r in mx.runs]
    ax.set_xticks(range(k), names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("crafted on (PGD)")
    ax.set_title(
        f"Transfer accuracy (%) at {mx.at_eps}, n = {mx.n} (at most {mx.max_points})",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _annotate(ax: Any, i: int, j: int, e: Estimate | None) -> None:
    """A cell's accuracy and 95% interval written on it."""
    if e is None:
        return
    lo, hi = e.interval
    text = f"{100 * e.acc:.1f}\n({100 * lo:.0f}–{100 * hi:.0f})"
    ax.text(
        j, i, text, ha="center", va="center", fontsize=7, color="white" if e.acc < 0.6 else "black"
    )


def plots(matrices: dict[str, list[Matrix]]) -> dict[str, bytes]:
    """File name -> heatmap PNG, for every matrix."""
    return {mx.name: png(mx) for ms in matrices.values() for mx in ms}


def markdown(mx: Matrix) -> list[str]:
    """The matrix as a markdown table with its caption."""
    head = ["crafted on (row) / evaluated on (column)"] + [mx.labels.get(r, r) for r in mx.runs]
    body = [
        [mx.labels.get(s, s)]
        + [ci(mx.cells[(s, t)]) if (s, t) in mx.cells else DASH for t in mx.runs]
        for s in mx.runs
    ]
    return [mx.caption, ""] + table(head, body, right_from=1)
