"""``bench quick``: the quick benchmark. Trains every defense briefly on Fashion-MNIST, evaluates
each checkpoint with FGSM, PGD and the official AutoAttack across the eps grid, writes reports/.

It runs the same ``bench train``, ``bench eval`` and ``bench report`` that users type, with
settings sized for 2 CPU cores; every setting is a flag, and the leaderboard's header states the
ones used.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from bench import paths
from bench.defenses import DEFENSES

QUICK_PREFIX = "quick-"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench quick``."""
    p = sub.add_parser(
        "quick",
        help="the quick benchmark: train every defense briefly, evaluate, write reports/",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--defenses", default=",".join(DEFENSES.names()), help="comma list (default: all)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="cnn")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-limit", type=int, default=10000, metavar="N")
    p.add_argument("--attacks", default="fgsm,pgd,autoattack")
    # Every other step of the 1/255 grid: AutoAttack costs scale with the attacked eps values.
    p.add_argument("--eps", default="0:8/255:2/255")
    p.add_argument("--n", type=int, default=100, help="test points evaluated (the first n)")
    # AutoAttack standard costs about 45 s per eps per checkpoint here (square and fab-t on the
    # points still robust): 7 checkpoints x 8 eps would take 40 minutes on 2 cores. The quick
    # benchmark runs AutoAttack's two APGD components instead, and the leaderboard says so;
    # `--aa-version standard` runs the full thing.
    p.add_argument("--aa-version", default="custom", help="AutoAttack version (default custom)")
    p.add_argument("--aa-attacks", default="apgd-ce,apgd-dlr",
                   help="AutoAttack's components for --aa-version custom (default apgd-ce,apgd-dlr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--checkpoints", default=None, help="default <home>/checkpoints/quick")
    p.add_argument("--db", default=None, help="default <out>/results.sqlite")
    p.add_argument("--out", default=None, help="reports directory (default <home>/reports)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate, report; prints the leaderboard's path last."""
    from bench.cli import main

    names = [d.strip() for d in args.defenses.split(",") if d.strip()]
    for name in names:
        DEFENSES[name]  # unknown -> UsageError before anything runs
    out = Path(args.out).expanduser().resolve() if args.out else paths.reports_dir()
    ckpt_root = Path(args.checkpoints).expanduser().resolve() if args.checkpoints else paths.checkpoints_dir() / "quick"
    db = Path(args.db).expanduser().resolve() if args.db else out / "results.sqlite"
    common = ["--data-dir", args.data_dir] if args.data_dir else []
    device = ["--device", args.device] if args.device else []

    # A new quick benchmark replaces the last one's checkpoints (and, by run id, its rows).
    for name in names:
        shutil.rmtree(ckpt_root / f"{QUICK_PREFIX}{name}", ignore_errors=True)
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        status = main(
            ["train", "--defense", name, "--dataset", args.dataset, "--model", args.model,
             "--epochs", str(args.epochs), "--train-limit", str(args.train_limit),
             "--seed", str(args.seed), "--out", str(ckpt_root), "--run-id", f"{QUICK_PREFIX}{name}",
             "--no-progress", *common, *device]
        )
        if status:
            return status
        print(f"quick: trained {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    aa: list[str] = []
    if "autoattack" in args.attacks.split(","):  # the --aa-* flags are refused without it
        aa = ["--aa-version", args.aa_version]
        if args.aa_version == "custom":
            aa += ["--aa-attacks", args.aa_attacks]
    checkpoints = [str(ckpt_root / f"{QUICK_PREFIX}{name}") for name in names]
    t0 = time.perf_counter()
    status = main(
        ["eval", "--attack", args.attacks, "--eps", args.eps, "--n", str(args.n),
         "--seed", str(args.seed), "--db", str(db), "--checkpoint", *checkpoints, *aa, *common, *device]
    )
    if status:
        return status
    print(f"quick: evaluated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    status = main(["report", "--db", str(db), "--out", str(out)])
    if status:
        return status
    print(f"quick: total {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0

