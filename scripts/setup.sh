#!/usr/bin/env bash
# Sets up fmnist-lightning on a fresh Debian/Ubuntu machine; safe to run again.
#   1. the real FashionMNIST from the distribution's package dataset-fashion-mnist
#      (skipped when /usr/share/datasets/fashion-mnist already has it);
#   2. a virtual environment in .venv (Python 3.11: torch 2.14.1 wheels);
#   3. this project, editable, with its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

data_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$data_dir/t10k-labels-idx1-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "setup: installing dataset-fashion-mnist into $data_dir"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
  else
    echo "setup: no apt-get here; put the four FashionMNIST IDX files in data/fashion-mnist/" \
         "(or pass data.root=...) before training" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
echo "setup: installing fmnist-lightning and its dependencies into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
echo "setup: done"
