"""The grid walks (up, down, bisect): what each attacks, what its flags mean, resume and the store.

down and bisect start with a single run at the largest eps (bit for bit); broken is carried up
as proof, robust is carried down as inference; every eps is one step, so resume and shards are
deterministic; the store records the walk (layout 3) and still reads layout 2."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_problem, tiny_target
from legacy import legacy_store
from torch import nn

from bench.attacks import Attack, make_attack
from bench.errors import UsageError
from bench.evaluation.local import evaluate_target
from bench.evaluation.plan import Settings
from bench.evaluation.walk import DEFAULT_WALK, WALKS, grid_walk, max_tests, predict, walk_order
from bench.report import export
from bench.store import SCHEMA_VERSION, Store

GRID = [i / 255 for i in range(9)]


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Every test here runs with one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return tiny_problem(flip=(1, 7, 13, 22))


def _spy(calls: list[tuple[float, list[int]]]) -> Attack:
    """An attack that records (eps, points) of each call and returns x unchanged: it never
    breaks."""

    def perturb(
        m: nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor,
        kw: dict[str, Any],
        seed: int,
        idx: torch.Tensor,
    ) -> torch.Tensor:
        calls.append((kw["eps"], idx.tolist()))
        return xb

    return Attack("spy", "bounded", {}, lambda eps: {"eps": eps}, perturb)


def _target(model: nn.Module, x: torch.Tensor, y: torch.Tensor, run_id: str = "m") -> Any:
    return tiny_target(model, x, y, run_id)


def _breaking_index(
    walk: str, single: list[torch.Tensor], clean: torch.Tensor, a0: int
) -> list[int]:
    """A plain re-statement of each walk, per point, on single-run outcomes ``single[j]``."""
    m, out = len(single), []
    for i, ok in enumerate(clean.tolist()):
        lo, hi = (a0, m) if ok else (0, 0)
        while lo < hi:
            t = (
                lo
                if walk == "up"
                else hi - 1
                if walk == "down"
                else m - 1
                if hi == m
                else (lo + hi) // 2
            )
            lo, hi = (t + 1, hi) if bool(single[t][i]) else (lo, t)
        out.append(lo)
    return out


# ------------------------------------------------------------------------- the orders


def test_orders_visit_each_attacked_eps_once() -> None:
    assert walk_order("up", GRID) == list(range(1, 9))
    assert walk_order("down", GRID) == list(range(8, 0, -1))
    assert walk_order("bisect", GRID) == [8, 4, 2, 6, 1, 3, 5, 7]  # largest first, then the tree
    assert walk_order("bisect", [1 / 255, 2 / 255]) == [1, 0]  # no eps 0: index 0 is attacked
    assert walk_order("bisect", [0.0]) == []
    assert (max_tests("up", GRID), max_tests("down", GRID), max_tests("bisect", GRID)) == (8, 8, 4)
    with pytest.raises(UsageError, match="--walk must be one of up, down, bisect"):
        walk_order("sideways", GRID)
    assert DEFAULT_WALK == "bisect" and Settings([], GRID).walk == "bisect"


# ---------------------------------------------------------------------- what is attacked


@pytest.mark.parametrize("walk", WALKS)
def test_nothing_breaks_shows_the_cost_of_each_walk(
    walk: str, problem: tuple[nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    """An attack that never breaks anything: up attacks every clean point at every eps; down
    and bisect once, at the largest eps, and count them robust below it (inferred)."""
    model, x, y = problem
    calls: list[tuple[float, list[int]]] = []
    r = grid_walk(model, _spy(calls), x, y, GRID, batch_size=16, seed=0, walk=walk)
    clean = predict(model, x) == y
    n_clean = int(clean.sum())
    per_eps = {e: sum(len(i) for ee, i in calls if ee == e) for e in GRID[1:]}
    if walk == "up":
        assert all(v == n_clean for v in per_eps.values())
    else:
        assert per_eps[GRID[-1]] == n_clean and sum(per_eps.values()) == n_clean
    assert r.attacked == [0] + [per_eps[e] for e in GRID[1:]] and r.walk == walk
    assert all(torch.equal(f, clean) for f in r.flags)
    eps_batches = [(e, i[0] // 16) for e, i in calls]
    assert len(eps_batches) == len(set(eps_batches))  # each (eps, batch) attacked at most once


@pytest.mark.parametrize("walk", ["down", "bisect"])
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("pgd", {"steps": "3"}),
        ("fgsm", {}),
        ("autoattack", {"version": "custom", "attacks": "apgd-ce"}),
    ],
)
def test_largest_eps_is_exactly_a_single_run(
    walk: str,
    name: str,
    params: dict[str, str],
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = problem
    attack = make_attack(name, params)
    grid = grid_walk(model, attack, x, y, GRID, batch_size=16, seed=3, walk=walk)
    single = grid_walk(model, attack, x, y, [GRID[-1]], batch_size=16, seed=3, walk="up")
    assert torch.equal(grid.flags[-1], single.flags[0])
    assert 0 < int(single.flags[0].sum()) < int(grid.flags[0].sum())  # a meaningful eps
    for a, b in zip(grid.flags, grid.flags[1:]):  # monotone: broken at a smaller eps, broken above
        assert not bool((b & ~a).any())


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize(
    ("name", "params"), [("fgsm", {}), ("pgd", {"steps": "4", "random_start": "false"})]
)
def test_each_walk_follows_its_rule_on_single_run_outcomes(
    walk: str,
    name: str,
    params: dict[str, str],
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """For a deterministic attack, the walk's flags are its rule applied per point to the
    outcomes of single runs at each eps (attacking a subset of a batch changes nothing)."""
    model, x, y = problem
    attack = make_attack(name, params)
    clean = predict(model, x) == y
    single = [clean] + [
        grid_walk(model, attack, x, y, [e], batch_size=64, seed=0).flags[0] for e in GRID[1:]
    ]
    b = _breaking_index(walk, single, clean, a0=1)
    r = grid_walk(model, attack, x, y, GRID, batch_size=64, seed=0, walk=walk)
    for j in range(len(GRID)):
        assert r.flags[j].tolist() == [j < bi for bi in b], f"eps {j}/255"
    assert len(set(b)) > 2  # points break at several eps


def test_inference_and_proof(problem: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    """bisect: a point broken at some eps is broken at every larger one even where a direct run
    there fails (proof); a point robust at 8/255 counts robust at 4/255 without an attack there."""
    model, x, y = problem
    pgd = make_attack("pgd", {"steps": "3"})
    r = grid_walk(model, pgd, x, y, GRID, batch_size=16, seed=0)
    top = grid_walk(model, pgd, x, y, [GRID[-1]], batch_size=16, seed=0).flags[0]
    assert torch.equal(r.flags[-1], top)
    robust_top = int(top.sum())
    assert (
        r.attacked[8] == int(r.flags[0].sum())
        and r.attacked[4] == int(r.flags[0].sum()) - robust_top
    )


# ------------------------------------------------------------------- resume and the store


class _Interrupt(Exception):
    pass


def _dying(attack: Attack, calls: dict[str, int], at: int) -> Attack:
    real = attack.perturb

    def perturb(*a: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == at:
            raise _Interrupt
        return real(*a)

    return replace(attack, perturb=perturb)


@pytest.mark.parametrize(("walk", "at"), [("bisect", 4), ("bisect", 7), ("down", 6)])
def test_resume_mid_walk_gives_the_same_flags(
    walk: str, at: int, problem: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    model, x, y = problem
    pgd = make_attack("pgd", {"steps": "3"})
    s = Settings([pgd], GRID, 8, 0, progress=False, walk=walk)
    whole = evaluate_target(_target(model, x, y), s)
    calls = {"n": 0}
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(_Interrupt):
            evaluate_target(
                _target(model, x, y), replace(s, attacks=[_dying(pgd, calls, at)]), store=store
            )
        kept = store.count()
        calls["n"] = -(10**9)
        resumed = evaluate_target(
            _target(model, x, y), replace(s, attacks=[_dying(pgd, calls, at)]), store=store
        )
        rows = store.results()
        assert store.db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 0
    assert [f.tolist() for f in resumed.results[0].flags] == [
        f.tolist() for f in whole.results[0].flags
    ]
    assert resumed.results[0].reused == max(kept - 1, 0)
    assert len(rows) == len(GRID) and {r.walk for r in rows} == {walk}
    by_eps = {round(r.eps * 255): r.flags for r in sorted(rows, key=lambda r: r.eps)}
    assert [by_eps[j] for j in range(9)] == [
        "".join("1" if v else "0" for v in f.tolist()) for f in whole.results[0].flags
    ]


def _recording(attack: Attack, seen: list[tuple[float, int]]) -> Attack:
    """``attack``, recording (eps, first point) of each call."""
    real = attack.perturb

    def perturb(
        m: nn.Module,
        xb: torch.Tensor,
        yb: torch.Tensor,
        kw: dict[str, Any],
        seed: int,
        idx: torch.Tensor,
    ) -> torch.Tensor:
        seen.append((kw["eps"], int(idx[0])))
        return real(m, xb, yb, kw, seed, idx)

    return replace(attack, perturb=perturb)


def test_steps_of_another_walk_are_never_reused(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """Finished rows and kept batches of a bisect walk are not taken by an up walk (nor back):
    the up walk makes exactly the attack calls it makes on an empty store."""
    model, x, y = problem
    calls: dict[str, int] = {"n": 0}
    pgd = make_attack("pgd", {"steps": "3"})
    s = Settings([pgd], GRID, 8, 0, progress=False, walk="bisect")
    alone: list[tuple[float, int]] = []
    up_alone = evaluate_target(
        _target(model, x, y), replace(s, attacks=[_recording(pgd, alone)], walk="up")
    )
    with Store(tmp_path / "r.sqlite") as store:
        with pytest.raises(_Interrupt):  # the top eps finished, two batches of 4/255 kept
            evaluate_target(
                _target(model, x, y), replace(s, attacks=[_dying(pgd, calls, 8)]), store=store
            )
        assert store.db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 2
        seen: list[tuple[float, int]] = []
        up = evaluate_target(
            _target(model, x, y),
            replace(s, attacks=[_recording(pgd, seen)], walk="up"),
            store=store,
        )
        assert up.results[0].reused == 0 and seen == alone
        assert {r.walk for r in store.results()} == {"up"}
        again = evaluate_target(_target(model, x, y), s, store=store)
        assert again.results[0].reused == 0 and {r.walk for r in store.results()} == {"bisect"}
    assert [f.tolist() for f in up.results[0].flags] == [
        f.tolist() for f in up_alone.results[0].flags
    ]


def _v2_store(path: Path) -> None:
    """A layout-2 store: the tables without the walk column (or the norm), version 2, one row."""
    legacy_store(path, 2)


def test_a_v2_store_is_read_as_is_and_migrated_by_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "v2.sqlite"
    _v2_store(db)
    before = db.read_bytes()
    reader = Store(db, readonly=True)
    try:
        (row,) = reader.results()
        assert row.walk == "up" and row.flags == "110" and reader.version == "2"
    finally:
        reader.close()
    assert db.read_bytes() == before  # reading never writes
    with Store(db) as writer:
        assert writer.version == str(SCHEMA_VERSION) == "4"
        (row,) = writer.results()
        assert row.walk == "up"
        columns = [r[1] for r in writer.db.execute("PRAGMA table_info(results)")]
        assert "walk" in columns
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "4"


def test_a_v1_store_is_still_refused(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite"
    _v2_store(db)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    for readonly in (True, False):
        with pytest.raises(UsageError, match="layout version 1"):
            Store(db, readonly=readonly)


def test_the_command_line_records_the_walk(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """Rows carry the walk; the CSV/JSON export has it; the evaluation's dict says it."""
    model, x, y = problem
    with Store(tmp_path / "r.sqlite") as store:
        ev = evaluate_target(
            _target(model, x[:16], y[:16]),
            Settings([make_attack("fgsm")], GRID, 8, 0, progress=False),
            store=store,
        )
        assert {r.walk for r in store.results()} == {"bisect"} and ev.as_dict()["walk"] == "bisect"
        assert "bisect" in export.csv_text(store) and '"walk": "bisect"' in export.json_text(store)
    with pytest.raises(UsageError, match="--walk"):
        evaluate_target(_target(model, x, y), Settings([make_attack("fgsm")], GRID, walk="around"))


