"""The results store: SQLite (standard library) at ``reports/results.sqlite`` unless ``--db``.

Two tables. ``runs``: one row per evaluated checkpoint, a snapshot of its configuration, so that
``bench report`` is a pure function of the store. ``results``: one row per (checkpoint, attack with
its parameters, eps, n) holding clean and robust accuracy, seconds, device, library versions and
the per-point robust flags ('1' robust, '0' broken, one character per test point), from which the
worst case over all attacks ("any") is recomputed. Writing the same evaluation again replaces
its rows (the primary key), never duplicates them.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bench.errors import UsageError

ANY = "any"  # the attack name of the worst-case rows

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    dataset TEXT NOT NULL,
    model TEXT NOT NULL,
    defense TEXT NOT NULL,
    defense_params TEXT NOT NULL,   -- JSON
    epochs INTEGER,
    train_limit INTEGER,
    train_seconds REAL,
    config TEXT NOT NULL,           -- JSON, the checkpoint's config.json
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    attack TEXT NOT NULL,
    params TEXT NOT NULL,           -- JSON with sorted keys: part of the row's identity
    eps REAL NOT NULL,
    eps_key INTEGER NOT NULL,       -- round(eps * 1e9): exact identity for floating eps
    n INTEGER NOT NULL,
    seed INTEGER,
    clean_acc REAL NOT NULL,
    robust_acc REAL NOT NULL,
    seconds REAL NOT NULL,
    device TEXT NOT NULL,
    versions TEXT NOT NULL,         -- JSON
    flags TEXT,                     -- per-point robust flags, '0'/'1' per point
    created TEXT NOT NULL,
    PRIMARY KEY (run_id, attack, params, eps_key, n)
);
"""


def canonical(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal parameters give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def eps_key(eps: float) -> int:
    """Integer identity of an eps value (nano-units of the pixel scale)."""
    return int(round(eps * 1e9))


@dataclass
class ResultRow:
    """One evaluation result: a checkpoint, an attack with parameters, an eps, n points."""

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
    flags: str | None = None
    seed: int | None = None
    created: str = ""

    def as_record(self) -> dict[str, Any]:
        """A flat dict for CSV/JSON export (flags dropped: they are for the store)."""
        rec = asdict(self)
        rec.pop("flags")
        rec["params"] = canonical(self.params)
        rec["versions"] = canonical(self.versions)
        rec["eps_255"] = round(self.eps * 255, 6)
        return rec


@dataclass
class RunRow:
    """A checkpoint as recorded in the store."""

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


class Store:
    """Open (and create, unless ``must_exist``) the SQLite store at ``path``."""

    def __init__(self, path: str | Path, *, must_exist: bool = False) -> None:
        self.path = Path(path).expanduser().resolve()
        if must_exist and not self.path.is_file():
            raise UsageError(f"results store {self.path} does not exist; run `bench eval` first")
        if not must_exist:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"results store {self.path} is not a usable SQLite file: {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------
    def upsert_run(self, run: RunRow, updated: str) -> None:
        """Record (or refresh) a checkpoint's configuration snapshot."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    run.run_id, run.path, run.dataset, run.model, run.defense,
                    canonical(run.defense_params), run.epochs, run.train_limit,
                    run.train_seconds, canonical(run.config), updated,
                ),
            )

    def replace_results(self, rows: Iterable[ResultRow]) -> None:
        """Insert rows in one transaction, replacing any row with the same identity."""
        with self.db:
            self._insert(rows)

    def _insert(self, rows: Iterable[ResultRow]) -> None:
        """INSERT OR REPLACE, inside the caller's transaction."""
        self.db.executemany(
            "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    r.run_id, r.attack, canonical(r.params), r.eps, eps_key(r.eps), r.n,
                    r.seed, r.clean_acc, r.robust_acc, r.seconds, r.device,
                    canonical(r.versions), r.flags, r.created,
                )
                for r in rows
            ],
        )

    def recompute_any(self, run_id: str, n: int, created: str) -> list[ResultRow]:
        """Rewrite the worst-case rows of (run_id, n): per eps, a point is robust only if every
        attack evaluated at that eps on these n points left it robust. Returns the new rows."""
        attack_rows = [r for r in self.results(run_id) if r.n == n and r.attack != ANY and r.flags]
        by_eps: dict[int, list[ResultRow]] = {}
        for r in attack_rows:
            by_eps.setdefault(eps_key(r.eps), []).append(r)
        out = []
        for rows in by_eps.values():
            flags = [all(r.flags[i] == "1" for r in rows) for i in range(n)]  # type: ignore[index]
            out.append(
                ResultRow(
                    run_id=run_id, attack=ANY,
                    params={"attacks": sorted(f"{r.attack}{canonical(r.params)}" for r in rows)},
                    eps=rows[0].eps, n=n, clean_acc=rows[0].clean_acc,
                    robust_acc=sum(flags) / n, seconds=sum(r.seconds for r in rows),
                    device=rows[0].device, versions=rows[0].versions,
                    flags="".join("1" if f else "0" for f in flags), seed=None, created=created,
                )
            )
        # The identity of an "any" row is (run, eps, n); its params only say what it covers, so
        # the old rows go first, in the same transaction as the new ones.
        with self.db:
            self.db.execute("DELETE FROM results WHERE run_id=? AND attack=? AND n=?", (run_id, ANY, n))
            self._insert(out)
        return out

    # -- reading ---------------------------------------------------------------------------
    def runs(self) -> list[RunRow]:
        """Every recorded checkpoint, by run id."""
        cur = self.db.execute(
            "SELECT run_id, path, dataset, model, defense, defense_params, epochs, train_limit,"
            " train_seconds, config FROM runs ORDER BY run_id"
        )
        return [
            RunRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], json.loads(r[9]))
            for r in cur.fetchall()
        ]

    def results(self, run_id: str | None = None) -> list[ResultRow]:
        """Result rows (of one checkpoint if ``run_id``), ordered by run, attack, n, eps."""
        sql = (
            "SELECT run_id, attack, params, eps, n, clean_acc, robust_acc, seconds, device,"
            " versions, flags, seed, created FROM results"
        )
        args: tuple[Any, ...] = ()
        if run_id is not None:
            sql += " WHERE run_id=?"
            args = (run_id,)
        sql += " ORDER BY run_id, attack, params, n, eps"
        return [
            ResultRow(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8],
                      json.loads(r[9]), r[10], r[11], r[12])
            for r in self.db.execute(sql, args).fetchall()
        ]

    def count(self) -> int:
        """Number of result rows."""
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    # -- export ----------------------------------------------------------------------------
    def csv_text(self) -> str:
        """All result rows as CSV (one line per row, flags left out)."""
        recs = [r.as_record() for r in self.results()]
        buffer = io.StringIO(newline="")
        fields = list(recs[0]) if recs else ["run_id", "attack", "params", "eps", "n"]
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(recs)
        return buffer.getvalue()

    def json_text(self) -> str:
        """Runs and result rows as one JSON document."""
        doc = {
            "runs": [asdict(r) for r in self.runs()],
            "results": [r.as_record() for r in self.results()],
        }
        return json.dumps(doc, indent=2) + "\n"
