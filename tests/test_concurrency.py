"""Several real ``bench eval`` processes writing into one results store at once.

Three processes start together on a store that does not exist yet (so they also race to create
it): two on one checkpoint with the same arguments, one on another checkpoint. Each commits every
batch and every (attack, eps) step in its own short transaction. All must exit 0, and the store
must then hold exactly the rows of the same evaluations run one after the other, with the same
per-point flags, no in-progress batch left, and an intact file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx

REPO = Path(__file__).resolve().parent.parent
N = 48


def _world(root: Path) -> tuple[list[Path], dict[str, str]]:
    """A small Fashion-MNIST and two checkpoints of the registry's cnn (different weights)."""
    from bench.data import dataset_info
    from bench.models import create_model

    rng = np.random.default_rng(0)
    d = root / "data" / "fashion-mnist"
    d.mkdir(parents=True)
    for split, n in (("train", 16), ("t10k", N)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(
            d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        )
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels)
    info = dataset_info("fashion-mnist")
    ckpts = []
    for seed in (0, 1):
        ckpt = root / "checkpoints" / f"cnn-{seed}"
        ckpt.mkdir(parents=True)
        torch.manual_seed(seed)
        model = create_model(
            "cnn",
            channels=1,
            num_classes=10,
            image_size=28,
            mean=list(info.mean),
            std=list(info.std),
        )
        torch.save(model.state_dict(), ckpt / "weights.pt")
        config = {
            "run_id": ckpt.name,
            "dataset": "fashion-mnist",
            "model": "cnn",
            "defense": "standard",
            "defense_params": {},
            "dataset_info": asdict(info),
            "epochs": 1,
            "train_limit": None,
            "seed": seed,
        }
        (ckpt / "config.json").write_text(json.dumps(config))
        (ckpt / "run.json").write_text(json.dumps({"train_seconds": 1.0, "complete": True}))
        ckpts.append(ckpt)
    env = {
        **os.environ,
        "BENCH_HOME": str(root / "home"),
        "BENCH_DATA_DIR": str(root / "data"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    return ckpts, env


def _command(ckpt: Path, db: Path) -> list[str]:
    """FGSM and PGD over five eps on batches of 4: about fifty commits per process."""
    return [
        sys.executable,
        "-m",
        "bench",
        "eval",
        "--checkpoint",
        str(ckpt),
        "--attack",
        "fgsm,pgd",
        "--set",
        "pgd.steps=5",
        "--eps",
        "0:4/255:1/255",
        "--n",
        str(N),
        "--batch-size",
        "4",
        "--db",
        str(db),
        "--no-progress",
        "--device",
        "cpu",
        "--no-download",
    ]


def _rows(db: Path) -> dict[tuple, tuple]:
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT run_id, attack, params, eps_key, n, flags, clean_acc, robust_acc, "
            "fingerprint FROM results"
        ).fetchall()
        assert con.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 0
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
    finally:
        con.close()
    out = {r[:5]: r[5:] for r in rows}
    assert len(out) == len(rows)
    return out


@pytest.mark.slow
def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ckpts, env = _world(tmp_path)
    shared = tmp_path / "shared.sqlite"
    procs = [
        subprocess.Popen(
            _command(c, shared),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in (ckpts[0], ckpts[1], ckpts[0])
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert not list(tmp_path.glob("shared.sqlite-*")), "the last writer leaves no -wal/-shm"

    sequential = tmp_path / "sequential.sqlite"
    for c in ckpts:
        subprocess.run(
            _command(c, sequential),
            env=env,
            cwd=tmp_path,
            check=True,
            capture_output=True,
            timeout=240,
        )
    together, one_by_one = _rows(shared), _rows(sequential)
    assert len(together) == len(one_by_one) == 2 * 2 * 5  # checkpoints x attacks x eps
    assert together == one_by_one
