"""``bench train``: train one model with one defense and write its checkpoint.

``--seeds 0,1,2`` trains one checkpoint per seed; ``--resume RUN_DIR`` continues an interrupted
run. Every run is validated before the first one starts training.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.commands.common import add_shared
from bench.data import DATASETS, dataset_info
from bench.defenses import DEFENSES, all_param_names
from bench.defenses.adversarial import LP_ALPHA_RULE
from bench.errors import UsageError
from bench.models import MODELS
from bench.norms import LINF, NORMS, check_norm
from bench.params import dataclass_defaults, fmt_default, parse_assignments
from bench.train import (
    AMP_MODES,
    SCHEDULES,
    SEED_MAX,
    TrainConfig,
    check,
    default_run_id,
    resume,
    run_dir_of,
    train,
)

PARAM_DEST = "defense_param_"
NORM = "norm"  # the defense parameter that --norm sets (it has its own flag, not a named one)
#: Flags that may go with --resume: where and how to run, not what to train.
RESUME_OK = {
    "resume",
    "device",
    "data_dir",
    "no_download",
    "no_progress",
    "func",
    "command",
    "train_defaults",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench train``."""
    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a model with a defense; prints the checkpoint's path last",
        description="Train a model with a defense and write checkpoints/<run-id>/. "
        "Defense parameters: the named flags below or --set key=value, checked against the "
        "defense's own parameters (`bench list` shows them with their defaults).",
    )
    p.add_argument(
        "--defense",
        default=d.defense,
        help=f"one of: {', '.join(DEFENSES.names())} (default {d.defense})",
    )
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help=f"one of: {', '.join(DATASETS.names())} (default {d.dataset})",
    )
    p.add_argument(
        "--model", default=d.model, help=f"one of: {', '.join(MODELS.names())} (default {d.model})"
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"(default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument(
        "--lr", type=float, default=d.lr, help=f"peak SGD learning rate (default {d.lr})"
    )
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"(default {d.momentum})")
    p.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help=f"(default {d.weight_decay})"
    )
    p.add_argument(
        "--schedule",
        default=d.schedule,
        choices=SCHEDULES,
        help="piecewise: lr x0.1 at 50%% and 75%% of training; cosine (default piecewise)",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help=f"(default {d.seed})")
    seeds.add_argument(
        "--seeds",
        default=None,
        metavar="S,S,...",
        help="train one checkpoint per seed (run ids get -s<seed>); prints each path",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last completed epoch, with its own "
        "config.json (only --device, --data-dir, --no-download, --no-progress may go with it)",
    )
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N training images only (quick runs)",
    )
    p.add_argument(
        "--eval-n",
        type=int,
        default=d.eval_n,
        help=f"test points for the per-epoch clean accuracy (default {d.eval_n})",
    )
    p.add_argument("--no-augment", action="store_true", help=augment_help())
    add_shared(p, "data-dir", "no-download", "device", "no-progress")
    p.add_argument("--out", default=None, help="checkpoints directory (default <home>/checkpoints)")
    p.add_argument(
        "--run-id",
        default=None,
        help="checkpoint directory name (default <defense>-<model>-<dataset>-s<seed>-<time>)",
    )
    p.add_argument(
        "--amp",
        choices=AMP_MODES,
        default=d.amp,
        help="bf16: bfloat16 autocast for the training passes (default off; evaluation is float32)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory format (CUDA convolutions)",
    )
    p.add_argument("--compile", action="store_true", help="train through torch.compile(model)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a defense parameter, e.g. --set eps=8/255 --set layers=alternate:2",
    )
    p.add_argument(
        "--norm",
        default=None,
        metavar="|".join(NORMS),
        help=f"the threat model to train for (default {LINF}); sets the norm parameter of "
        f"{', '.join(norm_defenses())}",
    )
    group = p.add_argument_group("defense parameters (each applies only to defenses that have it)")
    for name in all_param_names():
        if name == NORM:
            continue
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=PARAM_DEST + name,
            default=None,
            metavar="V",
            help=param_help(name),
        )
    defaults = {a.dest: a.default for a in p._actions if a.dest != "help"}
    p.set_defaults(func=run, train_defaults=defaults)


def param_help(name: str) -> str:
    """Which defenses have the parameter ``name``, with each one's default."""
    have = [e for e in DEFENSES if name in e.defaults]
    text = "default " + "; ".join(f"{e.name} {fmt_default(name, e.defaults[name])}" for e in have)
    if name == "alpha":  # the registry lists the Linf rules; L2 and L1 have their own
        text += f" (under L2 and L1: pgd-at and trades {LP_ALPHA_RULE})"
    return text


#: The words for each augmentation a data set may have (DatasetInfo.augment).
AUGMENT_WORDS = {
    "crop": "random crop (4-pixel zero padding)",
    "crop-flip": "random crop (4-pixel zero padding) and horizontal flip",
}


