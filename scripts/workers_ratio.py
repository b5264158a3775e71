"""bench eval in one process against ``bench eval --workers W`` on the same checkpoint and points:
wall times, their ratio, and whether the stored rows and findings are the same.

    .venv/bin/python scripts/workers_ratio.py CHECKPOINT [--data-dir DIR] [--n 1000] [--workers 2]
        [--attack fgsm,pgd,autoattack] [--eps 0:8/255:1/255] [--out docs/workers-ratio.json]

The in-process run goes first, then the Ray run; each into its own new store. Rows are compared
without when, how fast and where they ran (created, seconds, device, versions); findings without
their date. Run it on an idle machine: the ratio is only as good as the machine's quiet.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quick_identity import rows  # scripts/ is on the path of a script run from it


def stored(db: Path) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Result rows and findings, without when, how fast and where they ran, sorted."""
    return rows(db, "results"), rows(db, "diagnostics")


def verdicts(found: list[dict[str, object]]) -> list[tuple[str, ...]]:
    """What each finding says, without its float details (which depend on the thread count)."""
    keys = ("run_id", "n", "check_name", "key", "flagged")
    return sorted(tuple(str(f[k]) for k in keys) for f in found)


def timed_eval(args: argparse.Namespace, db: Path, extra: list[str]) -> float:
    """One ``bench eval`` run; its wall time in seconds."""
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "eval",
        "--checkpoint",
        args.checkpoint,
        "--attack",
        args.attack,
        "--eps",
        args.eps,
        "--n",
        str(args.n),
        "--batch-size",
        str(args.batch_size),
        "--db",
        str(db),
        "--no-download",
        "--no-progress",
        *(["--data-dir", args.data_dir] if args.data_dir else []),
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint")
    p.add_argument("--data-dir", help="bench's --data-dir (default: bench's own rules)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--attack", default="fgsm,pgd,autoattack")
    p.add_argument("--eps", default="0:8/255:1/255")
    p.add_argument("--out", help="write the figures as JSON here too")
    p.add_argument("--keep", help="keep the two stores in this directory (default: deleted)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch:
        tmp = args.keep or scratch
        alone = timed_eval(args, Path(tmp) / "alone.sqlite", [])
        spread = timed_eval(args, Path(tmp) / "spread.sqlite", ["--workers", str(args.workers)])
        a, b = stored(Path(tmp) / "alone.sqlite"), stored(Path(tmp) / "spread.sqlite")
    figures = {
        "checkpoint": args.checkpoint,
        "n": args.n,
        "batch_size": args.batch_size,
        "attack": args.attack,
        "eps": args.eps,
        "workers": args.workers,
        "in_process_s": round(alone, 1),
        "workers_s": round(spread, 1),
        "ratio_in_process_over_workers": round(alone / spread, 3),
        "rows": len(a[0]),
        "same_rows": a[0] == b[0],
        "findings": len(a[1]),
        "same_findings": a[1] == b[1],
        "same_verdicts": verdicts(a[1]) == verdicts(b[1]),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["same_rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
