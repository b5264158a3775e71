"""``results.csv`` and ``results.json``: the store exported, one record per result row, its
accuracies in % with their counts, n and 95% Wilson intervals, rounded as every other output
of bench rounds them (:meth:`bench.evaluation.results.Estimate.as_dict`)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from typing import Any

from bench.evaluation.results import Estimate, estimate
from bench.store import SCHEMA_VERSION, ResultRow, Store

#: What a record says about the row (identity and settings), before and after the numbers.
FIRST = ("run_id", "attack", "params", "norm", "eps", "eps_255", "n")
LAST = (
    "seed",
    "batch_size",
    "walk",
    "grid",
    "seconds",
    "device",
    "versions",
    "fingerprint",
    "created",
)
NUMBERS = ("accuracy_pct", "ci95_lower_pct", "ci95_upper_pct", "count")
#: The columns of results.csv, in order.
COLUMNS = [*FIRST, *(f"{w}_{x}" for w in ("clean", "robust") for x in NUMBERS), *LAST]


def percent(name: str, e: Estimate) -> dict[str, Any]:
    """``<name>_accuracy_pct``, its 95% Wilson interval ``<name>_ci95_lower_pct`` and
    ``_upper_pct``, and ``<name>_count`` (of the record's n points)."""
    d = e.as_dict()
    lo, hi = d["ci95"]  # type: ignore[misc]
    return {f"{name}_{x}": v for x, v in zip(NUMBERS, (d["acc"], lo, hi, e.k))}


def record(row: ResultRow) -> dict[str, Any]:
    """One result row as the exports write it (flags left out: they are for the store)."""
    rec = row.as_record()
    clean = Estimate(row.clean_count, row.n)
    numbers = {**percent("clean", clean), **percent("robust", estimate(row.flags))}
    return {**{k: rec[k] for k in FIRST}, **numbers, **{k: rec[k] for k in LAST}}


def csv_text(store: Store) -> str:
    """Every result row as CSV, one line each, under :data:`COLUMNS`."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(record(r) for r in store.results())
    return buffer.getvalue()


def json_text(store: Store) -> str:
    """Runs, result rows (as in results.csv) and diagnostics as one JSON document."""
    doc = {
        "schema_version": SCHEMA_VERSION,
        "runs": [asdict(r) for r in store.runs()],
        "results": [record(r) for r in store.results()],
        "diagnostics": [asdict(d) for d in store.diagnostics()],
    }
    return json.dumps(doc, indent=2) + "\n"
