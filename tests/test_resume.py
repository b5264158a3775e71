"""Resumable training: a run killed with SIGKILL and resumed ends with the same weights, bit for
bit, as an uninterrupted one; an interrupted run is visibly incomplete until then."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import checkpoint
from bench.cli import main
from bench.errors import UsageError
from bench.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
EPOCHS = 3


def _argv(data_dir: Path, out: Path, run_id: str) -> list[str]:
    """fgsm-rs draws from every generator the state saves: the shuffle and torch's global one
    (random starts); its held-out monitor is restored too."""
    return [
        "train",
        "--defense",
        "fgsm-rs",
        "--epochs",
        str(EPOCHS),
        "--train-limit",
        "192",
        "--batch-size",
        "16",
        "--eval-n",
        "32",
        "--data-dir",
        str(data_dir),
        "--no-download",
        "--no-progress",
        "--out",
        str(out),
        "--run-id",
        run_id,
    ]


def _epochs_done(run_dir: Path) -> int:
    if not (run_dir / checkpoint.STATE).is_file():
        return 0
    try:
        return int(checkpoint.read_state_meta(run_dir)["epoch"])
    except UsageError:  # caught between writes: the old file is still whole, so read again
        return 0


def _kill_after(argv: list[str], run_dir: Path, epochs: int, fraction: float) -> int:
    """Run ``python -m bench`` and SIGKILL it ``fraction`` of an epoch after ``epochs`` epochs
    completed (0: once config.json appeared, which is when training starts). The epoch's length
    is the run's own first epoch, so the kill lands where meant however loaded the machine is.
    Returns the epochs its training state holds."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *argv],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = first_epoch = None
    try:
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            if started is None and (run_dir / checkpoint.CONFIG).is_file():
                started = time.perf_counter()
            done = _epochs_done(run_dir) if started is not None else 0
            if first_epoch is None and done >= 1:
                first_epoch = time.perf_counter() - started
            if started is not None and done >= epochs:
                break
            time.sleep(0.005)
        time.sleep(fraction * (first_epoch or 0.0))
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return _epochs_done(run_dir)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's small Fashion-MNIST, once for the module."""
    from conftest import write_small_fmnist

    return write_small_fmnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def straight(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None
) -> checkpoint.Checkpoint:
    """The uninterrupted run, in this process (one thread, as the subprocesses)."""
    out = tmp_path_factory.mktemp("straight")
    assert main(_argv(data_dir, out, "straight")) == 0
    return checkpoint.read_checkpoint(out / "straight")


@pytest.mark.slow
@pytest.mark.parametrize(
    "after,fraction",
    [(0, 0.0), (1, 0.0), (1, 0.5)],
    ids=["before-epoch-1-ends", "right-after-epoch-1", "mid-epoch-2"],
)
def test_killed_and_resumed_equals_uninterrupted(
    after, fraction, straight, data_dir, tmp_path, capsys, one_thread
):
    """Killed for real (a ``python -m bench train`` subprocess, SIGKILL), resumed here through
    the command line with the same single thread as the uninterrupted run."""
    out = tmp_path / "ckpt"
    run_dir = out / "killed"
    held = _kill_after(_argv(data_dir, out, "killed"), run_dir, after, fraction)
    assert held < EPOCHS

    # Visibly incomplete: no weights, listed as incomplete, refused with the resume command.
    assert checkpoint.weights_file(run_dir) is None
    assert json.loads((run_dir / "run.json").read_text())["complete"] is False
    assert checkpoint.find_incomplete(out) == [run_dir] and checkpoint.find_checkpoints(out) == []
    with pytest.raises(UsageError) as info:
        checkpoint.read_checkpoint(run_dir)
    assert str(info.value).endswith(f"resume it with: bench train --resume {run_dir}")
    assert "\n" not in str(info.value)

    capsys.readouterr()
    assert (
        main(["train", "--resume", str(run_dir), "--no-progress", "--data-dir", str(data_dir)]) == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)
    resumed = checkpoint.read_checkpoint(run_dir)
    assert resumed.fingerprint == straight.fingerprint  # bit-identical weights
    assert resumed.run["resumed"][0]["from_epoch"] == held
    assert not (run_dir / checkpoint.STATE).exists()  # deleted once finished
    drop = ("seconds", "images_per_s")
    assert [{k: v for k, v in e.items() if k not in drop} for e in resumed.log] == [
        {k: v for k, v in e.items() if k not in drop} for e in straight.log
    ]
    assert resumed.run["catastrophic_overfitting"] == straight.run["catastrophic_overfitting"]


def _finished(fmnist_dir: Path, out: Path, run_id: str = "r", epochs: int = 2) -> Path:
    """A small finished run; tests cut files from it to make it look interrupted."""
    cfg = TrainConfig(
        epochs=epochs,
        train_limit=64,
        eval_n=32,
        batch_size=32,
        data_dir=str(fmnist_dir),
        download=False,
        out_dir=str(out),
        run_id=run_id,
    )
    return train(cfg, progress=False, log=lambda s: None)


