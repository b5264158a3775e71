"""``bench report`` from real stores of per-point flags: one evaluation per row, the worst case
over mismatched grids, AutoAttack versions, reused run ids, intervals, seeds, files, errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from bench.errors import UsageError
from bench.evaluation.results import wilson
from bench.report import MANIFEST, write_report
from bench.store import ResultRow, RunRow, Store

VERSIONS = {"python": "3.11.7", "torch": "2.14.1"}
STD = {"version": "standard", "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]}
CUSTOM = {"version": "custom", "attacks": ["apgd-ce"]}
PGD = {"steps": 10, "alpha": "2.5*eps/steps", "random_start": True}
E8 = 8 / 255


def flags(n: int, robust: list[int] | range) -> str:
    """'1' at the indices in ``robust``, '0' elsewhere."""
    keep = set(robust)
    return "".join("1" if i in keep else "0" for i in range(n))


def add_run(
    store: Store,
    run_id: str,
    fp: str = "sha256:aa",
    dataset: str = "fashion-mnist",
    defense: str = "standard",
    seed: int = 0,
    path: str | None = None,
    **cfg: object,
) -> None:
    config = {
        "model": "cnn",
        "defense": defense,
        "dataset": dataset,
        "seed": seed,
        "epochs": 3,
        **cfg,
    }
    store.claim_run(
        RunRow(
            run_id,
            path or f"/ckpt/{run_id}",
            dataset,
            "cnn",
            defense,
            {},
            3,
            None,
            12.5,
            config,
            {},
            fp,
            "checkpoint",
        ),
        "2026-01-01T00:00:00",
    )


def add(
    store: Store,
    run_id: str,
    attack: str,
    params: dict,
    grid: list[float],
    robust: dict[float, list[int] | range],
    n: int,
    fp: str = "sha256:aa",
) -> None:
    """Rows of one attack's walk: ``robust[eps]`` are the robust points at that eps."""
    clean = robust.get(0.0, robust[min(robust)])
    for eps in grid:
        f = flags(n, robust[eps])
        store.write_result(
            ResultRow(
                run_id,
                attack,
                params,
                eps,
                n,
                len(set(clean)) / n,
                f.count("1") / n,
                1.0,
                "cpu",
                VERSIONS,
                f,
                0,
                500,
                grid,
                fp,
                "2026-01-01T00:00:00",
            )
        )


def section(md: str, title: str) -> list[dict[str, str]]:
    """The rows of the first table under ``## title`` as dicts keyed by header."""
    lines = md.splitlines()
    start = lines.index(f"## {title}")
    table: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append([c.strip() for c in line.strip("|").split(" | ")])
        elif table:
            break
    head, _, *body = table
    return [dict(zip(head, row)) for row in body]


def pct(cell: str) -> float:
    return float(cell.split()[0])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results.sqlite"


def report(db: Path, tmp_path: Path, **kw: object) -> str:
    return write_report(db, tmp_path / "out", **kw).leaderboard.read_text()  # type: ignore[arg-type]


def test_ranking_needs_standard_autoattack_and_custom_never_outranks(
    db: Path, tmp_path: Path
) -> None:
    n = 20
    with Store(db) as s:
        for rid, aa, params in (
            ("std", range(8), STD),
            ("cust", range(2), CUSTOM),
            ("none", None, None),
        ):
            add_run(s, rid, fp=f"sha256:{rid}", defense=rid)
            add(
                s,
                rid,
                "pgd",
                PGD,
                [0.0, E8],
                {0.0: range(18), E8: range(10)},
                n,
                fp=f"sha256:{rid}",
            )
            if aa is not None:
                add(s, rid, "autoattack", params, [E8], {E8: aa}, n, fp=f"sha256:{rid}")
    rows = section(report(db, tmp_path), "fashion-mnist")
    assert [r["run id"] for r in rows] == ["`std`", "`cust`", "`none`"]
    assert rows[0]["rank"] == "1" and pct(rows[0]["worst case"]) == 40.0
    for r in rows[1:]:  # custom-only and no AutoAttack: listed, never ranked
        assert r["rank"] == "not ranked: no standard AutoAttack at the ranking eps"
        assert r["flags"] == "none" and r["intervals overlap with rank"] == "n/a (not ranked)"
    info = json.loads((tmp_path / "out" / "json" / "cust.json").read_text())
    assert info["autoattack_acc"] is None and info["autoattack_custom_acc"] == "10.00"
    assert (
        json.loads((tmp_path / "out" / "json" / "std.json").read_text())["autoattack_acc"]
        == "40.00"
    )


