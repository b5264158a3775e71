#!/usr/bin/env bash
# Installs what bench needs, idempotently: Debian's Fashion-MNIST, chromium and chromium-driver
# packages (where apt exists and they are missing), a virtual environment .venv/ at the checkout's
# root, and bench in it with its test (pytest, selenium), sweep (ray) and docs (mkdocs) extras.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
apt_install() {  # apt_install PACKAGE...: quietly, updating the index once if needed
  $sudo apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
}
fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/t10k-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's dataset-fashion-mnist" >&2
  apt_install dataset-fashion-mnist || echo "setup: could not install dataset-fashion-mnist; pass --data-dir to bench" >&2
fi
# The web report's test drives Debian's headless Chromium through its own ChromeDriver, by path:
# nothing downloads a browser or a driver.
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null; then
  echo "setup: installing Debian's chromium and chromium-driver" >&2
  apt_install chromium chromium-driver || echo "setup: could not install chromium; tests/test_html.py will fail" >&2
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import bench.models, torch, torchvision, torchattacks, pyautoattack, matplotlib, pytest, ray, selenium, ruff, mkdocs, material" 2>/dev/null; then
  echo "setup: installing bench and its dependencies into .venv (torch is large: about a minute)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,sweep,docs]"
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
