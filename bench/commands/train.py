"""``bench train``: train one model with one defense and write its checkpoint."""

from __future__ import annotations

import argparse

from bench.data import DATASETS
from bench.defenses import DEFENSES, all_param_names
from bench.errors import UsageError
from bench.params import parse_assignments
from bench.train import SCHEDULES, TrainConfig, train
from models import MODELS

PARAM_DEST = "defense_param_"


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
    p.add_argument("--defense", default=d.defense, help=f"one of: {', '.join(DEFENSES.names())} (default {d.defense})")
    p.add_argument("--dataset", default=d.dataset, help=f"one of: {', '.join(DATASETS.names())} (default {d.dataset})")
    p.add_argument("--model", default=d.model, help=f"one of: {', '.join(MODELS.names())} (default {d.model})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"(default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak SGD learning rate (default {d.lr})")
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"(default {d.momentum})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"(default {d.weight_decay})")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="piecewise: lr x0.1 at 50%% and 75%% of training; cosine (default piecewise)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    p.add_argument("--train-limit", type=int, default=None, metavar="N",
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--eval-n", type=int, default=d.eval_n,
                   help=f"test points for the per-epoch clean accuracy (default {d.eval_n})")
    p.add_argument("--no-augment", action="store_true", help="turn off the data set's crop/flip augmentation")
    p.add_argument("--data-dir", default=None, help="data directory (default $BENCH_DATA_DIR, else <home>/data)")
    p.add_argument("--no-download", action="store_true", help="never try to download a data set")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--out", default=None, help="checkpoints directory (default <home>/checkpoints)")
    p.add_argument("--run-id", default=None, help="checkpoint directory name (default <defense>-<model>-<dataset>-s<seed>-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a defense parameter, e.g. --set eps=8/255 --set layers=alternate:2")
    group = p.add_argument_group("defense parameters (each applies only to defenses that have it)")
    for name in all_param_names():
        group.add_argument(f"--{name.replace('_', '-')}", dest=PARAM_DEST + name, default=None, metavar="V")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train and print the checkpoint directory on the last line of stdout."""
    values = parse_assignments(args.set)
    for key, value in vars(args).items():
        if key.startswith(PARAM_DEST) and value is not None:
            name = key[len(PARAM_DEST):]
            if name in values and values[name] != value:
                raise UsageError(f"--{name.replace('_', '-')} and --set {name}= disagree")
            values[name] = value
    cfg = TrainConfig(
        dataset=args.dataset, model=args.model, defense=args.defense, defense_params=values,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed,
        train_limit=args.train_limit, eval_n=args.eval_n, augment=not args.no_augment,
        data_dir=args.data_dir, download=not args.no_download, device=args.device,
        out_dir=args.out, run_id=args.run_id,
    )
    path = train(cfg, progress=not args.no_progress)
    print(path)
    return 0
