#!/usr/bin/env bash
# The project's reference leaderboard: runs sweeps/defenses.toml (every defense, three seeds, the
# full Fashion-MNIST training set, 1,000 test points, standard AutoAttack at 8/255 and 0.1) and
# writes docs/leaderboard-defenses.md: the sweep's leaderboard under a header that says on what
# machine it ran, from which commit, and how long it took. Resumable: run it again after an
# interruption (the sweep skips what is done); each run's times are kept in OUT/runs.log and the
# header sums them.
# A run killed before its end stays in runs.log as "killed or running" and is not in the sum.
# Usage: bash scripts/reference_leaderboard.sh [OUT (reports/sweeps/defenses)] [bench sweep flags...]
#   e.g. bash scripts/reference_leaderboard.sh reports/sweeps/defenses --address HEAD_IP:6379
# SWEEP=FILE and DOC=FILE replace the sweep file and the page written (to try the script on a
# small sweep).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/reports/sweeps/defenses}; shift || true
py="$root/.venv/bin/python"; bench="$root/.venv/bin/bench"
sweep=${SWEEP:-$root/sweeps/defenses.toml}; doc=${DOC:-$root/docs/leaderboard-defenses.md}
mkdir -p "$out"

start=$(date -u +%FT%TZ); t0=$SECONDS
echo "$start killed or running" >> "$out/runs.log"
status=0
"$bench" sweep "$sweep" --out "$out" --no-progress "$@" || status=$?
sed -i "s/^$start killed or running\$/$start $(date -u +%FT%TZ) $((SECONDS - t0)) exit=$status/" "$out/runs.log"
[ "$status" -eq 0 ] || { echo "the sweep exited $status; rerun this script to resume" >&2; exit "$status"; }
seconds=$(awk '$3 ~ /^[0-9]+$/ {s += $3} END {print s + 0}' "$out/runs.log"); runs=$(wc -l < "$out/runs.log")

machine=$("$py" - <<'PY'
import os, platform, torch
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor() or "unknown CPU")
gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(f"{os.cpu_count()} CPU cores ({cpu}); GPUs: {', '.join(gpus) or 'none'}; torch {torch.__version__}")
PY
)
commit=$(git -C "$root" rev-parse --short HEAD)
{
  echo "# Reference leaderboard: \`$(basename "$sweep")\`"
  echo
  echo "Produced by \`bash scripts/reference_leaderboard.sh\` at commit $commit on $machine."
  echo "Wall time $((seconds / 3600)) h $((seconds % 3600 / 60)) min in $runs run(s) of the sweep (start, end, seconds):"
  echo
  sed 's/^/    /' "$out/runs.log"
  echo
  cat "$out/report/leaderboard.md"
} > "$doc"
echo "wrote $doc"
