"""``bench quick``: the quick benchmark. Trains every defense briefly on Fashion-MNIST, evaluates
each checkpoint with FGSM, PGD and the official AutoAttack, computes the transfer matrix at the
ranking eps (PGD crafted on each checkpoint, evaluated on every other, on the first min(n, 500)
points), writes reports/ with index.html and its pictures.

Sized for 2 CPU cores and to say something: adversarial defenses train at Fashion-MNIST's
conventional budget (eps 0.1), every checkpoint is evaluated over the card's grid 0..8/255 and at
0.1 with FGSM and PGD, and with standard AutoAttack at 0.1, the ranking eps.
Every setting is a flag, every argument is checked before anything is deleted or trained, and
the leaderboard's header states the settings used.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench import norms, paths
from bench.commands.common import add_shared
from bench.commands.eval import evaluate_all, parse_attacks
from bench.data import load_dataset
from bench.defenses import DEFENSES, build_defense
from bench.errors import UsageError
from bench.evaluation.plan import Settings, check_settings
from bench.evaluation.targets import Target, prepare_target
from bench.evaluation.transfer import MAX_POINTS, write_matrix
from bench.io import pick_device
from bench.norms import L1, LINF, NORMS
from bench.params import INT_MAX, parse_eps, parse_eps_grid
from bench.store import check_store
from bench.train import TrainConfig, check, train

if TYPE_CHECKING:
    from bench.report import ReportFiles

QUICK_PREFIX = "quick-"
ADVERSARIAL = ("fgsm-at", "fgsm-rs", "pgd-at", "trades")  # trained at --train-eps


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench quick``."""
    p = sub.add_parser(
        "quick",
        help="the quick benchmark: train every defense briefly, evaluate, write reports/",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--defenses", default=",".join(DEFENSES.names()), help="comma list (default: all)"
    )
    p.add_argument("--dataset", default="fashion-mnist", help="(default fashion-mnist)")
    p.add_argument("--model", default="cnn", help="(default cnn)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    p.add_argument(
        "--train-limit",
        type=int,
        default=10000,
        metavar="N",
        help="train on the first N training images (default 10000)",
    )
    p.add_argument(
        "--norm",
        default=LINF,
        help=f"the threat model of training and evaluation: {', '.join(NORMS)} (default "
        f"{LINF}; under L2 and L1 the eps defaults below become the data set's budget and grid "
        "from the literature, see docs/threat-models.md)",
    )
    p.add_argument(
        "--train-eps",
        default=None,
        help="eps of the adversarial defenses' training attacks (default 0.1, "
        "Fashion-MNIST's conventional Linf budget; under L2/L1 the data set's budget)",
    )
    p.add_argument(
        "--attacks",
        default=None,
        help="attacks over the grid (default fgsm,pgd; pgd under L1, which has no FGSM; "
        "autoattack here runs the custom version with --aa-attacks)",
    )
    p.add_argument(
        "--eps",
        default=None,
        help="grid of --attacks (default: the card's 0..8/255 every other step, and 0.1; "
        "under L2/L1 the data set's grid)",
    )
    p.add_argument(
        "--rank-eps",
        default=None,
        help="where standard AutoAttack also runs and the leaderboard ranks (default 0.1; "
        "under L2/L1 the data set's budget)",
    )
    p.add_argument(
        "--n", type=int, default=200, help="test points evaluated: the first n (default 200)"
    )
    # Standard AutoAttack on every eps would cost about 45 s per eps per checkpoint here (square
    # and fab-t on the robust points): it runs at the ranking eps; the grid gets FGSM and PGD.
    p.add_argument(
        "--aa-attacks",
        default="apgd-ce",
        help="AutoAttack custom components over the grid when --attacks includes autoattack "
        "(default apgd-ce)",
    )
    p.add_argument("--seed", type=int, default=0, help="training and attack seed (default 0)")
    p.add_argument("--checkpoints", default=None, help="default <home>/checkpoints/quick")
    add_shared(
        p, "data-dir", "device", "db", db={"help": "results store (default <out>/results.sqlite)"}
    )
    p.add_argument("--out", default=None, help="reports directory (default <home>/reports)")
    p.set_defaults(func=run)