# --------------------------------------------------------- a model that defeats the inference


def test_a_model_robust_only_to_large_budgets_is_flagged_by_the_bisect_walk(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """planted.LargeBudgetTrap answers every input farther than 6/255 from a test point with that
    point's label: PGD at 8/255 (random start) never breaks it, PGD at 4/255 does. The bisect
    walk counts those points robust at 4/255 by inference; the walk-inference check attacks them
    there directly and its remedy at every inferred eps: the worst case is corrected (every
    inferred point was checked, so no flag), and the up walk (every eps measured) shows the
    same drop."""
    import planted as P

    base, x, y = problem
    trap = P.LargeBudgetTrap(base, x, y, limit=6 / 255).eval()
    s = Settings([make_attack("pgd")], GRID, 16, 0, progress=False)
    bisect = evaluate_target(_target(trap, x, y), s)
    up = evaluate_target(_target(trap, x, y), replace(s, walk="up"))
    found = {f.check: f for f in bisect.findings}
    assert found["walk-inference"].status == "corrected" and not bisect.unreliable
    assert found["walk-inference"].details["inferred_eps"] == GRID[4]
    fixed, measured = bisect.worst[4], up.worst[4]
    assert fixed.overstated > 0 and fixed.corrected_by == ["walk-inference"]
    assert abs(fixed.estimate.k - measured.estimate.k) <= 1, (fixed.estimate, measured.estimate)
    assert "walk-inference" not in {f.check for f in up.findings}  # nothing inferred
    bi, upr = bisect.results[0], up.results[0]
    assert torch.equal(bi.flags[-1], bi.flags[0])  # bisect: robust at 8/255, so at every eps
    assert int(upr.flags[4].sum()) < int(bi.flags[4].sum())  # measured at 4/255: broken


def test_an_up_walk_replaces_a_flagged_bisect_walk_and_its_finding(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor], tmp_path: Path
) -> None:
    """The advice of a flagged walk-inference check is to walk up: once the up walk's rows
    replace the bisect walk's, the finding about the bisect walk's inferred numbers goes too
    (else the model would stay marked, or corrected, for numbers no longer in the store)."""
    import planted as P

    from bench.params import format_eps

    base, x, y = problem
    trap = P.LargeBudgetTrap(base, x, y, limit=6 / 255).eval()
    s = Settings([make_attack("pgd")], GRID, 16, 0, progress=False)
    with Store(tmp_path / "r.sqlite") as store:
        evaluate_target(_target(trap, x, y), s, store=store)
        kept = [d for d in store.diagnostics() if d.check == "walk-inference"]
        assert len(kept) == 1 and kept[0].key == "pgd@4/255<8/255"
        assert kept[0].details["corrections"]  # the remedy broke inferred points
        assert kept[0].details["evaluation"] == {
            "grid": [format_eps(e) for e in GRID],
            "walk": "bisect",
            "seed": 0,
            "batch_size": 16,
        }
        evaluate_target(_target(trap, x, y), replace(s, walk="up"), store=store)
        assert not [d for d in store.diagnostics() if d.check == "walk-inference"]
        assert {r.walk for r in store.results()} == {"up"}


