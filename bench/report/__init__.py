"""``bench report``: leaderboard, curves, plots and RobustBench-style JSON from the results store.

A pure function of the store: it reads the store (read-only) and never a checkpoint, and the same
store gives byte-identical files (no clock, no absolute paths). Modules: :mod:`.model` (what is
shown: one evaluation per row, entries, ranking), :mod:`.markdown`, :mod:`.plots`,
:mod:`.jsonout`. The files written are listed in ``.bench-report.json`` in the output directory;
the next report into that directory deletes only files of that list that it no longer writes,
never anything else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.errors import UsageError
from bench.paths import resolve, writable
from bench.report import jsonout, markdown, model, plots
from bench.report.text import safe_name, variant_labels
from bench.store import Store

LEADERBOARD = "leaderboard.md"
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


def render(store: Store, rank_by: str = "worst-case", rank_eps: float | None = None) -> dict[str, bytes]:
    """Every output file (relative name -> bytes) of the store's report."""
    if store.count() == 0:
        raise UsageError(f"empty store {store.path}: run `bench eval` first")
    sets = model.load(store, rank_eps)
    files: dict[str, bytes] = {LEADERBOARD: markdown.render(sets, rank_by).encode()}
    files.update(plots.plots(sets))
    names: dict[str, str] = {}
    for _, (key, models) in sets.items():
        labels = variant_labels({v for m in models for v in m.curves})
        for m in models:
            name = f"json/{safe_name(m.run_id)}.json"
            if name in names:
                raise UsageError(f"run ids {names[name]!r} and {m.run_id!r} map to one file {name}")
            names[name] = m.run_id
            files[name] = (json.dumps(jsonout.model_info(m, key, labels), indent=2) + "\n").encode()
    files["results.csv"] = store.csv_text().encode()
    files["results.json"] = store.json_text().encode()
    return files


def _write(path: Path, data: bytes) -> None:
    from bench.io import atomic_write_bytes  # bench.io imports torch; only needed to write

    atomic_write_bytes(path, data)


def _previous(out: Path) -> list[str]:
    """The files the last report wrote into ``out`` (by its manifest), if any."""
    try:
        listed = json.loads((out / MANIFEST).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in listed if isinstance(f, str) and ".." not in Path(f).parts and not Path(f).is_absolute()]


def write_report(db: str | Path, out: str | Path, rank_by: str = "worst-case",
                 rank_eps: float | None = None) -> ReportFiles:
    """Render the report of store ``db`` into directory ``out``; UsageError before writing."""
    out = resolve(out, "--out")
    check_out(out)
    with Store(db, readonly=True) as store:
        files = render(store, rank_by, rank_eps)
    stale = [f for f in _previous(out) if f not in files]
    for name, data in sorted(files.items()):
        _write(out / name, data)
    for name in stale:  # only files an earlier report of bench wrote here
        (out / name).unlink(missing_ok=True)
    _write(out / MANIFEST, (json.dumps({"files": sorted(files)}, indent=2) + "\n").encode())
    return ReportFiles(out, out / LEADERBOARD, [out / n for n in sorted(files) if n.endswith(".png")],
                       [out / n for n in sorted(files) if n.startswith("json/")], out / "results.csv",
                       out / "results.json")
