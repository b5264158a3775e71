"""``bench perf``: training-step and evaluation costs side by side, printed and written as JSON
(see :mod:`bench.perf` for what each figure is)."""

from __future__ import annotations

import argparse
import sys

from bench import paths
from bench.attacks import make_attack
from bench.checkpoint import read_checkpoint
from bench.commands.common import add_shared
from bench.evaluation.walk import DEFAULT_WALK, WALKS
from bench.perf import PerfConfig, check_config, format_report, quick_config, run_perf, write_json

DEFAULT_OUT = "perf.json"  # under the reports directory


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench perf``."""
    d = PerfConfig()
    p = sub.add_parser(
        "perf",
        help="measure training and evaluation costs (ratios, images/s, memory)",
        description="Measure, in one process with the two sides of each ratio interleaved: each "
        "defense's training step against the clean step, bench's PGD-AT step against a "
        "torchattacks loop, the eps-grid walks against one run at the largest eps (PGD and "
        "AutoAttack, robust and standard model), images/s, and the peak memory of an evaluation.",
    )
    add_shared(p, "device", "data-dir", data_dir={"help": "data directory (never downloaded here)"})
    p.add_argument(
        "--n", type=int, default=d.n, help=f"test points of the grid comparisons (default {d.n})"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=d.repeats,
        help=f"training-step repeats (default {d.repeats})",
    )
    p.add_argument(
        "--grid-repeats",
        type=int,
        default=d.grid_repeats,
        help=f"repeats of each grid comparison (default {d.grid_repeats})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"training batch (default {d.batch_size})",
    )
    p.add_argument(
        "--train-limit",
        type=int,
        default=d.train_limit,
        help=f"training images of the models trained here (default {d.train_limit})",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=d.epochs,
        help=f"epochs of the models trained here (default {d.epochs})",
    )
    p.add_argument(
        "--memory-n",
        type=int,
        default=d.memory_n,
        help=f"points of the memory measurement, 0 to skip it (default {d.memory_n})",
    )
    p.add_argument(
        "--epoch-images",
        type=int,
        default=d.epoch_images,
        help="time whole training epochs of this many images (fp32, and bf16 with channels-last), "
        "0 to skip (default 0; 50000 for the GPU targets)",
    )
    p.add_argument(
        "--epoch-defenses",
        default=",".join(d.epoch_defenses),
        metavar="LIST",
        help=f"defenses of --epoch-images (default {','.join(d.epoch_defenses)})",
    )
    p.add_argument(
        "--epoch-batch",
        type=int,
        default=d.epoch_batch,
        help=f"batch of --epoch-images (default {d.epoch_batch})",
    )
    p.add_argument(
        "--aa-attacks",
        metavar="LIST",
        help="AutoAttack components to time instead of the standard version, e.g. apgd-ce,apgd-dlr",
    )
    p.add_argument(
        "--aa-walks",
        default=DEFAULT_WALK,
        metavar="LIST",
        help=(
            f"walks timed with AutoAttack, of {','.join(WALKS)} (default {DEFAULT_WALK}; PGD: all)"
        ),
    )
    p.add_argument(
        "--robust",
        metavar="CHECKPOINT",
        help="a PGD-AT checkpoint (default: trained here, briefly)",
    )
    p.add_argument(
        "--standard", metavar="CHECKPOINT", help="a standard checkpoint (default: trained here)"
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="T",
        help="torch intra-op threads (default: torch's; on a loaded machine 1 is steadier)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test of every figure on almost nothing, not numbers to keep (about 20 s "
        "on 2 CPU cores: 8 points, one repeat, AutoAttack's APGD-CE alone, a narrower cnn)",
    )
    p.add_argument("--out", metavar="FILE", help=f"the JSON (default <reports>/{DEFAULT_OUT})")
    p.set_defaults(func=run)


def config_of(args: argparse.Namespace) -> PerfConfig:
    """The PerfConfig the flags describe (checked)."""
    cfg = PerfConfig(
        device=args.device,
        data_dir=args.data_dir,
        n=args.n,
        repeats=args.repeats,
        grid_repeats=args.grid_repeats,
        batch_size=args.batch_size,
        train_limit=args.train_limit,
        epochs=args.epochs,
        memory_n=args.memory_n,
        epoch_images=args.epoch_images,
        epoch_defenses=tuple(d.strip() for d in args.epoch_defenses.split(",") if d.strip()),
        epoch_batch=args.epoch_batch,
        aa_attacks=args.aa_attacks,
        walks=tuple(w.strip() for w in args.aa_walks.split(",") if w.strip()),
        robust=args.robust,
        standard=args.standard,
        quick=args.quick,
        threads=args.threads,
    )
    check_config(quick_config(cfg) if cfg.quick else cfg)
    if cfg.aa_attacks is not None:
        make_attack(
            "autoattack", {"version": "custom", "attacks": cfg.aa_attacks}
        )  # UsageError if bad
    for flag, path in (("--robust", cfg.robust), ("--standard", cfg.standard)):
        if path:
            read_checkpoint(paths.resolve(path, flag))  # missing or corrupt: UsageError now
    return cfg


def run(args: argparse.Namespace) -> int:
    """Measure, print the table, write the JSON."""
    cfg = config_of(args)
    out = paths.resolve(args.out, "--out") if args.out else paths.reports_dir() / DEFAULT_OUT
    paths.check_creatable(out, "--out", directory=False)
    result = run_perf(
        cfg, log=lambda line: print(f"bench perf: {line}", file=sys.stderr, flush=True)
    )
    print(format_report(result))
    write_json(out, result)
    print(f"bench perf: JSON written to {out}", file=sys.stderr)
    return 0
