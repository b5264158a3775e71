"""Stores that are not what they claim: one line, exit 2, nothing written (the reliability
audit's leftovers: a first-bench store, a missing column, a JSON column that does not parse)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_norms import _row

from bench.cli import main
from bench.store import Store


def _store(path: Path) -> Path:
    with Store(path) as s:
        s.write_result(_row("Linf", "110"))
    return path


def _one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_a_store_of_the_first_bench_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "first.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE results (run_id TEXT, attack TEXT, eps REAL, acc REAL)")
        con.execute("CREATE TABLE runs (run_id TEXT, path TEXT)")
    before = db.read_bytes()
    err = _one_line(["report", "--db", str(db), "--out", str(tmp_path / "r")], capsys)
    assert "comes from the first bench" in err and "new --db" in err
    assert db.read_bytes() == before


def test_a_store_missing_a_column_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _store(tmp_path / "s.sqlite")
    with sqlite3.connect(db) as con:
        con.execute("ALTER TABLE results DROP COLUMN flags")
    before = db.read_bytes()
    err = _one_line(["report", "--db", str(db), "--out", str(tmp_path / "r")], capsys)
    assert "results table lacks flags" in err
    err = _one_line(
        ["eval", "--attack", "pgd", "--checkpoint", str(tmp_path), "--db", str(db)], capsys
    )
    assert "results table lacks flags" in err
    assert db.read_bytes() == before


def test_a_json_column_that_does_not_parse_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _store(tmp_path / "s.sqlite")
    with sqlite3.connect(db) as con:
        con.execute(
            "INSERT INTO runs VALUES ('m','sha256:x','checkpoint','p','fashion-mnist','cnn',"
            "'standard','{}',1,NULL,NULL,'{not json','{}','2024')"
        )
    err = _one_line(["report", "--db", str(db), "--out", str(tmp_path / "r")], capsys)
    assert "runs.config holds '{not json', not JSON" in err
