"""``bench report``: leaderboard, curves, plots, RobustBench-style JSON and ``index.html`` from
the results store.

Every number is a pure function of the store: it reads the store (read-only), and the same store
gives byte-identical files (no clock, no absolute paths). The pictures (input gradients and
adversarial examples of a handful of test images, :mod:`.images`) are the one thing computed
from the checkpoints, cached by weights fingerprint under ``cache/``, and never a number.
One section per data set and threat model (Linf, L2, L1; :mod:`bench.norms`): a section's
tables, plots and JSON hold that norm's rows only, Linf sections keep the names they had before
bench knew other norms, and the others carry the norm (``fashion-mnist L2``,
``plot-fashion-mnist-l2-pgd.png``, ``json/L2/<run>.json``).
Modules: :mod:`.model` (what is shown: one evaluation per row, entries, ranking),
:mod:`.markdown`, :mod:`.plots`, :mod:`.tradeoff`, :mod:`.heatmap` (the transfer matrix),
:mod:`.images` and :mod:`.figures`, :mod:`.html`, :mod:`.jsonout`, :mod:`.export`
(results.csv and results.json: accuracies in % with counts, n and 95% intervals). The files
written (and the cache files used) are listed in ``.bench-report.json`` in the output
directory; the next report into that directory deletes only files of that list that it no
longer writes or uses, never anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import UsageError
from bench.paths import resolve, writable
from bench.report import export, heatmap, html, jsonout, markdown, model, plots, tradeoff
from bench.report.text import variant_labels
from bench.store import Store

if TYPE_CHECKING:
    from bench.report.images import Visuals

LEADERBOARD = "leaderboard.md"
CACHE_DIR = "cache"  # the pictures' tensors (bench.report.images), kept across reports
INDEX = "index.html"
MANIFEST = ".bench-report.json"


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    out: Path
    leaderboard: Path
    plots: list[Path]
    json: list[Path]
    csv: Path
    results_json: Path
    index: Path
    image_seconds: float = 0.0


def check_out(out: Path) -> None:
    """``out`` must be a writable directory or creatable (no file in the way, no read-only
    folder above it), and so must its ``json/``."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "--out" if p == out else f"--out {out}: its parent"
                raise UsageError(f"{what} {p} exists and is not a directory")
            if not writable(p):
                what = "--out" if p == out else f"--out {out}: its parent"
                raise UsageError(f"{what} {p} is read-only")
            break
    json_dir = out / "json"
    if json_dir.exists() and (not json_dir.is_dir() or not writable(json_dir)):
        raise UsageError(f"{json_dir} exists and is not a writable directory")


def _sets(store: Store, rank_eps: float | None) -> dict[str, tuple[int, list[model.Model]]]:
    if store.count() == 0:
        raise UsageError(f"empty store {store.path}: run `bench eval` first")
    return model.load(store, rank_eps)


def render(
    store: Store,
    rank_by: str = "worst-case",
    rank_eps: float | None = None,
    visuals: Visuals | None = None,
) -> dict[str, bytes]:
    """Every output file (relative name -> bytes) of the store's report; ``visuals``: the
    pictures made from the checkpoints (none if not given)."""
    return _render(store, _sets(store, rank_eps), rank_by, visuals, rank_eps)


def _figures(
    sets: dict[str, tuple[int, list[model.Model]]],
    rank_by: str,
    matrices: dict[str, list[heatmap.Matrix]],
) -> tuple[dict[str, bytes], dict[str, list[str]], dict[str, str]]:
    """The plots made from the store: files, their order per section, captions."""
    files: dict[str, bytes] = {}
    order: dict[str, list[str]] = {}
    captions: dict[str, str] = {}
    for name, (key, models) in sets.items():  # trade-off, transfer, then accuracy against eps
        one = {name: (key, models)}
        mine = {
            **tradeoff.plots(one, rank_by),
            **heatmap.plots({name: matrices.get(name, [])}),
            **plots.plots(one),
        }
        files.update(mine)
        order[name] = list(mine)
        captions.update({f: _caption(f, matrices.get(name, [])) for f in mine})
    return files, order, captions


