"""Kill -9 ``bench eval`` at random moments, rerun it, and check that nothing was lost.

    .venv/bin/python scripts/kill_eval.py [--kills 10] [--seed 0] [--keep DIR]

Builds a scratch world (a small Fashion-MNIST in its real IDX format, the registry's cnn trained
for a few steps and written as a checkpoint), runs one undisturbed ``python -m bench eval`` (PGD
with many steps on tiny batches, so that it can be killed mid-way), then for each kill: a fresh
store, the same command, SIGKILL after a random delay within the evaluation, the same command
again to the end. Each row of the table says when the kill came, how far the store had got
(result rows and kept batches), how long the rerun took, whether every result row's per-point
flags equal the undisturbed run's, whether no in-progress batch is left, and SQLite's
``PRAGMA integrity_check``. Exit status 0 when every kill passes.

``tests/test_kill_eval.py`` imports this file and does the same at three kill points.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
N_TEST = 64


@dataclass
class World:
    """Where a kill experiment runs: the checkpoint, the data and the environment."""

    root: Path
    checkpoint: Path
    env: dict[str, str]
    steps: int = 40

    def command(self, db: Path) -> list[str]:
        """The evaluation that is killed: FGSM, then PGD with many steps on batches of 4, over
        four eps steps, walked upwards: every step attacks every still-robust point, so each step
        has many batches for a kill to land in (the default bisect walk's last steps attack a few
        points and end too fast to be hit reliably; its resume is tested in tests/test_walk.py)."""
        return [
            sys.executable,
            "-m",
            "bench",
            "eval",
            "--checkpoint",
            str(self.checkpoint),
            "--attack",
            "fgsm,pgd",
            "--set",
            f"pgd.steps={self.steps}",
            "--eps",
            "0:8/255:2/255",
            "--walk",
            "up",
            "--n",
            str(N_TEST),
            "--batch-size",
            "4",
            "--db",
            str(db),
            "--no-progress",
            "--device",
            "cpu",
            "--no-download",
        ]


def _write_idx(path: Path, data: bytes, dims: tuple[int, ...]) -> None:
    header = struct.pack(">I", 0x0800 + len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as fh:
        fh.write(header + data)


def make_world(root: Path) -> World:
    """Fashion-MNIST files (a learnable bright band per class) and a briefly trained cnn."""
    import numpy as np
    import torch

    from bench.data import dataset_info
    from bench.models import create_model

    rng = np.random.default_rng(0)
    folder = root / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", 64), ("t10k", N_TEST)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 3, :] = 200
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz", images.tobytes(), images.shape)
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels.tobytes(), labels.shape)
        arrays[split] = (images, labels)
    info = dataset_info("fashion-mnist")
    torch.manual_seed(0)
    model = create_model(
        "cnn", channels=1, num_classes=10, image_size=28, mean=list(info.mean), std=list(info.std)
    )
    x = torch.from_numpy(arrays["t10k"][0]).float().unsqueeze(1) / 255
    y = torch.from_numpy(arrays["t10k"][1]).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(15):  # correct on most points, broken somewhere on the grid
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = root / "checkpoints" / "killed"
    ckpt.mkdir(parents=True)
    config = {
        "run_id": "killed",
        "dataset": "fashion-mnist",
        "model": "cnn",
        "defense": "standard",
        "defense_params": {},
        "dataset_info": asdict(info),
        "epochs": 1,
        "train_limit": None,
        "seed": 0,
    }
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "run.json").write_text(json.dumps({"train_seconds": 1.0, "complete": True}))
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, ckpt / "weights.pt")
    env = {
        **os.environ,
        "BENCH_HOME": str(root / "home"),
        "BENCH_DATA_DIR": str(root / "data"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    return World(root, ckpt, env)


def _query(db: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` on the store, read-only; [] while it does not exist or is locked."""
    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def progress(db: Path) -> tuple[int, int]:
    """(result rows, kept batches of steps in progress)."""
    rows = _query(db, "SELECT (SELECT COUNT(*) FROM results), (SELECT COUNT(*) FROM batches)")
    return (rows[0][0], rows[0][1]) if rows else (0, 0)


