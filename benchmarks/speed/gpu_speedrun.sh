#!/usr/bin/env bash
# The speedrun records on a GPU (docs/performance.md, "On a GPU"): the 94 and 95 % recipes over
# 5 seeds with benchmarks/speedrun.py, whose runs Lightning puts on the GPU by itself, while
# nvidia-smi samples the GPU's utilisation and memory every second. Per-epoch times come from
# each run's metrics (history.csv and train.log in the run folders under the work folder).
#
#   bash benchmarks/speed/gpu_speedrun.sh [out folder] [targets...]   # default: out=gpu_speedrun, 94 95
#
# Writes <out>/speedrun.json (the table and every run), <out>/gpu.csv (the samples) and
# <out>/gpu_summary.txt (median and mean utilisation while the runs trained).
set -euo pipefail
out=${1:-gpu_speedrun}
shift || true
targets=("${@:-94 95}")
mkdir -p "$out"
command -v nvidia-smi >/dev/null || { echo "error: no nvidia-smi here: this script is for a GPU machine" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 >"$out/gpu.csv" &
sampler=$!
trap 'kill $sampler 2>/dev/null || true' EXIT
# shellcheck disable=SC2068
python benchmarks/speedrun.py --targets ${targets[@]} --workdir "$out/runs" --out "$out/speedrun.json"
kill $sampler 2>/dev/null || true
python - "$out" <<'EOF'
import statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
samples = [line.split(", ") for line in (out / "gpu.csv").read_text().splitlines() if line.count(",") == 2]
busy = [float(u) for _, u, _ in samples if float(u) > 0]
text = (
    f"{len(samples)} samples, {len(busy)} with the GPU busy; utilisation while busy: "
    f"median {statistics.median(busy):.0f} %, mean {statistics.mean(busy):.0f} %; "
    f"memory used at most {max(float(m) for _, _, m in samples):.0f} MiB"
    if busy else "the GPU was never busy"
)
(out / "gpu_summary.txt").write_text(text + "\n")
print(text)
EOF
