"""``bench report [--db PATH] [--out DIR]``: leaderboard, curves, plots, JSON and index.html from
the store (and pictures from the checkpoints it records)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.attacks import ATTACKS
from bench.commands.common import add_shared
from bench.errors import UnknownNameError
from bench.norms import L2
from bench.params import parse_eps, plural
from bench.paths import default_db, reports_dir, resolve


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bench report``."""
    p = subparsers.add_parser(
        "report",
        help=(
            "write leaderboard.md, index.html, plots and RobustBench-style JSON "
            "from the results store"
        ),
        description="Render the results store into --out: leaderboard.md, index.html (one "
        "self-contained page), plot-<dataset>-<attack>.png, tradeoff-<dataset>.png, "
        "transfer-<dataset>-<eps>.png, json/<run_id>.json, results.csv and results.json (every "
        "stored row, accuracies in % with their counts, n and 95% Wilson intervals); every "
        "number comes from the store, and the same store always gives the same leaderboard and "
        "JSON. Also gradients-<dataset>.png and adversarial-<dataset>-<run_id>.png, pictures "
        "computed from the checkpoints the store records (cached by weights fingerprint under "
        "--out/cache/), unless --no-images.",
    )
    add_shared(
        p,
        "db",
        "data-dir",
        db={"type": Path},
        data_dir={
            "help": "where the pictures' test images are (default: each checkpoint's own data "
            "directory, else $BENCH_DATA_DIR or <home>/data)"
        },
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory, created if missing (default: {reports_dir()})",
    )
    p.add_argument(
        "--rank-by",
        default="worst-case",
        metavar="BASIS",
        help="worst-case (default: the worst case over every attack, ranked only with "
        "standard AutoAttack among them), autoattack, clean, or an attack name",
    )
    p.add_argument(
        "--rank-eps",
        default=None,
        metavar="EPS",
        help="the eps of the ranked tables, e.g. 8/255 or, for L2 sections, 0.5 (default: the "
        "largest eps with standard AutoAttack, per section: a data set under one threat "
        "model); a section that never ran it keeps its default and says so",
    )
    p.add_argument(
        "--no-images",
        action="store_true",
        help="no pictures from the checkpoints (input gradients, adversarial examples)",
    )
    p.set_defaults(func=run)
    return p


def check_rank_by(rank_by: str) -> None:
    """``--rank-by`` must be a basis the report knows: worst-case, autoattack, clean or an
    attack."""
    from bench.report.model import RANK_BY  # here: bench.report only when the command runs

    valid = list(RANK_BY) + [a for a in ATTACKS.names() if a not in RANK_BY]
    if rank_by not in valid:
        raise UnknownNameError("--rank-by basis", rank_by, valid)


def run(args: argparse.Namespace) -> int:
    """Write the report; print the leaderboard's path last."""
    from bench.report import write_report  # here: bench.report only when the command runs

    check_rank_by(args.rank_by)
    # L2 and L1 budgets go above 1 (e.g. 2.0, 12): bounded here only as L2/L1 eps are
    rank_eps = parse_eps(args.rank_eps, "--rank-eps", L2) if args.rank_eps is not None else None
    data_dir = resolve(args.data_dir, "--data-dir") if args.data_dir else None
    files = write_report(
        args.db or default_db(),
        args.out or reports_dir(),
        args.rank_by,
        rank_eps,
        images=not args.no_images,
        data_dir=data_dir,
    )
    print(
        f"{plural(len(files.plots), 'figure')}, {plural(len(files.json), 'JSON file')}, "
        "results.csv, results.json and "
        f"{files.index.name} in {files.out}"
    )
    print(files.leaderboard)
    return 0
