"""``bench sweep`` on one real local Ray instance for the whole test session (no mocks):
``num_cpus=2``, no dashboard, one torch thread a task, a custom resource ``fake_gpu`` standing in
for a GPU, shut down at the end. A tiny sweep of two training jobs (the cnn on the small
Fashion-MNIST-format fixture data) and their sharded evaluations is run once; the tests check
its store, the resume by job hash, the sharded flags against an unsharded ``bench eval``, a
failing job, GPU placement, bad files, the dry run, that train/eval/report never load Ray, and
a driver killed mid-sweep.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import ray
from conftest import write_small_fmnist

from bench import checkpoint
from bench.cli import main
from bench.cluster import RayOptions, check_reachable, task_options
from bench.errors import UsageError
from bench.evaluation.local import evaluate_checkpoint
from bench.store import Store
from bench.sweep.driver import Outcome, run_sweep
from bench.sweep.spec import load_sweep
from bench.sweep.work import saved_identity

ROOT = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-m", "bench"]  # the bench command
FAKE_GPU = "fake_gpu"
N, BATCH, GRID = 90, 16, 4  # 6 fixed batches (the last one of 10 points); eps 0 and three more

TINY = """\
[sweep]
name = "tiny"
seeds = [0]
data_dir = "{data}"
download = false
out = "out"

[train]
dataset = "fashion-mnist"
model = "cnn"
epochs = 1
train_limit = 128
batch_size = 32
eval_n = 32

[[variant]]
name = "standard"
defense = "standard"

[[variant]]
name = "batchout"
defense = "batchout"
params = {{ magnitude = "0.2", layers = "all", samples = "all", pairing = "mutual" }}

[[eval]]
name = "grid"
attacks = ["fgsm", "pgd", "apgd"]
eps = "0,2/255,4/255,8/255"
n = 90
batch_size = 16
shards = 4
params = {{ pgd = {{ steps = 3 }}, apgd = {{ steps = 4 }} }}
"""


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """One local Ray instance for the session; yields its address (for --address). No GPU even
    where there is one (the flags are compared bit for bit on the CPU): ``fake_gpu`` stands in."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        resources={FAKE_GPU: 1},
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST files (256 train, 128 test) in the real format, as conftest's fmnist_dir."""
    return write_small_fmnist(tmp_path_factory.mktemp("sweep-data"))


def sweep_file(folder: Path, text: str) -> Path:
    """``text`` written as ``folder/sweep.toml``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sweep.toml"
    path.write_text(text)
    return path


def quiet() -> RayOptions:
    """The session's instance, no progress bar."""
    return RayOptions(progress=False)


@dataclass
class Swept:
    """The tiny sweep, run once: its file, outcome, rows and task log."""

    file: Path
    outcome: Outcome
    rows: dict[tuple[Any, ...], tuple[Any, ...]]
    log: list[dict[str, Any]]


def rows_of(db: Path) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Every result row: (run, attack, params, eps, n) -> (flags, fingerprint, seed, batch,
    walk)."""
    with Store(db, readonly=True) as store:
        return {
            (
                r.run_id,
                r.attack,
                json.dumps(r.params, sort_keys=True),
                round(r.eps * 255, 6),
                r.n,
            ): (r.flags, r.fingerprint, r.seed, r.batch_size, r.walk)
            for r in store.results()
        }


def tasks(out: Path) -> list[dict[str, Any]]:
    """The driver's task log."""
    path = out / "tasks.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="session")
