#!/usr/bin/env bash
# Sets up fmnist-lightning on a fresh Debian/Ubuntu machine; safe to run again.
#   1. the real FashionMNIST from the distribution's package dataset-fashion-mnist
#      (skipped when /usr/share/datasets/fashion-mnist already has it);
#   2. a virtual environment in .venv (Python 3.11: torch 2.14.1 wheels);
#   3. this project, editable, with its test dependencies, and torchattacks (without its
#      dependencies: see below);
#   4. with --dev only: Debian's chromium and chromium-driver, for the test that drives the
#      server's web page in a headless browser (skipped without them);
#   5. with --cluster only: SLURM (slurmctld, slurmd, slurm-client, munge) and PostgreSQL, for
#      the one-node cluster of scripts/local_cluster.sh and the `cluster` tests, and the
#      PostgreSQL driver for shared Optuna studies (the extra `cluster`).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=false
cluster=false
for arg in "$@"; do
  case "$arg" in
    --dev) dev=true ;;
    --cluster) cluster=true ;;
    *) echo "setup: unknown option $arg (the options are --dev and --cluster)" >&2; exit 2 ;;
  esac
done

apt_install() {  # apt_install PACKAGE...: as root, or through sudo
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

data_dir=/usr/share/datasets/fashion-mnist
if [ ! -f "$data_dir/t10k-labels-idx1-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing dataset-fashion-mnist into $data_dir"
    apt_install dataset-fashion-mnist
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
extras=dev
if $cluster; then extras=dev,cluster; fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
# torchattacks (fmnist-attack, experiment=adv_pgd and adv_trades) without its dependencies: its
# 3.5.1 wheel pins requests~=2.25.1, which it never imports and which would downgrade the
# requests that mkdocs-material and selenium need; the rest it needs (torch, numpy, scipy) is here.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "torchattacks==3.5.1"
if $dev && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium and chromium-driver (--dev)"
    apt_install chromium chromium-driver
  else
    echo "setup: no apt-get here; install chromium and its chromedriver for the browser test" >&2
  fi
fi
if $cluster && ! { command -v sbatch && PATH="$PATH:/usr/sbin" command -v slurmctld \
    && ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing SLURM, munge and PostgreSQL (--cluster)"
    apt_install slurmctld slurmd slurm-client munge postgresql
  else
    echo "setup: no apt-get here; install SLURM (slurmctld, slurmd, munge) and PostgreSQL for the cluster tests" >&2
  fi
fi
echo "setup: done"
