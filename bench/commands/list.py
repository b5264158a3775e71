"""``bench list``: every registry, one line per entry with its defaults; ``bench list --runs``:
the runs of a results store, with whether their checkpoints still exist; ``bench list --forget
RUN_ID``: delete a run's rows from the store (one transaction)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from bench import paths
from bench.attacks import ATTACKS
from bench.commands.common import add_shared
from bench.data import DATASETS
from bench.defenses import DEFENSES
from bench.errors import UsageError
from bench.models import MODELS
from bench.params import DASH, aligned, fmt_default, plural
from bench.registry import Registry
from bench.store import RunRow, Store
from bench.vocab import SourceKind


def registries() -> list[tuple[str, Registry[Any]]]:
    """The registries shown, in order."""
    return [
        ("data sets", DATASETS),
        ("models", MODELS),
        ("defenses", DEFENSES),
        ("attacks", ATTACKS),
    ]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench list``."""
    what = "list data sets, models, defenses and attacks with their defaults"
    p = sub.add_parser(
        "list",
        help=what + "; --runs: the runs of a results store; --forget: delete one",
        description=what + " (attacks: with the threat models each has). With --runs, the runs "
        "of a results store instead: run id, kind, result rows, whether the checkpoint still "
        "exists, its path. --forget RUN_ID deletes a run's rows from every table of the store "
        "in one transaction (e.g. a run whose checkpoint was deleted).",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--runs", action="store_true", help="list the runs of the results store")
    which.add_argument(
        "--forget",
        metavar="RUN_ID",
        help="delete every row of run RUN_ID from the results store (see --runs)",
    )
    add_shared(p, "db")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the registries, or the store's runs, or forget one run."""
    if args.forget is not None:
        return forget(args.forget, args.db)
    if args.runs:
        return list_runs(args.db)
    if args.db is not None:
        raise UsageError("--db goes with --runs or --forget")
    return list_registries()


def list_registries() -> int:
    """Print each registry."""
    for title, reg in registries():
        print(f"{title}:")
        width = max(len(e.name) for e in reg)
        for e in reg:
            defaults = " ".join(f"{k}={fmt_default(k, v)}" for k, v in e.defaults.items())
            line = f"  {e.name:<{width}}  {e.summary}"
            print(line + (f"  [{defaults}]" if defaults else ""))
    return 0


def on_disk(run: RunRow | None) -> str:
    """Whether a run's files still exist: its checkpoint directory, or a factory model's weights
    file; ``–`` for models with nothing on disk (zoo, Python API, a factory without weights)."""
    if run is None:
        return DASH
    if run.kind == SourceKind.CHECKPOINT:
        where: str | None = run.path
    elif run.kind == SourceKind.FACTORY:
        where = (run.config or {}).get("weights")
    else:
        where = None
    if not where:
        return DASH
    return "exists" if Path(where).exists() else "MISSING"


HEAD = ("run id", "kind", "result rows", "checkpoint", "path")


def run_rows(store: Store) -> list[tuple[str, ...]]:
    """One row per run id of ``store``: kind, result rows, checkpoint on disk, path."""
    runs = {r.run_id: r for r in store.runs()}
    counts = store.result_counts()
    rows = []
    for rid in store.run_ids():
        run = runs.get(rid)  # None: rows left without a run record
        kind, path = (run.kind, run.path) if run else (DASH, DASH)
        rows.append((rid, kind, str(counts.get(rid, 0)), on_disk(run), path))
    return rows


def list_runs(db: str | None) -> int:
    """Print the runs of the store at ``db`` (default: bench's); how to forget a lost one."""
    with Store(db or paths.default_db(), readonly=True) as store:
        rows, where = run_rows(store), store.path
    print(f"runs in {where}: {len(rows)}")
    print("\n".join("  " + line for line in aligned([HEAD, *rows], right=(2,))))
    if any(r[3] == "MISSING" for r in rows):
        print(
            "forget a run whose checkpoint is gone: bench list --forget RUN_ID --db "
            + shlex.quote(str(where))
        )
    return 0


def forget(run_id: str, db: str | None) -> int:
    """Delete every row of ``run_id`` from the store at ``db``; say how many rows went. A run id
    the store lacks is refused before the store is opened for writing (the file stays as it
    was, byte for byte)."""
    with Store(db or paths.default_db(), readonly=True) as store:
        store.check_run_id(run_id)
    with Store(db or paths.default_db(), must_exist=True) as store:
        gone = store.forget(run_id)
        where = store.path
    print(
        f"forgot run {run_id} in {where}: {plural(gone['results'], 'result row')}, "
        f"{plural(gone['diagnostics'], 'finding')}, {plural(gone['batches'], 'batch row')} "
        f"and {plural(gone['runs'], 'run record')} deleted"
    )
    return 0
