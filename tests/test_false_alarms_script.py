"""scripts/false_alarms.py, its pure parts: a real store (made with bench's Store API) read into
per-evaluation flags, eps and statuses; the verdict rule; one evaluation's record with a canned
reference; the summary and the markdown table. No quick run, no attack: about a second."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import load_script

from bench.evaluation.results import Estimate
from bench.store import DiagnosticRow, ResultRow, RunRow, Store, eps_key

GRID = (0.0, 2 / 255, 0.1)  # eps of the rows (pixel scale)
N = 10  # points per evaluation


def _script() -> ModuleType:
    return load_script("false_alarms")


@pytest.fixture(scope="module")
def fa() -> ModuleType:
    return _script()


def _row(run_id: str, attack: str, params: dict[str, Any], eps: float, flags: str) -> ResultRow:
    return ResultRow(
        run_id=run_id,
        attack=attack,
        params=params,
        eps=eps,
        n=len(flags),
        clean_acc=0.8,
        robust_acc=flags.count("1") / len(flags),
        seconds=0.1,
        device="cpu",
        versions={},
        flags=flags,
        seed=0,
        batch_size=500,
        grid=list(GRID),
        fingerprint=f"fp-{run_id}",
    )


def _finding(
    run_id: str, check: str, flagged: bool, details: dict[str, Any], key: str = ""
) -> DiagnosticRow:
    return DiagnosticRow(run_id, f"fp-{run_id}", N, check, key, flagged, "test", "", details, "")


def _model(store: Store, run_id: str, defense: str, flags: dict[float, str]) -> None:
    """A quick-like evaluation: PGD over the grid, standard AutoAttack at 0.1."""
    config = {"dataset": "fashion-mnist", "model": "cnn", "defense": defense, "seed": 0}
    run = RunRow(run_id, f"/ckpt/{run_id}", "fashion-mnist", "cnn", defense, {}, 1, 500, 1.0)
    run.config, run.fingerprint = config, f"fp-{run_id}"
    store.claim_run(run, "now")
    for eps in GRID:
        store.write_result(_row(run_id, "pgd", {"steps": 10}, eps, flags[eps]))
    aa = {"version": "standard", "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]}
    store.write_result(_row(run_id, "autoattack", aa, 0.1, flags[0.1]))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Two evaluations: ``quick-fgsm-at`` flagged (a comparison at 2/255, large budget at eps 1,
    an AutoAttack warning at 0.1), ``quick-standard`` with an unflagged corrected finding."""
    path = tmp_path / "results.sqlite"
    with Store(path) as store:
        at = {0.0: "1111111100", 2 / 255: "1111110000", 0.1: "1111100000"}
        _model(store, "quick-fgsm-at", "fgsm-at", at)
        std = {0.0: "1111111110", 2 / 255: "1110000000", 0.1: "0000000000"}
        _model(store, "quick-standard", "standard", std)
        store.write_diagnostics(
            [
                _finding(
                    "quick-fgsm-at",
                    "iterative-vs-single-step",
                    True,
                    {"eps": 2 / 255, "status": "flagged"},
                    "fgsm~pgd",
                ),
                _finding("quick-fgsm-at", "large-budget", True, {"eps": 1.0}),
                _finding("quick-fgsm-at", "autoattack-checks", True, {"eps": 0.1}, "abc"),
                _finding("quick-fgsm-at", "gradients", False, {"status": "passed"}),
                _finding("quick-standard", "loss-trace", False, {"corrections": {"0.1": [3]}}),
            ]
        )
    return path


def test_store_read_into_flags(fa: ModuleType, store_path: Path) -> None:
    evs = {e.run_id: e for e in fa.read_store(store_path)}
    at, std = evs["quick-fgsm-at"], evs["quick-standard"]
    assert at.unreliable and not std.unreliable
    assert at.flagged_checks == ["autoattack-checks", "iterative-vs-single-step", "large-budget"]
    assert at.statuses == {
        "autoattack-checks": ["flagged"],
        "gradients": ["passed"],
        "iterative-vs-single-step": ["flagged"],
        "large-budget": ["flagged"],
    }
    assert std.statuses == {"loss-trace": ["corrected"]} and std.flagged_checks == []
    # The comparison's eps is in the grid; eps 1 (large budget) is not: the grid's largest.
    assert at.reference_eps() == pytest.approx([2 / 255, 0.1])
    assert std.reference_eps() == pytest.approx([0.1])  # nothing flags: the largest
    assert at.worst[eps_key(0.1)] == "1" * 5 + "0" * 5 and at.path == "/ckpt/quick-fgsm-at"
    assert (at.ranked, std.ranked) == (False, True)  # unreliable: listed, not ranked
    assert at.rank_reason.startswith("unreliable")