def test_the_state_file_holds_no_pickle_and_says_where_it_is(fmnist_dir, tmp_path, one_thread):
    out = tmp_path / "ckpt"
    # Kill-free way to see a mid-run state: train 1 epoch of 2 by stopping after the first save.
    cfg = TrainConfig(
        defense="fgsm-rs",
        epochs=2,
        train_limit=64,
        eval_n=32,
        batch_size=32,
        data_dir=str(fmnist_dir),
        download=False,
        out_dir=str(out),
        run_id="r",
    )
    lines: list[str] = []

    def stop_after_first_epoch(line: str) -> None:
        lines.append(line)
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt  # what Ctrl-C would do right after the epoch's state is saved

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, log=stop_after_first_epoch)
    state = (out / "r" / checkpoint.STATE).read_bytes()
    (header_len,) = struct.unpack("<Q", state[:8])
    header = json.loads(state[8 : 8 + header_len])  # safetensors: a JSON header, then raw bytes
    meta = json.loads(header["__metadata__"]["bench_state"])
    assert (
        meta["epoch"] == 1
        and meta["epochs"] == 2
        and meta["iteration"] == 2
        and len(meta["log"]) == 1
    )
    assert meta["catastrophic_overfitting"]["heldout_n"] == 64
    names = set(header) - {"__metadata__"}
    assert {"rng/cpu", "rng/shuffle"} <= names
    assert any(n.startswith("model/") for n in names) and any(
        n.endswith("/momentum_buffer") for n in names
    )
    assert all(header[n]["dtype"] == "U8" for n in names if n.startswith("rng/"))
    assert b"\x80\x02" not in state[: 8 + header_len]  # no pickle protocol marker in the header
    with pytest.raises(UsageError, match="stopped after epoch 1 of 2"):
        checkpoint.read_checkpoint(out / "r")


def test_resume_of_a_run_killed_before_its_first_epoch_starts_it_over(
    fmnist_dir, tmp_path, one_thread
):
    out = tmp_path / "ckpt"
    a = _finished(fmnist_dir, out, "a")
    b = _finished(fmnist_dir, out, "b")
    for name in ("weights.safetensors", "log.json"):
        (b / name).unlink()  # as left by a kill before the first epoch's state was written
    assert checkpoint.find_incomplete(out) == [b]
    with pytest.raises(UsageError, match="before its first epoch ended"):
        checkpoint.read_checkpoint(b)
    from bench.train import resume

    assert resume(b, progress=False, log=lambda s: None) == b
    assert checkpoint.read_checkpoint(b).fingerprint == checkpoint.read_checkpoint(a).fingerprint


def test_find_incomplete_searches_subdirectories(fmnist_dir, tmp_path, one_thread):
    out = tmp_path / "ckpt"
    done = _finished(fmnist_dir, out / "group", "done")
    cut = _finished(fmnist_dir, out / "group", "cut")
    (cut / "weights.safetensors").unlink()
    assert checkpoint.find_checkpoints(out) == [done]
    assert checkpoint.find_incomplete(out) == [cut]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--lr", "0.1"], "drop --lr"),
        (["--epochs", "5"], "drop --epochs"),
        (["--eps", "4/255"], "drop --eps"),
        (["--seeds", "1,2"], "drop --seeds"),
        (["--run-id", "x"], "drop --run-id"),
    ],
)
def test_resume_refuses_training_flags(extra, needle, fmnist_dir, tmp_path, capsys, one_thread):
    run_dir = _finished(fmnist_dir, tmp_path / "ckpt")
    (run_dir / "weights.safetensors").unlink()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir())
    status = main(["train", "--resume", str(run_dir), *extra])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and needle in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run_dir.iterdir()) == before


def test_resume_refuses_a_finished_or_missing_run(fmnist_dir, tmp_path, capsys, one_thread):
    run_dir = _finished(fmnist_dir, tmp_path / "ckpt")
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "complete" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_resume_refuses_a_state_from_another_configuration(
    fmnist_dir, tmp_path, capsys, one_thread
):
    run_dir = _finished(fmnist_dir, tmp_path / "ckpt")
    (run_dir / "weights.safetensors").unlink()  # as a run stopped before its weights were written
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "complete": False}))
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["train_size"] = 7  # not what the data now gives
    (run_dir / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(run_dir), "--data-dir", str(fmnist_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_size" in err


def test_optimizer_state_round_trips_with_its_layout(tiny_model, tiny_data):
    x, y = tiny_data
    model = tiny_model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    tensors, meta = checkpoint.optimizer_tensors(opt)
    meta = json.loads(json.dumps(meta))  # as stored
    fresh = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.0)
    checkpoint.restore_optimizer(fresh, tensors, meta)
    for p in model.parameters():
        a, b = opt.state[p]["momentum_buffer"], fresh.state[p]["momentum_buffer"]
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert fresh.param_groups[0]["momentum"] == 0.9 and fresh.param_groups[0]["lr"] == 0.1
