"""The results store: SQLite (standard library) at ``reports/results.sqlite`` unless ``--db``.

Tables (schema version :data:`SCHEMA_VERSION`, recorded in ``meta``):

``runs``
    one row per evaluated model (a checkpoint, a factory model, a zoo entry): its run id, the
    fingerprint of its weights and a snapshot of its configuration and run record, so that
    ``bench report`` is a pure function of the store.
``results``
    one row per (model, attack with its parameters, eps, n): clean and robust accuracy, the
    per-point robust flags ('1' robust, '0' broken, one character per point), and everything the
    flags depend on: weights fingerprint, points (the first n of the test split), the eps grid
    walked and how it was walked (``walk``: up, down or bisect, see :mod:`bench.evaluate`),
    batch size, seed, library versions.
``batches``
    per-batch flags of an (attack, eps) step still in progress, so that a killed evaluation
    resumes where it stopped; deleted when the step's result row is written.
``diagnostics``
    what each check found for a model (see :mod:`bench.evaluation.diagnostics`), AutoAttack's
    own warnings included.

``bench list --runs`` lists a store's runs; ``bench list --forget RUN_ID`` deletes one run's
rows from every table in one transaction (:meth:`Store.forget`), e.g. a run whose checkpoint
was deleted. The exports (results.csv, results.json) are written by :mod:`bench.report.export`.

The worst case over attacks is not stored: it is derived from the flags
(:func:`bench.evaluation.results.worst_case`). Every write is one short transaction
(``BEGIN IMMEDIATE``); the journal is WAL with a busy timeout while writers have the store open,
so several ``bench eval`` processes can share a store (the last writer to close returns the file
to a rollback journal, so that readers, which open it read-only, create no ``-wal``/``-shm``
files).
A store is only created by a writer; readers open it read-only and refuse anything that is not
a bench store of this layout or of the one before it (:data:`READABLE_VERSIONS`).

Layout 3 added ``results.walk``. A writer opening a layout-2 store migrates it in one transaction
(``ALTER TABLE results ADD COLUMN walk TEXT NOT NULL DEFAULT 'up'``: every older row was made by
the ascending walk, the only one there was); a reader reads a layout-2 store as it is, every row
with walk ``up``.

Layout 4 added the threat model: ``results.norm`` and ``diagnostics.norm`` (``Linf``, ``L2``,
``L1``; :mod:`bench.norms`), part of both tables' primary keys, so that one model evaluated under
two norms keeps both. SQLite cannot change a primary key in place, so the migration rebuilds the
two tables (copy, drop, rename) in one transaction, every older row ``Linf``, the only norm
there was; a reader reads a layout-2 or -3 store as it is, every row ``Linf``.
"""

from __future__ import annotations

import functools
import json
import random
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from bench.errors import UnknownNameError, UsageError
from bench.norms import LINF
from bench.params import shown
from bench.paths import check_creatable, resolve
from bench.vocab import Check, SourceKind, Walk

