"""Issue 21, a newcomer's first hour with ``bench train``: augmentation told as it is, a plan
before training, Ctrl-C that says how to resume, run ids that are text, twin runs, and checkpoint
messages that say what is actually wrong. Tiny runs on the CPU, a few seconds each."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import bench.train as bt
from bench import checkpoint
from bench.cli import build_parser, main
from bench.data import DATASETS, dataset_info
from bench.errors import UsageError
from bench.io import device_label
from bench.sweep.spec import train_identity

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread: None) -> None:
    """Tiny models: one intra-op thread (see conftest.one_thread)."""


def _argv(out: Path, data: Path, *extra: str, defense: str = "standard") -> list[str]:
    return [
        "train",
        "--defense",
        defense,
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "--eval-n",
        "32",
        "--batch-size",
        "32",
        "--data-dir",
        str(data),
        "--no-download",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def _cfg(out: Path, data: Path, run_id: str, **kw: Any) -> bt.TrainConfig:
    base: dict[str, Any] = dict(
        epochs=1, train_limit=64, eval_n=32, batch_size=32, data_dir=str(data), download=False
    )
    return bt.TrainConfig(**{**base, **kw}, out_dir=str(out), run_id=run_id)


# --- item 4: augmentation ---------------------------------------------------------------------


def test_config_records_the_augmentation_applied(tmp_path, fmnist_dir):
    """Fashion-MNIST has no augmentation: config.json says none was applied, and what was asked."""
    ck = tmp_path / "ckpt"
    for run_id, extra in (("on", []), ("off", ["--no-augment"])):
        assert main(_argv(ck, fmnist_dir, "--run-id", run_id, *extra)) == 0
    on = json.loads((ck / "on" / "config.json").read_text())
    off = json.loads((ck / "off" / "config.json").read_text())
    assert (on["augment"], on["augment_mode"], on["augment_requested"]) == (False, "none", True)
    assert (off["augment"], off["augment_mode"], off["augment_requested"]) == (False, "none", False)


@pytest.mark.parametrize("mode", ["crop", "crop-flip"])
def test_config_of_a_data_set_with_augmentation(mode, tmp_path, fmnist_dir):
    p = bt.prepare(_cfg(tmp_path, fmnist_dir, "x"))
    p = dataclasses.replace(p, info=dataclasses.replace(p.info, augment=mode))
    saved = bt.resolved_config(p)
    assert (saved["augment"], saved["augment_mode"], saved["augment_requested"]) == (
        True,
        mode,
        True,
    )
    p.cfg.augment = False
    saved = bt.resolved_config(p)
    assert (saved["augment"], saved["augment_mode"], saved["augment_requested"]) == (
        False,
        "none",
        False,
    )


def test_a_run_saved_with_the_old_augment_key_still_resumes(tmp_path, fmnist_dir):
    """Runs saved before: ``"augment": true`` (the request) beside ``"augment_mode": "none"``."""
    cfg = _cfg(tmp_path, fmnist_dir, "old", epochs=2)

    def stop_after_first_epoch(line: str) -> None:
        if line.startswith("epoch 1/2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bt.train(cfg, progress=False, log=stop_after_first_epoch)
    path = tmp_path / "old" / "config.json"
    saved = json.loads(path.read_text())
    saved["augment"] = True
    del saved["augment_requested"]
    path.write_text(json.dumps(saved))
    assert bt.resume(tmp_path / "old", progress=False, log=lambda s: None) == tmp_path / "old"
    assert checkpoint.read_checkpoint(tmp_path / "old").log[-1]["epoch"] == 2


def test_a_sweep_finds_its_run_whichever_way_augment_was_saved():
    job = {"dataset": "fashion-mnist", "augment": True}  # a sweep job's TrainConfig fields
    new = {"dataset": "fashion-mnist", "augment": False, "augment_requested": True}
    old = {"dataset": "fashion-mnist", "augment": True, "augment_mode": "none"}
    assert train_identity(job) == train_identity(new) == train_identity(old)


def test_no_augment_help_says_each_data_sets_augmentation(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "crop/flip" not in text
    none = [n for n in DATASETS.names() if dataset_info(n).augment == "none"]
    assert f"{', '.join(none)} have none" in text
    assert "random crop (4-pixel zero padding) for svhn" in text
    assert "and horizontal flip for cifar10, cifar100" in text


# --- item 5: the plan, the expected time, Ctrl-C -----------------------------------------------


def test_the_plan_comes_first(tmp_path, fmnist_dir, capsys):
    ck = tmp_path / "ckpt"
    argv = _argv(ck, fmnist_dir, "--run-id", "p", "--steps", "1", defense="pgd-at")
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "plan: pgd-at (Linf, eps 8/255) on fashion-mnist, 128 training images, model cnn, "
        f"1 epoch, 4 steps per epoch (batch 32), on {device_label(torch.device('cpu'))}, "
        f"checkpoint {ck / 'p'}"
    )
    assert err[1].startswith("epoch 1/1")
    assert not any(line.startswith("expected:") for line in err)  # too short to estimate


def test_the_expected_time_is_measured():
    said: list[str] = []
    readings = iter([100.0, 102.5])  # after step 1 and after step 11: 250 ms a step
    timer = bt.StepTimer(237, torch.device("cpu"), said.append, clock=lambda: next(readings))
    for _ in range(30):
        timer.tick()
    assert said == [
        "expected: about 59 s of training (237 steps at 250 ms, the pace of steps 2-11), plus "
        "the clean-accuracy evaluation after each epoch"
    ]


def test_a_run_says_its_expected_time_after_the_plan(tmp_path, fmnist_dir, capsys, monkeypatch):
    monkeypatch.setattr(bt, "ESTIMATE_STEPS", 1)  # time step 2 only: 8 steps are then enough
    assert main(_argv(tmp_path, fmnist_dir, "--run-id", "e", "--epochs", "2")) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("plan: ") and err[2].startswith("epoch 1/2")
    assert re.fullmatch(
        r"expected: about \d+ s of training \(8 steps at \d+ ms, the pace of steps 2-2\), plus "
        r"the clean-accuracy evaluation after each epoch",
        err[1],
    )


def _interrupt_epoch(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Ctrl-C as epoch ``at`` starts (the epochs before it finished and saved)."""
    real = bt._run_epoch

    def run_epoch(loop: Any, epoch: int, *rest: Any) -> None:
        if epoch == at:
            raise KeyboardInterrupt
        real(loop, epoch, *rest)

    monkeypatch.setattr(bt, "_run_epoch", run_epoch)


