"""The transfer matrix (``bench eval --transfer-matrix``, :mod:`bench.evaluation.transfer`):
stored as diagnostics rows with n and interval, at most MAX_POINTS points, its diagonal equal to
the white-box PGD the evaluation stored, feeding the transfer diagnostic, recomputed
idempotently, shown only for the weights the store holds now."""

from __future__ import annotations

import io
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import visual_store
from visual_store import BATCH, EPS, Built, N

from bench.evaluation import transfer
from bench.evaluation.results import Estimate, wilson
from bench.evaluation.targets import prepare_target
from bench.report import heatmap, write_report
from bench.report import model as report_model
from bench.report.text import ci
from bench.store import Store

K = len(visual_store.DEFENSES)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return visual_store.visual_store(tmp_path_factory)


def _cells(db: Path) -> list:
    with Store(db, readonly=True) as s:
        return [d for d in s.diagnostics() if d.check == transfer.CHECK]


def _copy(built: Built, tmp_path: Path) -> Path:
    db = tmp_path / "copy.sqlite"
    shutil.copyfile(built.db, db)
    return db


def test_every_cell_is_a_row_with_n_and_interval(built: Built) -> None:
    cells = _cells(built.db)
    with Store(built.db, readonly=True) as s:
        fps = {r.run_id: r.fingerprint for r in s.runs()}
    assert len(cells) == K * K
    assert {(d.details["source_run_id"], d.run_id) for d in cells} == {
        (a, b) for a in fps for b in fps
    }
    for d in cells:
        det = d.details
        assert d.n == N and d.fingerprint == fps[d.run_id] and not d.flagged
        assert d.key == transfer.cell_key(fps[det["source_run_id"]], EPS)
        assert det["source_fingerprint"] == fps[det["source_run_id"]]
        assert det["n"] == N <= transfer.MAX_POINTS and det["max_points"] == transfer.MAX_POINTS
        assert len(det["flags"]) == N and det["robust"] == det["flags"].count("1")
        assert det["ci95"] == pytest.approx(list(wilson(det["robust"], N)))
        assert det["eps"] == EPS and det["attack"] == "pgd" and det["params"]["steps"] == 10
        assert (det["seed"], det["batch_size"]) == (0, BATCH)
    md = (built.report / "leaderboard.md").read_text()
    for d in cells:  # the report's table shows each cell with its interval
        assert ci(Estimate(d.details["robust"], N)) in md
    assert f"the first {N} test points (at most {transfer.MAX_POINTS})" in md


def test_the_diagonal_is_the_white_box_pgd_the_evaluation_stored(built: Built) -> None:
    """Crafted on a model and evaluated on itself: bench's PGD at the grid's largest eps with
    the grid walk's seeds and batches, so the same flags as the stored PGD row."""
    cells = _cells(built.db)
    with Store(built.db, readonly=True) as s:
        for d in (c for c in cells if c.details["source_run_id"] == c.run_id):
            pgd = s.result(d.run_id, "pgd", d.details["params"], EPS, N)
            assert pgd is not None and pgd.walk == "bisect"
            assert d.details["flags"] == pgd.flags[:N], d.run_id
        assert transfer.diagonal_check(s, cells) == []
        broken = [c for c in cells if c.details["source_run_id"] == c.run_id][0]
        broken.details = {
            **broken.details,
            "flags": "0" * N,
            "robust": 0,
        }  # a diagonal that disagrees
        (line,) = transfer.diagonal_check(s, [broken])
        assert broken.run_id in line and "differs from its stored PGD row" in line


def test_off_diagonal_cells_feed_the_transfer_diagnostic(built: Built) -> None:
    cells = {(d.details["source_run_id"], d.run_id): d for d in _cells(built.db)}
    with Store(built.db, readonly=True) as s:
        found = [
            d
            for d in s.diagnostics()
            if d.check == "transfer" and d.details.get("from") == transfer.CHECK
        ]
    assert len(found) == K * (K - 1)
    for f in found:
        cell = cells[(f.details["source_run_id"], f.run_id)]
        assert f.key == cell.key and f.n == N
        assert f.details["weak"] == "transfer" and f.details["strong"] == "white-box"
        assert f.details["weak_acc"] == pytest.approx(cell.details["robust"] / N)
    with Store(built.db, readonly=True) as s:  # and the report counts them among the findings
        ((_, models),) = report_model.load(s).values()
    fed = lambda f: f.check == "transfer" and f.details.get("from") == transfer.CHECK  # noqa: E731
    assert all(sum(map(fed, m.findings)) == K - 1 for m in models)