def swept(ray_cluster: str, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Swept:
    """The tiny sweep (two training jobs, their evaluations in 4 shards each), run once."""
    file = sweep_file(tmp_path_factory.mktemp("tiny"), TINY.format(data=data))
    outcome = run_sweep(load_sweep(file), quiet())
    return Swept(
        file, outcome, rows_of(file.parent / "out" / "results.sqlite"), tasks(file.parent / "out")
    )


# ------------------------------------------------------------------------------ the store


def test_the_store_gets_every_row(swept: Swept) -> None:
    o, sweep = swept.outcome, load_sweep(swept.file)
    assert (o.trained, o.evaluated, o.skipped, o.failed) == (2, 2, 0, [])
    runs = {job.cfg.run_id for job in sweep.trains}
    assert {k[0] for k in swept.rows} == runs
    assert len(swept.rows) == len(runs) * 3 * GRID  # fgsm, pgd, apgd at every eps
    with Store(sweep.db, readonly=True) as store:
        fingerprints = {r.run_id: r.fingerprint for r in store.runs()}
        checks = {(d.run_id, d.check) for d in store.diagnostics() if d.n == N}
    for job in sweep.trains:
        assert checkpoint.is_complete(job.run_dir)
        assert saved_identity(job.run_dir) == job.identity  # the job hash's configuration
        assert {"randomized", "probabilities", "gradients"} <= {
            c for r, c in checks if r == job.cfg.run_id
        }
    for (run_id, *_), (flags, fingerprint, seed, batch, walk) in swept.rows.items():
        assert (len(flags), fingerprint, seed, batch) == (N, fingerprints[run_id], 0, BATCH)
    log = swept.log
    assert (
        sorted(t["kind"] for t in log)
        == ["audit"] * 2 + ["inference"] * 2 + ["probes"] * 2 + ["shard"] * 8 + ["train"] * 2
    )
    assert all(t["ok"] and t["threads"] == 1 for t in log)  # one torch thread a task
    assert all(
        t["resources"] == {"CPU": 1.0} for t in log
    )  # no GPU here, and no fake_gpu asked for


def test_a_rerun_skips_everything(swept: Swept) -> None:
    sweep = load_sweep(swept.file)
    before = len(tasks(sweep.out))
    o = run_sweep(sweep, quiet())
    assert (o.trained, o.evaluated, o.skipped, o.failed) == (0, 0, 4, [])
    assert len(tasks(sweep.out)) == before  # no task ran
    assert rows_of(sweep.db) == swept.rows


def test_a_job_whose_results_are_missing_is_redone(swept: Swept) -> None:
    sweep = load_sweep(swept.file)
    lost = sweep.trains[1].cfg.run_id
    with sqlite3.connect(sweep.db) as db:  # results and the shards' batches of one evaluation
        db.execute("DELETE FROM results WHERE run_id=?", (lost,))
        db.execute("DELETE FROM batches WHERE run_id=?", (lost,))
    db.close()
    before = len(tasks(sweep.out))
    o = run_sweep(sweep, quiet())
    assert (o.trained, o.evaluated, o.skipped, o.failed) == (0, 1, 3, [])
    new = tasks(sweep.out)[before:]
    # Its shards run again, and then its walk-inference check on the flags they gave.
    assert (
        sorted((t["kind"], t["task"].split("/")[0]) for t in new)
        == [("inference", lost), ("probes", lost)] + [("shard", lost)] * 4
    )
    assert rows_of(sweep.db) == swept.rows  # bit for bit the same flags


def test_a_missing_checkpoint_is_trained_again(swept: Swept) -> None:
    sweep = load_sweep(swept.file)
    job = sweep.trains[0]
    shutil.rmtree(job.run_dir)
    o = run_sweep(sweep, quiet())
    assert (o.trained, o.failed) == (1, [])
    assert checkpoint.is_complete(job.run_dir)
    # Training is seeded: the same weights, so their stored evaluation is still theirs.
    assert (o.evaluated, o.skipped) == (0, 3)
    assert rows_of(sweep.db) == swept.rows


def test_sharded_flags_equal_an_unsharded_run(
    swept: Swept, data: Path, tmp_path: Path, one_thread: None
) -> None:
    sweep = load_sweep(swept.file)
    spec = sweep.evals[0].spec
    assert spec.shard_ranges() == [(0, 2), (2, 3), (3, 4), (4, 6)]  # uneven; the last batch partial
    db = tmp_path / "unsharded.sqlite"
    for job in sweep.trains:
        evaluate_checkpoint(
            job.run_dir,
            spec.make_attacks(),
            spec.eps,
            spec.n,
            spec.batch_size,
            spec.seed,
            "cpu",
            data,
            db,
            progress=False,
            download=False,
            out=io.StringIO(),
        )
    whole = rows_of(db)
    assert len(whole) == len(swept.rows)
    assert whole == swept.rows  # flags bit for bit, same weights, seed, batches, walk
    inference = {}  # the walk-inference check: the sweep's task finds what bench eval finds
    for path in (db, sweep.db):
        with Store(path, readonly=True) as store:
            inference[path] = sorted(
                (d.run_id, d.flagged, d.details.get("checked"), d.details.get("broken"))
                for d in store.diagnostics()
                if d.check == "walk-inference"
            )
    assert inference[db] and inference[db] == inference[sweep.db]
    assert any("0" in flags[0] and "1" in flags[0] for k, flags in whole.items() if k[3] > 0)


def test_a_shards_autoattack_warnings_are_stored_with_its_flags(
    swept: Swept, tmp_path: Path
) -> None:
    """AutoAttack's checks.py warnings come back with a shard's flags and are stored as they
    arrive (a driver killed before the evaluation's end keeps them), keyed by what they say:
    a shard run again replaces its warning, another shard's adds one."""
    from bench.evaluation.book import Book
    from bench.evaluation.work import ShardResult
    from bench.sweep.driver import eval_plan

    sweep = load_sweep(swept.file)
    db = tmp_path / "copy.sqlite"
    shutil.copy(sweep.db, db)  # the session's store stays as the sweep left it
    ev = sweep.evals[0]
    plan = eval_plan(ev)
    source = plan.target.source
    said = [("a first warning", 8 / 255, 16), ("a second warning", 8 / 255, 16)]
    with Store(db) as store:
        book = Book(store, plan, attacks=plan.settings.attacks)
        book.write_shard(ShardResult(0, 2, clean={}, warnings=said[:1]))
        book.write_shard(ShardResult(0, 2, clean={}, warnings=said[:1]))  # the same shard again
        book.write_shard(
            ShardResult(2, 3, clean={}, warnings=said[1:])
        )  # another shard, another warning
        kept = [d for d in store.diagnostics(source.run_id) if d.check == "autoattack-checks"]
    assert sorted(d.details["message"] for d in kept) == ["a first warning", "a second warning"]
    assert all(d.n == N and d.fingerprint == source.fingerprint for d in kept)


def test_a_shard_walks_the_grid_as_its_block_says(
    swept: Swept, data: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import bench.evaluation.work
    from bench.checkpoint_files import checkpoint_files
    from bench.evaluation.ray_executor import do_work

    walks: list[Any] = []
    real = bench.evaluation.work.grid_walk

    def spy(*args: Any, **kwargs: Any) -> Any:  # the real walk, its walk argument noted
        walks.append(kwargs.get("walk"))
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.evaluation.work, "grid_walk", spy)
    ev = load_sweep(swept.file).evals[0]
    for walk in ("up", "down"):
        spec = dataclasses.replace(ev.spec, walk=walk)
        shard = bench.evaluation.work.Shard(
            spec.make_attacks(), [0], 0, 1, list(spec.eps), spec.batch_size, spec.seed, spec.walk
        )
        got = do_work(
            checkpoint_files(ev.train.run_dir), (spec.n, str(data), False), shard, None, 1
        )
        assert sorted(got.steps[0]) == sorted(e for e in spec.eps if e > 0)
    assert walks == ["up", "down"]


# ------------------------------------------------------------ several evaluations of one checkpoint

# One checkpoint, three evaluation blocks at one n: two walked by bisect (so each has its own
# walk-inference check) and one walked up (nothing inferred, no check).
THREE_EVALS = """
[[variant]]
name = "standard"
defense = "standard"

[[eval]]
name = "fgsm"
attacks = ["fgsm"]
eps = "0,1/255,2/255"
n = 32
batch_size = 16
shards = 2

[[eval]]
name = "pgd"
attacks = ["pgd"]
eps = "0,1/255,2/255"
n = 32
batch_size = 16
params = { pgd = { steps = 2 } }

[[eval]]
name = "up"
attacks = ["pgd"]
eps = "0,1/255,2/255"
n = 32
batch_size = 16
walk = "up"
params = { pgd = { steps = 3 } }
"""


def inference_rows(db: Path) -> dict[str, tuple[Any, ...]]:
    """The walk-inference findings by store key: (attacks checked, points checked, broken)."""
    with Store(db, readonly=True) as store:
        return {
            d.key: (tuple(d.details["attacks"]), d.details["checked"], d.details["broken"])
            for d in store.diagnostics()
            if d.check == "walk-inference"
        }


def test_evaluations_of_one_checkpoint_share_its_checks_and_keep_their_own(
    ray_cluster: str, data: Path, tmp_path: Path
) -> None:
    text = TINY.format(data=data).split("[[variant]]")[0] + THREE_EVALS
    sweep = load_sweep(sweep_file(tmp_path, text))
    o = run_sweep(sweep, quiet())
    assert (o.trained, o.evaluated, o.failed) == (1, 3, [])
    kinds = sorted(t["kind"] for t in tasks(sweep.out))
    # One audit task for the three blocks (same checkpoint, same n); an inference task for each
    # bisect block; the probes for each block (each against its own attacks); shards 2 + 1 + 1.
    assert kinds == ["audit"] + ["inference"] * 2 + ["probes"] * 3 + ["shard"] * 4 + ["train"]
    walks = {(k[1], json.loads(k[2]).get("steps")): v[4] for k, v in rows_of(sweep.db).items()}
    assert walks == {("fgsm", None): "bisect", ("pgd", 2): "bisect", ("pgd", 3): "up"}
    found = inference_rows(sweep.db)
    assert sorted(v[0] for v in found.values()) == [("fgsm",), ("pgd[steps=2]",)], (
        found
    )  # both kept
    assert all(key.endswith("@1/255<2/255") and v[1] > 0 for key, v in found.items())
    with Store(sweep.db, readonly=True) as store:  # each finding says which evaluation it checked
        contexts = [
            d.details["evaluation"] for d in store.diagnostics() if d.check == "walk-inference"
        ]
    assert (
        contexts
        == [{"grid": ["0", "1/255", "2/255"], "walk": "bisect", "seed": 0, "batch_size": 16}] * 2
    )

    # A driver killed after an evaluation's rows but before its walk-inference finding: the
    # rerun runs that check alone (no shard, no audit), for both blocks, and finds the same.
    with sqlite3.connect(sweep.db) as db:
        db.execute("DELETE FROM diagnostics WHERE check_name='walk-inference'")
    db.close()
    before = len(tasks(sweep.out))
    o = run_sweep(sweep, quiet())
    assert (o.trained, o.evaluated, o.skipped, o.failed) == (0, 2, 2, [])
    assert sorted(t["kind"] for t in tasks(sweep.out)[before:]) == ["inference", "inference"]
    assert inference_rows(sweep.db) == found
    o = run_sweep(sweep, quiet())  # and then nothing is left to do
    assert (o.trained, o.evaluated, o.skipped) == (0, 0, 4)


# ------------------------------------------------------------------------------ failures, placement


def test_a_failing_job_is_reported_and_the_other_finishes(
    ray_cluster: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        TINY.format(data=data).split("[[eval]]")[0]
        + '[[variant]]\nname = "broken"\ndefense = "standard"\ntrain_limit = 1000\n'  # > 256 here
        + '[[eval]]\nattacks = ["fgsm"]\neps = "0,8/255"\nn = 32\nbatch_size = 32\n'
    )
    text = text.replace(
        'name = "batchout"\ndefense = "batchout"', 'name = "other"\ndefense = "batchout"'
    )
    file = sweep_file(tmp_path, text)
    code = main(["sweep", str(file), "--no-report", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "trained 2, evaluated 2, skipped (done before) 0, failed 2" in err, err
    broken = next(j for j in load_sweep(file).trains if j.variant == "broken")
    assert (
        f"FAILED train {broken.cfg.run_id}: fashion-mnist cnn standard [] epochs=1 train_limit=1000"
        in err
    )
    assert "larger than the train split of fashion-mnist (256 points)" in err
    assert (
        f"FAILED eval {broken.cfg.run_id} / eval 0" in err and "not run: its training failed" in err
    )
    done = {k[0] for k in rows_of(tmp_path / "out" / "results.sqlite")}
    assert len(done) == 2 and broken.cfg.run_id not in done


def test_gpu_placement_with_a_custom_resource(ray_cluster: str, data: Path, tmp_path: Path) -> None:
    text = (
        TINY.format(data=data)
        .replace("seeds = [0]", "seeds = [0, 1]")
        .replace("train_limit = 128", "train_limit = 64")
    )
    text = text.split('[[variant]]\nname = "batchout"')[0]  # one variant at two seeds: two jobs
    text += '[[eval]]\nattacks = ["fgsm"]\neps = "0,8/255"\nn = 32\nbatch_size = 16\nshards = 2\n'
    file = sweep_file(tmp_path, text)
    assert task_options(RayOptions(gpu_resource=FAKE_GPU)) == {
        "num_cpus": 1,
        "resources": {FAKE_GPU: 1},
    }
    o = run_sweep(load_sweep(file), RayOptions(gpu_resource=FAKE_GPU, progress=False))
    assert (o.trained, o.evaluated, o.failed) == (2, 2, [])
    log = sorted(tasks(tmp_path / "out"), key=lambda t: t["start"])
    kinds = ["audit"] * 2 + ["probes"] * 2 + ["shard"] * 4 + ["train"] * 2
    assert sorted(t["kind"] for t in log) == kinds
    assert all(t["resources"] == {"CPU": 1.0, FAKE_GPU: 1.0} for t in log)
    # The instance has 2 CPUs but one "GPU": no two tasks ever ran at once.
    assert all(b["start"] >= a["end"] - 1e-3 for a, b in zip(log, log[1:]))


def test_a_wrong_cluster_address_is_one_line(ray_cluster: str) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UsageError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    check_reachable(ray_cluster)  # the session's instance answers


# ------------------------------------------------------------------------------ files


BAD = [
    ("[train]\nepochs = 1", "[train]\nepoch = 1", "train.epoch", "unknown key"),
    ("[train]\nepochs = 1", "[train]\nepochs = 0", "train.epochs", "must be a whole number"),
    ("[train]\nepochs = 1", '[train]\nepochs = "1"', "train.epochs", "must be a whole number"),
    (
        'defense = "standard"',
        'defense = "shield"',
        "variant[0].defense",
        "unknown defense 'shield'",
    ),
    (
        'defense = "standard"',
        'defense = "batchout"\nparams = { magnitude = "lots" }',
        "variant[0].params.magnitude",
        "not a number",
    ),
    (
        'attacks = ["fgsm"]',
        'attacks = ["fgsm", "pgdd"]',
        "eval[0].attacks[1]",
        "unknown attack 'pgdd'",
    ),
    ('eps = "0,8/255"', 'eps = "0,9/0"', "eval[0].eps", "divides by zero"),
    ("shards = 1", "shards = 9", "eval[0].shards", "1..2: one shard holds at least one batch"),
    (
        "shards = 1",
        'shards = 1\nwalk = "sideways"',
        "eval[0].walk",
        "must be one of up, down, bisect",
    ),
    ("shards = 1", "shards = 1\nwalk = 1", "eval[0].walk", "must be a string"),
    ("seeds = [0]", "seeds = [0, 0]", "sweep.seeds[1]", "listed twice"),
    ("[sweep]", "[sweeps]", "sweeps", "unknown key"),
]
GOOD = """\
[sweep]
name = "t"
seeds = [0]
out = "out"
[train]
epochs = 1
[[variant]]
name = "a"
defense = "standard"
[[eval]]
attacks = ["fgsm"]
eps = "0,8/255"
n = 32
batch_size = 16
shards = 1
"""


@pytest.mark.parametrize("old, new, key, why", BAD, ids=[b[2] for b in BAD])
def test_bad_files_are_refused_before_anything_runs(
    old: str, new: str, key: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert old in GOOD
    file = sweep_file(tmp_path, GOOD.replace(old, new, 1))
    assert main(["sweep", str(file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{file}: {key}: " in err and why in err, err
    assert not (tmp_path / "out").exists()  # nothing written, nothing run


def test_the_dry_run_prints_the_jobs(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = sweep_file(tmp_path, TINY.format(data=data))
    assert main(["sweep", str(file), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("2 training jobs, 2 evaluation jobs")
    trains = [line for line in lines if line.startswith("train ")]
    evals = [line for line in lines if line.startswith("eval ")]
    assert [line.split()[2].split("-s0-")[0] for line in trains] == ["standard", "batchout"]
    assert all(
        line.split()[2] == f"{line.split()[2].split('-s0-')[0]}-s0-{line.split()[1]}:"
        for line in trains
    )
    assert all(
        "eval grid: fgsm,pgd[steps=3],apgd[steps=4] Linf eps=0,2/255,4/255,8/255 n=90" in line
        and "shards=4" in line
        for line in evals
    ), evals
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, jobs",
    [
        ("batchout-ablation", (16, 32)),
        ("batchout-ablation-fmnist", (14, 42)),
        ("defenses", (21, 42)),
        ("cross-norm-fmnist", (3, 6)),
    ],
)
def test_shipped_sweeps_dry_run(
    name: str, jobs: tuple[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", str(ROOT / "sweeps" / f"{name}.toml"), "--dry-run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f"{jobs[0]} training jobs, {jobs[1]} evaluation jobs"), first


REPORT_NAMES = [
    "standard",
    "n_1",
    "n_2",
    "n_3",
    "n_-2",
    "n_-3",
    "alt_1",
    "alt_2",
    "alt_3",
    "alt_-2",
    "alt_-3",
    "random_3_-2",
    "random_3_-2_0",
    "all_middle_2",
    "all_middle_3",
    "random_3_-2_0_same-class",
]


def test_the_ablations_have_the_reports_variants() -> None:
    cifar = load_sweep(ROOT / "sweeps" / "batchout-ablation.toml")
    assert [j.variant for j in cifar.trains] == REPORT_NAMES
    assert {(j.cfg.dataset, j.cfg.model) for j in cifar.trains} == {("cifar10", "vgg19")}
    assert {a.label for e in cifar.evals for a in e.spec.make_attacks()} >= {
        "fgsm",
        "pgd",
        "autoattack",
    }
    fmnist = load_sweep(
        ROOT / "sweeps" / "batchout-ablation-fmnist.toml"
    )  # the cnn has no middle layers
    assert [j.variant for j in fmnist.trains] == [
        n for n in REPORT_NAMES if not n.startswith("all_middle")
    ]


def test_the_defenses_sweep_has_every_defense() -> None:
    from bench.defenses import DEFENSES

    sweep = load_sweep(ROOT / "sweeps" / "defenses.toml")
    assert [j.cfg.defense for j in sweep.trains] == [d for d in DEFENSES.names() for _ in range(3)]
    assert {(j.cfg.seed, j.cfg.dataset, j.cfg.train_limit) for j in sweep.trains} == {
        (s, "fashion-mnist", None) for s in (0, 1, 2)
    }
    grids = {
        tuple(a.display for a in e.spec.make_attacks()): (
            e.spec.n,
            [round(x * 255, 4) for x in e.spec.eps],
        )
        for e in sweep.evals
    }
    assert grids == {
        ("fgsm", "pgd"): (1000, [0, 1, 2, 3, 4, 5, 6, 7, 8, 25.5]),
        ("autoattack",): (1000, [0, 8, 25.5]),
    }
    assert {
        e.spec.make_attacks()[0].params["version"]
        for e in sweep.evals
        if e.spec.name == "autoattack"
    } == {"standard"}


# ------------------------------------------------------------------------------ processes


NO_RAY = """\
import sys
from bench.cli import main
d, out = sys.argv[1], sys.argv[2]
for argv in (["train", "--epochs", "1", "--train-limit", "64", "--eval-n", "32", "--data-dir", d,
              "--no-download", "--out", out, "--run-id", "r", "--no-progress"],
             ["eval", "--checkpoint", out + "/r", "--attack", "fgsm", "--eps", "0,8/255", "--n",
              "16", "--db", out + "/db.sqlite", "--data-dir", d, "--no-download", "--no-progress"],
             ["report", "--db", out + "/db.sqlite", "--out", out + "/report", "--data-dir", d],
             ["sweep", sys.argv[3], "--dry-run"], ["list"]):
    assert main(argv) == 0, argv
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
assert not loaded, loaded
print("no ray")
"""


@pytest.mark.slow
def test_train_eval_report_never_load_ray(data: Path, tmp_path: Path) -> None:
    file = sweep_file(tmp_path / "s", TINY.format(data=data))
    env = {**os.environ, "BENCH_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", NO_RAY, str(data), str(tmp_path), str(file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0 and done.stdout.endswith("no ray\n"), done.stderr[-2000:]


def _parents() -> dict[int, int]:
    """Every process's parent (read from /proc)."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _descendants(pid: int) -> tuple[list[int], list[int]]:
    """The children of ``pid``, and all their descendants."""
    parents = _parents()
    children = [p for p, pp in parents.items() if pp == pid]
    found, todo = [], list(children)
    while todo:
        p = todo.pop()
        found.append(p)
        todo += [c for c, pp in parents.items() if pp == p]
    return children, found


def _alive(pid: int) -> bool:
    """Running (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_rows(db: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until the store holds a result row (or the driver has ended)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
                if con.execute("SELECT COUNT(*) FROM results").fetchone()[0]:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    raise AssertionError(f"no result stored in {timeout} s: {proc.poll()}")


def _kill_a_training_worker(killed: list[int], timeout: float = 60) -> None:
    """SIGKILL the first Ray worker of this session seen running a training task."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in _descendants(os.getpid())[1]:
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::train_task"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.01)


def test_a_killed_worker_loses_nothing(ray_cluster: str, data: Path, tmp_path: Path) -> None:
    text = (
        TINY.format(data=data)
        .replace("seeds = [0]", "seeds = [0, 1]")
        .replace("epochs = 1", "epochs = 3")
    )
    text = text.split('[[variant]]\nname = "batchout"')[0]
    text += '[[eval]]\nattacks = ["fgsm"]\neps = "0,8/255"\nn = 32\nbatch_size = 16\n'
    sweep = load_sweep(sweep_file(tmp_path, text))
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_training_worker, args=(killed,))
    killer.start()
    try:
        o = run_sweep(sweep, quiet())
    finally:
        killer.join()
    assert killed  # one training task lost its worker mid-way; Ray ran it again
    assert (o.trained, o.evaluated, o.failed) == (2, 2, [])
    assert all(checkpoint.is_complete(job.run_dir) for job in sweep.trains)
    assert len(rows_of(sweep.db)) == 2 * 2


@pytest.mark.slow
def test_a_killed_driver_loses_nothing(
    swept: Swept, ray_cluster: str, data: Path, tmp_path: Path
) -> None:
    """SIGKILL the driver (its own local Ray) once a result is stored; a rerun that joins the
    session's instance with --address ends with the same rows as the uninterrupted sweep."""
    file = sweep_file(tmp_path, TINY.format(data=data))
    db = tmp_path / "out" / "results.sqlite"
    env = {
        **os.environ,
        "BENCH_HOME": str(tmp_path / "home"),
        "CUDA_VISIBLE_DEVICES": "",
    }  # CPU flags
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [*BENCH, "sweep", str(file), "--num-cpus", "2", "--no-report", "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tree: list[int] = []
    try:
        _wait_rows(db, proc, 180)
        ray_processes, tree = _descendants(proc.pid)  # the local instance it started
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        end = time.monotonic() + 30
        while any(_alive(p) for p in ray_processes) and time.monotonic() < end:
            time.sleep(0.2)
        # Its Ray (GCS, raylet, ...) went with it; the raylet's agents follow within a minute or
        # two on their own, which this test does not wait for (below).
        assert ray_processes and not [p for p in ray_processes if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in tree:  # what is left of this test's own processes
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert 0 < len(rows_of(db)) < len(swept.rows)  # killed mid-way
    again = subprocess.run(
        [*BENCH, "sweep", str(file), "--address", ray_cluster, "--no-images"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "done 4, running 0, failed 0" in again.stderr  # the progress display
    assert rows_of(db) == swept.rows
    assert (tmp_path / "out" / "report" / "leaderboard.md").is_file()
    assert again.stdout.strip().endswith("leaderboard.md")
