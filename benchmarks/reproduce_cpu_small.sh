#!/bin/bash
# Published evidence (docs/results.md): the scaled AR-AT Table 3 and the scaled ablation on a CPU.
#
#   bash benchmarks/reproduce_cpu_small.sh [RUNS_DIR]
#
# Runs from the repository root; the genuine CIFAR-10 subset (5,438 training / 1,017 test images)
# stands in for CIFAR-10. Runs go to RUNS_DIR (default /tmp/atzoo-evidence); the reports are copied
# to benchmarks/results/reproduce_cpu_small/. Reruns reuse the finished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-/tmp/atzoo-evidence}"
DATA="cifar10=npz:../shared/data/cifar10_subset.npz"
export OMP_NUM_THREADS=1  # one thread per process: the machine's cores are shared
date -u +"start %FT%TZ"
time nice -n 10 atzoo reproduce ar-at-table3 --rows 'cifar10-resnet18/*' --seeds 0,1 --scale cpu-small \
  --data "$DATA" --out "$RUNS/table3"
time nice -n 10 atzoo reproduce ar-at-ablation --seeds 0 --scale cpu-small --data "$DATA" --out "$RUNS/ablation"
date -u +"end %FT%TZ"
for name in table3 ablation; do
  mkdir -p "benchmarks/results/reproduce_cpu_small/$name"
  cp "$RUNS/$name"/reproduction.{md,json,html} "$RUNS/$name/tradeoff.png" "benchmarks/results/reproduce_cpu_small/$name/"
done
