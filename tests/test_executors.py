"""The one evaluation pipeline on its two executors: in this process (bench.evaluation.local)
and on Ray (bench.evaluation.ray_executor, ``bench eval --workers``) give the same result rows,
flags and findings, bit for bit on the CPU, with a real local Ray instance.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import planted
import pytest
import ray
import torch
from conftest import tiny_target, write_small_fmnist
from torch import nn

from bench.attacks import Attack, make_attack
from bench.cluster import RayOptions
from bench.evaluation.local import evaluate_target
from bench.evaluation.plan import Settings
from bench.evaluation.ray_executor import evaluate_on_ray
from bench.evaluation.results import status
from bench.evaluation.targets import Target
from bench.store import Store

GRID = [0.0, 0.005, 0.01, 0.02]
VOLATILE = ("seconds", "created", "device", "versions")  # when, how fast, where: not results


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """One intra-op thread here, as in each Ray task (--cpus-per-task 1): same float sums."""


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance for this module's API calls (evaluate_on_ray uses it as it is)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=3,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    # Workers can't import tests/*.py: the planted models and this module's attacks go by value.
    ray.cloudpickle.register_pickle_by_value(planted)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield
    finally:
        ray.shutdown()


def _target(model: nn.Module, run_id: str) -> Target:
    return tiny_target(model, *planted.test_points(), run_id)


def _stored(db: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Result rows and findings of a store, without the volatile fields, sorted."""
    with Store(db, readonly=True) as store:
        rows = [{k: v for k, v in vars(r).items() if k not in VOLATILE} for r in store.results()]
        found = [{k: v for k, v in vars(d).items() if k != "created"} for d in store.diagnostics()]
    key = lambda d: json.dumps(d, sort_keys=True, default=str)  # noqa: E731
    return sorted(rows, key=key), sorted(found, key=key)


def test_both_executors_give_the_same_rows_flags_and_findings(
    tmp_path: Path, local_ray: None
) -> None:
    """An honest model and a planted one that a walk's inference would overstate (corrected),
    with the costly checks: in process, and on Ray (3 workers, 5 shards of 7 batches); run
    again on Ray, nothing is computed and the same evaluation comes back from the store."""
    base = planted.honest(0)
    trap = planted.LargeBudgetTrap(base, *planted.test_points(), limit=0.015).eval()
    targets = [_target(base, "honest"), _target(trap, "trap")]
    attacks = [make_attack("fgsm"), make_attack("pgd", {"steps": "5"})]
    s = Settings(
        attacks,
        GRID,
        batch_size=16,
        seed=3,
        progress=False,
        diagnose=True,
        transfer_from=planted.honest(1),
    )
    with Store(tmp_path / "local.sqlite") as store:
        local = [evaluate_target(t, replace(s), "cpu", store) for t in targets]
    with Store(tmp_path / "ray.sqlite") as store:
        remote, failed = evaluate_on_ray(
            [_target(base, "honest"), _target(trap, "trap")],
            replace(s),
            store,
            RayOptions(progress=False),
            workers=3,
            device="cpu",
            shards=5,
        )
    assert failed == []
    assert [e.as_dict() for e in remote] == [e.as_dict() for e in local]
    rows, found = _stored(tmp_path / "local.sqlite")
    assert (rows, found) == _stored(tmp_path / "ray.sqlite")
    assert len(rows) == 2 * len(attacks) * len(GRID)
    checks = {(d["run_id"], d["check"]): status(d["flagged"], d["details"]) for d in found}
    assert checks[("trap", "walk-inference")] == "corrected"  # the remedy broke them itself
    assert checks[("honest", "walk-inference")] == "passed"
    assert {"large-budget", "loss-trace", "transfer", "gradients", "black-box-probe"} <= {
        c for _, c in checks
    }
    assert [len(r.flags) for r in remote[1].results] == [len(GRID)] * 2
    with Store(tmp_path / "ray.sqlite") as store:
        again, _ = evaluate_on_ray(
            targets, replace(s), store, RayOptions(progress=False), workers=3, device="cpu"
        )
    assert [e.ran for e in remote] == [["cheap", "walk", "inference", "probes", "costly"]] * 2
    assert [e.ran for e in again] == [["costly"]] * 2  # the --diagnose checks always run again
    assert [e.as_dict() for e in again] == [e.as_dict() for e in local]
    assert _stored(tmp_path / "ray.sqlite") == (rows, found)


