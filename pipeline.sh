#!/usr/bin/env bash
# The whole pipeline on the built-in data, with the project's virtual environment.
# Extra arguments go to every phase, e.g.: bash pipeline.sh --set data.dataset=digits
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" tools/preprocess.py --config config.yaml "$@"
"$PYTHON" tools/visualize.py --config config.yaml "$@"
echo "pictures of the data: runs/visualize/"
