#!/usr/bin/env bash
# The quick benchmark: set up, then train every defense briefly on Fashion-MNIST, evaluate with
# FGSM, PGD and the official AutoAttack across eps 0..8/255, and write reports/.
# Extra arguments go to `bench quick` (see `bench quick --help`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
exec "$root/.venv/bin/bench" quick "$@"