def _too_far(
    m: nn.Module, x: torch.Tensor, y: torch.Tensor, kw: dict[str, Any], seed: int, idx: torch.Tensor
) -> torch.Tensor:
    return (x + 2 * kw["eps"]).clamp(0, 1)


def test_a_failed_shard_is_reported_with_its_error(tmp_path: Path, local_ray: None) -> None:
    """An attack that leaves the eps-ball fails its shard's task on a worker: the evaluation is
    reported failed with the worker's error, and no row of it is stored."""
    bad = Attack("too-far", "bounded", {}, lambda eps: {"eps": eps}, _too_far)
    s = Settings([make_attack("fgsm"), bad], GRID, batch_size=16, seed=0, progress=False)
    with Store(tmp_path / "r.sqlite") as store:
        done, failed = evaluate_on_ray(
            [_target(planted.honest(0), "m")],
            s,
            store,
            RayOptions(progress=False),
            workers=2,
            device="cpu",
        )
        assert store.results() == []
    assert done == [] and len(failed) == 1
    run_id, error = failed[0]
    assert run_id == "m" and error.startswith("BudgetViolation: attack too-far left the budget")


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``bench ...`` with one torch thread, as each Ray task of --cpus-per-task 1 has: the flags
    agree whatever the threads, the checks' float details only with the same thread count."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_bench_eval_workers_gives_the_in_process_rows(tmp_path: Path) -> None:
    """``bench eval --workers 2`` on 300 points (6 batches, 2 shards) stores the rows that the
    in-process run stores, and prints the same table."""
    data = write_small_fmnist(tmp_path / "data", n_test=300)
    common = ["--data-dir", str(data), "--no-download"]
    done = _bench(
        "train",
        "--defense",
        "standard",
        "--epochs",
        "3",
        "--train-limit",
        "256",
        "--eval-n",
        "10",
        "--out",
        str(tmp_path / "ck"),
        "--run-id",
        "m",
        "--no-progress",
        *common,
    )
    assert done.returncode == 0, done.stderr
    ev = [
        "eval",
        "--checkpoint",
        str(tmp_path / "ck" / "m"),
        "--attack",
        "fgsm,pgd",
        "--set",
        "pgd.steps=3",
        "--eps",
        "0,1/255,2/255,8/255",
        "--n",
        "300",
        "--batch-size",
        "50",
        "--no-progress",
        *common,
    ]
    alone = _bench(*ev, "--db", str(tmp_path / "a.sqlite"))
    spread = _bench(*ev, "--db", str(tmp_path / "b.sqlite"), "--workers", "2")
    assert alone.returncode == 0 and spread.returncode == 0, alone.stderr + spread.stderr
    rows, found = _stored(tmp_path / "a.sqlite")
    assert (rows, found) == _stored(tmp_path / "b.sqlite")
    assert len(rows) == 8 and any(0 < r["robust_acc"] < r["clean_acc"] for r in rows)
    strip = lambda out: [ln for ln in out.splitlines() if "weights" not in ln]  # noqa: E731 - the header names the device
    assert strip(spread.stdout) == strip(alone.stdout)
    nobody = _bench(*ev, "--db", str(tmp_path / "c.sqlite"), "--address", "127.0.0.1:9")
    assert nobody.returncode == 2 and nobody.stderr.strip().splitlines() == [
        "bench: error: no Ray cluster answers at 127.0.0.1:9: Connection refused"
    ]
