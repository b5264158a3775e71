#!/usr/bin/env bash
# The sweep's "killed once and resumed" check, at full size: runs a sweep file twice into two
# fresh directories, once undisturbed and once SIGKILLed (the driver and the local Ray instance it
# started) after KILL_AFTER seconds and then rerun to the end; compares the two stores' per-point
# flags row by row and the two leaderboards without their training-time column.
# Usage: bash scripts/sweep_kill.sh [FILE (sweeps/batchout-ablation-fmnist.toml)] [KILL_AFTER (600)] [WORK (mktemp)]
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
file=${1:-$root/sweeps/batchout-ablation-fmnist.toml}; kill_after=${2:-600}
work=${3:-$(mktemp -d)}; mkdir -p "$work"
bench="$root/.venv/bin/bench"; py="$root/.venv/bin/python"
run() { "$bench" sweep "$file" --out "$1" --no-progress; }

t0=$SECONDS; run "$work/undisturbed" >"$work/undisturbed.log" 2>&1
echo "undisturbed: exit $?, $((SECONDS - t0)) s"

t0=$SECONDS
setsid "$bench" sweep "$file" --out "$work/killed" --no-progress >"$work/killed-1.log" 2>&1 &
pid=$!
sleep "$kill_after"
kill -KILL -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null
echo "killed after $((SECONDS - t0)) s"
t1=$SECONDS; run "$work/killed" >"$work/killed-2.log" 2>&1
echo "rerun: exit $?, $((SECONDS - t1)) s"

"$py" - "$work/undisturbed" "$work/killed" <<'PY'
import re, sqlite3, sys
def rows(d):
    con = sqlite3.connect(f"file:{d}/results.sqlite?mode=ro", uri=True)
    out = {r[:5]: r[5:] for r in con.execute(
        "SELECT run_id, attack, params, eps_key, n, fingerprint, flags FROM results")}
    left = con.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    return out, left, con.execute("PRAGMA integrity_check").fetchone()[0]
def board(d):  # the leaderboard without its training-time column (the last of each ranked table)
    lines = open(f"{d}/report/leaderboard.md").read().splitlines()
    return [re.sub(r"\| [^|]* \|$", "|", l) if l.startswith("|") else l for l in lines]
a, la, ia = rows(sys.argv[1]); b, lb, ib = rows(sys.argv[2])
print(f"result rows: undisturbed {len(a)}, killed and resumed {len(b)}; same keys: {a.keys() == b.keys()}")
print(f"same weights and per-point flags in every row: {a == b}")
print(f"batches left: {la}, {lb}; integrity: {ia}, {ib}")
print(f"same leaderboard (training-time column left out): {board(sys.argv[1]) == board(sys.argv[2])}")
PY
echo "work directory: $work"