def test_one_n_per_row(db: Path, tmp_path: Path) -> None:
    """AutoAttack at n=5 and everything else at n=10: the row shows one evaluation only."""
    with Store(db) as s:
        add_run(s, "m")
        add(s, "m", "autoattack", STD, [0.0, E8], {0.0: range(5), E8: range(1)}, 5)
        add(s, "m", "pgd", PGD, [0.0, E8], {0.0: range(10), E8: range(6)}, 10)
    md = report(db, tmp_path)
    (row,) = section(md, "fashion-mnist")
    assert row["n"] == "5" and pct(row["worst case"]) == 20.0 and row.get("PGD", "–") == "–"
    assert pct(row["clean"]) == 100.0
    assert "also evaluated at n = 10" in md


def test_worst_case_over_mismatched_grids_carries_and_shows_missing(
    db: Path, tmp_path: Path
) -> None:
    n = 10
    with Store(db) as s:
        add_run(s, "m")
        # PGD breaks points 0-4 at 4/255, then nothing more: robust 5..9 at 8/255.
        add(
            s,
            "m",
            "pgd",
            PGD,
            [0.0, 4 / 255, E8],
            {0.0: range(10), 4 / 255: range(5, 10), E8: range(5, 10)},
            n,
        )
        # AutoAttack only at 8/255, breaks 8 and 9 but (alone) leaves 0-4 standing.
        add(s, "m", "autoattack", STD, [E8], {E8: range(8)}, n)
    md = report(db, tmp_path)
    (row,) = section(md, "fashion-mnist")
    assert pct(row["worst case"]) == 30.0  # points 5, 6, 7: AND over both, carried
    worst = next(line for line in md.splitlines() if line.startswith("| `m` | 10 |"))
    cells = [c.strip() for c in worst.strip("|").split(" | ")]
    assert [pct(c) for c in cells[2:]] == [100.0, 50.0, 30.0]  # monotone: never 100 / 20 / 60
    curves = md[md.index("## Full curves") :]
    assert "| worst case |" in curves
    info = json.loads((tmp_path / "out" / "json" / "m.json").read_text())
    assert info["worst_case_missing"] == [] and info["curves"]["any"]["4"]["acc"] == 50.0


def test_missing_attack_at_rank_eps_is_marked(db: Path, tmp_path: Path) -> None:
    with Store(db) as s:
        add_run(s, "m")
        add(s, "m", "pgd", PGD, [0.0, 4 / 255], {0.0: range(10), 4 / 255: range(6)}, 10)
        add(s, "m", "autoattack", STD, [4 / 255, E8], {4 / 255: range(5), E8: range(2)}, 10)
    (row,) = section(report(db, tmp_path), "fashion-mnist")
    assert "missing: pgd" in row["worst case"]


def test_retrained_checkpoint_under_reused_run_id_replaces_its_rows(
    db: Path, tmp_path: Path
) -> None:
    with Store(db) as s:
        add_run(s, "quick-pgd-at", fp="sha256:old")
        add(s, "quick-pgd-at", "autoattack", STD, [E8], {E8: range(12)}, 20, fp="sha256:old")
        add(s, "quick-pgd-at", "pgd", PGD, [E8], {E8: range(13)}, 20, fp="sha256:old")
        add_run(s, "quick-pgd-at", fp="sha256:new")  # same path, new weights
        add(s, "quick-pgd-at", "autoattack", STD, [E8], {E8: range(4)}, 20, fp="sha256:new")
        assert {r.fingerprint for r in s.results()} == {"sha256:new"}
        with pytest.raises(UsageError, match="already in .* for other weights"):
            add_run(s, "quick-pgd-at", fp="sha256:other", path="/elsewhere/quick-pgd-at")
    (row,) = section(report(db, tmp_path), "fashion-mnist")
    assert pct(row["AutoAttack (standard)"]) == 20.0 and row.get("PGD", "–") == "–"


