"""Compare two quick-benchmark runs (directories written by scripts/quick_identity.sh): result
rows and findings of their stores, and their leaderboard.md and JSON files. Exit 0 when they
agree, 1 with the differences otherwise."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from pathlib import Path

# What may differ between two runs of the same evaluation: when and how fast it ran, and the
# device label (it carries the thread count of the process that ran the walk).
VOLATILE = {"seconds", "created", "updated", "device", "train_seconds", "versions"}


def rows(db: Path, table: str) -> list[dict[str, object]]:
    """Every row of ``table``, without the volatile columns, sorted."""
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    out = [
        {k: r[k] for k in r.keys() if k not in VOLATILE}
        for r in con.execute(f"SELECT * FROM {table}")
    ]
    con.close()
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def _details(row: dict[str, object]) -> dict[str, object]:
    """A diagnostics row with its JSON details parsed (their key order aside)."""
    out = dict(row)
    if isinstance(out.get("details"), str):
        out["details"] = json.loads(out["details"])
    return out


# In the report files: how long training took (a wall time, measured again by each run) and
# where the run's checkpoints were (each side has its own directory).
DURATION = re.compile(r"\b(\d+ min \d+ s|\d+(\.\d+)? s)\b")
VOLATILE_JSON = {
    "path",
    "train_seconds",
    "images_per_s",
    "seconds",
    "started",
    "finished",
    "created",
    "updated",
    "versions",
    "generated",
}


def text(path: Path) -> list[str]:
    """A leaderboard's lines: training durations masked, the library-version line left out."""
    return [
        DURATION.sub("<duration>", line)
        for line in path.read_text(encoding="utf-8").splitlines()
        if "torch " not in line and "versions" not in line.lower()
    ]


def plain(obj: object) -> object:
    """JSON without its volatile keys (:data:`VOLATILE_JSON`), at any depth."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items() if k not in VOLATILE_JSON}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


def same_json(a: Path, b: Path) -> bool:
    return plain(json.loads(a.read_text())) == plain(json.loads(b.read_text()))


def compare(a: Path, b: Path) -> list[str]:
    problems = []
    for table in ("results", "diagnostics"):
        ra, rb = (
            rows(a / "reports" / "results.sqlite", table),
            rows(b / "reports" / "results.sqlite", table),
        )
        if table == "diagnostics":
            ra, rb = [_details(r) for r in ra], [_details(r) for r in rb]
        print(f"{table}: {len(ra)} and {len(rb)} rows", file=sys.stderr)
        if ra != rb:
            problems.append(
                f"{table} differ: {len([r for r in ra if r not in rb])} rows of A not in B, "
                f"{len([r for r in rb if r not in ra])} of B not in A"
            )
    reports = a / "reports"
    jsons = sorted(
        str(p.relative_to(reports)) for p in reports.rglob("*.json") if "cache" not in p.parts
    )
    for name in ("leaderboard.md", *jsons):
        fa, fb = a / "reports" / name, b / "reports" / name
        if not fb.exists():
            problems.append(f"{name}: missing from B")
        elif name.endswith(".json") and same_json(fa, fb):
            print(f"{name}: identical (volatile keys aside)", file=sys.stderr)
        elif name.endswith(".json") or text(fa) != text(fb):
            diff = [f"  A: {x}\n  B: {y}" for x, y in zip(text(fa), text(fb)) if x != y][:5]
            problems.append(f"{name} differs:\n" + "\n".join(diff))
        else:
            print(f"{name}: identical (library-version lines aside)", file=sys.stderr)
    return problems


def main(argv: list[str]) -> int:
    a, b = Path(argv[0]), Path(argv[1])
    problems = compare(a, b)
    for p in problems:
        print(p)
    print("agree" if not problems else "DIFFER", f"({a} against {b})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
