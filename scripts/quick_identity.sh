#!/usr/bin/env bash
# The quick benchmark on two commits, and whether they agree: identical result rows and findings
# (times, dates and the device's thread count aside), byte-identical leaderboard.md and JSON
# (the library-version line aside). Issue "one evaluation engine" asks this of a refactoring.
#
#   bash scripts/quick_identity.sh BEFORE AFTER [bench quick flags...]   # both, then compare
#   bash scripts/quick_identity.sh run COMMIT DIR [bench quick flags...]  # one side into DIR
#   bash scripts/quick_identity.sh compare DIR_A DIR_B                    # compare two sides
#
# Each side runs in a git worktree of that commit (under $WORK, default /tmp/bench-quick-identity)
# with this checkout's .venv, started from the worktree so that its bench is the one imported.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py="$root/.venv/bin/python"
work=${WORK:-/tmp/bench-quick-identity}

run_side() {  # run_side COMMIT DIR [flags...]
  local commit=$1 dir=$2; shift 2
  local tree="$dir/tree"
  mkdir -p "$dir"
  rm -rf "$tree"; git -C "$root" worktree prune
  git -C "$root" worktree add --detach "$tree" "$commit" >/dev/null
  local start=$SECONDS
  (cd "$tree" && BENCH_HOME="$dir/home" "$py" -m bench quick --checkpoints "$dir/checkpoints" \
     --out "$dir/reports" "$@" > "$dir/quick.out" 2> "$dir/quick.err") || {
    echo "quick_identity: bench quick failed at $commit; see $dir/quick.err" >&2; exit 1; }
  echo "quick_identity: $commit: bench quick took $((SECONDS - start)) s" >&2
  git -C "$tree" rev-parse HEAD > "$dir/commit"
  git -C "$root" worktree remove --force "$tree"
}

case "${1:-}" in
  run) shift; run_side "$@" ;;
  compare) shift; "$py" "$root/scripts/quick_identity.py" "$@" ;;
  ""|-h|--help) sed -n 2,12p "$0"; exit 2 ;;
  *)
    before=$1 after=$2; shift 2
    run_side "$before" "$work/before" "$@"
    run_side "$after" "$work/after" "$@"
    "$py" "$root/scripts/quick_identity.py" "$work/before" "$work/after" ;;
esac
