"""``bench eval``: evaluate checkpoints with attacks over an eps grid in one threat model (Linf,
L2 or L1); store the results.

Everything is validated (attacks and their parameters, the eps grid, n, every checkpoint and its
data) before the results store is opened, so bad input leaves it untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import checkpoint, norms, paths, sources
from bench.attacks import ATTACKS, Attack, attack_names, make_attacks
from bench.commands.common import add_shared, ray_module
from bench.errors import BudgetViolation, UsageError
from bench.evaluation import surrogate
from bench.evaluation.local import evaluate_target
from bench.evaluation.plan import MAX_BATCH, SEED_MAX, Settings
from bench.evaluation.table import format_table
from bench.evaluation.targets import Target, attach_points, prepare_target
from bench.evaluation.transfer import check_request, write_matrix
from bench.evaluation.walk import DEFAULT_WALK, WALKS
from bench.io import pick_device
from bench.norms import LINF, NORMS
from bench.params import parse_eps, parse_eps_grid
from bench.sources import from_checkpoint
from bench.store import Store, check_store

DEFAULT_GRID = "0:8/255:1/255"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench eval``."""
    p = sub.add_parser(
        "eval",
        help="evaluate checkpoints with attacks over an eps grid",
        description="Evaluate checkpoints with torchattacks attacks and the official AutoAttack "
        "over an eps grid in one threat model (--norm Linf, L2 or L1; pixel scale [0, 1]); results "
        "go to the SQLite store.",
    )
    p.add_argument(
        "--attack",
        action="append",
        required=True,
        metavar="NAME[,NAME...]",
        help=f"attacks to run (valid: {', '.join(ATTACKS.names())})",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--checkpoint",
        action="extend",
        nargs="+",
        metavar="PATH",
        help="checkpoint directories (or their weights.safetensors)",
    )
    which.add_argument(
        "--model-factory",
        metavar="MODULE:FUNCTION",
        help="a model bench did not train: package.module:function or path/file.py:function "
        "returning an nn.Module (logits on images in [0, 1]); needs --dataset",
    )
    which.add_argument(
        "--robustbench",
        metavar="NAME",
        help="a RobustBench model-zoo entry, loaded by robustbench's load_model "
        "(from --model-dir); needs --dataset",
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="every finished checkpoint under the checkpoints directory (the "
        "default when no model is named)",
    )
    p.add_argument(
        "--checkpoints-dir",
        metavar="DIR",
        help=f"where --all looks (default {paths.checkpoints_dir()})",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="weights for --model-factory: .safetensors, or a state dict read with a "
        "weights-only torch load (never runs code from the file)",
    )
    p.add_argument("--name", metavar="NAME", help="leaderboard name of a --model-factory model")
    p.add_argument(
        "--threat-model",
        default=None,
        help="RobustBench threat model of --robustbench (default: --norm's, e.g. Linf)",
    )
    p.add_argument(
        "--model-dir",
        metavar="DIR",
        help="RobustBench model directory (default <data dir>/robustbench-models)",
    )
    p.add_argument(
        "--model-info",
        metavar="DIR",
        help="RobustBench model_info directory, for the published numbers shown beside ours",
    )
    p.add_argument(
        "--diagnose",
        action="store_true",
        help="also the costly checks: a very large budget, and the PGD loss trace with its "
        "remedy (APGD on the points still improving)",
    )
    p.add_argument(
        "--transfer-from",
        metavar="CHECKPOINT",
        help="the transfer probe's surrogate: replay PGD examples crafted on this checkpoint; "
        "'none': no transfer probe; default: a standard cnn of the data set, trained once "
        "(1 epoch, about 3 s on Fashion-MNIST) into <data dir>/surrogates/",
    )
    p.add_argument(
        "--transfer-matrix",
        action="store_true",
        help="after the evaluation, PGD examples crafted on each model evaluated on every "
        "model of its data set, on the first min(n, 500) points (bench.evaluation.transfer)",
    )
    p.add_argument(
        "--transfer-eps",
        metavar="EPS",
        help="eps of --transfer-matrix (default: the largest eps of --eps)",
    )
    p.add_argument(
        "--eps",
        default=None,
        metavar="GRID",
        help="start:stop:step (inclusive) or a comma list, e.g. 0,2/255,8/255 "
        f"(default under Linf {DEFAULT_GRID}; under L2 and L1 the data set's grid from the "
        "literature, e.g. 0:0.5:0.0625 for CIFAR-10 L2: see docs/threat-models.md)",
    )
    p.add_argument(
        "--norm",
        default=LINF,
        metavar="NORM",
        help=f"the threat model: {', '.join(NORMS)} (default {LINF}); every attack must have "
        "a version for it",
    )
    p.add_argument("--n", type=int, default=1000, help="first n test points (default 1000)")
    p.add_argument(
        "--batch-size", type=int, default=500, help="points per attack call (default 500)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="attack seed; batch k at eps e is seeded from (seed, e, k) (default 0)",
    )
    p.add_argument(
        "--walk",
        choices=WALKS,
        default=DEFAULT_WALK,
        help="how each attack walks the grid: bisect (default: a single run at the largest "
        "eps, then each broken point's breaking eps by bisection; robust below a measured "
        "robust eps is inferred), down (largest eps first, then downwards), up (ascending: "
        "every robust flag measured, a robust point attacked at every eps)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="recompute steps already in the store (default: a step stored with the same "
        "weights, points, grid, batch size and seed is reused, so a killed run resumes)",
    )
    p.add_argument("--dataset", metavar="NAME", help="refuse checkpoints of any other data set")
    add_shared(p, "db", "data-dir", "no-download", "device", "no-progress")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ATTACK.KEY=VALUE",
        help="an attack parameter, e.g. pgd.steps=20 (repeatable)",
    )
    p.add_argument(
        "--aa-version",
        choices=("standard", "plus", "rand", "custom"),
        help="shorthand for --set autoattack.version=...",
    )
    p.add_argument(
        "--aa-attacks",
        metavar="LIST",
        help="shorthand for --set autoattack.attacks=... (implies --aa-version custom), "
        "e.g. apgd-ce,apgd-t",
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="evaluate on a local Ray instance of N workers (one GPU each where there are "
        "GPUs): each evaluation's fixed batches are cut into N shards; same rows as in process",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="evaluate on this Ray cluster (one shard per worker; --workers sets how many)",
    )
    p.add_argument(
        "--cpus-per-task",
        type=int,
        default=1,
        metavar="N",
        help="with --workers/--address: Ray CPUs and torch threads per task (default 1)",
    )
    p.add_argument(
        "--shards",
        type=int,
        metavar="S",
        help="with --workers/--address: cut each evaluation's fixed batches into S shards "
        "(default: one per worker; more let a worker that finishes early take another)",
    )
    p.set_defaults(func=run)