def _caption(name: str, matrices: list[heatmap.Matrix]) -> str:
    if name.startswith("tradeoff-"):
        return (
            "Clean against worst-case robust accuracy at the ranking eps, one point per entry "
            "(seeds: their mean, bars: the hull of their 95% intervals); ringed and dashed: "
            "the Pareto front (the entries no other entry dominates: at least as good on both "
            "axes, better on one); hollow: not ranked."
        )
    for mx in matrices:
        if mx.name == name:
            return mx.caption
    return "Accuracy against eps, band: 95% interval."


def _render(
    store: Store,
    sets: dict[str, tuple[int, list[model.Model]]],
    rank_by: str,
    visuals: Visuals | None,
    rank_eps: float | None = None,
) -> dict[str, bytes]:
    matrices = heatmap.load(store, sets)
    md = markdown.render(sets, rank_by, matrices, rank_eps)
    files: dict[str, bytes] = {LEADERBOARD: md.encode()}
    figs, order, captions = _figures(sets, rank_by, matrices)
    files.update(figs)
    notes = ["Pictures were not made (`--no-images`)."] if visuals is None else visuals.notes
    if visuals is not None:
        files.update(visuals.files)
        captions.update(visuals.captions)
        for name in sets:  # the pictures after the plots
            order[name] = order.get(name, []) + visuals.shown.get(name, [])
    files.update(_json_files(sets))
    files["results.csv"] = export.csv_text(store).encode()
    files["results.json"] = export.json_text(store).encode()
    page = html.render(sets, rank_by, matrices, files, order, captions, notes, rank_eps)
    files[INDEX] = page.encode()
    return files


def _json_files(sets: dict[str, tuple[int, list[model.Model]]]) -> dict[str, bytes]:
    """One model-info file per model of every section (:func:`.jsonout.file_name`)."""
    files: dict[str, bytes] = {}
    names: dict[str, str] = {}
    for _, (key, models) in sets.items():
        labels = variant_labels({v for m in models for v in m.curves})
        for m in models:
            name = jsonout.file_name(m)
            if name in names:
                raise UsageError(f"run ids {names[name]!r} and {m.run_id!r} map to one file {name}")
            names[name] = m.run_id
            files[name] = (json.dumps(jsonout.model_info(m, key, labels), indent=2) + "\n").encode()
    return files


def _write(path: Path, data: bytes) -> None:
    from bench.io import atomic_write_bytes  # here: bench.io imports torch; only needed to write

    atomic_write_bytes(path, data)


def _previous(out: Path) -> list[str]:
    """The files the last report wrote into ``out`` (by its manifest), if any."""
    try:
        listed = json.loads((out / MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [
        f
        for f in listed
        if isinstance(f, str) and ".." not in Path(f).parts and not Path(f).is_absolute()
    ]


def write_report(
    db: str | Path,
    out: str | Path,
    rank_by: str = "worst-case",
    rank_eps: float | None = None,
    *,
    images: bool = True,
    data_dir: str | Path | None = None,
) -> ReportFiles:
    """Render the report of store ``db`` into directory ``out``; UsageError before writing.
    ``images``: also the pictures from the checkpoints (test images from ``data_dir``, else
    each checkpoint's own or bench's default data directory)."""
    out = resolve(out, "--out")
    check_out(out)
    visuals = None
    with Store(db, readonly=True) as store:
        sets = _sets(store, rank_eps)
        if images:
            from bench.report.images import build  # here: torch, only for the pictures

            visuals = build(sets, out, data_dir)
        files = _render(store, sets, rank_by, visuals, rank_eps)
    previous = _previous(out)
    cache = visuals.cache if visuals else [f for f in previous if f.startswith(f"{CACHE_DIR}/")]
    kept = set(files) | set(cache)  # --no-images keeps the pictures' cache
    stale = [f for f in previous if f not in kept]
    for name, data in sorted(files.items()):
        _write(out / name, data)
    for name in stale:  # only files an earlier report of bench wrote here
        (out / name).unlink(missing_ok=True)
    _write(out / MANIFEST, (json.dumps({"files": sorted(kept)}, indent=2) + "\n").encode())
    return ReportFiles(
        out,
        out / LEADERBOARD,
        [out / n for n in sorted(files) if n.endswith(".png")],
        [out / n for n in sorted(files) if n.startswith("json/")],
        out / "results.csv",
        out / "results.json",
        out / INDEX,
        visuals.seconds if visuals else 0.0,
    )