ANY = "any"  # the label of the worst case over attacks (derived, never stored)
APPLICATION = "bench"
SCHEMA_VERSION = 4
READABLE_VERSIONS = ("2", "3", "4")  # layouts this bench reads; writers migrate them to 4
#: Keys under which bench before the sweep's per-block findings stored one finding per model
#: and n (GLOB patterns): the walk-inference check's single row, and AutoAttack's warnings
#: numbered by their place in a list. A finding of the same check written now replaces them.
LEGACY_KEYS = {Check.WALK_INFERENCE: "", Check.AUTOATTACK_CHECKS: "[0-9][0-9][0-9]"}
#: How an eps grid is walked (bench.evaluate), as plain strings: argparse shows choices' repr.
WALKS: tuple[str, ...] = tuple(w.value for w in Walk)
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another writer's transaction

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,      -- sha256 over the weights (bench.weights)
    kind TEXT NOT NULL,             -- checkpoint | factory | robustbench | module
    path TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    defense TEXT NOT NULL,
    defense_params TEXT NOT NULL,   -- JSON
    epochs INTEGER,
    train_limit INTEGER,
    train_seconds REAL,
    config TEXT NOT NULL,           -- JSON, e.g. the checkpoint's config.json
    run TEXT NOT NULL,              -- JSON, e.g. the checkpoint's run.json
    updated TEXT NOT NULL
);
CREATE TABLE results (
    run_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    attack TEXT NOT NULL,
    params TEXT NOT NULL,           -- JSON with sorted keys: part of the row's identity
    eps REAL NOT NULL,
    eps_key INTEGER NOT NULL,       -- round(eps * 1e9): exact identity for floating eps
    n INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    grid TEXT NOT NULL,             -- JSON list of the eps values walked
    clean_acc REAL NOT NULL,
    robust_acc REAL NOT NULL,
    seconds REAL NOT NULL,
    device TEXT NOT NULL,
    versions TEXT NOT NULL,         -- JSON
    flags TEXT NOT NULL,            -- per-point robust flags, '0'/'1' per point
    created TEXT NOT NULL,
    walk TEXT NOT NULL DEFAULT 'up', -- how the grid was walked: up | down | bisect (layout 3)
    norm TEXT NOT NULL DEFAULT 'Linf', -- the threat model: Linf | L2 | L1 (layout 4)
    PRIMARY KEY (run_id, attack, params, norm, eps_key, n)
);
CREATE TABLE batches (
    run_id TEXT NOT NULL,
    -- the step's identity (fingerprint, attack, eps, n, seed, B, grid, walk)
    step TEXT NOT NULL,
    batch INTEGER NOT NULL,
    flags TEXT NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (run_id, step, batch)
);
CREATE TABLE diagnostics (
    run_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    n INTEGER NOT NULL,
    check_name TEXT NOT NULL,
    -- distinguishes findings of one check (e.g. the attacks compared)
    key TEXT NOT NULL,
    flagged INTEGER NOT NULL,
    source TEXT NOT NULL,
    summary TEXT NOT NULL,
    details TEXT NOT NULL,          -- JSON
    advice TEXT NOT NULL,
    created TEXT NOT NULL,
    norm TEXT NOT NULL DEFAULT 'Linf', -- the threat model the finding is about (layout 4)
    PRIMARY KEY (run_id, n, norm, check_name, key)
);
"""
TABLES = ("meta", "runs", "results", "batches", "diagnostics")
#: The tables keyed by run id: what forgetting a run deletes from.
RUN_TABLES = ("runs", "results", "batches", "diagnostics")


@functools.cache
def expected_columns() -> dict[str, frozenset[str]]:
    """Each table's columns in this layout, read from :data:`SCHEMA` built in memory."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        return {t: frozenset(r[1] for r in db.execute(f"PRAGMA table_info({t})")) for t in TABLES}
    finally:
        db.close()