def parse_attacks(
    names: list[str],
    sets: list[str],
    aa_version: str | None = None,
    aa_attacks: str | None = None,
    norm: str = LINF,
) -> list[Attack]:
    """The attacks named in ``--attack`` with their ``--set`` parameters, made for threat model
    ``norm`` (UsageError if bad, or if an attack has no version for ``norm``)."""
    order = attack_names(names, "--attack")
    params: dict[str, dict[str, str]] = {name: {} for name in order}
    for item in sets:
        key, sep, value = item.partition("=")
        name, dot, param = key.strip().partition(".")
        if not sep or not dot or not name or not param.strip():
            raise UsageError(f"--set {item!r}: write attack.key=value, e.g. pgd.steps=20")
        ATTACKS[name]
        if name not in params:
            raise UsageError(
                f"--set {item!r}: attack {name} is not among --attack {','.join(order)}"
            )
        params[name][param.strip().replace("-", "_")] = value.strip()
    if aa_version is not None or aa_attacks is not None:
        if "autoattack" not in params:
            raise UsageError("--aa-version/--aa-attacks need autoattack among --attack")
        aa = params["autoattack"]
        for k, v in (("version", aa_version), ("attacks", aa_attacks)):
            if v is not None:
                if k in aa and aa[k] != v:
                    raise UsageError(f"autoattack {k} is given twice ({aa[k]} and {v})")
                aa[k] = v
        if aa_attacks is not None:
            aa.setdefault("version", "custom")
    return make_attacks(order, params, norm)


