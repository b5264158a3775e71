#!/usr/bin/env bash
# Does bf16 autocast move the result? PGD-AT (eps 0.1) on Fashion-MNIST with the cnn, trained
# twice with the same seed (fp32 and --amp bf16), both evaluated in float32 on the same test
# points: clean, FGSM and PGD-10 at 8/255 and 0.1, with 95% intervals. Prints both tables.
# Usage: bash scripts/amp_check.sh [EPOCHS (3)] [TRAIN_LIMIT (10000)] [N (1000)]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench="$root/.venv/bin/bench"
epochs=${1:-3}; limit=${2:-10000}; n=${3:-1000}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for amp in off bf16; do
  start=$(date +%s)
  "$bench" train --defense pgd-at --eps 0.1 --dataset fashion-mnist --model cnn \
    --epochs "$epochs" --train-limit "$limit" --seed 0 --amp "$amp" --out "$work" \
    --run-id "amp-$amp" --no-progress >/dev/null
  echo "amp=$amp: trained in $(( $(date +%s) - start )) s"
done
"$bench" eval --checkpoint "$work/amp-off" "$work/amp-bf16" --attack fgsm,pgd \
  --eps 0,8/255,0.1 --n "$n" --walk up --db "$work/amp.sqlite" --no-progress