def test_ctrl_c_prints_the_command_that_resumes(tmp_path, fmnist_dir, capsys, monkeypatch):
    ck = tmp_path / "check points"  # a space: the command must quote the path
    run_dir = ck / "r"
    _interrupt_epoch(monkeypatch, at=2)
    argv = _argv(ck, fmnist_dir, "--run-id", "r", "--epochs", "2", "--device", "cpu")
    assert main(argv) == 130
    last = capsys.readouterr().err.splitlines()[-1]
    command = f"bench train --resume '{run_dir}' --device cpu"
    assert last == (
        f"bench: interrupted; checkpoint {run_dir} is incomplete (training stopped after epoch 1 "
        f"of 2); resume it with: {command}"
    )
    monkeypatch.undo()
    words = shlex.split(last.split("resume it with: ")[1])
    assert words[:2] == ["bench", "train"] and main(words[1:] + ["--no-progress"]) == 0
    plan = [s for s in capsys.readouterr().err.splitlines() if s.startswith("plan: ")]
    assert ", epochs 2-2 of 2, 4 steps per epoch " in plan[0]
    resumed = checkpoint.read_checkpoint(run_dir)
    assert [e["epoch"] for e in resumed.log] == [1, 2] and resumed.run["resumed"]
    assert main(_argv(tmp_path, fmnist_dir, "--run-id", "straight", "--epochs", "2")) == 0
    straight = checkpoint.read_checkpoint(tmp_path / "straight")
    assert resumed.fingerprint == straight.fingerprint  # resumed, not started over


def test_ctrl_c_before_anything_can_resume_is_plain(tmp_path, fmnist_dir, capsys, monkeypatch):
    def interrupted(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bt, "_make_loop", interrupted)  # while building, before any file
    assert main(_argv(tmp_path / "ckpt", fmnist_dir, "--run-id", "r")) == 130
    assert capsys.readouterr().err == "bench: interrupted\n"
    assert not (tmp_path / "ckpt").exists()


def test_ctrl_c_in_the_first_epoch_resumes_from_the_start(
    tmp_path, fmnist_dir, capsys, monkeypatch
):
    _interrupt_epoch(monkeypatch, at=1)
    assert main(_argv(tmp_path, fmnist_dir, "--run-id", "r")) == 130
    err = capsys.readouterr().err
    assert err.endswith(
        f"(training stopped before its first epoch ended); resume it with: "
        f"bench train --resume {tmp_path / 'r'}\n"
    )


# --- items 19 and 20: run ids -----------------------------------------------------------------


def test_a_run_id_that_is_not_utf8_is_refused(tmp_path, fmnist_dir, capsys):
    run_id = os.fsdecode(b"\xff\xfe")  # what Python makes of these bytes in argv
    assert main(_argv(tmp_path / "ckpt", fmnist_dir, "--run-id", run_id)) == 2
    err = capsys.readouterr().err
    assert (
        err == "bench: error: --run-id '\\udcff\\udcfe' is not valid UTF-8; choose a UTF-8 name\n"
    )
    assert not (tmp_path / "ckpt").exists()


def test_the_twin_that_loses_gets_one_line(tmp_path, fmnist_dir, capsys, monkeypatch):
    """The other run creates the folder between this one's check and its creation."""
    real = bt.prepare

    def twin_wins(cfg: bt.TrainConfig, resuming: bool = False) -> bt.Prepared:
        p = real(cfg, resuming)
        p.run_dir.mkdir(parents=True)
        (p.run_dir / "twin").write_text("mine")
        return p

    monkeypatch.setattr(bt, "prepare", twin_wins)
    assert main(_argv(tmp_path, fmnist_dir, "--run-id", "twin")) == 2
    err = capsys.readouterr().err
    assert err == (
        f"bench: error: checkpoint directory {tmp_path / 'twin'} already exists; "
        "choose another --run-id\n"
    )
    assert [p.name for p in (tmp_path / "twin").iterdir()] == ["twin"]