def eps_grid_for(text: str | None, norm: str, datasets: set[str]) -> list[float]:
    """``--eps`` parsed under ``norm``; without it, the default grid of the models' data set
    under ``norm`` (one line if their data sets' default grids differ)."""
    if text is not None:
        return parse_eps_grid(text, norm)
    grids = {norms.default_grid(d, norm) for d in datasets} or {norms.default_grid(None, norm)}
    if len(grids) > 1:
        raise UsageError(
            f"the default {norm} grids of {', '.join(sorted(datasets))} differ "
            f"({'; '.join(sorted(grids))}); give --eps"
        )
    return parse_eps_grid(grids.pop(), norm)


def run(args: argparse.Namespace) -> int:
    """Validate everything, then evaluate each checkpoint in turn."""
    norm = norms.check_norm(args.norm)
    attacks = parse_attacks(args.attack, args.set, args.aa_version, args.aa_attacks, norm)
    if args.eps is not None:
        parse_eps_grid(args.eps, norm)  # a bad grid is refused before any model is read
    if args.n < 1:
        raise UsageError(f"--n must be >= 1, got {args.n}")
    if not 1 <= args.batch_size <= MAX_BATCH:  # the plan's bound, checked before any file
        raise UsageError(
            f"--batch-size must be a whole number in 1..{MAX_BATCH}, got {args.batch_size}"
        )
    if not 0 <= args.seed <= SEED_MAX:
        raise UsageError(f"--seed must be in 0..2**63-1, got {args.seed}")
    device = pick_device(args.device)
    ray_opts = ray_request(args)
    # The store is checked (not opened for writing) before any model is read.
    db = check_store(args.db if args.db else paths.default_db())
    # Every model is read and checked against its data before the store is opened.
    targets = load_targets(args)
    eps_grid = eps_grid_for(args.eps, norm, {t.source.dataset for t in targets})
    matrix_eps = transfer_request(args, eps_grid, targets)
    transfer = surrogate_for(args, targets)  # trained once, after every check
    settings = Settings(
        attacks,
        eps_grid,
        args.batch_size,
        args.seed,
        args.fresh,
        not args.no_progress,
        args.diagnose,
        transfer,
        walk=args.walk,
        norm=norm,
    )
    status = (
        evaluate_all(targets, settings, device, db)
        if ray_opts is None
        else evaluate_all_on_ray(targets, settings, db, ray_opts, args)
    )
    if status or matrix_eps is None:
        return status
    write_matrix(db, targets, matrix_eps, args.seed, args.batch_size, norm=norm)
    return 0


def args_norm(args: argparse.Namespace) -> str:
    """The threat model ``--norm`` names (canonical)."""
    return norms.check_norm(args.norm)


def surrogate_for(args: argparse.Namespace, targets: list[Target]) -> Any:
    """The transfer probe's surrogate: ``--transfer-from``'s checkpoint; none with 'none' or
    when the models are of several data sets; else the data set's standard surrogate."""
    if args.transfer_from == "none":
        return None
    if args.transfer_from:
        return from_checkpoint(paths.resolve(args.transfer_from, "--transfer-from")).model
    datasets = {t.source.dataset for t in targets}
    if len(datasets) != 1:
        return None
    return surrogate.standard(datasets.pop(), paths.data_dir(args.data_dir))


def ray_request(args: argparse.Namespace) -> object | None:
    """The Ray options of ``--workers``/``--address`` (checked), or None: in process, and Ray
    is never imported."""
    if args.workers is None and args.address is None:
        for flag, given in (
            ("--cpus-per-task", args.cpus_per_task != 1),
            ("--shards", args.shards),
        ):
            if given:
                raise UsageError(f"{flag} goes with --workers or --address")
        return None
    numbers = (
        ("--workers", args.workers),
        ("--cpus-per-task", args.cpus_per_task),
        ("--shards", args.shards),
    )
    for flag, value in numbers:
        if value is not None and not 1 <= value <= 4096:
            raise UsageError(f"{flag} must be a whole number in 1..4096, got {value}")
    cluster = _ray_module("bench.cluster")
    return cluster.RayOptions(
        address=args.address, cpus_per_task=args.cpus_per_task, progress=not args.no_progress
    )


def _ray_module(name: str) -> Any:
    """``name`` imported, or one line saying that --workers and --address need Ray."""
    return ray_module(name, "--workers and --address need")