def test_findings_replace_the_rows_an_older_bench_kept_under_other_keys(tmp_path: Path) -> None:
    """Before per-evaluation keys, a model kept one walk-inference row (key "") and AutoAttack's
    warnings under their list positions ("000", ...): a finding of the same check written now
    replaces them (for that model and n only), rather than standing next to them."""
    from bench.store import DiagnosticRow

    def row(check: str, key: str, run_id: str = "m") -> DiagnosticRow:
        return DiagnosticRow(run_id, "fp", 32, check, key, True, "src", "old", {}, "", "t")

    with Store(tmp_path / "r.sqlite") as store:
        store.write_diagnostics(
            [
                row("walk-inference", ""),
                row("autoattack-checks", "000"),
                row("autoattack-checks", "001"),
                row("walk-inference", "", "other"),
            ]
        )
        store.write_diagnostics(
            [row("walk-inference", "pgd@4/255<8/255"), row("autoattack-checks", "0a1b2c3d4e5f")]
        )
        kept = sorted((d.run_id, d.check, d.key) for d in store.diagnostics())
    assert kept == [
        ("m", "autoattack-checks", "0a1b2c3d4e5f"),
        ("m", "walk-inference", "pgd@4/255<8/255"),
        ("other", "walk-inference", ""),
    ]


def test_an_honest_model_passes_the_walk_inference_check(
    problem: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """On 0..4/255 (robust points at 4/255 exist): checked at 2/255, nothing refuted."""
    model, x, y = problem
    ev = evaluate_target(
        _target(model, x, y), Settings([make_attack("pgd")], GRID[:5], 16, 0, progress=False)
    )
    f = {f.check: f for f in ev.findings}["walk-inference"]
    assert f.details["checked"] > 0 and f.details["inferred_eps"] == GRID[2] and not f.flagged
