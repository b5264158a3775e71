"""Stores as older benches wrote them (for the migration tests): layout 3 is the tables bench
wrote before it knew norms, layout 2 the same without ``results.walk``. Written with sqlite3
directly, from the statements of those layouts, never through today's Store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

LAYOUT_3 = """
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
    PRIMARY KEY (run_id, attack, params, eps_key, n)
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
    PRIMARY KEY (run_id, n, check_name, key)
);
"""


ROW = (
    "m", "sha256:x", "pgd", '{"steps":3}', 4 / 255, round(4 / 255 * 1e9), 3, 0, 8,
    json.dumps([0.0, 4 / 255]), 1.0, 2 / 3, 1.0, "cpu", "{}", "110",
    "2024-01-01T00:00:00+00:00",
)  # fmt: skip
FINDING = (
    "m",
    "sha256:x",
    3,
    "gradients",
    "",
    0,
    "bench",
    "fine",
    "{}",
    "",
    "2024-01-01T00:00:00+00:00",
)


def legacy_store(path: Path, layout: int) -> None:
    """A layout-``layout`` (2 or 3) store at ``path`` with one result row and one finding."""
    con = sqlite3.connect(path)
    try:
        con.executescript(LAYOUT_3)
        con.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("application", "bench"), ("schema_version", str(layout))],
        )
        con.execute(f"INSERT INTO results VALUES ({','.join('?' * len(ROW))}, 'up')", ROW)
        con.execute(f"INSERT INTO diagnostics VALUES ({','.join('?' * len(FINDING))})", FINDING)
        if layout == 2:
            con.execute("ALTER TABLE results DROP COLUMN walk")
        con.commit()
    finally:
        con.close()
