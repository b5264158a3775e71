"""``bench sweep FILE``: run a whole study (training variants x seeds, then evaluations) from one
sweep file on Ray: a local instance by default, a cluster with ``--address``. ``--dry-run``
prints the jobs. The file is checked whole before anything runs; a rerun skips finished jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from bench.commands.common import add_shared, ray_module
from bench.errors import UsageError
from bench.store import Store
from bench.sweep.spec import Sweep, describe, load_sweep

if TYPE_CHECKING:  # not at run time: Ray is imported only when a sweep runs
    from bench.sweep.driver import Outcome


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``bench sweep``."""
    p = sub.add_parser(
        "sweep",
        help="run a sweep file (training variants x seeds, then evaluations) on Ray",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="sweep file (.toml, or .yaml/.yml with PyYAML)")
    p.add_argument(
        "--dry-run", action="store_true", help="check the file and print the jobs; run nothing"
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="where checkpoints/, results.sqlite and report/ go (default: the file's "
        "[sweep] out, relative to the file, else <home>/reports/sweeps/<name>)",
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="join this Ray cluster (default $RAY_ADDRESS; else a local instance)",
    )
    p.add_argument(
        "--num-cpus", type=int, metavar="N", help="CPUs of the local instance (default: all)"
    )
    p.add_argument(
        "--cpus-per-task",
        type=int,
        default=1,
        metavar="N",
        help="Ray CPUs and torch threads per task (default 1)",
    )
    p.add_argument(
        "--gpu-resource",
        default="GPU",
        metavar="NAME",
        help="the Ray resource each training or evaluation task takes one of, when the "
        "cluster has it (default GPU)",
    )
    p.add_argument("--no-report", action="store_true", help="do not run bench report at the end")
    p.add_argument(
        "--no-images",
        action="store_true",
        help="the report at the end without the pictures computed from the checkpoints",
    )
    add_shared(p, "no-progress")
    p.set_defaults(func=run)


def _ray_driver() -> tuple[Any, Any]:
    """:class:`bench.cluster.RayOptions` and ``run_sweep``: Ray is imported here only."""
    needs = "bench sweep needs"
    cluster, driver = ray_module("bench.cluster", needs), ray_module("bench.sweep.driver", needs)
    return cluster.RayOptions, driver.run_sweep


def _check_numbers(args: argparse.Namespace) -> None:
    """--num-cpus and --cpus-per-task in 1..4096; --num-cpus only for a local instance."""
    for flag, value in (("--num-cpus", args.num_cpus), ("--cpus-per-task", args.cpus_per_task)):
        if value is not None and not 1 <= value <= 4096:
            raise UsageError(f"{flag} must be a whole number in 1..4096, got {value}")
    joined = args.address or os.environ.get("RAY_ADDRESS")
    if args.num_cpus is not None and joined:
        raise UsageError(
            f"--num-cpus sizes the local Ray instance; a cluster ({joined}) has its own CPUs"
        )


def run(args: argparse.Namespace) -> int:
    """Check the file, then print the jobs (--dry-run) or run them and write the report."""
    _check_numbers(args)
    sweep = load_sweep(args.file, args.out)
    if args.dry_run:
        print("\n".join(describe(sweep)))
        return 0
    RayOptions, run_sweep = _ray_driver()
    opts = RayOptions(
        args.address,
        args.num_cpus,
        args.cpus_per_task,
        args.gpu_resource,
        progress=not args.no_progress,
    )
    outcome = run_sweep(sweep, opts)
    print(summary(sweep, outcome), file=sys.stderr)
    if not args.no_report:
        _report(sweep, images=not args.no_images)
    return 1 if outcome.failed else 0


def summary(sweep: "Sweep", o: "Outcome") -> str:
    """The closing lines: counts, time, and each failed job with its configuration and error."""
    lines = [
        f"sweep {sweep.name}: trained {o.trained}, evaluated {o.evaluated}, skipped (done before) "
        f"{o.skipped}, failed {len(o.failed)} in {o.seconds:.1f} s"
    ]
    for config, error in o.failed:
        lines.append(f"  FAILED {config}\n    {error}")
    return "\n".join(lines)


def _report(sweep: "Sweep", images: bool = True) -> None:
    """``bench report`` of the sweep's store into its report directory (if it holds results);
    pictures from the sweep's test images."""
    from bench.report import write_report  # here: bench.report is only needed when a sweep runs

    with Store(sweep.db, readonly=True) as store:
        empty = store.count() == 0
    if empty:
        print("bench: sweep: no results stored; no report", file=sys.stderr)
        return
    print(
        write_report(sweep.db, sweep.report_dir, images=images, data_dir=sweep.data_dir).leaderboard
    )
