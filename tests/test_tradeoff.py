"""The trade-off plot (:mod:`bench.report.tradeoff`): its Pareto front, one point per entry with
seeds as one point and the hull of their intervals as its bar, one figure per data set."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report import E8, PGD, STD, add, add_run

from bench.evaluation.results import wilson
from bench.report import model as report_model
from bench.report import tradeoff
from bench.store import Store


def _pts(pairs: list[tuple[float, float]]) -> list[tradeoff.Point]:
    return [tradeoff.Point(f"p{i}", c, r, (c, c), (r, r), True) for i, (c, r) in enumerate(pairs)]


@pytest.mark.parametrize(
    "pairs, front",
    [
        ([], []),
        ([(50, 30)], [(50, 30)]),
        ([(50, 30), (80, 42)], [(80, 42)]),  # one beats the other on both axes
        ([(90, 10), (80, 40), (60, 60), (70, 30), (60, 50)], [(60, 60), (80, 40), (90, 10)]),
        ([(70, 30), (70, 20), (60, 30)], [(70, 30)]),  # equal on one axis, better on the other
        (
            [(70, 30), (70, 30), (50, 50)],
            [(50, 50), (70, 30), (70, 30)],
        ),  # equal points: neither dominates
        ([(10, 90), (90, 10), (50, 50), (40, 40)], [(10, 90), (50, 50), (90, 10)]),
    ],
)
def test_pareto_front(pairs: list[tuple[float, float]], front: list[tuple[float, float]]) -> None:
    got = tradeoff.pareto(_pts(pairs))
    assert [(p.clean, p.robust) for p in got] == front
    for p in _pts(pairs):  # every point off the front is dominated by one on it
        if (p.clean, p.robust) not in front:
            assert any(q.clean >= p.clean and q.robust >= p.robust for q in got)


def test_seeds_are_one_point_with_the_hull_of_their_intervals(tmp_path: Path) -> None:
    db, n = tmp_path / "r.sqlite", 20
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
        add_run(s, "std", fp="sha256:std")
        add(s, "std", "pgd", PGD, [0.0, E8], {0.0: range(19), E8: range(2)}, n, fp="sha256:std")
        add_run(s, "m", fp="sha256:m", dataset="mnist")
        add(s, "m", "autoattack", STD, [0.0, E8], {0.0: range(20), E8: range(15)}, n, fp="sha256:m")
    with Store(db, readonly=True) as s:
        sets = report_model.load(s)
    key, models = sets["fashion-mnist"]
    pts, missing = tradeoff.points(models, key, "worst-case")
    assert missing == [] and len(pts) == 2
    seeds = next(p for p in pts if p.label.startswith("pgd-at"))
    assert (
        seeds.ranked and seeds.clean == pytest.approx(90.0) and seeds.robust == pytest.approx(60.0)
    )
    assert seeds.robust_span == pytest.approx((100 * wilson(10, n)[0], 100 * wilson(14, n)[1]))
    std = next(p for p in pts if p.label == "standard")
    assert not std.ranked and std.robust == pytest.approx(10.0)  # no standard AutoAttack: hollow
    files = tradeoff.plots(sets, "worst-case")
    assert sorted(files) == ["tradeoff-fashion-mnist.png", "tradeoff-mnist.png"]  # one per data set
    assert all(f.startswith(b"\x89PNG\r\n\x1a\n") for f in files.values())