def test_creating_the_run_folder_twice(tmp_path):
    bt.create_run_dir(tmp_path / "a" / "b")
    with pytest.raises(UsageError, match="already exists"):
        bt.create_run_dir(tmp_path / "a" / "b")


# --- item 21: what is wrong with a checkpoint -------------------------------------------------


@pytest.fixture
def finished(tmp_path, fmnist_dir) -> Path:
    """A small finished run to break."""
    return bt.train(_cfg(tmp_path, fmnist_dir, "done"), progress=False, log=lambda s: None)


def _message(run_dir: Path) -> str:
    with pytest.raises(UsageError) as info:
        checkpoint.read_checkpoint(run_dir).load_state()
    return str(info.value)


@pytest.mark.parametrize(
    "how,problem",
    [
        ("missing", "is missing"),
        ("loop", "is a symlink loop"),
        ("broken", "is a broken symlink (to nowhere.safetensors)"),
    ],
)
def test_a_finished_run_without_its_weights_says_so(how, problem, finished):
    weights = finished / "weights.safetensors"
    weights.unlink()
    if how == "loop":
        weights.symlink_to("weights.safetensors")
    elif how == "broken":
        weights.symlink_to("nowhere.safetensors")
    msg = _message(finished)
    assert msg == (
        f"checkpoint {finished} finished training (run.json says complete) but its weights file "
        f"{weights} {problem}: restore that file; there is no training state left to resume from"
    )
    assert "--resume" not in msg and "incomplete" not in msg
    with pytest.raises(UsageError, match="no training state left to resume from"):
        bt.prepare_resume(finished)  # resuming would retrain from scratch: refused


def test_an_unreadable_weights_file_is_permission_denied(finished):
    weights = finished / "weights.safetensors"
    weights.chmod(0)
    try:
        if not IS_ROOT:
            msg = _message(finished)
        else:  # root reads anything: drop the capabilities that let it (setpriv, util-linux)
            msg = _as_unprivileged_root(finished)
    finally:
        weights.chmod(0o644)
    assert msg == f"checkpoint {weights} can't be read: permission denied"


def _as_unprivileged_root(run_dir: Path) -> str:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root reads a chmod 000 file, and setpriv is not here to drop that right")
    code = (
        "import sys\nfrom bench.checkpoint import read_checkpoint\nfrom bench.errors import "
        "UsageError\ntry:\n    read_checkpoint(sys.argv[1]).load_state()\nexcept UsageError as "
        "e:\n    print(e)\n"
    )
    drop = ["--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    done = subprocess.run(
        [setpriv, *drop, sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"setpriv could not drop the capabilities: {done.stderr.strip()[-200:]}")
    return done.stdout.strip()


@pytest.mark.parametrize(
    "key,named",
    [
        ("model", "['model']"),
        ("run_id", "['run_id']"),
        ("dataset_info.std", "['dataset_info.std']"),
    ],
)
def test_a_config_missing_one_key_names_that_key(key, named, finished):
    path = finished / "config.json"
    config = json.loads(path.read_text())
    outer, _, inner = key.partition(".")
    del (config[outer] if inner else config)[inner or outer]
    path.write_text(json.dumps(config))
    assert _message(finished) == f"{path} lacks {named}: corrupt checkpoint"


def test_a_config_that_is_no_object_says_so(finished):
    path = finished / "config.json"
    path.write_text("[1, 2]")
    assert _message(finished) == (
        f"{path} lacks the object of settings bench writes (it holds a JSON list): "
        "corrupt checkpoint"
    )


@pytest.mark.parametrize(
    "drop,named",
    [("epochs", "lacks epochs"), ("dataset_info.classes", "lacks dataset_info.classes")],
)
def test_resume_names_the_key_config_lacks(drop, named, tmp_path):
    now = {"epochs": 2, "dataset_info": {"channels": 1, "classes": ["a"]}, "train_size": 8}
    saved = json.loads(json.dumps(now))
    outer, _, inner = drop.partition(".")
    del (saved[outer] if inner else saved)[inner or outer]
    with pytest.raises(UsageError) as info:
        bt._check_same(saved, now, tmp_path)
    assert str(info.value) == (
        f"can't resume {tmp_path}: its config.json {named} "
        "(edited, or saved by another version of bench?)"
    )


def test_resume_names_a_null_key_bench_does_not_write(tmp_path):
    now = {"epochs": 2, "dataset_info": {"channels": 1}}
    saved = {"epochs": 2, "dataset_info": {"channels": 1, "extra": None}}
    with pytest.raises(UsageError) as info:  # was a StopIteration traceback
        bt._check_same(saved, now, tmp_path)
    assert str(info.value) == (
        f"can't resume {tmp_path}: its config.json has dataset_info.extra, which this bench "
        "does not write"
    )