@dataclass
class Plan:
    """A validated quick benchmark: what to train, evaluate and where to write."""

    names: list[str]
    train_eps: float
    grid: Settings
    ranking: Settings
    ckpt_root: Path
    db: Path
    out: Path


def plan(args: argparse.Namespace) -> Plan:
    """Check every argument (UsageError) before anything is deleted, trained or written."""
    from bench.report import check_out  # here: bench.report is only needed when quick runs

    names = [d.strip() for d in args.defenses.split(",") if d.strip()]
    if not names:
        raise UsageError("--defenses names no defense")
    for name in names:
        DEFENSES[name]  # unknown -> UsageError before anything runs
    for flag in ("epochs", "train_limit", "n"):
        if not 1 <= getattr(args, flag) <= INT_MAX:
            raise UsageError(
                f"--{flag.replace('_', '-')} must be in 1..2**63-1, got {getattr(args, flag)}"
            )
    norm = norm_defaults(args)
    train_eps = parse_eps(args.train_eps, "--train-eps", norm)
    for name in names:  # the training eps must suit each defense (e.g. PGD-AT's step rule)
        if name in ADVERSARIAL:
            build_defense(name, defense_params(args, name))
    grid, rank_eps = parse_eps_grid(args.eps, norm), parse_eps(args.rank_eps, "--rank-eps", norm)
    names_ = [a.strip() for a in args.attacks.split(",") if a.strip()]
    custom = "autoattack" in names_
    aa = ("custom", args.aa_attacks) if custom else (None, None)
    attacks = parse_attacks([args.attacks], [], *aa, norm=norm)
    standard = parse_attacks(["autoattack"], [], "standard", None, norm=norm)
    for s in (attacks, standard):
        check_settings(s, grid, 500, args.seed)
    out = paths.resolve(args.out, "--out") if args.out else paths.reports_dir()
    root = (
        paths.resolve(args.checkpoints, "--checkpoints")
        if args.checkpoints
        else paths.checkpoints_dir() / "quick"
    )
    check_out(out)
    paths.check_creatable(root, "--checkpoints", directory=True)
    db = check_store(args.db if args.db else out / "results.sqlite")
    p = Plan(
        names,
        train_eps,
        Settings(attacks, grid, 500, args.seed, progress=False, norm=norm),
        Settings(standard, [rank_eps], 500, args.seed, progress=False, norm=norm),
        root,
        db,
        out,
    )
    check_training(p, args)
    return p


def norm_defaults(args: argparse.Namespace) -> str:
    """``--norm`` checked; the eps and attack flags left unset filled with its defaults (Linf:
    the quick benchmark as before; L2 and L1: the data set's budget and grid, bench.norms)."""
    norm = norms.check_norm(args.norm)
    args.norm = norm
    budget = norms.budget(args.dataset, norm)
    linf = norm == LINF
    args.train_eps = args.train_eps or ("0.1" if linf else f"{budget.eps:g}")
    args.rank_eps = args.rank_eps or ("0.1" if linf else f"{budget.eps:g}")
    args.eps = args.eps or ("0,2/255,4/255,6/255,8/255,0.1" if linf else budget.grid)
    args.attacks = args.attacks or ("pgd" if norm == L1 else "fgsm,pgd")
    return norm


def defense_params(args: argparse.Namespace, name: str) -> dict[str, str]:
    """An adversarial defense's training eps, and its norm where it is not Linf (so a Linf run's
    config stays as it was)."""
    if name not in ADVERSARIAL:
        return {}
    return {"eps": args.train_eps} | ({} if args.norm == LINF else {"norm": args.norm})


