#!/usr/bin/env bash
# The whole pipeline on the built-in data, with the project's virtual environment.
# Extra arguments go to every phase, e.g.: bash pipeline.sh --set data.dataset=digits
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" tools/preprocess.py --config config.yaml "$@"
"$PYTHON" tools/visualize.py --config config.yaml "$@"
"$PYTHON" train_convlstm.py --config config.yaml --save runs/base_convlstm --overwrite "$@"
"$PYTHON" fit_pgm.py --config config.yaml --features runs/base_convlstm/features.pt "$@"
"$PYTHON" train_joint.py --config config.yaml --resume runs/base_convlstm/ckpt.pt --save runs/joint --overwrite "$@"
"$PYTHON" evaluate.py --config config.yaml --ckpt runs/joint/best.pt "$@"
"$PYTHON" tools/visualize.py --config config.yaml --split test --ckpt runs/joint/best.pt "$@"
"$PYTHON" export.py --config config.yaml --ckpt runs/joint/best.pt --out artifacts --overwrite "$@"
"$PYTHON" export.py --verify artifacts
echo "pictures of the data and predictions: runs/visualize/; learning curves: runs/base_convlstm/, runs/joint/"
echo "evaluation plots (confusion, reliability, per-class F1): runs/joint/plots/; metrics: runs/joint/metrics.json"
echo "exported bundle: artifacts/ (metrics.json, MANIFEST.json)"
