#!/bin/bash
# End-to-end wall time (seconds, the whole `python train.py` command, start-up included) and
# test accuracy of experiment=fast against the runner-up of docs/reproduction_notes.md,
# interleaved A B A B ... so that both see the same machine load.
#   bash benchmarks/fast_wall_time.sh [rounds] [extra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}; shift || true
python=${PYTHON:-.venv/bin/python}
out=$(mktemp -d /tmp/fast_wall_time.XXXX)
declare -A variants=(
  [fast]="experiment=fast"
  [runner_up]="experiment=fast model.widths=[32,64,128] model.convs_per_stage=1"
)
echo "| round | variant | wall time (s) | test accuracy (%) |"
echo "|---:|---|---:|---:|"
for round in $(seq 1 "$rounds"); do
  for name in fast runner_up; do
    dir=$out/${name}_$round
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    $python train.py ${variants[$name]} seed=$round logger=none callbacks.progress_bar=null hydra.run.dir="$dir" "$@" > "$dir.log" 2>&1
    end=$(date +%s.%N)
    acc=$($python -c "import json; print(f\"{100 * json.load(open('$dir/metrics.json'))['metrics']['test/acc']:.2f}\")")
    wall=$($python -c "print(f'{$end - $start:.1f}')")
    echo "| $round | $name | $wall | $acc |"
  done
done
echo "Run folders: $out"