def train_config(p: Plan, args: argparse.Namespace, name: str) -> TrainConfig:
    """The training run of one defense: ``<checkpoints>/quick-<defense>``."""
    params = defense_params(args, name)
    return TrainConfig(
        dataset=args.dataset,
        model=args.model,
        defense=name,
        defense_params=params,
        epochs=args.epochs,
        train_limit=args.train_limit,
        seed=args.seed,
        data_dir=args.data_dir,
        device=args.device,
        out_dir=str(p.ckpt_root),
        run_id=f"{QUICK_PREFIX}{name}",
    )


def check_training(p: Plan, args: argparse.Namespace) -> None:
    """Every training run and the data it needs, checked before the first quick checkpoint is
    replaced: names, numbers, model, device, and the train and test splits' sizes."""
    for name in p.names:  # resuming=True: the last quick run's directory is replaced, not an error
        check(train_config(p, args, name), resuming=True)
    data_dir = paths.data_dir(args.data_dir)
    for split, wanted, flag in (
        ("train", args.train_limit, "--train-limit"),
        ("test", args.n, "--n"),
    ):
        size = len(load_dataset(args.dataset, split, data_dir))
        if wanted > size:
            raise UsageError(
                f"{flag} {wanted} is larger than the {split} split of {args.dataset} "
                f"({size} points)"
            )


def train_all(p: Plan, args: argparse.Namespace) -> list[Path]:
    """Train each defense into ``<checkpoints>/quick-<defense>``, replacing the last quick run."""
    out = []
    for name in p.names:
        t0 = time.perf_counter()
        cfg = train_config(p, args, name)
        shutil.rmtree(p.ckpt_root / str(cfg.run_id), ignore_errors=True)
        out.append(train(cfg, progress=False))
        print(f"quick: trained {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def run(args: argparse.Namespace) -> int:
    """Validate, train, evaluate, report; prints the leaderboard's path last."""
    p = plan(args)
    device = pick_device(args.device)
    started = time.perf_counter()
    ckpts = train_all(p, args)
    t0 = time.perf_counter()
    data_dir = paths.data_dir(args.data_dir)
    targets = [prepare_target(c, args.n, data_dir) for c in ckpts]
    # The costly diagnostics too; the transfer probe's surrogate: the standard model trained here.
    p.grid.diagnose = True
    standard = [t for t in targets if t.source.config.get("defense") == "standard"]
    p.grid.transfer_from = p.ranking.transfer_from = standard[0].model if standard else None
    for settings in (p.grid, p.ranking):
        status = evaluate_all(targets, settings, device, p.db)
        if status:
            return status
    evaluated = time.perf_counter() - t0
    print(f"quick: evaluated in {evaluated:.1f} s", file=sys.stderr)
    files = visual_report(p, targets, args, evaluated, started)
    print(f"quick: total {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(files.leaderboard)
    return 0


def visual_report(
    p: Plan, targets: list[Target], args: argparse.Namespace, evaluated: float, started: float
) -> "ReportFiles":
    """The transfer matrix at the ranking eps (stored), then the report with its pictures;
    prints what each cost: the matrix beside the evaluation, the pictures beside the rest of
    the quick run (training, evaluation, matrix and report without them)."""
    from bench.report import write_report  # here: bench.report is only needed when quick runs

    t0 = time.perf_counter()
    if len(targets) >= 2:
        s = p.grid
        write_matrix(p.db, targets, p.ranking.eps_grid[0], s.seed, s.batch_size, norm=s.norm)
    matrix = time.perf_counter() - t0
    files = write_report(p.db, p.out, data_dir=paths.data_dir(args.data_dir))
    pictures = files.image_seconds
    rest = time.perf_counter() - started - pictures
    print(
        f"quick: transfer matrix ({min(args.n, MAX_POINTS)} points, at most {MAX_POINTS}) "
        f"{matrix:.1f} s = {100 * matrix / max(evaluated, 1e-9):.1f}% of the evaluation; "
        f"pictures {pictures:.1f} s "
        f"= {100 * pictures / max(rest, 1e-9):.1f}% of the rest of quick ({rest:.1f} s)",
        file=sys.stderr,
    )
    return files