def canonical(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal parameters give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def eps_key(eps: float) -> int:
    """Integer identity of an eps value (nano-units of the pixel scale)."""
    return int(round(eps * 1e9))


@dataclass
class ResultRow:
    """One evaluation result: a model, an attack with parameters, an eps, n points."""

    run_id: str
    attack: str
    params: dict[str, Any]
    eps: float
    n: int
    clean_acc: float
    robust_acc: float
    seconds: float
    device: str
    versions: dict[str, str]
    flags: str
    seed: int
    batch_size: int
    grid: list[float]
    fingerprint: str
    created: str = ""
    walk: str = Walk.UP  # how the grid was walked (bench.evaluate): up, down or bisect
    norm: str = LINF  # the threat model (bench.norms): Linf, L2 or L1

    @property
    def clean_count(self) -> int:
        """Points classified correctly without attack (the row keeps clean accuracy as a
        fraction of its n)."""
        return int(round(self.clean_acc * self.n))

    @property
    def robust_count(self) -> int:
        """Points robust under this attack at this eps."""
        return self.flags.count("1")

    def as_record(self) -> dict[str, Any]:
        """A flat dict for CSV/JSON export (flags dropped: they are for the store)."""
        rec = asdict(self)
        rec.pop("flags")
        rec["params"] = canonical(self.params)
        rec["versions"] = canonical(self.versions)
        rec["grid"] = canonical(self.grid)
        rec["eps_255"] = round(self.eps * 255, 6) if self.norm == LINF else None
        return rec


@dataclass
class RunRow:
    """A model as recorded in the store."""

    run_id: str
    path: str
    dataset: str
    model: str
    defense: str
    defense_params: dict[str, Any]
    epochs: int | None
    train_limit: int | None
    train_seconds: float | None
    config: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    kind: str = SourceKind.CHECKPOINT


@dataclass
class DiagnosticRow:
    """One finding of one check on a model's first n points."""

    run_id: str
    fingerprint: str
    n: int
    check: str
    key: str
    flagged: bool
    source: str
    summary: str
    details: dict[str, Any]
    advice: str
    created: str = ""
    norm: str = LINF  # the threat model of the evaluation that found it


_RESULT_COLUMNS = (
    "run_id, fingerprint, attack, params, eps, eps_key, n, seed, batch_size, grid, clean_acc,"
    " robust_acc, seconds, device, versions, flags, created, walk, norm"
)
#: What older layouts are read with: layout 3 has no norm (every row Linf), layout 2 no walk
#: either (every row made by the ascending walk).
_RESULT_COLUMNS_OLD = {
    "3": _RESULT_COLUMNS.replace(", norm", ", 'Linf' AS norm"),
    "2": _RESULT_COLUMNS.replace(", walk, norm", ", 'up' AS walk, 'Linf' AS norm"),
}
_DIAGNOSTIC_COLUMNS = (
    "run_id, fingerprint, n, check_name, key, flagged, source, summary, details, advice, created,"
    " norm"
)
_DIAGNOSTIC_COLUMNS_OLD = _DIAGNOSTIC_COLUMNS.replace(", norm", ", 'Linf' AS norm")
_RUN_COLUMNS = (
    "run_id, fingerprint, kind, path, dataset, model, defense, defense_params, epochs,"
    " train_limit, train_seconds, config, run, updated"
)


class Store:
    """The SQLite store at ``path``. Writers create it (``Store(path)``); readers use
    ``Store(path, readonly=True)``, which never creates or changes a file."""

    def __init__(
        self, path: str | Path, *, must_exist: bool = False, readonly: bool = False
    ) -> None:
        self.path = resolve(path, "results store")
        self.readonly = readonly
        self.version = str(SCHEMA_VERSION)  # the layout read; a reader may find layout 2
        if (must_exist or readonly) and not self.path.is_file():
            what = "is not a file" if self.path.exists() else "does not exist"
            raise UsageError(f"results store {self.path} {what}; run `bench eval` first")
        if self.path.is_dir():
            raise UsageError(f"results store {self.path} is a directory, not a file")
        if not readonly:  # before SQLite creates the file, its -wal and -shm
            check_creatable(self.path, "results store", directory=False)
        self.db = self._connect()
        try:
            self._check_layout()
            if not readonly:
                self._set_journal("WAL")
        except BaseException:
            self.db.close()
            raise

    # -- opening ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                db = sqlite3.connect(
                    f"{self.path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise UsageError(f"results store {self.path} can't be opened: {exc}") from None
        return db

    def _tables(self) -> set[str]:
        try:
            rows = self.db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        except sqlite3.DatabaseError as exc:
            raise UsageError(
                f"results store {self.path} is not a usable SQLite file: {exc}"
            ) from None
        return {r[0] for r in rows}

    def _check_layout(self) -> None:
        """A new, empty file becomes a store (writers only); anything else must be one of ours."""
        tables = self._tables()
        if not tables and not self.readonly:
            self._create()
            return
        if "meta" not in tables and {"results", "runs"} <= tables:
            raise UsageError(
                f"{self.path} comes from the first bench (tables results and runs, no meta "
                f"table), whose rows lack what this one identifies a number by (weights "
                f"fingerprint, flags per point); this bench reads layouts "
                f"{', '.join(READABLE_VERSIONS)}: evaluate again into a new --db"
            )
        if "meta" not in tables:
            raise UsageError(
                f"{self.path} is not a bench results store (no meta table; tables: "
                f"{', '.join(sorted(tables)) or 'none'})"
            )
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("application") != APPLICATION:
            raise UsageError(f"{self.path} is not a bench results store")
        version = meta.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise UsageError(
                f"results store {self.path} has layout version {version}; this bench reads "
                f"versions {', '.join(READABLE_VERSIONS)}: evaluate into a new --db"
            )
        if not set(TABLES) <= tables:
            raise UsageError(
                f"results store {self.path} lacks tables {sorted(set(TABLES) - tables)}"
            )
        self.version = str(version)
        if self.version == str(SCHEMA_VERSION):
            self._check_columns()
        elif not self.readonly:
            self._migrate()

    def _check_columns(self) -> None:
        """A store that claims this layout must have its columns (a store edited by hand, or
        written by another program, fails here with one line, before anything is written)."""
        for table, wanted in expected_columns().items():
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if not wanted <= have:
                raise UsageError(
                    f"results store {self.path} claims layout {SCHEMA_VERSION} but its {table} "
                    f"table lacks {', '.join(sorted(wanted - have))}: evaluate into a new --db"
                )

    def _migrate(self) -> None:
        """Layouts 2 and 3 -> 4 in one transaction: the ``walk`` column (every older row ``up``),
        then the ``norm`` columns (every older row ``Linf``). Another writer may have migrated
        since the layout was read: then nothing is done."""
        try:
            with self.transaction():
                row = self.db.execute(
                    "SELECT value FROM meta WHERE key='schema_version'"
                ).fetchone()
                if row[0] == "2":
                    self.db.execute(
                        "ALTER TABLE results ADD COLUMN walk TEXT NOT NULL DEFAULT 'up'"
                    )
                if row[0] in ("2", "3"):
                    self._add_norm()
                    self.db.execute(
                        "UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),)
                    )
        except sqlite3.Error as exc:
            raise UsageError(
                f"results store {self.path} can't be migrated to layout {SCHEMA_VERSION}: {exc}"
            ) from None
        self.version = str(SCHEMA_VERSION)

    def _add_norm(self) -> None:
        """Layout 3 -> 4 inside the caller's transaction: ``results`` and ``diagnostics`` rebuilt
        from this layout's statements (their keys now hold the norm), every row ``Linf``."""
        for table, columns in (
            ("results", _RESULT_COLUMNS.replace(", norm", "")),
            ("diagnostics", _DIAGNOSTIC_COLUMNS.replace(", norm", "")),
        ):
            statement = next(s for s in SCHEMA.split(";") if f"CREATE TABLE {table} (" in s)
            self.db.execute(statement.replace(f"TABLE {table} (", f"TABLE {table}_v4 ("))
            self.db.execute(
                f"INSERT INTO {table}_v4 ({columns}, norm) SELECT {columns}, 'Linf' FROM {table}"
            )
            self.db.execute(f"DROP TABLE {table}")
            self.db.execute(f"ALTER TABLE {table}_v4 RENAME TO {table}")

    def _create(self) -> None:
        """The tables, in one transaction. Another writer may have created them since they were
        looked for (two ``bench eval`` starting on a new store): then its store is checked."""
        try:
            with self.transaction():
                created = not self._tables()
                if created:
                    for statement in SCHEMA.split(";"):  # executescript would commit first
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [("application", APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                    )
        except sqlite3.Error as exc:
            raise UsageError(f"results store {self.path} can't be written: {exc}") from None
        if not created:
            self._check_layout()

    def _set_journal(self, mode: str) -> None:
        """WAL while writers work (several at once); see :meth:`close` for the way back.

        The switch needs the file to itself for a moment; SQLite answers "locked" at once,
        without waiting, when another connection is switching too, so it is retried here for
        up to :data:`BUSY_TIMEOUT_S`."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.db.execute(f"PRAGMA journal_mode={mode}")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise UsageError(f"results store {self.path} can't be written: {exc}") from None
            except sqlite3.Error as exc:
                raise UsageError(f"results store {self.path} can't be written: {exc}") from None
            time.sleep(random.uniform(0.01, 0.05))

    def close(self) -> None:
        """Close; the last writer to close returns the file to a rollback journal, so that no
        ``-wal``/``-shm`` files are left and a reader (``bench report``, mode=ro) creates none.
        While another connection is open the switch fails at once and is left to that one."""
        if not self.readonly:
            try:
                self.db.execute("PRAGMA busy_timeout=0")
                self.db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.Error:
                pass
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ----------------------------------------------------------------------
    def transaction(self) -> "_Transaction":
        """``with store.transaction():`` one write transaction, taken at once (BEGIN IMMEDIATE),
        so that concurrent writers queue instead of failing half-way."""
        if self.readonly:
            raise UsageError(f"results store {self.path} was opened read-only")
        return _Transaction(self.db)

    def check_writable(self) -> None:
        """A UsageError now, rather than after hours of attacks, if the store can't be written."""
        try:
            with self.transaction():
                self.db.execute("UPDATE meta SET value=value WHERE key='application'")
        except sqlite3.Error as exc:
            raise UsageError(f"results store {self.path} can't be written: {exc}") from None

    # -- runs ------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunRow | None:
        """The recorded model with this run id, if any."""
        rows = self._runs("WHERE run_id=?", (run_id,))
        return rows[0] if rows else None

    def claim_run(self, run: RunRow, updated: str) -> None:
        """Record ``run`` before its results. A run id already held by other weights is replaced
        (rows and all) when it comes from the same path (a retrained checkpoint); from another
        path it is refused: two different models would share one run id."""
        with self.transaction():
            old = self.run(run.run_id)
            if old is not None and old.fingerprint != run.fingerprint:
                if old.path != run.path:
                    raise UsageError(
                        f"run id {run.run_id!r} is already in {self.path} for other weights "
                        f"from {old.path}; rename this checkpoint or use another --db"
                    )
                for table in ("results", "batches", "diagnostics"):
                    self.db.execute(f"DELETE FROM {table} WHERE run_id=?", (run.run_id,))
            self.db.execute(
                f"INSERT OR REPLACE INTO runs ({_RUN_COLUMNS}) VALUES ({','.join('?' * 14)})",
                (
                    run.run_id,
                    run.fingerprint,
                    run.kind,
                    run.path,
                    run.dataset,
                    run.model,
                    run.defense,
                    canonical(run.defense_params),
                    run.epochs,
                    run.train_limit,
                    run.train_seconds,
                    canonical(run.config),
                    canonical(run.run),
                    updated,
                ),
            )

    def runs(self) -> list[RunRow]:
        """Every recorded model, by run id."""
        return self._runs("", ())

    def _runs(self, where: str, args: tuple[Any, ...]) -> list[RunRow]:
        cur = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY run_id", args)
        return [
            RunRow(
                run_id=r[0],
                fingerprint=r[1],
                kind=r[2],
                path=r[3],
                dataset=r[4],
                model=r[5],
                defense=r[6],
                defense_params=_json(r[7], "runs.defense_params"),
                epochs=r[8],
                train_limit=r[9],
                train_seconds=r[10],
                config=_json(r[11], "runs.config"),
                run=_json(r[12], "runs.run"),
            )
            for r in cur.fetchall()
        ]

    # -- results ---------------------------------------------------------------------------
    def write_result(self, row: ResultRow, step: str | None = None) -> None:
        """Insert (or replace) one result row; in the same transaction drop the step's batches."""
        with self.transaction():
            self.db.execute(
                f"INSERT OR REPLACE INTO results ({_RESULT_COLUMNS}) VALUES ({','.join('?' * 19)})",
                (
                    row.run_id,
                    row.fingerprint,
                    row.attack,
                    canonical(row.params),
                    row.eps,
                    eps_key(row.eps),
                    row.n,
                    row.seed,
                    row.batch_size,
                    canonical(row.grid),
                    row.clean_acc,
                    row.robust_acc,
                    row.seconds,
                    row.device,
                    canonical(row.versions),
                    row.flags,
                    row.created,
                    row.walk,
                    row.norm,
                ),
            )
            if step is not None:
                self.db.execute("DELETE FROM batches WHERE run_id=? AND step=?", (row.run_id, step))

    def replace_results(self, rows: Iterable[ResultRow]) -> None:
        """Insert several rows (each its own transaction)."""
        for row in rows:
            self.write_result(row)

    def results(self, run_id: str | None = None) -> list[ResultRow]:
        """Result rows (of one model if ``run_id``), ordered by run, attack, params, n, eps."""
        sql = f"SELECT {self._result_columns} FROM results"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id=?"
            args = (run_id,)
        sql += " ORDER BY run_id, attack, params, n, eps"
        return [_result(r) for r in self.db.execute(sql, args).fetchall()]

    def result(
        self,
        run_id: str,
        attack: str,
        params: dict[str, Any],
        eps: float,
        n: int,
        norm: str = LINF,
    ) -> ResultRow | None:
        """The one row with this identity (the table's primary key), if stored."""
        sql = (
            f"SELECT {self._result_columns} FROM results WHERE run_id=? AND attack=? AND params=?"
            " AND eps_key=? AND n=?"
        )
        args: tuple[Any, ...] = (run_id, attack, canonical(params), eps_key(eps), n)
        if self.version == str(SCHEMA_VERSION):
            sql, args = sql + " AND norm=?", args + (norm,)
        elif norm != LINF:  # an older layout holds Linf rows only
            return None
        row = self.db.execute(sql, args).fetchone()
        return _result(row) if row else None

    @property
    def _result_columns(self) -> str:
        """The result columns as this store's layout holds them (older layouts: walk read as
        'up', norm as 'Linf')."""
        return _RESULT_COLUMNS_OLD.get(self.version, _RESULT_COLUMNS)

    def count(self) -> int:
        """Number of result rows."""
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def result_counts(self) -> dict[str, int]:
        """Result rows per run id."""
        cur = self.db.execute("SELECT run_id, COUNT(*) FROM results GROUP BY run_id")
        return {r[0]: int(r[1]) for r in cur.fetchall()}

    # -- forgetting a run ------------------------------------------------------------------
    def run_ids(self) -> list[str]:
        """Every run id with a row in any table (a run record, results, batches, findings)."""
        sql = " UNION ".join(f"SELECT run_id FROM {t}" for t in RUN_TABLES)
        return [r[0] for r in self.db.execute(sql + " ORDER BY 1").fetchall()]

    def check_run_id(self, run_id: str) -> None:
        """A UsageError listing the known run ids unless ``run_id`` is one of them."""
        known = self.run_ids()
        if run_id not in known:
            if not known:
                raise UsageError(f"results store {self.path} holds no runs")
            raise UnknownNameError("run id", run_id, known)

    def forget(self, run_id: str) -> dict[str, int]:
        """Delete every row of ``run_id`` from every table, in one transaction; returns the rows
        deleted per table. An unknown run id is a UsageError listing the known ones."""
        with self.transaction():
            self.check_run_id(run_id)
            return {
                t: self.db.execute(f"DELETE FROM {t} WHERE run_id=?", (run_id,)).rowcount
                for t in RUN_TABLES
            }

    # -- batches of a step in progress -----------------------------------------------------
    def write_batch(self, run_id: str, step: str, batch: int, flags: str, seconds: float) -> None:
        """Keep one finished batch of a step (so that a killed run resumes after it)."""
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO batches VALUES (?,?,?,?,?)",
                (run_id, step, batch, flags, seconds),
            )

    def batches(self, run_id: str, step: str) -> dict[int, tuple[str, float]]:
        """The finished batches of a step: batch index -> (flags, seconds)."""
        cur = self.db.execute(
            "SELECT batch, flags, seconds FROM batches WHERE run_id=? AND step=?", (run_id, step)
        )
        return {r[0]: (r[1], r[2]) for r in cur.fetchall()}

    # -- diagnostics -----------------------------------------------------------------------
    def write_diagnostics(self, rows: Iterable[DiagnosticRow]) -> None:
        """Insert (or replace) findings, in one transaction; a finding replaces the row that an
        older bench kept for it under another key (:data:`LEGACY_KEYS`)."""
        with self.transaction():
            for d in rows:
                if d.check in LEGACY_KEYS:
                    self.db.execute(
                        "DELETE FROM diagnostics WHERE run_id=? AND n=? AND norm=? "
                        "AND check_name=? AND key GLOB ?",
                        (d.run_id, d.n, d.norm, d.check, LEGACY_KEYS[d.check]),
                    )
                self.db.execute(
                    f"INSERT OR REPLACE INTO diagnostics ({_DIAGNOSTIC_COLUMNS}) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        d.run_id,
                        d.fingerprint,
                        d.n,
                        d.check,
                        d.key,
                        int(d.flagged),
                        d.source,
                        d.summary,
                        canonical(d.details),
                        d.advice,
                        d.created,
                        d.norm,
                    ),
                )

    def drop_diagnostic(self, run_id: str, n: int, check: str, key: str, norm: str = LINF) -> None:
        """Delete one finding (whose evaluation's rows were replaced), if stored."""
        with self.transaction():
            self.db.execute(
                "DELETE FROM diagnostics WHERE run_id=? AND n=? AND norm=? AND check_name=? "
                "AND key=?",
                (run_id, n, norm, check, key),
            )

    def diagnostics(self, run_id: str | None = None) -> list[DiagnosticRow]:
        """Findings (of one model if ``run_id``), ordered by run, n, check, key."""
        columns = (
            _DIAGNOSTIC_COLUMNS if self.version == str(SCHEMA_VERSION) else _DIAGNOSTIC_COLUMNS_OLD
        )
        sql = f"SELECT {columns} FROM diagnostics"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id=?"
            args = (run_id,)
        sql += " ORDER BY run_id, n, norm, check_name, key"
        return [
            DiagnosticRow(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                bool(r[5]),
                r[6],
                r[7],
                _json(r[8], "diagnostics.details"),
                r[9],
                r[10],
                r[11],
            )
            for r in self.db.execute(sql, args).fetchall()
        ]