def test_intervals_everywhere_and_overlap_marked(db: Path, tmp_path: Path) -> None:
    n = 50
    with Store(db) as s:
        for rid, k in (("a", 30), ("b", 28), ("c", 5)):
            add_run(s, rid, fp=f"sha256:{rid}", defense=rid)
            add(
                s,
                rid,
                "autoattack",
                STD,
                [0.0, E8],
                {0.0: range(45), E8: range(k)},
                n,
                fp=f"sha256:{rid}",
            )
    md = report(db, tmp_path)
    rows = {r["run id"]: r for r in section(md, "fashion-mnist")}
    lo, hi = wilson(30, 50)
    assert rows["`a`"]["worst case"] == f"60.0 ({100 * lo:.1f}–{100 * hi:.1f})"
    assert (
        rows["`a`"]["intervals overlap with rank"] == "2"
        and rows["`c`"]["intervals overlap with rank"] == "none"
    )
    info = json.loads((tmp_path / "out" / "json" / "a.json").read_text())
    assert info["worst_case"]["ci95"] == [round(100 * lo, 2), round(100 * hi, 2)]
    assert info["clean_ci95"][0] < 90.0 < info["clean_ci95"][1]


def test_seeds_grouped_into_one_entry(db: Path, tmp_path: Path) -> None:
    n = 20
    with Store(db) as s:
        for seed, k in ((0, 10), (1, 12), (2, 14)):
            rid = f"pgd-at-s{seed}"
            add_run(s, rid, fp=f"sha256:{seed}", defense="pgd-at", seed=seed)
            add(
                s,
                rid,
                "autoattack",
                STD,
                [0.0, E8],
                {0.0: range(18), E8: range(k)},
                n,
                fp=f"sha256:{seed}",
            )
        add_run(s, "other-lr", fp="sha256:x", defense="pgd-at", lr=0.1)
        add(
            s,
            "other-lr",
            "autoattack",
            STD,
            [0.0, E8],
            {0.0: range(18), E8: range(3)},
            n,
            fp="sha256:x",
        )
    rows = section(report(db, tmp_path), "fashion-mnist")
    assert len(rows) == 2
    group = next(r for r in rows if "pgd-at-s0" in r["run id"])
    assert "pgd-at-s1" in group["run id"] and "pgd-at-s2" in group["run id"]
    assert group["worst case"].startswith("60.0 ± 10.0 [")
    for seed in range(3):  # the JSON keeps each seed's numbers
        info = json.loads((tmp_path / "out" / "json" / f"pgd-at-s{seed}.json").read_text())
        assert info["autoattack_acc"] == f"{(10 + 2 * seed) * 5:.2f}" and info["seed"] == seed


def test_rank_by_and_rank_eps(db: Path, tmp_path: Path) -> None:
    with Store(db) as s:
        for rid, k4, k8 in (("a", 9, 1), ("b", 6, 5)):
            add_run(s, rid, fp=f"sha256:{rid}", defense=rid)
            add(
                s,
                rid,
                "autoattack",
                STD,
                [0.0, 4 / 255, E8],
                {0.0: range(10), 4 / 255: range(k4), E8: range(k8)},
                10,
                fp=f"sha256:{rid}",
            )
    assert [r["run id"] for r in section(report(db, tmp_path), "fashion-mnist")] == ["`b`", "`a`"]
    md = report(db, tmp_path, rank_eps=4 / 255)
    assert [r["run id"] for r in section(md, "fashion-mnist")] == ["`a`", "`b`"]
    assert "at eps = 4/255" in md


