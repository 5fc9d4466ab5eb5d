#!/usr/bin/env bash
# The whole pipeline on the built-in data, with the project's virtual environment.
# Extra arguments go to every phase, e.g.: bash pipeline.sh --set data.dataset=digits
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-.venv/bin/python}
# A first run on a smaller budget than the config's (4 epochs of pretraining of its 8, 1 joint epoch of its 4),
# so the whole pipeline takes under 5 minutes on a 2-core CPU; leave BUDGET out for the config's own.
BUDGET=(--set training.epochs=4 --set training.joint.epochs=1)
"$PYTHON" tools/preprocess.py --config config.yaml "$@"
"$PYTHON" tools/visualize.py --config config.yaml "$@"
"$PYTHON" train_convlstm.py --config config.yaml --save runs/base_convlstm --overwrite "${BUDGET[@]}" "$@"
"$PYTHON" fit_pgm.py --config config.yaml --features runs/base_convlstm/features.pt "$@"
"$PYTHON" train_joint.py --config config.yaml --resume runs/base_convlstm/ckpt.pt --save runs/joint --overwrite \
    "${BUDGET[@]}" "$@"
# A small search: 2 genomes (the base config's and a random one) in steady state (a free slot runs the next
# trial at once) with successive halving (each trains 1 epoch, the better goes on to 2), every trial at half
# the budget above and judged against the base config at the same budget. The full search is:
# evolve.py --config config.yaml --out runs/evo_search --parallel N
"$PYTHON" evolve.py --config config.yaml --out runs/evo_search --parallel "${PARALLEL:-2}" --overwrite \
    --set evolutionary.mode=steady_state --set evolutionary.fidelity=halving --set evolutionary.halving.eta=2 \
    --set evolutionary.halving.rungs=2 --set evolutionary.population_size=2 --set evolutionary.elitism=1 \
    --set evolutionary.generations=1 --set training.epochs=2 "$@"
"$PYTHON" evaluate.py --config config.yaml --ckpt runs/joint/best.pt "$@"
"$PYTHON" evaluate.py --config config.yaml --ckpt runs/joint/best.pt --split val "$@"
"$PYTHON" tools/visualize.py --config config.yaml --split test --ckpt runs/joint/best.pt "$@"
# Export the better on val of the joint model and the search's winner (best/ holds its trial's val figures).
BEST=$("$PYTHON" tools/choose.py --split val runs/joint/best.pt runs/evo_search/best/ckpt.pt)
"$PYTHON" export.py --config "$(dirname "$BEST")/config.yaml" --ckpt "$BEST" --out artifacts --overwrite "$@"
"$PYTHON" export.py --verify artifacts
echo "pictures of the data and predictions: runs/visualize/; learning curves: runs/base_convlstm/, runs/joint/"
echo "search: runs/evo_search/ (logbook.csv, trials.csv, arrivals.csv, hall_of_fame.json, fitness.png, best/)"
echo "evaluation plots (confusion, reliability, per-class F1): runs/joint/plots/"
echo "metrics: runs/joint/metrics.json, runs/evo_search/best/metrics.json"
echo "exported bundle: artifacts/ (metrics.json, MANIFEST.json), of $BEST, the better on val"
