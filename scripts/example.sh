#!/usr/bin/env bash
# The README's first command: set up this machine, write the binarized ResNet-18 example
# (Bi-Real style, seeded weights), compile it for this CPU, run it, and time it against
# ONNX Runtime float32 on the same ONNX file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
.venv/bin/python examples/bireal_resnet18.py -o out/bireal_resnet18.onnx
.venv/bin/python -c "import numpy as np, sys; sys.path.insert(0, 'examples')
from bireal_resnet18 import make_input; np.save('out/input.npy', make_input(224, seed=1))"
.venv/bin/tvmbits compile out/bireal_resnet18.onnx --target host -o out/bireal_resnet18.tar
.venv/bin/tvmbits inspect out/bireal_resnet18.tar | .venv/bin/python -c "import json, sys
s = json.load(sys.stdin)['summary']
print(f\"{s['lowbit_layers']} of {s['layers']} conv/dense layers low-bit; their weights \"
      f\"{s['lowbit_weight_bytes_float']} B float -> {s['lowbit_weight_bytes_packed']} B packed\")"
.venv/bin/tvmbits run out/bireal_resnet18.tar --input input=out/input.npy --output out/ --repeat 20
.venv/bin/python benchmarks/compare_onnxruntime.py out/bireal_resnet18.onnx out/bireal_resnet18.tar \
  --input out/input.npy --repeat 20