def test_deterministic_and_only_own_files_deleted(db: Path, tmp_path: Path) -> None:
    with Store(db) as s:
        add_run(s, "a")
        add(s, "a", "autoattack", STD, [0.0, E8], {0.0: range(8), E8: range(3)}, 10)
        add_run(s, "b", fp="sha256:b", dataset="mnist")
        add(s, "b", "pgd", PGD, [0.0, E8], {0.0: range(8), E8: range(3)}, 10, fp="sha256:b")
    out = tmp_path / "out"
    (out / "json").mkdir(parents=True)
    mine = {
        out / "plot-mine.png": b"user",
        out / "json" / "user.json": b"{}",
        out / "notes.txt": b"x",
    }
    for p, data in mine.items():
        p.write_bytes(data)
    write_report(db, out)
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    write_report(db, tmp_path / "again")
    for p, data in first.items():
        if p.name != MANIFEST and p not in mine:
            assert (tmp_path / "again" / p.relative_to(out)).read_bytes() == data, p
    with sqlite3.connect(db) as con:  # b leaves the store: its files go, the user's stay
        con.execute("DELETE FROM results WHERE run_id='b'")
    write_report(db, out)
    assert not (out / "json" / "b.json").exists() and not (out / "plot-mnist-pgd.png").exists()
    assert all(p.read_bytes() == data for p, data in mine.items())


def test_reading_never_writes(db: Path, tmp_path: Path) -> None:
    with Store(db) as s:
        add_run(s, "a")
        add(s, "a", "autoattack", STD, [E8], {E8: range(3)}, 10)
    before = db.read_bytes()
    write_report(db, tmp_path / "out")
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    "case",
    ["missing", "empty-store", "zero-bytes", "foreign", "directory", "out-is-file", "old-layout"],
)
def test_errors(case: str, db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import main

    out = tmp_path / "out"
    if case == "empty-store":
        Store(db).close()
    elif case == "zero-bytes":
        db.write_bytes(b"")
    elif case == "foreign":
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE customers (id INTEGER)")
    elif case == "directory":
        db.mkdir()
    elif case == "old-layout":
        with Store(db) as s:
            s.db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    elif case == "out-is-file":
        with Store(db) as s:
            add_run(s, "a")
            add(s, "a", "pgd", PGD, [E8], {E8: range(3)}, 10)
        out.write_text("not a folder")
    before = db.read_bytes() if db.is_file() else None
    assert main(["report", "--db", str(db), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error:"), err
    assert (db.read_bytes() if db.is_file() else None) == before  # the store is never written
    assert out.is_file() if case == "out-is-file" else not out.exists()


def test_json_loads_with_robustbench_model_info(db: Path, tmp_path: Path) -> None:
    import dataclasses

    from bench.compat import import_robustbench

    import_robustbench()
    from robustbench.utils import ModelInfo

    with Store(db) as s:
        add_run(s, "a")
        add(s, "a", "autoattack", STD, [0.0, E8], {0.0: range(8), E8: range(3)}, 10)
    write_report(db, tmp_path / "out")
    fields = {f.name for f in dataclasses.fields(ModelInfo)}
    info = json.loads((tmp_path / "out" / "json" / "a.json").read_text())
    needed = {f for f in fields if not f.startswith("corruptions") and f != "footnote"}
    assert needed <= set(info)
    assert ModelInfo(**{k: v for k, v in info.items() if k in fields}).autoattack_acc == "30.00"


def test_seeds_saved_before_and_after_augment_requested_are_one_entry(db: Path, tmp_path: Path):
    # config.json's "augment" held the request before it held what was applied (false for the
    # MNISTs); two seeds of one configuration saved either way are still one entry
    old = {"augment": True, "augment_mode": "none"}
    new = {"augment": False, "augment_mode": "none", "augment_requested": True}
    with Store(db) as s:
        for seed, cfg in ((0, old), (1, new)):
            rid = f"std-s{seed}"
            add_run(s, rid, fp=f"sha256:{seed}", seed=seed, **cfg)
            add(
                s,
                rid,
                "autoattack",
                STD,
                [0.0, E8],
                {0.0: range(18), E8: range(9)},
                20,
                fp=f"sha256:{seed}",
            )
    rows = section(report(db, tmp_path), "fashion-mnist")
    assert len(rows) == 1 and "std-s1" in rows[0]["run id"]
