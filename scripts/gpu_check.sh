#!/usr/bin/env bash
# The GPU checks of issue 10, as one script for a lent GPU machine (device time is short: every
# step has its own timeout, and a failing step does not stop the next). Prepare here with
# ../shared/device/pack.sh (wheels the GPU image lacks, plus Fashion-MNIST), carry .carry/, and
# run on the device machine from the checkout's root:
#   bash scripts/gpu_check.sh            # writes under $OUT (or ./gpu-out): logs and perf.json
# Steps: the gpu-marked tests; bench perf on CUDA (preact-resnet18 on CIFAR-10's shape, whole
# PGD-AT and FGSM-RS epochs of 50,000 images in fp32 and in bf16 with channels-last, standard
# AutoAttack points/s, peak memory of a 10,000-point evaluation).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-$root/gpu-out}; mkdir -p "$out"
if [ -d .carry/wheels ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .carry/wheels/*.whl
  export PYTHONPATH=/tmp/site:$root BENCH_DATA_DIR=$root/.carry/data
fi
py=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to $out/NAME.log, print the status
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$out/steps.txt"
}
nvidia-smi -L >"$out/device.txt" 2>&1
step gpu-tests 240 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
step perf 330 "$py" -m bench.cli perf --device cuda --n 200 --epoch-images 50000 --memory-n 10000 --out "$out/perf.json"
tail -n 40 "$out/perf.log"