def test_verdict_rule(fa: ModuleType) -> None:
    reported = Estimate(20, 40)
    lo = reported.interval[0]  # about 0.352
    assert fa.is_true_alarm(reported, Estimate(13, 40))  # 0.325 < lo: the reference broke more
    assert not fa.is_true_alarm(reported, Estimate(15, 40))  # 0.375: inside the interval
    assert not fa.is_true_alarm(reported, Estimate(20, 40))
    assert 13 / 40 < lo < 15 / 40


def test_record_with_a_canned_reference(
    fa: ModuleType, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evs = {e.run_id: e for e in fa.read_store(store_path)}
    calls: list[tuple[str, int]] = []

    def canned(ev: Any, n: int, *_: Any) -> tuple[dict[int, str], dict[str, Any], float]:
        calls.append((ev.run_id, n))
        worst = {eps_key(2 / 255): "1" * 6, eps_key(0.1): "0" * 6}  # breaks all 5 robust at 0.1
        return worst, {}, 1.5

    monkeypatch.setattr(fa, "run_reference", canned)
    args = argparse.Namespace(reference_all=False, reference_n=6, data_dir=None, device=None)
    rec, seconds = fa.evaluation_record(evs["quick-fgsm-at"], args, 0)
    assert calls == [("quick-fgsm-at", 6)] and seconds == 1.5
    assert rec["verdict"] == "true alarm"
    at = {r["eps_text"]: r for r in rec["reference"]["at"]}
    assert at["0.1"]["reported"]["k"] == 5 and at["0.1"]["reported"]["n"] == 6  # first 6 points
    assert at["0.1"]["true_alarm"] and not at["2/255"]["true_alarm"]
    rec, seconds = fa.evaluation_record(evs["quick-standard"], args, 0)  # not flagged: no reference
    assert rec["reference"] is None and rec["verdict"] is None and seconds == 0.0


def _rec(verdict: str | None, checks: list[str], ranked: bool = True) -> dict[str, Any]:
    unreliable = verdict in ("true alarm", "false alarm")
    return {
        "verdict": verdict,
        "flagged_checks": checks,
        "statuses": {c: ["flagged"] for c in checks},
        "unreliable": unreliable,
        "ranked": ranked and not unreliable,
    }


def test_summary_and_table(fa: ModuleType) -> None:
    seed0 = [_rec("false alarm", ["loss-trace"]), _rec("true alarm", ["gradients", "loss-trace"])]
    seed1 = [_rec(None, []), _rec(None, [])]
    s0, s1 = fa.summarise(seed0), fa.summarise(seed1)
    assert s0["flags_per_check"] == {"gradients": 1, "loss-trace": 2}
    assert (s0["confirmed"], s0["false_alarms"], s0["all_ranked"]) == (1, 1, False)
    assert s0["false_alarm_rate"]["rate"] == 100.0  # 1 of the 1 evaluation not confirmed
    totals = fa.summarise(seed0 + seed1)
    assert totals["false_alarm_rate"]["honest"] == 3 and totals["false_alarm_rate"]["rate"] == 33.33
    assert totals["statuses"] == {"flagged": 3}
    seeds = [{"seed": 0, "summary": s0}, {"seed": 1, "summary": s1}]
    lines = fa.table(seeds, totals).splitlines()
    assert len(lines) == 5 and lines[0].startswith("| seed | evaluations")
    assert lines[2] == (
        "| 0 | 2 | 2 | gradients 1, loss-trace 2 | 1 | 1 | 100.0% [20.6, 100.0] | no |"
    )
    assert lines[3] == "| 1 | 2 | 0 | - | 0 | 0 | 0.0% [0.0, 65.8] | yes |"
    assert lines[4].startswith("| all | 4 | 2 |") and "33.3% [" in lines[4]
