"""Kill ``bench train`` with SIGKILL at random points, resume it, compare with an uninterrupted run.

    .venv/bin/python scripts/kill_resume.py [--points 10] [--defense fgsm-rs] [--epochs 3]
        [--train-limit 300] [--seed 0] [--data-dir DIR] [--keep DIR]

First one uninterrupted run (a subprocess, one thread); then, per kill point, a fresh run killed
after a random number of completed epochs (0 .. epochs-1, read from its training state) plus a
random fraction of an epoch, checked to be visibly incomplete, resumed with
``bench train --resume``, and its final weights' fingerprint compared with the uninterrupted
run's. Prints a table; exit status 1 if any resumed run differs.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import checkpoint  # noqa: E402
from bench.errors import UsageError  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one thread: same sums


def train_argv(args: argparse.Namespace, out: Path, run_id: str) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "bench",
        "train",
        "--defense",
        args.defense,
        "--epochs",
        str(args.epochs),
        "--train-limit",
        str(args.train_limit),
        "--eval-n",
        "100",
        "--batch-size",
        "32",
        "--seed",
        str(args.seed),
        "--out",
        str(out),
        "--run-id",
        run_id,
        "--no-progress",
    ]
    return argv + (["--data-dir", args.data_dir] if args.data_dir else [])


def epochs_done(run_dir: Path) -> int:
    """Completed epochs according to the training state (0 when there is none yet)."""
    try:
        return (
            int(checkpoint.read_state_meta(run_dir)["epoch"])
            if (run_dir / checkpoint.STATE).is_file()
            else 0
        )
    except UsageError:
        return 0


def kill_at(argv: list[str], run_dir: Path, after_epochs: int, delay_s: float) -> str:
    """Start a run; SIGKILL it ``delay_s`` after it completed ``after_epochs`` epochs (after
    config.json appears for 0). Returns 'killed' or 'finished' (it ended before the kill)."""
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    while proc.poll() is None:
        started = (run_dir / checkpoint.CONFIG).is_file()
        if started and epochs_done(run_dir) >= after_epochs:
            break
        time.sleep(0.01)
    time.sleep(delay_s)
    if proc.poll() is not None:
        return "finished"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return "killed"


def fingerprint(run_dir: Path) -> str:
    return checkpoint.read_checkpoint(run_dir).fingerprint


def one_point(
    args: argparse.Namespace, out: Path, i: int, rng: random.Random, epoch_s: float, reference: str
) -> list[str]:
    """Kill, check, resume, compare; returns the table row."""
    run_id = f"kill-{i}"
    run_dir = out / run_id
    after, frac = rng.randrange(args.epochs), rng.random()
    t0 = time.perf_counter()
    outcome = kill_at(train_argv(args, out, run_id), run_dir, after, frac * epoch_s)
    if outcome != "killed":
        return [str(i), str(after), f"{frac:.2f}", "-", "finished before the kill", "-", "-"]
    state_epoch = epochs_done(run_dir)
    listed = run_dir in checkpoint.find_incomplete(
        out
    ) and run_dir not in checkpoint.find_checkpoints(out)
    try:
        checkpoint.read_checkpoint(run_dir)
        refused = False
    except UsageError as exc:
        refused = f"bench train --resume {run_dir}" in str(exc)
    res = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--resume", str(run_dir), "--no-progress"]
        + (["--data-dir", args.data_dir] if args.data_dir else []),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    same = res.returncode == 0 and fingerprint(run_dir) == reference
    return [
        str(i),
        str(after),
        f"{frac:.2f}",
        str(state_epoch),
        "yes" if listed and refused else "NO",
        "yes" if same else f"NO (rc {res.returncode})",
        f"{time.perf_counter() - t0:.1f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--defense", default="fgsm-rs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-limit", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rng-seed", type=int, default=1, help="draws the kill points")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--keep", default=None, help="keep the runs in this directory")
    args = parser.parse_args()
    out = Path(args.keep or tempfile.mkdtemp(prefix="kill-resume-")).resolve()
    t0 = time.perf_counter()
    subprocess.run(
        train_argv(args, out, "straight"), cwd=ROOT, env=ENV, check=True, capture_output=True
    )
    straight = checkpoint.read_checkpoint(out / "straight")
    epoch_s = max(e["seconds"] for e in straight.log)
    print(
        f"uninterrupted: {straight.fingerprint[:19]}... in {time.perf_counter() - t0:.1f} s "
        f"({args.defense}, {args.epochs} epochs of {args.train_limit} images, "
        f"~{epoch_s:.2f} s per epoch)"
    )
    rng = random.Random(args.rng_seed)
    head = [
        "point",
        "after epochs",
        "+ epoch fraction",
        "state epoch at kill",
        "visibly incomplete",
        "bit-identical",
        "seconds",
    ]
    rows = [
        one_point(args, out, i, rng, epoch_s, straight.fingerprint)
        for i in range(1, args.points + 1)
    ]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    bad = [r for r in rows if r[5].startswith("NO") or r[4] == "NO"]
    print(f"{len(rows) - len(bad)} of {len(rows)} points fine; runs in {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