def transfer_request(
    args: argparse.Namespace, eps_grid: list[float], targets: list[Target]
) -> float | None:
    """The eps of ``--transfer-matrix`` (checked before anything runs), or None without it."""
    if not args.transfer_matrix:
        if args.transfer_eps is not None:
            raise UsageError("--transfer-eps goes with --transfer-matrix")
        return None
    eps = (
        parse_eps(args.transfer_eps, "--transfer-eps", args_norm(args))
        if args.transfer_eps is not None
        else max(eps_grid)
    )
    check_request(targets, eps, args_norm(args))
    return eps


def load_targets(args: argparse.Namespace) -> list[Target]:
    """The models to evaluate with their first n test points (UsageError on anything bad)."""
    data_dir = paths.data_dir(args.data_dir)
    download = not args.no_download
    for flag, value in (("--weights", args.weights), ("--name", args.name)):
        if value and not args.model_factory:
            raise UsageError(f"{flag} goes with --model-factory")
    if args.model_factory or args.robustbench:
        if not args.dataset:
            raise UsageError("--model-factory and --robustbench need --dataset")
        if args.model_factory:
            src = sources.from_factory(args.model_factory, args.weights, args.dataset, args.name)
        else:
            src = sources.from_robustbench(
                args.robustbench,
                args.threat_model or args.norm,
                args.dataset,
                args.model_dir,
                args.model_info,
            )
        return [attach_points(src, args.n, data_dir, download)]
    targets: dict[str, Target] = {}
    for path in checkpoint_paths(args):
        target = prepare_target(path, args.n, data_dir, args.dataset, download)
        targets.setdefault(str(target.source.path), target)
    return list(targets.values())


def checkpoint_paths(args: argparse.Namespace) -> list[Path]:
    """The checkpoints named (``--checkpoint``) or found under the checkpoints directory (``--all``
    or nothing named); unfinished runs found there are skipped with one line each."""
    if args.checkpoint:
        if args.checkpoints_dir:
            raise UsageError("--checkpoints-dir goes with --all, not with --checkpoint")
        return [paths.resolve(c, "checkpoint") for c in args.checkpoint]
    root = (
        paths.resolve(args.checkpoints_dir, "--checkpoints-dir")
        if args.checkpoints_dir
        else paths.checkpoints_dir()
    )
    if root.exists() and not root.is_dir():
        raise UsageError(f"--checkpoints-dir {root} is not a directory")
    for run_dir in getattr(checkpoint, "find_incomplete", lambda r: [])(root):
        reason = checkpoint.not_complete_message(run_dir)
        print(f"bench: skipping {run_dir}: {reason}", file=sys.stderr)
    found = checkpoint.find_checkpoints(root)
    if not found:
        raise UsageError(
            f"no finished checkpoints under {root} (train one, or name one with --checkpoint)"
        )
    return found


def evaluate_all_on_ray(
    targets: list[Target],
    settings: Settings,
    db: Path,
    opts: Any,
    args: argparse.Namespace,
) -> int:
    """Evaluate every target on Ray into the store ``db``; the tables as in process, in order."""
    executor = _ray_module("bench.evaluation.ray_executor")
    with Store(db) as store:
        store.check_writable()
        done, failed = executor.evaluate_on_ray(
            targets, settings, store, opts, args.workers, args.device, args.shards
        )
    for ev in done:
        print(format_table(ev, ev.device), file=sys.stdout)
    for run_id, error in failed:
        print(
            f"bench: error: model {run_id}: {error} (its unfinished steps are not stored)",
            file=sys.stderr,
        )
    if failed:
        return 1
    print(f"results stored in {db}", file=sys.stderr)
    return 0


def evaluate_all(targets: list[Target], settings: Settings, device: object, db: Path) -> int:
    """Evaluate each target into the store ``db`` (opened and checked writable first)."""
    with Store(db) as store:
        store.check_writable()
        for target in targets:
            try:
                evaluate_target(target, settings, device, store, out=sys.stdout)  # type: ignore[arg-type]
            except BudgetViolation as exc:
                # An attack bug, not a result: the step in progress is not stored.
                print(
                    f"bench: error: {exc} (model {target.run_id}; that step is not stored)",
                    file=sys.stderr,
                )
                return 1
    print(f"results stored in {db}", file=sys.stderr)
    return 0