def augment_help() -> str:
    """--no-augment's help: what each data set's standard augmentation is, from the registry."""
    by_mode: dict[str, list[str]] = {}
    for name in DATASETS.names():
        by_mode.setdefault(dataset_info(name).augment, []).append(name)
    parts = [
        f"{AUGMENT_WORDS.get(m, m)} for {', '.join(n)}" for m, n in by_mode.items() if m != "none"
    ]
    none = by_mode.get("none", [])
    return (
        "turn off the data set's standard training augmentation: "
        + "; ".join(parts)
        + (f"; {', '.join(none)} have none (the flag changes nothing there)" if none else "")
    )


def norm_defenses() -> list[str]:
    """The defenses that take a ``norm`` parameter (the adversarial trainings)."""
    return [e.name for e in DEFENSES if NORM in dataclass_defaults(e.factory)]  # type: ignore[arg-type]


def _defense_values(args: argparse.Namespace) -> dict[str, str]:
    """The defense parameters from --set, the named flags and --norm (which must agree)."""
    values = parse_assignments(args.set)
    for key, value in vars(args).items():
        if key.startswith(PARAM_DEST) and value is not None:
            name = key[len(PARAM_DEST) :]
            if name in values and values[name] != value:
                raise UsageError(f"--{name.replace('_', '-')} and --set {name}= disagree")
            values[name] = value
    _add_norm(args, values)
    return values


def _add_norm(args: argparse.Namespace, values: dict[str, str]) -> None:
    """``--norm`` into ``values``: the defense's ``norm`` parameter where it has one; for other
    defenses Linf (the threat model they are measured under by default) is accepted and
    dropped, L2 and L1 refused."""
    if args.norm is None:
        return
    norm = check_norm(args.norm)  # unknown -> one line listing Linf, L2, L1
    if args.defense not in DEFENSES:
        return  # build_defense names the unknown defense
    if args.defense not in norm_defenses():
        if norm != LINF:
            raise UsageError(
                f"--norm {norm}: defense {args.defense} has no norm (it trains for no threat "
                f"model); the defenses that take one: {', '.join(norm_defenses())}"
            )
        return
    if NORM in values and check_norm(values[NORM]) != norm:
        raise UsageError(f"--norm and --set {NORM}= disagree")
    values[NORM] = norm


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]: whole numbers in 0..2**63-1, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        try:
            seed = int(part.strip())
        except ValueError:
            raise UsageError(f"--seeds {text!r}: {part.strip()!r} is not a whole number") from None
        if not 0 <= seed <= SEED_MAX:
            raise UsageError(f"--seeds {text!r}: seed {seed} is outside 0..2**63-1")
        if seed in seeds:
            raise UsageError(f"--seeds {text!r}: seed {seed} is listed twice")
        seeds.append(seed)
    return seeds


def _config(args: argparse.Namespace, seed: int, run_id: str | None) -> TrainConfig:
    return TrainConfig(
        dataset=args.dataset,
        model=args.model,
        defense=args.defense,
        defense_params=_defense_values(args),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        seed=seed,
        train_limit=args.train_limit,
        eval_n=args.eval_n,
        augment=not args.no_augment,
        data_dir=args.data_dir,
        download=not args.no_download,
        device=args.device,
        out_dir=args.out,
        run_id=run_id,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
    )


def seed_configs(args: argparse.Namespace) -> list[TrainConfig]:
    """One configuration per seed (not yet checked); with ``--seeds`` every run id ends in
    ``-s<seed>`` (``--run-id NAME`` gives ``NAME-s<seed>``, else the default id, which has it)."""
    if args.seeds is None:
        return [_config(args, TrainConfig.seed if args.seed is None else args.seed, args.run_id)]
    cfgs = []
    for seed in parse_seeds(args.seeds):
        cfg = _config(args, seed, None)
        cfg.run_id = f"{args.run_id}-s{seed}" if args.run_id else default_run_id(cfg)
        cfgs.append(cfg)
    return cfgs


def _refuse_with_resume(args: argparse.Namespace) -> None:
    """--resume trains what config.json says: any training flag given with it is an error."""
    defaults: dict[str, Any] = args.train_defaults
    given = [k for k, v in vars(args).items() if k not in RESUME_OK and v != defaults.get(k)]
    if given:
        flag = given[0].removeprefix(PARAM_DEST).replace("_", "-")
        raise UsageError(f"--resume continues the run with its own config.json; drop --{flag}")


def run(args: argparse.Namespace) -> int:
    """Train (or resume) and print each checkpoint directory on the last lines of stdout."""
    if args.resume is not None:
        _refuse_with_resume(args)
        path = resume(
            args.resume,
            device=args.device,
            data_dir=args.data_dir,
            download=False if args.no_download else None,
            progress=not args.no_progress,
        )
        print(path, flush=True)
        return 0
    cfgs = seed_configs(args)
    if len(cfgs) > 1:  # every run validated before the first starts (one run: train checks it)
        for cfg in cfgs:
            check(cfg)
        if len({run_dir_of(cfg) for cfg in cfgs}) != len(cfgs):
            raise UsageError("--seeds gives two runs the same directory")
    for cfg in cfgs:
        print(train(cfg, progress=not args.no_progress), flush=True)
    return 0
