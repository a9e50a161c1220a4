#!/usr/bin/env bash
# How tuning_logs/x86_64 is made, on this project's machine kind: a fresh log tuned on the
# models the benchmarks run (the binarized ResNet-18 example at W1A1; the float ResNet-18 of
# benchmarks/resnet18.py quantized post-training at W2A2 and W4A4): 300 trials for the
# binarized model's kernels and 200 for each quantized one's, about 14 minutes in all on this
# project's 2-core machine (each run first measures the default schedules and ends by confirming
# each kernel's choice against its default: tuning_logs/x86_64/confirmed.json).
#   bash scripts/tune_x86_64.sh [W1A1_TRIALS=300] [MULTIBIT_TRIALS=200]
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${1:-300}"
multibit_trials="${2:-200}"
mkdir -p out
.venv/bin/python examples/bireal_resnet18.py -o out/bireal_resnet18.onnx
.venv/bin/python -c "import sys; sys.path.insert(0, 'benchmarks'); import onnx
from resnet18 import float_resnet18; onnx.save(float_resnet18(), 'out/resnet18.onnx')"
rm -rf tuning_logs/x86_64
.venv/bin/tvmbits tune out/bireal_resnet18.onnx --target x86_64 --trials "$trials" --log tuning_logs/x86_64
for bits in 2 4; do
  .venv/bin/tvmbits tune out/resnet18.onnx --target x86_64 --wbits "$bits" --abits "$bits" \
    --trials "$multibit_trials" --log tuning_logs/x86_64
done