def flags(db: Path) -> dict[tuple, tuple]:
    """Every result row's identity -> (flags, clean accuracy, robust accuracy)."""
    rows = _query(
        db, "SELECT run_id, attack, params, eps_key, n, flags, clean_acc, robust_acc FROM results"
    )
    return {r[:5]: r[5:] for r in rows}


def integrity(db: Path) -> str:
    con = sqlite3.connect(db)  # after the rerun: no WAL is left to replay
    try:
        return str(con.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        con.close()


def run_to_end(world: World, db: Path, timeout: float = 300) -> float:
    """The command to its end (status 0 required); its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        world.command(db),
        env=world.env,
        cwd=world.root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench eval exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def first_row_time(world: World, db: Path) -> tuple[float, float]:
    """An undisturbed run: (seconds until its first row is in the store, total seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        world.command(db),
        env=world.env,
        cwd=world.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = None
    while proc.poll() is None:
        if first is None and sum(progress(db)) > 0:
            first = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bench eval exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
    return (first if first is not None else total), total


@dataclass
class Kill:
    """One kill: when, how far the store had got, and what the rerun found."""

    delay: float
    results_at_kill: int
    batches_at_kill: int
    finished_before_kill: bool
    rerun_seconds: float
    same_flags: bool
    rows: int
    batches_left: int
    integrity: str

    @property
    def ok(self) -> bool:
        return self.same_flags and self.batches_left == 0 and self.integrity == "ok"


def kill_and_rerun(
    world: World,
    db: Path,
    delay: float | None,
    reference: dict[tuple, tuple],
    when: Callable[[tuple[int, int]], bool] | None = None,
) -> Kill:
    """Start the command; SIGKILL it after ``delay`` seconds, or as soon as the store's
    :func:`progress` satisfies ``when``; rerun it to the end; compare with ``reference``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        world.command(db),
        env=world.env,
        cwd=world.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None:
        if (delay is not None and time.perf_counter() - t0 >= delay) or (
            when is not None and when(progress(db))
        ):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    delay = time.perf_counter() - t0
    finished = proc.returncode == 0
    at_kill = progress(db)
    seconds = run_to_end(world, db)
    after = flags(db)
    return Kill(
        delay,
        at_kill[0],
        at_kill[1],
        finished,
        seconds,
        after == reference,
        len(after),
        progress(db)[1],
        integrity(db),
    )


def table(kills: list[Kill], reference_seconds: float, rows: int) -> str:
    lines = [
        f"undisturbed run: {reference_seconds:.1f} s, {rows} result rows",
        "",
        "| # | kill after (s) | result rows at kill | batches at kill | rerun (s) | flags equal "
        "| rows | batches left | integrity_check |",
        "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for i, k in enumerate(kills, 1):
        note = " (had finished)" if k.finished_before_kill else ""
        lines.append(
            f"| {i} | {k.delay:.2f}{note} | {k.results_at_kill} | {k.batches_at_kill} | "
            f"{k.rerun_seconds:.1f} | {'yes' if k.same_flags else 'NO'} | {k.rows} | "
            f"{k.batches_left} | {k.integrity} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill times")
    parser.add_argument("--keep", metavar="DIR", help="build the world in DIR and keep it")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kill-eval-"))
    try:
        return _experiment(root, args.kills, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _experiment(root: Path, n_kills: int, seed: int) -> int:
    """Build the world in ``root``, run the undisturbed reference and ``n_kills`` kills."""
    world = make_world(root)
    ref_db = root / "reference.sqlite"
    first, total = first_row_time(world, ref_db)
    reference = flags(ref_db)
    rng = random.Random(seed)
    kills = []
    for i in range(n_kills):
        delay = rng.uniform(max(first - 0.5, 0.0), first + 0.9 * (total - first))  # inside the run
        kills.append(kill_and_rerun(world, root / f"killed-{i}.sqlite", delay, reference))
        print(f"kill {i + 1}/{n_kills}: {'ok' if kills[-1].ok else 'FAILED'}", file=sys.stderr)
    print(table(kills, total, len(reference)))
    return 0 if all(k.ok for k in kills) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
