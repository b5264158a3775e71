"""Bad input, everywhere: every command refuses it with one line on stderr (``bench: error:``),
exit status 2, no traceback, and leaves every file it could touch as it was.

The commands run in this process through :func:`bench.cli.main` (the console script's entry
point) against one scratch world: a home with a checkpoint and an earlier quick benchmark's
checkpoint, a small Fashion-MNIST, results stores good and bad, broken checkpoints, read-only
folders, symlink loops. Before and after each case the whole world is listed (every file's
size, mode, modification time and, for files under 1 MB, its bytes): it must not change.

Tests run as root here, which reads and writes whatever the permission bits say. bench refuses
to write a file or folder whose write bits are all off even for root (``bench.paths.writable``),
so the read-only cases hold either way; an unreadable file (chmod 000) is only unreadable for
other users, so that case is skipped for root.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from conftest import write_idx

from bench.cli import main

LONG = "a" * 300  # a path component longer than 255 bytes
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------- the world


def _write_data(root: Path) -> None:
    """Fashion-MNIST in its real format: 64 training and 32 test images."""
    rng = np.random.default_rng(0)
    d = root / "fashion-mnist"
    d.mkdir(parents=True)
    for split, n in (("train", 64), ("t10k", 32)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(
            d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        )
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", labels)


def _config(run_id: str) -> dict[str, Any]:
    from bench.data import dataset_info

    return {
        "run_id": run_id,
        "dataset": "fashion-mnist",
        "model": "cnn",
        "defense": "standard",
        "defense_params": {},
        "dataset_info": asdict(dataset_info("fashion-mnist")),
        "epochs": 1,
        "train_limit": None,
        "seed": 0,
    }


def write_checkpoint(d: Path, run_id: str, weights: bytes | None = None) -> Path:
    """A finished checkpoint written by hand: the registry's cnn with random weights (or the
    given bytes as weights.pt), config.json and run.json."""
    from bench.data import dataset_info
    from bench.models import create_model

    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(_config(run_id)))
    (d / "run.json").write_text(json.dumps({"train_seconds": 1.0, "complete": True}))
    if weights is None:
        info = dataset_info("fashion-mnist")
        torch.manual_seed(0)
        model = create_model(
            "cnn",
            channels=1,
            num_classes=10,
            image_size=28,
            mean=list(info.mean),
            std=list(info.std),
        )
        torch.save(model.state_dict(), d / "weights.pt")
    else:
        (d / "weights.pt").write_bytes(weights)
    return d


def _broken_checkpoints(bad: Path, good: Path) -> None:
    """Checkpoints broken in one way each (tiny weights where they are never reached)."""
    cfg = _config("x")
    configs: dict[str, Any] = {
        "cfg-number": 42,
        "cfg-list": [1, 2],
        "cfg-missing": {k: v for k, v in cfg.items() if k != "dataset_info"},
        "cfg-info-type": {**cfg, "dataset_info": "x"},
        "cfg-model-type": {**cfg, "model": 5},
        "cfg-epochs-huge": {**cfg, "epochs": 10**23},
    }
    for name, content in configs.items():
        d = write_checkpoint(bad / name, "x", weights=b"x")
        (d / "config.json").write_text(json.dumps(content))
    (write_checkpoint(bad / "cfg-broken-json", "x", weights=b"x") / "config.json").write_text("{")
    (write_checkpoint(bad / "run-list", "x", weights=b"x") / "run.json").write_text("[1, 2]")
    d = write_checkpoint(bad / "cfg-dir", "x", weights=b"x")
    (d / "config.json").unlink()
    (d / "config.json").mkdir()
    weights = (good / "weights.pt").read_bytes()
    write_checkpoint(bad / "truncated", "x", weights=weights[:1000])
    write_checkpoint(
        bad / "foreign", "x", weights=b"PK\x03\x04" + bytes(range(256)) * 8
    )  # a broken zip
    write_checkpoint(bad / "text", "x", weights=b'{"not": "weights"}\n')
    write_checkpoint(bad / "malicious", "x", weights=pickle.dumps(os.system))
    d = write_checkpoint(
        bad / "incomplete", "x", weights=b"x"
    )  # killed before its first epoch ended
    (d / "weights.pt").unlink()
    (d / "run.json").write_text(json.dumps({"complete": False}))
    (bad / "no-config").mkdir()
    write_checkpoint(bad / "unreadable", "x", weights=b"x")


def _stores(d: Path, good: Path) -> None:
    """Results stores: good (copied), empty, foreign, old layout, not SQLite, a directory,
    read-only (the file; and a folder), a symlink loop."""
    from bench.store import Store

    d.mkdir()
    shutil.copy(good, d / "good.sqlite")
    Store(d / "empty.sqlite").close()
    with sqlite3.connect(d / "foreign.sqlite") as db:
        db.execute("CREATE TABLE t (x)")
    with sqlite3.connect(d / "old.sqlite") as db:
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)", [("application", "bench"), ("schema_version", "1")]
        )
    (d / "not-sqlite.sqlite").write_text("hello, not a database\n")
    (d / "a-directory.sqlite").mkdir()
    shutil.copy(good, d / "read-only.sqlite")
    (d / "read-only.sqlite").chmod(0o444)
    (d / "ro-dir").mkdir()
    shutil.copy(good, d / "ro-dir" / "good.sqlite")
    (d / "ro-dir").chmod(0o555)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The scratch world every case runs in (see the module docstring)."""
    w = tmp_path_factory.mktemp("bad")
    _write_data(w / "data")
    good = write_checkpoint(w / "home" / "checkpoints" / "ok", "ok")
    write_checkpoint(w / "home" / "checkpoints" / "quick" / "quick-standard", "quick-standard")
    _broken_checkpoints(w / "bad", good)
    store = w / "made.sqlite"  # a real store with rows, written by bench eval
    env = {"BENCH_HOME": str(w / "home"), "BENCH_DATA_DIR": str(w / "data")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert (
            main(
                [
                    "eval",
                    "--attack",
                    "fgsm",
                    "--checkpoint",
                    str(good),
                    "--n",
                    "8",
                    "--batch-size",
                    "8",
                    "--eps",
                    "0,8/255",
                    "--db",
                    str(store),
                    "--no-progress",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    _stores(w / "stores", store)
    store.unlink()
    (w / "a-file").write_text("a file\n")
    (w / "empty-dir").mkdir()
    for name in ("ro-out", "ro-train"):
        (w / name).mkdir()
        (w / name).chmod(0o555)
    (w / "loop1").symlink_to(w / "loop2")
    (w / "loop2").symlink_to(w / "loop1")
    (w / "factory.py").write_text("def not_a_model():\n    return 3\n")
    yield w
    for p in (w / "ro-out", w / "ro-train", w / "stores" / "ro-dir"):  # so that pytest can clean up
        p.chmod(0o755)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: type, size, mode, mtime and (files < 1 MB) a digest."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = None
            if stat.S_ISREG(st.st_mode) and st.st_size < 2**20 and os.access(p, os.R_OK):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
            size = None if kind == "dir" else st.st_size  # a folder's size changes with its entries
            out[str(p.relative_to(root))] = (kind, size, st.st_mode, st.st_mtime_ns, digest)
    return out


# ----------------------------------------------------------------------------- the cases

CK = "{w}/home/checkpoints/ok"
GOOD = "{w}/stores/good.sqlite"
EVAL = [
    "eval",
    "--checkpoint",
    CK,
    "--n",
    "8",
    "--batch-size",
    "8",
    "--eps",
    "0,8/255",
    "--db",
    GOOD,
    "--no-progress",
    "--device",
    "cpu",
]


def ev(*extra: str, attack: str = "fgsm") -> list[str]:
    """``bench eval`` on the good checkpoint into the good store, with ``extra`` flags
    (a later flag of the same name wins)."""
    return EVAL + ["--attack", attack, *extra]


def ev_ckpt(path: str) -> list[str]:
    return [
        "eval",
        "--attack",
        "fgsm",
        "--checkpoint",
        path,
        "--n",
        "8",
        "--db",
        GOOD,
        "--device",
        "cpu",
    ]


def ev_db(path: str) -> list[str]:
    return ev("--db", path)


def rep(*extra: str) -> list[str]:
    return ["report", "--db", GOOD, "--out", "{w}/report-out", *extra]


CASES: dict[str, tuple[list[str], str]] = {
    # ---- bench eval: names, numbers, parameters
    "eval-unknown-attack": (ev(attack="nope"), "unknown attack 'nope'; valid: fgsm"),
    "eval-unknown-attack-in-list": (ev(attack="fgsm,nope"), "unknown attack 'nope'"),
    "eval-attack-twice": (ev(attack="fgsm,fgsm"), "listed twice"),
    "eval-empty-attack": (ev(attack=","), "names no attack"),
    "eval-eps-div-zero": (ev("--eps", "8/0"), "'8/0' divides by zero"),
    "eval-eps-negative": (ev("--eps", "-1"), "outside \\[0, 1\\]"),
    "eval-eps-word": (ev("--eps", "abc"), "'abc' is not a number"),
    "eval-eps-overflow-num": (ev("--eps", "1e999/1"), "out of range"),
    "eval-eps-overflow-den": (ev("--eps", "1/1e999"), "out of range"),
    "eval-eps-huge-exponent": (ev("--eps", "1e-99999999999/1"), "out of range"),
    "eval-eps-float-overflow": (ev("--eps", "1e308/1e-308"), "not a finite number"),
    "eval-eps-nan": (ev("--eps", "nan"), "not a finite number"),
    "eval-eps-double-slash": (ev("--eps", "1/3/4"), "'1/3/4' is not a number"),
    "eval-grid-1e-9": (ev("--eps", "0:1:1e-9"), "more than 1000 points"),
    "eval-grid-1e-6": (ev("--eps", "0:1:1e-6"), "more than 1000 points"),
    "eval-grid-subnormal-step": (ev("--eps", "0:1:5e-324"), "more than 1000 points"),
    "eval-grid-two-parts": (ev("--eps", "0:1"), "write start:stop:step"),
    "eval-grid-reversed": (ev("--eps", "8/255:0:1/255"), "stop is below start"),
    "eval-grid-empty": (ev("--eps", ","), "eps grid is empty"),
    "eval-grid-zero-step": (ev("--eps", "0:1:0"), "step must be positive"),
    "eval-n-zero": (ev("--n", "0"), "--n must be >= 1"),
    "eval-n-negative": (ev("--n", "-5"), "--n must be >= 1"),
    "eval-n-word": (ev("--n", "abc"), "invalid int value"),
    "eval-n-above-test-split": (ev("--n", "99999999"), "larger than the fashion-mnist test split"),
    "eval-n-huge": (ev("--n", "99999999999999999999999"), "--n must be a whole number in"),
    "eval-batch-zero": (
        ev("--batch-size", "0"),
        "--batch-size must be a whole number in 1..1000000",
    ),
    "eval-workers-zero": (ev("--workers", "0"), "--workers must be a whole number in 1..4096"),
    "eval-shards-alone": (ev("--shards", "3"), "--shards goes with --workers or --address"),
    "eval-cpus-alone": (ev("--cpus-per-task", "2"), "--cpus-per-task goes with --workers"),
    "eval-shards-zero": (ev("--workers", "2", "--shards", "0"), "--shards must be a whole number"),
    "eval-batch-huge": (
        ev("--batch-size", "99999999999999999999999"),
        "--batch-size must be a whole number in 1..1000000",
    ),
    "eval-batch-above-the-plan": (
        ev("--batch-size", "2000000"),
        "--batch-size must be a whole number in 1..1000000, got 2000000",
    ),
    "eval-seed-negative": (ev("--seed", "-1"), "--seed must be in"),
    "eval-seed-huge": (ev("--seed", str(2**64)), "--seed must be in"),
    "eval-set-negative-steps": (
        ev("--set", "pgd.steps=-3", attack="pgd"),
        "steps must be positive",
    ),
    "eval-set-int-overflow": (ev("--set", "pgd.steps=" + "9" * 30, attack="pgd"), "out of range"),
    "eval-set-int-digits": (
        ev("--set", "pgd.steps=" + "9" * 5000, attack="pgd"),
        "not a whole number",
    ),
    "eval-set-float-overflow": (ev("--set", "pgd.alpha=1e999/1", attack="pgd"), "out of range"),
    "eval-set-bool": (ev("--set", "pgd.random_start=maybe", attack="pgd"), "not a boolean"),
    "eval-set-unknown-key": (ev("--set", "pgd.nope=1", attack="pgd"), "has no parameter 'nope'"),
    "eval-set-other-attack": (ev("--set", "pgd.steps=3"), "not among --attack"),
    "eval-set-malformed": (ev("--set", "pgd"), "write attack.key=value"),
    "eval-aa-without-autoattack": (ev("--aa-version", "standard"), "need autoattack"),
    "eval-aa-bad-version": (ev("--aa-version", "nope", attack="autoattack"), "invalid choice"),
    "eval-device": (ev("--device", "tpu"), "--device 'tpu'"),
    "eval-dataset-mismatch": (ev("--dataset", "mnist"), "not on --dataset mnist"),
    "eval-unknown-flag": (ev("--bogus"), "unrecognized arguments: --bogus"),
    "eval-name-without-factory": (ev("--name", "x"), "--name goes with --model-factory"),
    "eval-weights-without-factory": (
        ev("--weights", "{w}/a-file"),
        "--weights goes with --model-factory",
    ),
    "eval-transfer-missing": (ev("--transfer-from", "{w}/nope", "--diagnose"), "does not exist"),
    "eval-transfer-loop": (ev("--transfer-from", "{w}/loop1", "--diagnose"), "symlink loop"),
    # ---- bench eval: checkpoints
    "eval-ckpt-missing": (ev_ckpt("{w}/nope"), "does not exist"),
    "eval-ckpt-is-file": (ev_ckpt("{w}/a-file"), "not a checkpoint directory"),
    "eval-ckpt-no-config": (ev_ckpt("{w}/bad/no-config"), "config.json is missing"),
    "eval-ckpt-loop": (ev_ckpt("{w}/loop1"), "symlink loop"),
    "eval-ckpt-long-name": (ev_ckpt("{w}/" + LONG), "longer than 255 bytes"),
    "eval-ckpt-truncated": (ev_ckpt("{w}/bad/truncated"), "can't be read as weights"),
    "eval-ckpt-foreign": (ev_ckpt("{w}/bad/foreign"), "can't be read as weights"),
    "eval-ckpt-text-weights": (ev_ckpt("{w}/bad/text"), "weights.pt"),
    "eval-ckpt-malicious": (ev_ckpt("{w}/bad/malicious"), "refused"),
    "eval-ckpt-incomplete": (ev_ckpt("{w}/bad/incomplete"), "is incomplete"),
    "eval-cfg-number": (ev_ckpt("{w}/bad/cfg-number"), "config.json lacks"),
    "eval-cfg-list": (ev_ckpt("{w}/bad/cfg-list"), "config.json lacks"),
    "eval-cfg-missing-key": (ev_ckpt("{w}/bad/cfg-missing"), "lacks \\['dataset_info'\\]"),
    "eval-cfg-broken-json": (ev_ckpt("{w}/bad/cfg-broken-json"), "corrupt"),
    "eval-cfg-info-wrong-type": (ev_ckpt("{w}/bad/cfg-info-type"), "config.json is corrupt"),
    "eval-cfg-model-wrong-type": (ev_ckpt("{w}/bad/cfg-model-type"), "unknown model"),
    "eval-cfg-epochs-overflow": (
        ev_ckpt("{w}/bad/cfg-epochs-huge"),
        "epochs .* is not a whole number",
    ),
    "eval-cfg-is-directory": (ev_ckpt("{w}/bad/cfg-dir"), "is a directory"),
    "eval-run-json-list": (ev_ckpt("{w}/bad/run-list"), "run.json holds a JSON list"),
    "eval-all-empty-dir": (
        ["eval", "--attack", "fgsm", "--all", "--checkpoints-dir", "{w}/empty-dir", "--db", GOOD],
        "no finished checkpoints",
    ),
    "eval-all-dir-is-file": (
        ["eval", "--attack", "fgsm", "--all", "--checkpoints-dir", "{w}/a-file", "--db", GOOD],
        "is not a directory",
    ),
    "eval-all-dir-loop": (
        ["eval", "--attack", "fgsm", "--all", "--checkpoints-dir", "{w}/loop1", "--db", GOOD],
        "symlink loop",
    ),
    "eval-checkpoints-dir-with-checkpoint": (
        ev("--checkpoints-dir", "{w}/home"),
        "goes with --all",
    ),
    "eval-data-dir-is-file": (ev("--data-dir", "{w}/a-file"), "--data-dir .* is not a directory"),
    # ---- bench eval: other model sources
    "eval-factory-spec": (
        [
            "eval",
            "--attack",
            "fgsm",
            "--model-factory",
            "nocolon",
            "--dataset",
            "fashion-mnist",
            "--db",
            GOOD,
        ],
        "must be written",
    ),
    "eval-factory-not-a-model": (
        [
            "eval",
            "--attack",
            "fgsm",
            "--model-factory",
            "{w}/factory.py:not_a_model",
            "--dataset",
            "fashion-mnist",
            "--db",
            GOOD,
        ],
        "returned a int",
    ),
    "eval-factory-name-dotdot": (
        [
            "eval",
            "--attack",
            "fgsm",
            "--model-factory",
            "{w}/factory.py:not_a_model",
            "--name",
            "../x",
            "--dataset",
            "fashion-mnist",
            "--db",
            GOOD,
        ],
        "run id '../x' must be a plain name",
    ),
    "eval-factory-without-dataset": (
        ["eval", "--attack", "fgsm", "--model-factory", "x:y", "--db", GOOD],
        "need --dataset",
    ),
    "eval-robustbench-dataset": (
        [
            "eval",
            "--attack",
            "fgsm",
            "--robustbench",
            "Wong2020Fast",
            "--dataset",
            "fashion-mnist",
            "--db",
            GOOD,
        ],
        "no fashion-mnist models",
    ),
    "eval-robustbench-threat": (
        [
            "eval",
            "--attack",
            "fgsm",
            "--robustbench",
            "Wong2020Fast",
            "--dataset",
            "cifar10",
            "--threat-model",
            "L7",
            "--db",
            GOOD,
        ],
        "threat model 'L7'",
    ),
    "eval-robustbench-unknown": (
        [
            "eval",
            "--attack",
            "fgsm",
            "--robustbench",
            "Nope2099",
            "--dataset",
            "cifar10",
            "--db",
            GOOD,
        ],
        "unknown RobustBench cifar10 Linf model",
    ),
    # ---- bench eval: results stores
    "eval-db-directory": (ev_db("{w}/stores/a-directory.sqlite"), "is a directory"),
    "eval-db-not-sqlite": (ev_db("{w}/stores/not-sqlite.sqlite"), "not a usable SQLite file"),
    "eval-db-foreign": (ev_db("{w}/stores/foreign.sqlite"), "not a bench results store"),
    "eval-db-old-layout": (ev_db("{w}/stores/old.sqlite"), "layout version 1"),
    "eval-db-read-only-file": (ev_db("{w}/stores/read-only.sqlite"), "is read-only"),
    "eval-db-read-only-dir": (ev_db("{w}/stores/ro-dir/good.sqlite"), "ro-dir is read-only"),
    "eval-db-new-in-read-only-dir": (ev_db("{w}/stores/ro-dir/new.sqlite"), "ro-dir is read-only"),
    "eval-db-under-a-file": (ev_db("{w}/a-file/x.sqlite"), "a-file is not a directory"),
    "eval-db-loop": (ev_db("{w}/loop1"), "symlink loop"),
    "eval-db-long-name": (ev_db("{w}/" + LONG + ".sqlite"), "longer than 255 bytes"),
    # ---- bench report
    "report-db-missing": (
        ["report", "--db", "{w}/nope.sqlite", "--out", "{w}/report-out"],
        "does not exist",
    ),
    "report-db-directory": (rep("--db", "{w}/stores/a-directory.sqlite"), "is not a file"),
    "report-db-not-sqlite": (
        rep("--db", "{w}/stores/not-sqlite.sqlite"),
        "not a usable SQLite file",
    ),
    "report-db-foreign": (rep("--db", "{w}/stores/foreign.sqlite"), "not a bench results store"),
    "report-db-old-layout": (rep("--db", "{w}/stores/old.sqlite"), "layout version 1"),
    "report-db-empty": (rep("--db", "{w}/stores/empty.sqlite"), "empty store"),
    "report-db-loop": (rep("--db", "{w}/loop1"), "symlink loop"),
    "report-out-is-file": (rep("--out", "{w}/a-file"), "exists and is not a directory"),
    "report-out-under-file": (rep("--out", "{w}/a-file/sub"), "is not a directory"),
    "report-out-read-only": (rep("--out", "{w}/ro-out"), "is read-only"),
    "report-out-new-in-read-only": (rep("--out", "{w}/ro-out/new"), "is read-only"),
    "report-out-loop": (rep("--out", "{w}/loop1"), "symlink loop"),
    "report-out-long-name": (rep("--out", "{w}/" + LONG), "longer than 255 bytes"),
    "report-rank-eps-div-zero": (rep("--rank-eps", "8/0"), "'8/0' divides by zero"),
    "report-rank-eps-outside": (rep("--rank-eps", "-1"), "outside \\[0, 1e\\+07\\]"),
    "report-rank-eps-overflow": (rep("--rank-eps", "1e999/1"), "out of range"),
    "report-rank-by-unknown": (rep("--rank-by", "nope"), "unknown --rank-by basis 'nope'"),
    # ---- bench quick: everything is checked before a checkpoint is deleted or trained
    "quick-n-negative": (["quick", "--n", "-5"], "--n must be in 1..2\\*\\*63-1"),
    "quick-epochs-huge": (["quick", "--epochs", "9" * 30], "--epochs must be in"),
    "quick-n-above-test-split": (
        ["quick", "--n", "1000", "--defenses", "standard", "--train-limit", "16"],
        "--n 1000 is larger",
    ),
    "quick-unknown-defense": (["quick", "--defenses", "nope"], "unknown defense 'nope'"),
    "quick-no-defense": (["quick", "--defenses", ","], "names no defense"),
    "quick-epochs-zero": (["quick", "--epochs", "0"], "--epochs must be in"),
    "quick-train-limit-above-split": (
        ["quick", "--train-limit", "100000", "--defenses", "standard"],
        "larger than the",
    ),
    "quick-grid-1e-9": (["quick", "--eps", "0:1:1e-9"], "more than 1000 points"),
    "quick-train-eps-overflow": (["quick", "--train-eps", "1e999/1"], "out of range"),
    "quick-rank-eps-word": (["quick", "--rank-eps", "abc"], "is not a number"),
    "quick-unknown-attack": (["quick", "--attacks", "nope"], "unknown attack 'nope'"),
    "quick-seed-negative": (["quick", "--seed", "-1"], "--seed must be"),
    "quick-out-is-file": (["quick", "--out", "{w}/a-file"], "exists and is not a directory"),
    "quick-out-read-only": (["quick", "--out", "{w}/ro-out"], "is read-only"),
    "quick-checkpoints-is-file": (
        ["quick", "--checkpoints", "{w}/a-file"],
        "exists and is not a directory",
    ),
    "quick-checkpoints-loop": (["quick", "--checkpoints", "{w}/loop1"], "symlink loop"),
    "quick-db-foreign": (
        ["quick", "--db", "{w}/stores/foreign.sqlite"],
        "not a bench results store",
    ),
    "quick-db-read-only": (["quick", "--db", "{w}/stores/read-only.sqlite"], "is read-only"),
    "quick-data-dir-is-file": (
        ["quick", "--data-dir", "{w}/a-file", "--defenses", "standard"],
        "is not a directory",
    ),
    "quick-device": (["quick", "--device", "tpu"], "--device 'tpu'"),
    # ---- bench list and the top level
    "list-unknown-flag": (["list", "--bogus"], "unrecognized arguments"),
    "list-extra-argument": (["list", "extra"], "unrecognized arguments"),
    "no-command": ([], "required: COMMAND"),
    "unknown-command": (["nope"], "invalid choice: 'nope'"),
    # ---- bench train (its fixes belong to the training code; see TRAIN_OPEN below)
    "train-unknown-defense": (["train", "--defense", "nope"], "unknown defense 'nope'"),
    "train-unknown-model": (["train", "--model", "nope"], "unknown model 'nope'"),
    "train-unknown-dataset": (["train", "--dataset", "nope"], "unknown data set 'nope'"),
    "train-epochs-zero": (["train", "--epochs", "0"], "--epochs must be"),
    "train-lr-nan": (["train", "--lr", "nan"], "--lr must be"),
    "train-run-id-dotdot": (["train", "--run-id", "../x"], "must be a plain directory name"),
    "train-seeds-twice": (["train", "--seeds", "1,1"], "listed twice"),
    "train-seeds-huge": (["train", "--seeds", str(2**64)], "outside 0..2\\*\\*63-1"),
    "train-unknown-param": (["train", "--set", "nope=1"], "has no parameter 'nope'"),
    "train-param-overflow": (["train", "--defense", "pgd-at", "--eps", "1e999/1"], "out of range"),
    "train-param-int-overflow": (
        ["train", "--defense", "pgd-at", "--steps", "9" * 30],
        "out of range",
    ),
    "train-data-dir-is-file": (
        ["train", "--data-dir", "{w}/a-file", "--epochs", "1"],
        "is not a directory",
    ),
    "train-resume-missing": (["train", "--resume", "{w}/nope"], "no such run directory"),
    "train-resume-broken-config": (["train", "--resume", "{w}/bad/cfg-list"], "config.json lacks"),
    "train-run-id-too-long": (
        ["train", "--run-id", LONG, "--out", "{w}/train-out", "--epochs", "1"],
        "255",
    ),
    "train-out-is-file": (["train", "--out", "{w}/a-file", "--epochs", "1"], "not a directory"),
    "train-out-read-only": (
        ["train", "--out", "{w}/ro-train", "--epochs", "1", "--train-limit", "16"],
        "read-only",
    ),
    "train-out-loop": (["train", "--out", "{w}/loop1", "--epochs", "1"], "symlink loop"),
    "train-resume-config-dir": (["train", "--resume", "{w}/bad/cfg-dir"], "directory"),
    "train-resume-loop": (["train", "--resume", "{w}/loop1"], "symlink loop"),
    "train-epochs-huge": (["train", "--epochs", "9" * 30, "--out", "{w}/train-out"], "--epochs"),
    "train-epochs-too-many": (
        ["train", "--epochs", "1000001", "--out", "{w}/train-out"],
        "--epochs must be",
    ),
    "train-batch-huge": (
        ["train", "--batch-size", "10000001", "--out", "{w}/train-out"],
        "--batch-size must be",
    ),
    "train-eval-n-huge": (
        ["train", "--eval-n", "1000000000", "--out", "{w}/train-out"],
        "--eval-n must be",
    ),
}


def _fill(argv: list[str], w: Path) -> list[str]:
    return [a.replace("{w}", str(w)) for a in argv]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``bench ARGV`` in this process: exit status and the non-empty lines of stderr."""
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def bench_env(world: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_HOME", str(world / "home"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(world / "data"))
    monkeypatch.setattr("sys.dont_write_bytecode", True)  # a factory file leaves no __pycache__
    return world


def test_enough_cases() -> None:
    assert len(CASES) >= 50
    commands = {argv[0] if argv else "" for argv, _ in CASES.values()}
    assert {"eval", "report", "quick", "list", "train"} <= commands


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(
    name: str, bench_env: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    """One line on stderr naming what is wrong, exit 2, nothing written or changed."""
    import re

    argv, expected = CASES[name]
    before = snapshot(bench_env)
    rc, lines = run_cli(_fill(argv, bench_env), capsys)
    assert (rc, len(lines)) == (2, 1), lines
    assert lines[0].startswith("bench: error: "), lines
    assert re.search(expected, lines[0]), lines[0]
    assert "Traceback" not in lines[0]
    assert snapshot(bench_env) == before


def test_quick_bad_defense_keeps_the_last_quick_checkpoint(
    bench_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bench quick --defenses nope`` neither deletes nor retrains the last quick run."""
    old = bench_env / "home" / "checkpoints" / "quick" / "quick-standard"
    files = {p.name: p.read_bytes() for p in old.iterdir()}
    for argv in (
        ["quick", "--defenses", "standard,nope"],
        ["quick", "--n", "-5"],
        ["quick", "--defenses", "standard", "--n", "1000", "--train-limit", "16"],
    ):
        rc, lines = run_cli(argv, capsys)
        assert rc == 2 and len(lines) == 1, lines
        assert {p.name: p.read_bytes() for p in old.iterdir()} == files


@pytest.mark.skipif(IS_ROOT, reason="root reads a chmod 000 file: nothing is unreadable to it")
def test_unreadable_files(bench_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config.json and a results store that can't be read (chmod 000)."""
    cfg = bench_env / "bad" / "unreadable" / "config.json"
    store = bench_env / "stores" / "unreadable.sqlite"
    shutil.copy(bench_env / "stores" / "good.sqlite", store)
    cfg.chmod(0)
    store.chmod(0)
    try:
        before = snapshot(bench_env)
        for argv in (ev_ckpt(str(cfg.parent)), rep("--db", str(store)), ev_db(str(store))):
            rc, lines = run_cli(_fill(argv, bench_env), capsys)
            assert rc == 2 and len(lines) == 1 and lines[0].startswith("bench: error: "), lines
        assert snapshot(bench_env) == before
    finally:
        cfg.chmod(0o644)
        store.chmod(0o644)
        store.unlink()


def test_a_real_process_prints_one_line(world: Path) -> None:
    """The console entry point as a process: one line, status 2, no traceback."""
    import subprocess
    import sys

    env = {**os.environ, "BENCH_HOME": str(world / "home"), "BENCH_DATA_DIR": str(world / "data")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "eval",
            "--attack",
            "fgsm",
            "--eps",
            "0:1:1e-9",
            "--checkpoint",
            str(world / "home" / "checkpoints" / "ok"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "bench: error: eps grid '0:1:1e-9' has more than 1000 points; use a larger step"
    ]


def test_api_refuses_a_grid_over_the_limit() -> None:
    """A list given to the Python API never went through the eps parser: the grid limit holds
    there too."""
    from bench.errors import UsageError
    from bench.params import MAX_GRID_POINTS

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x, y = torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    grid = [i / (MAX_GRID_POINTS * 255) for i in range(MAX_GRID_POINTS + 1)]
    import bench

    with pytest.raises(UsageError, match="at most 1000"):
        bench.evaluate_model(model, x=x, y=y, attacks="fgsm", eps=grid)


def test_truncated_pickle_is_corrupt_not_code(tmp_path: Path) -> None:
    """A legacy pickle cut short is called corrupt; one that asks for a global is called code."""
    from bench.checkpoint import load_weights
    from bench.errors import UsageError

    cut = tmp_path / "cut" / "weights.pt"
    cut.parent.mkdir()
    whole = pickle.dumps({"w": [1.0, 2.0]}, protocol=2)
    torch.save({"w": torch.ones(3)}, cut, _use_new_zipfile_serialization=False)
    cut.write_bytes(cut.read_bytes()[:40])
    with pytest.raises(UsageError, match="corrupt|can't be read") as info:
        load_weights(cut)
    assert "run code" not in str(info.value)
    evil = tmp_path / "evil" / "weights.pt"
    evil.parent.mkdir()
    evil.write_bytes(pickle.dumps(os.system, protocol=2) + whole)
    with pytest.raises(UsageError, match="refused"):
        load_weights(evil)


def test_without_ray_the_ray_commands_say_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray missing: bench sweep and bench eval --workers each name what needs it (one helper)."""
    import re
    import sys

    from bench.commands import eval as eval_command
    from bench.commands import sweep as sweep_command
    from bench.errors import UsageError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    for name in ("bench.cluster", "bench.sweep.driver", "bench.evaluation.ray_executor"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    hint = "Ray: pip install -e '.[sweep]' (scripts/setup.sh does)"
    with pytest.raises(UsageError, match=re.escape(f"bench sweep needs {hint}")):
        sweep_command._ray_driver()
    with pytest.raises(UsageError, match=re.escape(f"--workers and --address need {hint}")):
        eval_command._ray_module("bench.cluster")