def _json(text: str, column: str) -> Any:
    """A JSON column's value; text that does not parse is one line (the store was not written
    by bench), not a traceback."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise UsageError(
            f"the results store's {column} holds {shown(text)}, not JSON "
            f"({getattr(exc, 'msg', exc)}): it was not written by bench; evaluate into a new --db"
        ) from None


def _result(r: tuple[Any, ...]) -> ResultRow:
    return ResultRow(
        run_id=r[0],
        fingerprint=r[1],
        attack=r[2],
        params=_json(r[3], "results.params"),
        eps=r[4],
        n=r[6],
        seed=r[7],
        batch_size=r[8],
        grid=_json(r[9], "results.grid"),
        clean_acc=r[10],
        robust_acc=r[11],
        seconds=r[12],
        device=r[13],
        versions=_json(r[14], "results.versions"),
        flags=r[15],
        created=r[16],
        walk=r[17],
        norm=r[18],
    )


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def check_store(path: str | Path) -> Path:
    """What ``Store(path)`` would refuse, found without creating or changing anything: a path
    that can't be resolved or written, or an existing file that is not an empty file or a bench
    store of this layout. Returns the resolved path."""
    resolved = resolve(path, "results store")
    if resolved.is_dir():
        raise UsageError(f"results store {resolved} is a directory, not a file")
    check_creatable(resolved, "results store", directory=False)
    if resolved.is_file() and resolved.stat().st_size > 0:
        Store(resolved, readonly=True).close()  # reads the layout; never writes
    return resolved


def iter_flags(flags: str) -> Iterator[bool]:
    """'0'/'1' text as booleans."""
    return (c == "1" for c in flags)