def _targets(built: Built) -> list:
    return [prepare_target(p, N, built.data, download=False) for p in built.ckpts.values()]


def test_recomputing_is_idempotent(built: Built, tmp_path: Path) -> None:
    db = _copy(built, tmp_path)

    def snapshot() -> list[tuple]:
        with Store(db, readonly=True) as s:
            return [
                (d.run_id, d.n, d.check, d.key, d.flagged, d.summary, d.details)
                for d in s.diagnostics()
            ]

    before = snapshot()
    out = io.StringIO()
    rows = transfer.write_matrix(db, _targets(built), EPS, 0, BATCH, out=out)
    assert len([r for r in rows if r.check == transfer.CHECK]) == K * K
    assert snapshot() == before  # the same rows, replaced in place
    assert f"first {N} test points (at most {transfer.MAX_POINTS})" in out.getvalue()
    again = write_report(db, tmp_path / "again", images=False)
    assert again.leaderboard.read_text() == (built.report / "leaderboard.md").read_text()


def test_at_most_max_points(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    many = [SimpleNamespace(y=torch.zeros(k)) for k in (600, 800)]
    assert transfer.points(many) == transfer.MAX_POINTS == 500  # the cap
    assert transfer.points([SimpleNamespace(y=torch.zeros(k)) for k in (600, 40)]) == 40
    db = _copy(built, tmp_path)
    monkeypatch.setattr(transfer, "MAX_POINTS", 16)
    out = io.StringIO()
    transfer.write_matrix(db, _targets(built), EPS, 0, BATCH, out=out)
    cells = _cells(db)
    assert (
        len(cells) == K * K
    )  # replaced: a cell's key is its source and eps, its n the evaluated n
    assert all(
        d.details["n"] == 16 == len(d.details["flags"]) and d.details["max_points"] == 16
        for d in cells
    )
    assert "first 16 test points (at most 16)" in out.getvalue()
    with Store(db, readonly=True) as s:
        (mxs,) = heatmap.load(s, report_model.load(s)).values()
    assert [mx.n for mx in mxs] == [16] and "the first 16 test points (at most 16)" in mxs[
        0
    ].caption


def test_cells_of_weights_no_longer_in_the_store_are_not_shown(
    built: Built, tmp_path: Path
) -> None:
    db = _copy(built, tmp_path)
    with sqlite3.connect(db) as con:  # as if mixup had been retrained under its run id
        con.execute("UPDATE runs SET fingerprint='sha256:new' WHERE run_id='mixup'")
        con.execute("UPDATE results SET fingerprint='sha256:new' WHERE run_id='mixup'")
    with Store(db, readonly=True) as s:
        sets = report_model.load(s)
        ((mx,),) = heatmap.load(s, sets).values()
        ((_, models),) = sets.values()
    assert set(mx.runs) == {"standard", "fgsm-at"} and len(mx.cells) == 4
    others = [
        m for m in models if m.run_id != "mixup"
    ]  # transfer findings from the old mixup go too
    assert all(f.details.get("source_run_id") != "mixup" for m in others for f in m.findings)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--transfer-matrix"], "needs at least two models of one data set"),
        (["--transfer-eps", "0.1"], "--transfer-eps goes with --transfer-matrix"),
        (["--transfer-matrix", "--transfer-eps", "0"], "--transfer-eps must be in (0, 1]"),
    ],
)
def test_bad_requests_fail_before_anything_runs(
    extra: list[str], needle: str, built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.cli import main

    db = tmp_path / "new.sqlite"
    ckpts = (
        list(built.ckpts.values())[:1]
        if extra == ["--transfer-matrix"]
        else list(built.ckpts.values())
    )
    assert main(visual_store.eval_argv(db, built.data, ckpts, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error:") and needle in err[0], err
    assert not db.exists()
